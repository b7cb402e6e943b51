"""Tensor parallelism (megatron-core) against the single-device recommender.

Multi-process part: world size 2 (tp = 2), gloo on CPU, one spawn for all checks
(`tp_workers.run_all`); skipped with the reason when 2 gloo ranks cannot run here.

Tolerances. Everything is fp32 (eps 1.2e-7). TP changes only the order of summation (the
row-parallel all-reduce adds two partial products; the vocab-parallel loss sums exp over two
shards), so values agree to a few ulp:

- scores, losses, grad norms: rtol 1e-5 (measured worst ~3e-7);
- gradients after one backward: atol 1e-5 x the tensor's largest entry (entries near zero
  have no meaningful relative error; measured worst 5e-7 of the scale);
- weights after 5 AdamW steps: atol 1e-2 x lr, i.e. 1 % of one optimiser step. AdamW moves a
  weight by about lr per step whatever its gradient's size, so a rounding-level difference
  in a near-zero gradient (the key biases' gradient is zero analytically: softmax ignores a
  per-key constant) becomes a difference in units of lr, not of the weight. Measured worst:
  2e-3 x lr, on a key bias. A wrong shard would differ by the weight scale (~1e-2 and up).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.distributed as dist

from recpar.model.config import ModelConfig
from recpar.model.recommender import Recommender
from recpar.parallel.plan import ParallelPlan, PlanError
from recpar.parallel.tensor_parallel import (TENSOR_PARALLEL_SEED_OFFSET, TensorParallelRNG,
                                             apply_tp, padded_vocab_size, tp_comm_per_step,
                                             validate_tp)
from tests.parallel import tp_workers

WORLD_SIZE = tp_workers.WORLD_SIZE  # ranks of the multi-process tests below
RTOL = 1e-5


def _skip_unless_ranks(world_size: int) -> None:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip(f"needs torch.distributed with gloo for {world_size} ranks")
    # find_spec, not import: importing megatron costs ~10 s, which only the ranks should pay
    if importlib.util.find_spec("megatron") is None:  # pragma: no cover - the env pins it
        pytest.skip("megatron-core is not installed")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    _skip_unless_ranks(WORLD_SIZE)
    return tp_workers.spawn(tmp_path_factory.mktemp("tp2"))


CASE_NAMES = [c[0] for c in tp_workers.CASES]
CASE_TEXT = {c[0]: c[1] for c in tp_workers.CASES}  # case -> uses text fusion


def _slice_like(full: torch.Tensor, dim: int | None, rank: int,
                vocab_range: tuple[int, int] | None = None) -> torch.Tensor:
    """The single-device tensor's part that TP rank `rank` holds (vocab shards: zero-padded)."""
    if dim is None:
        return full
    if vocab_range is not None:
        start, end = vocab_range
        out = torch.zeros((end - start,) + tuple(full.shape[1:]), dtype=full.dtype)
        n = max(0, min(end, full.shape[0]) - start)
        out[:n] = full[start:start + n]
        return out
    return full.chunk(WORLD_SIZE, dim=dim)[rank]


def _close_scaled(a: torch.Tensor, b: torch.Tensor, what: str, scale: float = 1e-5) -> None:
    atol = scale * max(float(b.abs().max()), 1e-12)
    torch.testing.assert_close(a, b, rtol=0.0, atol=atol, msg=lambda m: f"{what}: {m}")


# --- in-process: validation, padding rule, formula (no megatron import needed) -------------

def test_padded_vocab_size_follows_megatron_rule():
    assert padded_vocab_size(101, 2, 1) == 102
    assert padded_vocab_size(101, 2, 128) == 256
    assert padded_vocab_size(256, 2, 128) == 256
    assert padded_vocab_size(63_002, 4, 128) == 63_488  # Amazon Electronics, tp 4
    assert padded_vocab_size(1683, 1, 1) == 1683
    with pytest.raises(ValueError, match="tp=0"):
        padded_vocab_size(10, 0)


def test_heads_not_divisible_by_tp_is_a_plan_error():
    cfg = ModelConfig(d_model=48, n_layers=1, n_heads=3, d_ff=96, dropout=0.0)
    model = Recommender(cfg, 10)
    with pytest.raises(PlanError, match=r"n_heads = 3 is not divisible by tp = 2"):
        apply_tp(model, ParallelPlan(scheme="mp", tp=2))


def test_ffn_not_divisible_by_tp_is_a_plan_error():
    cfg = ModelConfig(d_model=32, n_layers=1, n_heads=4, d_ff=30, dropout=0.0)
    with pytest.raises(PlanError, match=r"d_ff = 30 is not divisible by tp = 4"):
        validate_tp(cfg, ParallelPlan(scheme="mp", tp=4))


