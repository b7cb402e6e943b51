"""Model and evaluation speed (pytest-benchmark): tiny-model train step, scoring, and the
two ranking protocols at Amazon-Electronics scale (63,001 items).

    make bench   (or: pytest bench/test_bench_model.py --benchmark-enable --benchmark-only)

extra_info carries the derived rates with units; `model_gflops_per_s` is model FLOPs
(ModelConfig.flops_per_token, the PaLM MFU convention) divided by measured time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recpar.data.prepared import PreparedDataset
from recpar.eval.popularity import popularity_scorer
from recpar.eval.protocols import build_eval_examples, evaluate, sample_negatives
from recpar.model.config import ModelConfig
from recpar.model.recommender import Recommender

from .benchmark_stats import median_s

pytestmark = pytest.mark.benchmark(group="model")

AMAZON_ITEMS = 63_001  # Table I of arXiv:2506.17551
ML100K_ITEMS = 1_682  # MovieLens-100k, the offline laptop dataset


def _synthetic_prepared(n_users: int, per_user: int, n_items: int) -> PreparedDataset:
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(n_users), per_user)
    items = rng.integers(1, n_items + 1, size=len(users))
    ts = np.tile(np.arange(per_user), n_users) * n_users + users
    df = pd.DataFrame({"user": users, "item": items, "ts": ts}).sort_values(
        ["ts", "user", "item"], kind="stable").reset_index(drop=True)
    df["order"] = np.arange(len(df))
    n_train, n_valid = round(0.8 * len(df)), round(0.1 * len(df))
    item_frame = pd.DataFrame({"item": np.arange(1, n_items + 1)})
    return PreparedDataset(Path("synthetic"), item_frame, df.iloc[:n_train],
                           df.iloc[n_train:n_train + n_valid], df.iloc[n_train + n_valid:],
                           {}, n_users, n_items)


@pytest.fixture(scope="module")
def amazon_scale_test_split():
    ds = _synthetic_prepared(n_users=2_000, per_user=20, n_items=AMAZON_ITEMS)
    return ds, build_eval_examples(ds, "test", max_seq_len=50)


@pytest.mark.parametrize("n_items,b", [(ML100K_ITEMS, 64), (AMAZON_ITEMS, 16)])
def test_bench_tiny_train_step(benchmark, n_items, b):
    """One AdamW step of the tiny model: batch b x 50 positions, full softmax over items
    (at 63,001 items the [b, 50, 63,002] logits dominate)."""
    cfg = ModelConfig.named("tiny", dropout=0.1)
    torch.manual_seed(0)
    model = Recommender(cfg, n_items).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    l = cfg.max_seq_len
    x = torch.randint(1, n_items + 1, (b, l))
    y = torch.randint(1, n_items + 1, (b, l))

    def step():
        loss = model.loss(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    benchmark.pedantic(step, rounds=5, iterations=1, warmup_rounds=1)
    s = median_s(benchmark)
    if s is None:
        return
    benchmark.extra_info.update(
        throughput_samples_per_s=b / s,
        model_gflops_per_s=cfg.flops_per_token(n_items) * b * l / s / 1e9,
        threads=torch.get_num_threads())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_bench_small_train_step_precision(benchmark, precision):
    """One AdamW step of the small model, batch 16 x 50 positions over 1,682 items, in fp32 or
    under bf16 autocast (train.precision; recpar.device.forward_context): the bf16 speed-up
    the GPU path counts on, or, on a CPU without bf16 matrix units, the slow-down that makes
    `auto` pick fp32 there. extra_info: samples/s and the measured GEMM peak of the dtype."""
    from recpar.device import forward_context, gemm_flops_per_s

    cfg = ModelConfig.named("small", dropout=0.0)
    torch.manual_seed(0)
    model = Recommender(cfg, ML100K_ITEMS).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    b, l = 16, cfg.max_seq_len
    x = torch.randint(1, ML100K_ITEMS + 1, (b, l))
    y = torch.randint(1, ML100K_ITEMS + 1, (b, l))
    dtype = torch.bfloat16 if precision == "bf16" else None

    def step():
        with forward_context(dtype, "cpu"):
            loss = model.loss(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    benchmark.pedantic(step, rounds=5, iterations=1, warmup_rounds=1)
    if (s := median_s(benchmark)) is None:
        return
    benchmark.extra_info.update(
        throughput_samples_per_s=b / s, threads=torch.get_num_threads(),
        model_tflops_per_s=cfg.model_flops(ML100K_ITEMS, samples=b / s, steps=1 / s) / 1e12,
        gemm_peak_tflops_per_s=gemm_flops_per_s(precision, n=1024) / 1e12)


MOE_VS_DENSE = {"dense": {}, "dense-ff512": {"d_ff": 512},
                "moe4top2": {"num_moe_experts": 4, "moe_router_topk": 2}}
"""The tiny model, the same with the MLP of top-2 MoE's active size (2 x 256), and a 4-expert
top-2 MoE (recpar.model.moe)."""


@pytest.mark.parametrize("variant", list(MOE_VS_DENSE))
def test_bench_tiny_train_step_moe_vs_dense(benchmark, variant):
    """One AdamW step of the tiny model, batch 128 x 50 positions (the first 20 padding) over
    1,682 items, deterministic algorithms on as in `recpar train`: what an MoE's routing,
    permutation and per-expert matmuls cost against dense models of its total and active
    size. extra_info: samples/s, parameters total and active, model FLOPs per token."""
    cfg = ModelConfig.named("tiny", dropout=0.0, **MOE_VS_DENSE[variant])
    torch.manual_seed(0)
    model = Recommender(cfg, ML100K_ITEMS).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    b, l = 128, cfg.max_seq_len
    x = torch.randint(1, ML100K_ITEMS + 1, (b, l))
    x[:, :20] = 0  # left padding (short histories)
    deterministic = torch.are_deterministic_algorithms_enabled()

    def step():
        opt.zero_grad(set_to_none=True)
        model.loss(x, x).backward()
        opt.step()

    torch.use_deterministic_algorithms(True)
    try:
        benchmark.pedantic(step, rounds=5, iterations=1, warmup_rounds=1)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    if (s := median_s(benchmark)) is None:
        return
    benchmark.extra_info.update(
        throughput_samples_per_s=b / s, threads=torch.get_num_threads(),
        params_count=cfg.param_count(ML100K_ITEMS),
        params_active_count=cfg.active_param_counts(ML100K_ITEMS).total,
        flops_per_token=cfg.flops_per_token(ML100K_ITEMS))


def test_bench_tiny_score_last(benchmark):
    """Eval-mode scoring of 256 histories of 50 items against 63,001 items."""
    cfg = ModelConfig.named("tiny")
    torch.manual_seed(0)
    model = Recommender(cfg, AMAZON_ITEMS).eval()
    x = torch.randint(1, AMAZON_ITEMS + 1, (256, cfg.max_seq_len))

    def score():
        with torch.no_grad():
            return model.score_last(x)

    benchmark.pedantic(score, rounds=3, iterations=1, warmup_rounds=1)
    if (s := median_s(benchmark)) is not None:
        benchmark.extra_info["throughput_histories_per_s"] = 256 / s


@pytest.mark.parametrize("protocol", ["full", "sampled100"])
def test_bench_ranking_protocol(benchmark, amazon_scale_test_split, protocol):
    """Ranking cost alone (popularity scorer), 63,001 items, batch 256."""
    ds, ex = amazon_scale_test_split
    pop = popularity_scorer(ds)
    if protocol == "sampled100":
        sample_negatives(ex, seed=0)  # cached: measure the ranking, not the sampling
    result = benchmark.pedantic(evaluate, args=(pop, ex, protocol),
                                kwargs=dict(batch_size=256, seed=0), rounds=3, iterations=1)
    benchmark.extra_info["n_examples"] = result["n_examples"]
    if (s := median_s(benchmark)) is not None:
        benchmark.extra_info["throughput_examples_per_s"] = result["n_examples"] / s


def test_bench_sample_negatives(benchmark, amazon_scale_test_split):
    """Drawing 100 never-seen negatives per example, 63,001 items."""
    _, ex = amazon_scale_test_split

    def draw():
        ex._negatives.clear()
        return sample_negatives(ex, seed=0)

    benchmark.pedantic(draw, rounds=3, iterations=1)
    if (s := median_s(benchmark)) is not None:
        benchmark.extra_info["throughput_examples_per_s"] = len(ex) / s
