"""`recpar train --scheme mp|hybrid`: bad plans fail before any rank starts; TP × PP × DP
training gives the single-device weights; an interrupted hybrid run resumes.

World sizes: 8 (hybrid tp2×pp2×dp2, real launcher: torchrun --standalone), 2 (mp pp2 with the
chunked loss, real launcher), 2 / 4 (mp tp2, mp tp2×pp2, real launcher), 4 (mp tp2×pp2 in
bf16, real launcher), 4 (an MoE model under hybrid tp2×dp2×ep2, real launcher), 4 (hybrid
tp2×dp2, spawned, killed after epoch 0 and resumed). gloo on CPU.

Tolerance: every run trains the same data from the same initial weights with the same global
batches; only the order of fp32 summations differs (TP splits the row-parallel matmuls and
the vocab-parallel softmax into per-rank partial sums plus an all-reduce, PP sums the
micro-batch gradients, DP averages half-batch gradients). Those differences are ~1e-7
relative in each gradient. AdamW moves every weight by up to ~lr = 1e-3 per step whatever
the gradient's size, so an element whose gradient is itself near rounding level can move
differently: a handful of elements show 1e-6..1e-5, the mean stays ~1e-8. Observed after 10
steps (shared, noisy 2-core machine; the numbers do not depend on load), max / mean |Δw|:
pp2 3.0e-6 / 1.6e-9, tp2×dp2 (resumed) 1.1e-5 / 7.2e-9, tp2×pp2×dp2 1.1e-5 / 7.2e-9; the
existing dp2 scheme on the same config 2.5e-6 / 2.1e-9. A wrong shard, row split or missing
reduction moves many weights by ~lr (1e-4..1e-3). AdamW is invariant to a constant scale of
a gradient, so the reported train loss (the global mean) is compared too.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recpar.cli import main as recpar_main
from recpar.train import record
from ..comm.mp_launch import skip_unless_ranks, spawn_ranks
from . import mp_workers

RECPAR = [sys.executable, "-m", "recpar.cli"]
COMMON = ["--model-size", "tiny", "--model-override", "max_seq_len=12",
          "--model-override", "dropout=0.0", "--set", "max_epochs=2", "--set", "patience=5",
          "--set", "global_batch_size=128", "--set", "warmup_steps=2",
          "--set", "timed_steps=4", "--no-progress"]
"""2 epochs of 5 steps (611 sequences; the last batch of 99 rows is split unevenly over
dp = 2 and padded to whole micro-batches); dropout off (its masks cannot match across
shards)."""
WEIGHT_TOL = 3e-5
"""max |Δw| vs single device after 10 AdamW steps (module docstring: observed <= 1.1e-5)."""
MEAN_WEIGHT_TOL = 1e-7
"""mean |Δw| over all weights (observed <= 7.2e-9; a real error moves it to >= ~1e-5)."""
LOSS_RTOL = 1e-5
"""Relative difference of the per-epoch mean train loss vs single device."""


def _need(world_size: int) -> None:
    skip_unless_ranks(world_size)
    if importlib.util.find_spec("megatron") is None:  # pragma: no cover - the env pins it
        pytest.skip("megatron-core is not installed")
    if shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("torchrun not found next to the interpreter")


def _run(args, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(RECPAR + args, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("extra, message", [
    (["--scheme", "mp", "--tp", "3"], "n_heads = 4 is not divisible by tp = 3"),
    (["--scheme", "mp", "--tp", "2", "--model-override", "d_ff=255"],
     "d_ff = 255 is not divisible by tp = 2"),
    (["--scheme", "mp", "--pp", "5", "--microbatches", "8"],
     "pp = 5 pipeline stages but the model has only n_layers + 2 = 4 layer units"),
    (["--scheme", "mp", "--pp", "3", "--microbatches", "4", "--pipeline-schedule",
      "interleaved-1f1b"], "--pp 3 with interleaved-1f1b = 6 stages"),
    (["--scheme", "hybrid", "--dp", "2", "--pp", "2", "--microbatches", "3"],
     "train.global_batch_size / dp = 64 is not divisible by --microbatches 3"),
    (["--scheme", "mp", "--dp", "2", "--tp", "2"], "scheme mp is tensor/pipeline parallel only"),
    (["--scheme", "mp", "--pp", "3", "--microbatches", "4", "--partition", "uniform"],
     "uniform gives every stage at least one block, but pp = 3 > 2 blocks"),
])
def test_bad_model_parallel_plans_fail_before_any_rank_starts(small_prepared, tmp_path, capsys,
                                                              extra, message):
    code = recpar_main(["train", "--data", str(small_prepared), "--out", str(tmp_path / "run"),
                        *COMMON, *extra])
    err = capsys.readouterr().err
    assert code != 0 and message in err, err
    assert not (tmp_path / "run" / "spec.json").exists()


@pytest.fixture(scope="module")
def baseline_run(small_prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("mp-base") / "run"
    assert recpar_main(["train", "--scheme", "baseline", "--data", str(small_prepared),
                        "--out", str(out), *COMMON]) == 0
    return out


def _assert_weights_match(a_dir: Path, b_dir: Path) -> None:
    a = torch.load(a_dir / "last.pt", weights_only=False)["model"]
    b = torch.load(b_dir / "last.pt", weights_only=False)["model"]
    assert a.keys() == b.keys()
    assert all(a[k].shape == b[k].shape for k in a)
    diff = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    assert float(diff.max()) <= WEIGHT_TOL, (float(diff.max()), max(
        a, key=lambda k: float((a[k] - b[k]).abs().max())))
    assert float(diff.mean()) <= MEAN_WEIGHT_TOL, float(diff.mean())


def _assert_losses_match(base: dict, rec: dict) -> None:
    assert len(rec["history"]) == len(base["history"]) == 2
    for h, hb in zip(rec["history"], base["history"]):
        assert h["train_loss"] == pytest.approx(hb["train_loss"], rel=LOSS_RTOL)


@pytest.mark.multiprocess
@pytest.mark.slow
def test_hybrid_tp2_pp2_dp2_equals_single_device(small_prepared, baseline_run, tmp_path):
    """8 ranks: TP pairs inside each pipeline stage, two stages, two DDP replicas, with the
    chunked loss: the head stage's vocab-parallel loss a chunk at a time (the tp2 x pp2 plan
    of the correctness grid, which had a run of its own before stop 31)."""
    _need(8)
    r = _run(["train", "--scheme", "hybrid", "--tp", "2", "--pp", "2", "--dp", "2",
              "--partition", "uniform", "--data", str(small_prepared),
              "--out", str(tmp_path / "h"), *COMMON,
              "--model-override", "cross_entropy_chunk_size=16"])
    assert r.returncode == 0, r.stderr[-4000:]
    rec = record.read(tmp_path / "h" / "record.json")  # schema-validated
    assert rec["scheme"] == "hybrid" and rec["plan"]["world_size"] == 8
    assert rec["run_id"] == "dp2tp2pp2-uniform-ring-tiny-n1"
    m = rec["metrics"]
    # what was measured: DP gradient sync (hook), pipeline per rank, TP bytes (formula)
    assert m["payload_bytes_per_rank_per_iter"] == m["dense_bytes_per_rank_per_iter"] > 0
    assert m["comm_ms_per_iter"] > 0
    assert m["pp_bubble_fraction_theory"] == pytest.approx(1 / 5)  # (p-1)/(m+p-1), m = 4
    for p in (0, 1):
        assert 0 <= m[f"pp_rank{p}_bubble_fraction_measured"] < 1
        assert m[f"pp_rank{p}_compute_ms_per_iter"] > 0
    # [mb, L, d] activations forward, their gradients back (each TP rank its own copy)
    assert m["pp_p2p_bytes_per_replica_per_iter"] > 0
    assert m["tp_allreduce_payload_bytes_per_replica_per_iter"] > 0
    # megatron's TP collectives timed (recpar.comm.group_timer)
    assert m["tp_comm_calls_per_rank_per_iter"] > 0
    assert m["tp_comm_ms_per_iter_max_over_ranks"] >= m["tp_comm_ms_per_iter"] > 0
    assert rec["config"]["model"]["cross_entropy_chunk_size"] == 16
    assert m["peak_rss_gib_max_over_ranks"] > 0
    base = record.read(baseline_run / "record.json")
    _assert_losses_match(base, rec)
    _assert_weights_match(baseline_run, tmp_path / "h")


@pytest.mark.multiprocess
def test_mp_pp2_equals_single_device(small_prepared, baseline_run, tmp_path):
    """2 ranks: the pipeline alone (tp = 1), GPipe schedule, profiled (balanced) cut, and the
    chunked loss: the head stage hands its hidden states to the pipeline's loss, which scores
    them against the tied table 16 positions at a time (cross_entropy_chunk_size; the same
    loss and gradients as whole logits within fp32 rounding, so the single-device bounds hold;
    the other pipeline plans here compute whole logits)."""
    _need(2)
    r = _run(["train", "--scheme", "mp", "--pp", "2", "--pipeline-schedule", "gpipe",
              "--data", str(small_prepared), "--out", str(tmp_path / "pp"), *COMMON,
              "--model-override", "cross_entropy_chunk_size=16"])
    assert r.returncode == 0, r.stderr[-4000:]
    rec = record.read(tmp_path / "pp" / "record.json")
    assert rec["run_id"] == "pp2-gpipe-tiny-n1" and rec["plan"]["pipeline_schedule"] == "gpipe"
    assert rec["config"]["model"]["cross_entropy_chunk_size"] == 16
    m = rec["metrics"]
    assert m["comm_ms_per_iter"] is None  # no DP: nothing timed as gradient sync
    assert m["pp_tied_grad_payload_bytes_per_iter"] > 0  # rank 0 holds the tied table
    _assert_losses_match(record.read(baseline_run / "record.json"), rec)
    _assert_weights_match(baseline_run, tmp_path / "pp")


@pytest.mark.multiprocess
def test_moe_under_tensor_parallelism_equals_single_device(small_prepared, tmp_path):
    """dp2 x ep2 x tp2 (4 ranks) of a 4-expert top-2 MoE model: each TP rank's dp pair shares
    out the experts, which stay whole on every TP rank; the load-balancing loss is the global
    batch's. It ends with the single-device MoE run's weights and losses (the module
    docstring's tolerances; the checkpoint gathers every expert), and the TP collectives are
    the formula's, 2 fewer per MoE block than a dense block's. dp2 x tp2 without ep ran
    against the same bounds at stop 30 (replicated experts are DDP's, like any weight)."""
    _need(4)
    moe = ["--model-override", "num_moe_experts=4"]
    hybrid = ["--scheme", "hybrid", "--dp", "2", "--tp", "2"]
    runs = {"base": ["--scheme", "baseline"], "ep": [*hybrid, "--ep", "2"]}
    for name, scheme in runs.items():
        r = _run(["train", *scheme, "--data", str(small_prepared), "--out",
                  str(tmp_path / name), *COMMON, *moe])
        assert r.returncode == 0, (name, r.stderr[-4000:])
    base, ep = (record.read(tmp_path / n / "record.json") for n in runs)
    assert ep["run_id"] == "dp2ep2tp2-ring-moe4top2-tiny-n1" and ep["plan"]["ep"] == 2
    from recpar.model.config import ModelConfig
    from recpar.parallel.tensor_parallel import tp_comm_per_step

    cfg = ModelConfig(**ep["config"]["model"])
    assert cfg.n_moe_blocks == cfg.n_layers == 2
    _assert_losses_match(base, ep)
    _assert_weights_match(tmp_path / "base", tmp_path / "ep")
    assert ep["moe"]["experts_per_token_measured"] == pytest.approx(2.0, rel=1e-6)
    m = ep["metrics"]
    rows = (m["throughput_samples_per_s"] * ep["timing"]["window_s"]
            / ep["timing"]["timed_steps"]) / ep["plan"]["dp"]  # one replica's
    f = tp_comm_per_step(cfg, rows, 12, 2)
    assert m["tp_comm_calls_per_rank_per_iter"] == f.allreduce_calls
    dense = dataclasses.replace(cfg, num_moe_experts=0)
    assert f.allreduce_calls == tp_comm_per_step(dense, rows, 12, 2).allreduce_calls - 2 * 2
    for layer in ep["moe"]["layers"]:  # tokens crossed to the other replica's experts
        assert layer["all_to_all_bytes_per_forward"] > 0


@pytest.mark.multiprocess
@pytest.mark.parametrize("scheme, degrees, world, run_id", [
    ("mp", ["--tp", "2"], 2, "tp2-tiny-n1"),
])
def test_plan_shapes_equal_single_device(small_prepared, baseline_run, tmp_path, scheme,
                                         degrees, world, run_id):
    """The remaining plan shapes of the correctness grid through the real CLI and engine
    (pp2 × dp2 and tp2 × pp2 with the chunked loss in fp32 are the tp2 × pp2 × dp2 test's);
    TP runs also time megatron's TP collectives (recpar.comm.group_timer)."""
    _need(world)
    r = _run(["train", "--scheme", scheme, *degrees, "--data", str(small_prepared),
              "--out", str(tmp_path / "run"), *COMMON])
    assert r.returncode == 0, r.stderr[-4000:]
    rec = record.read(tmp_path / "run" / "record.json")
    assert rec["run_id"] == run_id and rec["plan"]["world_size"] == world
    m = rec["metrics"]
    if "--tp" in degrees:
        assert m["tp_comm_calls_per_rank_per_iter"] > 0
        assert m["tp_comm_ms_per_iter_max_over_ranks"] >= m["tp_comm_ms_per_iter"] > 0
        if "--pp" not in degrees:  # one stage holds every layer: the formula's whole count
            from recpar.model.config import ModelConfig
            from recpar.parallel.tensor_parallel import tp_comm_per_step

            # The window's mean rows per step (it holds the short tail batch of 99 rows). The
            # clip norm's all-reduce runs on the model-parallel group, not the TP group.
            rows = (m["throughput_samples_per_s"] * rec["timing"]["window_s"]
                    / rec["timing"]["timed_steps"])
            f = tp_comm_per_step(ModelConfig(**rec["config"]["model"]), rows, 12, 2)
            assert m["tp_comm_calls_per_rank_per_iter"] == f.allreduce_calls
            assert m["tp_comm_payload_bytes_per_rank_per_iter"] == pytest.approx(
                f.allreduce_payload_bytes, rel=1e-6)
    _assert_losses_match(record.read(baseline_run / "record.json"), rec)
    _assert_weights_match(baseline_run, tmp_path / "run")


@pytest.mark.multiprocess
def test_hybrid_tp2_dp2_killed_after_epoch_0_resumes(small_prepared, baseline_run, tmp_path):
    """4 ranks (spawned): TP inside a replica, DDP over the two replicas; killed after the
    first epoch's checkpoint, resumed from last.pt + engine-rank<r>.pt (TP shard, AdamW
    state, grad-sync state). Losing the optimiser state on resume would move the weights by
    ~lr, far beyond WEIGHT_TOL."""
    _need(4)
    from recpar.cli import build_parser
    from recpar.train.cli import _spec
    from recpar.train.spec import spec_to_dict

    out = tmp_path / "run"
    args = build_parser().parse_args(["train", "--scheme", "hybrid", "--tp", "2", "--dp", "2",
                                      "--data", str(small_prepared), "--out", str(out),
                                      *COMMON])
    spec = _spec(args, "hybrid")
    out.mkdir(parents=True)
    (tmp_path / "spec.json").write_text(json.dumps(spec_to_dict(spec)))
    ranks = spawn_ranks(mp_workers.resume_after_kill, 4, tmp_path)
    assert all(r["killed"] and not r["record_after_kill"] for r in ranks)
    assert ranks[0]["engine_files_after_kill"] == [f"engine-rank{r}.pt" for r in range(4)]
    rec = ranks[0]["record"]
    assert rec["notes"][0] == "resumed from last.pt after epoch 0"
    assert record.read(out / "record.json")["run_id"] == "dp2tp2-ring-tiny-n1"
    _assert_losses_match(record.read(baseline_run / "record.json"), rec)
    _assert_weights_match(baseline_run, out)  # the replay without DP sync trains nothing
    # pp = 1 hybrid: exposed DP time from the replay, TP time still measured on its own
    m = rec["metrics"]
    assert m["fwd_bwd_no_sync_ms_per_iter"] > 0 and m["exposed_comm_ms_per_iter"] >= 0
    assert m["exposed_comm_ms_per_iter"] == pytest.approx(
        max(0.0, m["fwd_bwd_ms_per_iter"] - m["fwd_bwd_no_sync_ms_per_iter"]))
    assert m["tp_comm_ms_per_iter"] > 0 and "comm_share_pct" not in m


BF16_LOSS_RTOL = 1e-4
"""bf16 plan vs bf16 single device: relative difference of the per-epoch mean train loss.
Each position's cross-entropy is computed in fp32 from bf16 logits on both sides; they differ
where a bf16 rounding of a logit or gradient falls differently (different summation order per
shard), which moves a mean over ~10^4 positions by far less than bf16's unit roundoff
u = 2^-8 ≈ 3.9e-3."""
BF16_MEAN_WEIGHT_TOL = 3e-5
"""mean |Δw| after 10 AdamW steps, bf16 plan vs bf16 single device. A gradient that differs by
~u (not ~1e-7 as in fp32) lets many more elements move differently: observed 1.6e-5 for
dp2×pp2 (the plan the bound was set on) and for ZeRO-1 and dp2 run by hand, then 1.4e-5 for
pp2 GPipe (held out); the fp32 single device is 3.8e-5 away from the bf16 one. A wrong shard or
missing reduction moves many weights by ~lr = 1e-3. The test runs pp2 (2 ranks: make test's
time)."""


def _mean_weight_diff(a_dir: Path, b_dir: Path) -> float:
    a = torch.load(a_dir / "last.pt", weights_only=False)["model"]
    b = torch.load(b_dir / "last.pt", weights_only=False)["model"]
    return float(torch.cat([(a[k] - b[k]).abs().flatten() for k in a]).mean())


@pytest.mark.multiprocess
def test_bf16_model_parallel_equals_single_device_bf16(small_prepared, baseline_run, tmp_path):
    """4 ranks: tp2 x pp2 under bf16 autocast (train.precision) against the single device
    under bf16: the stages' forwards autocast, the head hands fp32 logits to the loss, and on
    CPU the TP layers run megatron's f / g mappings around autocast's linear
    (recpar.parallel.tensor_parallel). The plan must land closer to single-device bf16 than
    single-device fp32 is (so it did run bf16). pp2, tp2, dp2, pp2 x dp2 and ZeRO-1 in bf16
    were checked against the same bounds (pp2 and tp2 in this test before stop 30)."""
    _need(4)
    plan = ["--tp", "2", "--pp", "2", "--partition", "uniform"]
    run_id = "tp2pp2-uniform-bf16-tiny-n1"
    bf16 = ["--set", "precision=bf16"]
    base16 = tmp_path / "base16"
    assert recpar_main(["train", "--scheme", "baseline", "--data", str(small_prepared),
                        "--out", str(base16), *COMMON, *bf16]) == 0
    r = _run(["train", "--scheme", "mp", *plan, "--data", str(small_prepared),
              "--out", str(tmp_path / "run"), *COMMON, *bf16])
    assert r.returncode == 0, r.stderr[-4000:]
    rec, ref = record.read(tmp_path / "run" / "record.json"), record.read(base16 / "record.json")
    assert rec["run_id"] == run_id
    assert rec["config"]["train"]["precision"] == ref["config"]["train"]["precision"] == "bf16"
    for h, hb in zip(rec["history"], ref["history"], strict=True):
        assert h["train_loss"] == pytest.approx(hb["train_loss"], rel=BF16_LOSS_RTOL)
    to_bf16 = _mean_weight_diff(tmp_path / "run", base16)
    fp32_to_bf16 = _mean_weight_diff(baseline_run, base16)
    assert to_bf16 <= BF16_MEAN_WEIGHT_TOL, to_bf16
    assert to_bf16 < fp32_to_bf16, (to_bf16, fp32_to_bf16)


@pytest.mark.parametrize("plan, message", [
    (["--scheme", "deepspeed", "--pp", "2"], "bf16: scheme deepspeed trains in fp32 only"),
])
def test_bf16_where_it_cannot_run_is_refused_before_any_rank_starts(small_prepared, tmp_path,
                                                                    capsys, plan, message):
    code = recpar_main(["train", *plan, "--set", "precision=bf16", "--data",
                        str(small_prepared), "--out", str(tmp_path / "run"), *COMMON])
    assert code != 0
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "spec.json").exists()


def test_compiled_baseline_trains_exactly_like_the_plain_one(small_prepared, baseline_run,
                                                            tmp_path):
    """train.compile runs the step through torch.compile (dynamo's `eager` backend here: it
    traces and runs the same ops, so the weights must be bit-identical; inductor's generated
    code is what the GPU check times). The run id says it was compiled."""
    out = tmp_path / "compiled"
    assert recpar_main(["train", "--scheme", "baseline", "--data", str(small_prepared), "--out",
                        str(out), *COMMON, "--set", "compile=true",
                        "--set", "compile_backend=eager"]) == 0
    rec = record.read(out / "record.json")
    assert rec["run_id"] == "baseline-compile-tiny-n1" and rec["config"]["train"]["compile"]
    base = record.read(baseline_run / "record.json")
    assert [h["train_loss"] for h in rec["history"]] == [h["train_loss"] for h in base["history"]]
    a = torch.load(out / "last.pt", weights_only=False)["model"]
    b = torch.load(baseline_run / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_compile_outside_baseline_and_dp_is_refused(small_prepared, tmp_path, capsys):
    code = recpar_main(["train", "--scheme", "mp", "--pp", "2", "--set", "compile=true",
                        "--data", str(small_prepared), "--out", str(tmp_path / "run"), *COMMON])
    assert code != 0 and "scheme mp is not compiled" in capsys.readouterr().err