def test_apply_tp_rejects_other_modules_and_keeps_tp1_model():
    with pytest.raises(TypeError, match="Recommender"):
        apply_tp(torch.nn.Linear(2, 2), ParallelPlan(scheme="mp", tp=2))  # type: ignore[arg-type]
    model = Recommender(ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32), 5)
    assert apply_tp(model, ParallelPlan()) is model
    assert type(model) is Recommender


def test_comm_formula_counts_layers_loss_and_text():
    cfg = ModelConfig(d_model=64, n_layers=3, n_heads=4, d_ff=256, text_dim=0)
    c = tp_comm_per_step(cfg, batch_size=16, seq_len=50, tp=4)
    act = 16 * 50 * 64 * 4
    assert c.allreduce_calls == 4 * 3 + 2 + 3
    assert c.allreduce_payload_bytes == (4 * 3 + 2) * act + 3 * 16 * 50 * 4
    assert c.ring_bytes_per_rank_per_iter == int(1.5 * c.allreduce_payload_bytes)
    assert tp_comm_per_step(cfg, 16, 50, 1).ring_bytes_per_rank_per_iter == 0


def test_tp_rng_stream_is_per_rank_and_leaves_default_stream_alone():
    cpu = torch.device("cpu")
    default_draw = torch.rand(3, generator=torch.Generator().manual_seed(5))
    tp_draws = []
    for tp_rank in range(2):
        torch.manual_seed(5)
        rng = TensorParallelRNG(5 + TENSOR_PARALLEL_SEED_OFFSET + tp_rank)
        rng.enter(cpu)
        a = torch.rand(3)
        rng.exit()
        rng.enter(cpu)
        a2 = torch.rand(3)  # the TP stream continues where it stopped
        rng.exit()
        assert not rng.active
        torch.testing.assert_close(torch.cat([a, a2]),
                                   torch.rand(6, generator=torch.Generator().manual_seed(rng.seed)),
                                   rtol=0, atol=0)
        torch.testing.assert_close(torch.rand(3), default_draw, rtol=0, atol=0)
        tp_draws.append(a)
    assert not torch.equal(tp_draws[0], tp_draws[1])
    with pytest.raises(RuntimeError, match="not entered"):
        TensorParallelRNG(0).exit()


# --- multi-process: tp = 2 against single device ------------------------------------------

def test_groups_and_setup_errors(ranks):
    for r, res in enumerate(ranks):
        assert res["groups"] == {"tp_rank": r, "tp_world_size": 2, "dp_world_size": 1,
                                 "pp_world_size": 1, "tp_src_rank": 0}
        assert "init_parallel_groups" in res["errors"]["apply_before_init"]
        assert "1×4×1 = 4 does not equal the world size 2" in res["errors"]["world_mismatch"]
        assert "destroy() first" in res["errors"]["replan"]
        assert res["initialized_after_destroy"] is False


