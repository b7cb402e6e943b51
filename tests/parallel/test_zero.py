"""ZeRO-1/2/3 through DeepSpeed on 2 gloo ranks (WORLD_SIZE = 2) against single-process AdamW.

One spawn (zero_workers.zero_worker) runs every case; the tests assert on what each rank
recorded. Same model, same global batch of 8 sequences per step (4 per rank, unequal padding),
5 steps, AdamW with weight decay groups and active gradient clipping. Cases: stages 1, 2, 3
(every parameter partitioned), stage 2 with 2 accumulation micro-batches, and stage 1 whose last
global batch is a 3-sequence tail held by rank 0 alone (rank 1 has 0 rows).

Tolerance: losses and final parameters within atol 1e-5 (fp32; measured differences were
<= 5e-7 for the losses and <= 1.1e-6 for the parameters: the ranks sum gradients in a different
order than the single process, and AdamW divides by sqrt(v)).
"""

import pytest
import torch

from ..comm.mp_launch import skip_unless_ranks, spawn_ranks
from .zero_workers import (CASES, RESUME_STAGES, STEPS, TAIL_CASES, TRAIN_CFG, WORLD_SIZE,
                           make_batches, make_model, zero_worker)
from recpar.parallel.plan import ParallelPlan, PlanError
from recpar.parallel.zero import (DS_REDUCE_BUCKET_SIZE, deepspeed_config,
                                  gradient_accumulation_steps)

ATOL = 1e-5
pytestmark = pytest.mark.multiprocess


def _skip_unless_deepspeed() -> None:
    pytest.importorskip("deepspeed", reason="the zero scheme needs deepspeed")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    _skip_unless_deepspeed()
    skip_unless_ranks(WORLD_SIZE)
    return spawn_ranks(zero_worker, WORLD_SIZE, tmp_path_factory.mktemp("zero"))


def _reference(ranks, label: str) -> dict:
    # Tail cases: the last step's global batch has 3 sequences, all on rank 0 (rank 1 gets
    # none and is topped up with padding rows by zero_step).
    return ranks[0]["reference_tail" if label in TAIL_CASES else "reference"]


def test_tail_reference_differs(ranks):
    """The tail step changes the result, so the tail cases test something."""
    a, b = ranks[0]["reference"]["losses"][-1], ranks[0]["reference_tail"]["losses"][-1]
    assert abs(a - b) > 1e-3


def test_batch_halves_have_unequal_token_counts():
    """The data make a per-rank mean differ from the global mean (else the test proves less)."""
    x, y = make_batches()
    valid = (x != 0) & (y != 0)
    half = x.shape[1] // 2
    assert (valid[:, :half].sum((1, 2)) != valid[:, half:].sum((1, 2))).all()


def test_reference_clips(ranks):
    """Clipping is active in the reference, so the engines' clipping is exercised too."""
    assert max(ranks[0]["reference"]["grad_norms"]) > TRAIN_CFG.clip_grad


@pytest.mark.parametrize("label", list(CASES))
def test_zero_losses_equal_single_process(ranks, label):
    ref = _reference(ranks, label)["losses"]
    assert len(ref) == STEPS
    for res in ranks:
        torch.testing.assert_close(torch.tensor(res[label]["losses"]), torch.tensor(ref),
                                   rtol=0, atol=ATOL)


@pytest.mark.parametrize("label", list(CASES))
def test_zero_final_parameters_equal_single_process(ranks, label):
    ref = _reference(ranks, label)["state"]
    for res in ranks:
        state = res[label]["state"]  # gathered (GatheredParameters under ZeRO-3)
        assert set(state) == set(ref)
        for name, value in ref.items():
            torch.testing.assert_close(state[name], value, rtol=0, atol=ATOL, msg=name)


def test_reference_parameters_moved(ranks):
    """5 AdamW steps moved the parameters far beyond ATOL, so the equality above is not trivial."""
    ref, init = ranks[0]["reference"]["state"], make_model().state_dict()
    assert max(float((ref[k] - init[k]).abs().max()) for k in ref) > 100 * ATOL


