"""`recpar train --scheme deepspeed`: DeepSpeed pipeline + ZeRO-1 (+ dp) through the real
launcher (torchrun --standalone, gloo on CPU) == the single-device baseline.

World sizes 2 (--pp 2) and 4 (--pp 2 --dp 2). Same data, init and global batch of 64 as the
baseline, 1 epoch = 10 steps, the last a 6-sequence tail (topped up with padding rows).
Tolerance: weights within 1e-5 of the baseline's (measured 2.0e-6 for pp2 and 2.6e-6 for
pp2 x dp2 on a loaded 2-core machine: micro-batches and replicas sum the loss in another
order, and AdamW divides by sqrt(v)).
"""

import pytest

# The same run settings as the dp tests (dropout 0: per-process streams); `baseline_run` is
# tests/train/conftest.py's.
from .test_data_parallel import COMMON, _max_weight_diff, _need_ranks, _run
from ..comm.mp_launch import skip_unless_ranks
from recpar.train import record


def _need_deepspeed():
    pytest.importorskip("deepspeed", reason="the deepspeed scheme needs deepspeed")


def test_tensor_parallel_deepspeed_plan_fails_before_any_rank_starts(small_prepared, tmp_path):
    """The CLI runs `validate_deepspeed_plan` with the model (its other refusals:
    tests/parallel): a TP degree that does not split the MLP is refused before launch."""
    r = _run(["train", "--scheme", "deepspeed", "--tp", "2", "--pp", "2", "--data",
              str(small_prepared), "--out", str(tmp_path / "run"), *COMMON,
              "--model-override", "d_ff=33"])
    assert r.returncode != 0
    assert "d_ff = 33 is not divisible by tp = 2" in r.stderr, r.stderr
    assert not (tmp_path / "run" / "spec.json").exists()


@pytest.mark.multiprocess
@pytest.mark.parametrize("dp, pp, run_id", [(1, 2, "deepspeed-pp2-tiny-n1"),
                                            (2, 2, "deepspeed-dp2pp2-tiny-n1")])
def test_deepspeed_pipeline_equals_single_device(small_prepared, baseline_run, tmp_path,
                                                 dp, pp, run_id):
    _need_deepspeed()
    _need_ranks()
    skip_unless_ranks(dp * pp)
    out = tmp_path / "ds"
    r = _run(["train", "--scheme", "deepspeed", "--dp", str(dp), "--pp", str(pp),
              "--data", str(small_prepared), "--out", str(out), *COMMON])
    assert r.returncode == 0, r.stderr[-3000:]
    rec = record.read(out / "record.json")  # schema-validated
    assert rec["scheme"] == "deepspeed" and rec["run_id"] == run_id
    assert (rec["plan"]["dp"], rec["plan"]["pp"], rec["plan"]["world_size"]) == (dp, pp, dp * pp)
    assert rec["plan"]["num_microbatches"] == 2 * pp  # the CLI's default
    # DeepSpeed's own checkpoint for resume, in the newest checkpoint generation
    assert ((out / "last.pt").resolve().parent / "deepspeed" / "last").is_dir()
    base = record.read(baseline_run / "record.json")
    assert rec["metrics"]["steps_count"] == base["metrics"]["steps_count"] == 10
    worst = _max_weight_diff(baseline_run, out)
    assert worst <= 1e-5, worst
    assert abs(rec["history"][0]["train_loss"] - base["history"][0]["train_loss"]) <= 1e-5
    assert abs(base["quality"]["test"]["full"]["ndcg_at_10"]
               - rec["quality"]["test"]["full"]["ndcg_at_10"]) <= 1e-3
