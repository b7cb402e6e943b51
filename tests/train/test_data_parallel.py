"""`recpar train --scheme dp`: validation before any rank starts, and sync DP == one device.

World size 2 (gloo on CPU, started by the real launcher: torchrun --standalone).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recpar.train import record

WORLD_SIZE = 2
RECPAR = [sys.executable, "-m", "recpar.cli"]
COMMON = ["--model-size", "tiny", "--model-override", "max_seq_len=20",
          "--model-override", "dropout=0.0", "--set", "max_epochs=1", "--set", "global_batch_size=64",
          "--set", "warmup_steps=2", "--set", "timed_steps=4", "--no-progress"]


def _run(args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(RECPAR + args, capture_output=True, text=True, timeout=timeout, env=env)


def _need_ranks():
    import torch.distributed as dist

    if not dist.is_gloo_available():
        pytest.skip(f"needs gloo for {WORLD_SIZE} ranks")
    if shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None \
            and not (Path(sys.executable).parent / "torchrun").exists():
        pytest.skip("torchrun not found next to the interpreter")


@pytest.mark.parametrize("extra, message", [
    (["--dp", "3", "--nodes", "2"], "dp×tp×pp = 3 ranks cannot be spread evenly over --nodes 2"),
    (["--dp", "2", "--grad-sync", "hierarchical"], "'hierarchical' needs >= 2 nodes"),
    (["--dp", "2", "--compressor", "zip"], "grad_sync.compressor: unknown value 'zip'"),
    (["--dp", "2", "--compressor", "topk", "--topk-ratio", "1.5"], "topk_ratio: must be in (0, 1]"),
    (["--dp", "3"], "global_batch_size = 64 is not divisible by dp = 3"),
    (["--dp", "2", "--grad-sync", "ring2"], "grad_sync.algorithm: unknown value 'ring2'"),
])
def test_bad_dp_options_fail_before_any_rank_starts(small_prepared, tmp_path, extra, message):
    r = _run(["train", "--scheme", "dp", "--data", str(small_prepared), "--out",
              str(tmp_path / "run"), *COMMON, *extra])
    assert r.returncode != 0
    assert message in r.stderr, r.stderr
    assert "torch.distributed" not in r.stderr and not (tmp_path / "run" / "spec.json").exists()


def _max_weight_diff(a_dir, b_dir, name="last.pt"):
    a = torch.load(a_dir / name, weights_only=False)["model"]
    b = torch.load(b_dir / name, weights_only=False)["model"]
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.multiprocess
def test_sync_dp_equals_single_device_with_the_same_global_batch(small_prepared, baseline_run,
                                                                  tmp_path):
    _need_ranks()
    dp = _run(["train", "--scheme", "dp", "--dp", str(WORLD_SIZE), "--data", str(small_prepared),
               "--out", str(tmp_path / "dp"), *COMMON])
    assert dp.returncode == 0, dp.stderr[-3000:]
    rec = record.read(tmp_path / "dp" / "record.json")
    assert rec["plan"]["dp"] == WORLD_SIZE and rec["scheme"] == "dp"
    assert rec["run_id"] == "dp2-ring-tiny-n1"
    assert rec["topology"]["kind"] == "local" and rec["topology"]["ranks_per_node"] == WORLD_SIZE
    m = rec["metrics"]
    # The whole gradient crosses the wire each step: payload == dense gradient bytes.
    assert m["payload_bytes_per_rank_per_iter"] == m["dense_bytes_per_rank_per_iter"] > 0
    assert m["exposed_comm_ms_per_iter"] >= 0 and m["fwd_bwd_no_sync_ms_per_iter"] > 0
    # Same data, same init, same global batch: only float summation order differs (the
    # all-reduce sums two half-batch gradients). After ~10 AdamW steps of lr 1e-3 the weights
    # agree to 1e-5 (observed ~1e-7).
    worst = _max_weight_diff(baseline_run, tmp_path / "dp")
    assert worst <= 1e-5, worst
    base_rec = record.read(baseline_run / "record.json")
    assert abs(base_rec["quality"]["test"]["full"]["ndcg_at_10"]
               - rec["quality"]["test"]["full"]["ndcg_at_10"]) <= 1e-3


@pytest.mark.multiprocess
def test_zero3_equals_single_device_with_the_same_global_batch(small_prepared, baseline_run,
                                                               tmp_path):
    """ZeRO-3 through DeepSpeed: every parameter partitioned over the 2 ranks (persistence
    threshold 0), full weights gathered for validation and the best checkpoint."""
    _need_ranks()
    z = _run(["train", "--scheme", "zero", "--zero-stage", "3", "--dp", str(WORLD_SIZE),
              "--data", str(small_prepared), "--out", str(tmp_path / "z3"), *COMMON])
    assert z.returncode == 0, z.stderr[-3000:]
    rec = record.read(tmp_path / "z3" / "record.json")
    assert rec["run_id"] == "zero-dp2-stage3-tiny-n1" and rec["plan"]["dp"] == WORLD_SIZE
    # DeepSpeed's comms logger timed ZeRO-3's collectives inside the window: parameters are
    # all-gathered (forward and backward) and gradients reduce-scattered every step.
    m = rec["metrics"]
    assert m["comm_ms_per_iter"] > 0 and m["collective_calls_per_iter"] > 0
    assert m["all_gather_into_tensor_msg_bytes_per_iter"] > 0
    assert m["reduce_scatter_tensor_msg_bytes_per_iter"] > 0
    # The gradient bucket is the model's size (zero.reduce_bucket_size): DeepSpeed's default of
    # 5e8 fp32 elements alone is 1.9 GiB per rank (2.35 GiB peak before the cap, 0.49 after).
    assert m["peak_rss_gib_max_over_ranks"] < 1.5, m["peak_rss_gib_max_over_ranks"]
    # One epoch: the best checkpoint is the final one in both runs. Tolerance as for dp.
    worst = _max_weight_diff(baseline_run, tmp_path / "z3", name="best.pt")
    assert worst <= 1e-5, worst


@pytest.mark.multiprocess
def test_moe_dp_and_expert_parallel_runs_equal_the_single_device_moe_run(small_prepared,
                                                                          tmp_path):
    """`recpar train` with an MoE model (4 experts, top-2), dp2 with --ep 2: each rank holds 2
    experts, tokens cross by all-to-all, the load-balancing loss is the global batch's. It
    ends with the single-device run's weights (gathered on rank 0), to the dense test's 1e-5;
    the records carry the router's load, and each rank's engine state holds its own experts
    only. dp2 without ep (every rank holds every expert): tests/parallel/
    test_moe_data_parallel.py, and this test's bounds at stop 29."""
    _need_ranks()
    moe = ["--model-override", "num_moe_experts=4"]
    runs = {"base": ["--scheme", "baseline"], "ep": ["--scheme", "dp", "--dp", "2", "--ep", "2"]}
    for name, scheme in runs.items():
        r = _run(["train", *scheme, "--data", str(small_prepared), "--out",
                  str(tmp_path / name), *COMMON, *moe])
        assert r.returncode == 0, (name, r.stderr[-3000:])
    b, e = (record.read(tmp_path / name / "record.json") for name in runs)
    assert [x["run_id"] for x in (b, e)] == ["baseline-moe4top2-tiny-n1",
                                             "dp2ep2-ring-moe4top2-tiny-n1"]
    assert e["plan"]["ep"] == 2 and "ep" not in b["plan"]
    # the first step's expert FLOPs, summed over the ranks: k = 2 experts per token, not 4
    for x in (b, e):
        assert x["moe"]["experts_per_token_measured"] == pytest.approx(2.0, rel=1e-6)
    worst = _max_weight_diff(tmp_path / "base", tmp_path / "ep")
    assert worst <= 1e-5, worst
    # rank 0 routed its half of every batch: fewer assignments than one device, 2 per token
    for rb, rd in zip(b["moe"]["layers"], e["moe"]["layers"]):
        total_b, total_d = sum(rb["tokens_per_expert"]), sum(rd["tokens_per_expert"])
        assert 0 < total_d < total_b and total_b % 2 == total_d % 2 == 0
        assert rd["forwards_count"] == rb["forwards_count"] == b["metrics"]["steps_count"]
    # all-to-all traffic: some assignments cross, at most all of them (out and back, fp32
    # rows of d = 64); the uniform-routing formula's figure sits beside it
    for layer in e["moe"]["layers"]:
        assignments = sum(layer["tokens_per_expert"]) / layer["forwards_count"]
        assert 0 < layer["all_to_all_bytes_per_forward"] <= 2 * assignments * 64 * 4
        assert layer["all_to_all_bytes_per_forward_uniform_formula"] == assignments * 64 * 4
        assert layer["all_to_all_ms_per_forward"] > 0
    assert "all_to_all_bytes_per_forward" not in b["moe"]["layers"][0]
    for rank, experts in ((0, {"0", "1"}), (1, {"2", "3"})):
        (path,) = (tmp_path / "ep" / "checkpoints").glob(f"epoch-*/engine-rank{rank}.pt")
        state = torch.load(path, weights_only=False)
        held = {k.split(".experts.")[1].split(".")[0] for k in state["state"]["model"]
                if ".experts." in k}
        assert held == experts, (rank, held)