@pytest.mark.parametrize("label", list(CASES))
def test_engine_is_the_configured_zero(ranks, label):
    stage, micro, _ = CASES[label]
    for res in ranks:
        rec = res[label]
        assert rec["stage"] == stage
        assert rec["gas"] == TRAIN_CFG.global_batch_size // (micro * WORLD_SIZE)
        assert rec["basic_optimizer_class"] == "AdamW"  # torch's, as in the baseline
        total = rec["model_numel"]
        # fp32 master weights and AdamW moments: each rank holds about 1/dp of them
        # (DeepSpeed pads partitions to alignment, hence <= half + small padding).
        for key in ("local_master_numel", "local_exp_avg_numel"):
            assert total / WORLD_SIZE <= rec[key] <= total / WORLD_SIZE + 64, key
        if stage == 3:
            assert rec["local_param_numel"] <= total / WORLD_SIZE + 64  # parameters partitioned
        else:
            assert rec["local_param_numel"] == total  # stages 1/2 keep whole parameters


def test_deepspeed_config_mirrors_train_config():
    plan = ParallelPlan(scheme="zero", dp=2)
    cfg = deepspeed_config(TRAIN_CFG, plan, 2, micro_batch_per_rank=2)
    opt = cfg["optimizer"]["params"]
    assert cfg["optimizer"]["type"] == "AdamW" and opt["torch_adam"] is True
    assert (opt["lr"], tuple(opt["betas"]), opt["weight_decay"]) == \
        (TRAIN_CFG.lr, TRAIN_CFG.betas, TRAIN_CFG.weight_decay)
    assert cfg["gradient_clipping"] == TRAIN_CFG.clip_grad
    assert cfg["zero_optimization"] == {"stage": 2}
    assert not cfg["fp16"]["enabled"] and not cfg["bf16"]["enabled"]
    assert cfg["train_batch_size"] == TRAIN_CFG.global_batch_size == \
        cfg["train_micro_batch_size_per_gpu"] * cfg["gradient_accumulation_steps"] * plan.dp


def test_zero_gradient_bucket_is_capped_at_the_model_size():
    """A bucket of DeepSpeed's default 5e8 elements is NaN-filled under deterministic
    algorithms (zero.reduce_bucket_size); a model's own size holds every gradient."""
    plan = ParallelPlan(scheme="zero", dp=2)
    small = deepspeed_config(TRAIN_CFG, plan, 3, micro_batch_per_rank=2, n_params=1234)
    assert small["zero_optimization"]["reduce_bucket_size"] == 1234
    big = deepspeed_config(TRAIN_CFG, plan, 1, micro_batch_per_rank=2, n_params=10**10)
    assert big["zero_optimization"]["reduce_bucket_size"] == DS_REDUCE_BUCKET_SIZE == 5 * 10**8


@pytest.mark.parametrize("stage", [0, 4, True, "2"])
def test_bad_stage_is_one_line_error(stage):
    with pytest.raises(PlanError, match="zero stage must be one of"):
        deepspeed_config(TRAIN_CFG, ParallelPlan(scheme="zero", dp=2), stage, 4)


def test_indivisible_batch_is_error():
    with pytest.raises(PlanError, match="global_batch_size = 8 is not divisible by "
                                        "micro_batch_per_rank × dp = 3 × 2 = 6"):
        gradient_accumulation_steps(TRAIN_CFG, ParallelPlan(scheme="zero", dp=2), 3)


def test_tensor_parallel_plan_refused():
    with pytest.raises(PlanError, match="pure data parallelism"):
        deepspeed_config(TRAIN_CFG, ParallelPlan(scheme="zero", dp=1, tp=2), 1, 8)


def test_zero_overrides_cannot_change_stage():
    with pytest.raises(PlanError, match="contradicts stage"):
        deepspeed_config(TRAIN_CFG, ParallelPlan(scheme="zero", dp=2), 3, 4,
                         zero_overrides={"stage": 1})


@pytest.mark.parametrize("stage", RESUME_STAGES)
def test_zero_engine_resume_equals_uninterrupted(ranks, stage):
    """ZeroEngine.save/load (the loop's resume path): the resumed engine continues exactly."""
    r = ranks[0][f"resume_zero{stage}"]
    assert r["losses_a"] == r["losses_b"]
    for k, v in r["state_a"].items():
        assert torch.equal(v, r["state_b"][k]), k
    # The loaded weights were the trained ones, not a fresh init.
    fresh = make_model().state_dict()
    assert not all(torch.equal(fresh[k], r["loaded"][k]) for k in fresh)
    assert r["wrong_fingerprint"] is not None and "fp-other" in r["wrong_fingerprint"]
    assert ranks[1][f"resume_zero{stage}"]["state_a"] is None  # full weights on rank 0 only