@pytest.mark.parametrize("case", CASE_NAMES)
def test_sharding_layout(ranks, case):
    cfg = tp_workers.model_config(CASE_TEXT[case])
    padded = ranks[0][case]["padded_vocab_size"]
    assert padded == (102 if case == "text-div1" else 256)
    for r, res in enumerate(ranks):
        c = res[case]
        assert c["vocab_range"] == (r * padded // 2, (r + 1) * padded // 2)
        assert c["n_local_heads"] == [cfg.n_heads // 2] * cfg.n_layers
        assert c["qkv_local_out"] == 3 * cfg.d_model // 2
        shapes = c["local_param_shapes"]
        assert shapes["blocks.0.attn.qkv.weight"] == (3 * cfg.d_model // 2, cfg.d_model)
        assert shapes["blocks.0.attn.proj.weight"] == (cfg.d_model, cfg.d_model // 2)
        assert shapes["blocks.1.mlp.fc.weight"] == (cfg.d_ff // 2, cfg.d_model)
        assert shapes["blocks.1.mlp.proj.weight"] == (cfg.d_model, cfg.d_ff // 2)
        assert shapes["blocks.1.mlp.proj.bias"] == (cfg.d_model,)
        assert shapes["item_id_emb.weight"] == (padded // 2, cfg.d_model)


@pytest.mark.parametrize("case", CASE_NAMES)
def test_forward_scores_match_single_device(ranks, case):
    for res in ranks:
        c = res[case]
        ref, tp = c["score_ref"], c["score_tp"]  # [B, n_items + 1], pad column -inf
        assert tp.shape == ref.shape == (tp_workers.BATCH, tp_workers.N_ITEMS + 1)
        assert torch.isneginf(tp[:, 0]).all()
        torch.testing.assert_close(tp, ref, rtol=RTOL, atol=1e-6)
        torch.testing.assert_close(c["eval_loss_tp"], c["eval_loss_ref"], rtol=RTOL, atol=0.0)


@pytest.mark.parametrize("case", CASE_NAMES)
def test_local_logits_are_the_vocab_slice_and_padding_never_wins(ranks, case):
    for res in ranks:
        c = res[case]
        start, end = c["vocab_range"]
        vocab = tp_workers.N_ITEMS + 1
        local, ref = c["logits_tp_local"], c["logits_ref"]  # [B, L, V_local], [B, L, vocab]
        n_real = max(0, min(end, vocab) - start)
        torch.testing.assert_close(local[..., :n_real], ref[..., start:start + n_real],
                                   rtol=RTOL, atol=1e-6)
        assert torch.isneginf(local[..., n_real:]).all()  # padding rows of the vocab
        if start == 0:
            assert torch.isneginf(local[..., 0]).all()  # the pad item


@pytest.mark.parametrize("case", CASE_NAMES)
def test_loss_trajectory_matches_single_device(ranks, case):
    for res in ranks:
        c = res[case]
        assert len(c["loss_tp"]) == tp_workers.STEPS
        assert c["loss_ref"][0] != pytest.approx(c["loss_ref"][-1], rel=1e-3)  # it trained
        assert c["loss_tp"] == pytest.approx(c["loss_ref"], rel=RTOL)
        # TP-aware global norm == torch's norm of the whole single-device model
        assert c["norm_tp"] == pytest.approx(c["norm_ref"], rel=RTOL)
        assert c["norm_ref"][0] > tp_workers.CLIP  # clipping was active


@pytest.mark.parametrize("case", CASE_NAMES)
def test_sharded_gradients_are_slices_of_single_device_gradients(ranks, case):
    for r, res in enumerate(ranks):
        c = res[case]
        g_tp, g_ref, dims = c["grads0_tp"], c["grads0_ref"], c["partition_dims"]
        assert set(g_tp) == set(g_ref)
        sharded = [n for n in g_tp if dims[n] is not None]
        # weights + column-parallel biases of 4 linears per block, and the item table
        assert len(sharded) == 6 * tp_workers.model_config(True).n_layers + 1
        for name, g in g_tp.items():
            vr = c["vocab_range"] if name == "item_id_emb.weight" else None
            want = _slice_like(g_ref[name], dims[name], r, vocab_range=vr)
            assert g.shape == want.shape, name
            _close_scaled(g, want, f"rank {r} grad {name}")


@pytest.mark.parametrize("case", CASE_NAMES)
def test_weights_after_training_match(ranks, case):
    for r, res in enumerate(ranks):
        c = res[case]
        dims = c["partition_dims"]
        for name, p in c["params_tp"].items():
            vr = c["vocab_range"] if name == "item_id_emb.weight" else None
            want = _slice_like(c["params_ref"][name], dims[name], r, vocab_range=vr)
            torch.testing.assert_close(p, want, rtol=0.0, atol=1e-2 * tp_workers.LR,
                                       msg=lambda m, n=name: f"rank {r} weight {n}: {m}")


@pytest.mark.parametrize("case", CASE_NAMES)
def test_measured_allreduces_match_formula(ranks, case):
    cfg = tp_workers.model_config(CASE_TEXT[case])
    want = tp_comm_per_step(cfg, tp_workers.BATCH, tp_workers.SEQ, tp=2, clip_grad=True)
    for res in ranks:
        c = res[case]
        assert c["allreduce_calls"] == want.allreduce_calls
        assert c["allreduce_bytes"] == want.allreduce_payload_bytes


def test_dropout_streams_replicated_in_step_tensor_parallel_per_rank(ranks):
    d0, d1 = ranks[0]["dropout"], ranks[1]["dropout"]
    # residual/embedding dropout identical on both ranks -> identical activations and loss
    assert d0["loss"] == d1["loss"]
    assert torch.equal(d0["default_state"], d1["default_state"])
    # attention dropout drew from a separate stream per rank
    assert (d0["tp_seed"], d1["tp_seed"]) == (99 + TENSOR_PARALLEL_SEED_OFFSET,
                                             100 + TENSOR_PARALLEL_SEED_OFFSET)
    for d in (d0, d1):
        assert d["tp_states_before"] == {}  # seeded lazily on first use
        assert d["tp_state_after"] is not None and not d["active"]
        fresh = torch.Generator().manual_seed(d["tp_seed"]).get_state()
        assert not torch.equal(d["tp_state_after"], fresh)  # it was drawn from
