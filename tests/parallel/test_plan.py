import pytest

from recpar.parallel.plan import ParallelPlan, PlanError


def test_degrees_multiply_to_world_size():
    plan = ParallelPlan(scheme="hybrid", dp=2, tp=2, pp=2, num_microbatches=4)
    assert plan.world_size == 8
    assert plan.validate(world_size=8, n_heads=4, n_layers=4) is plan


def test_world_size_mismatch_names_the_numbers():
    with pytest.raises(PlanError, match=r"2×2×1 = 4 does not equal the world size 8"):
        ParallelPlan(scheme="hybrid", dp=2, tp=2).validate(world_size=8)


@pytest.mark.parametrize("kwargs, msg", [
    (dict(scheme="mp", tp=3), "n_heads = 4 is not divisible by tp = 3"),
    (dict(scheme="mp", pp=8, num_microbatches=8),
     "pp = 8 pipeline stages but the model has only n_layers [+] 2 = 6 layer units"),
    (dict(scheme="mp", pp=2, num_microbatches=1), "num_microbatches = 1 < pp = 2"),
    (dict(scheme="baseline", dp=2), "single-device"),
    (dict(scheme="nope"), "unknown scheme 'nope'"),
    (dict(scheme="dp", dp=0), "dp must be a positive integer"),
    (dict(scheme="mp", pipeline_schedule="zigzag"), "unknown pipeline_schedule"),
    (dict(scheme="dp", dp=4, ep=3), "ep = 3 does not divide dp = 4"),
    (dict(scheme="mp", tp=2, ep=2), "ep = 2: expert parallelism runs under scheme dp, or "
                                    r"hybrid with pp = 1 \(dp x tp\), not mp with pp = 1"),
    (dict(scheme="hybrid", dp=2, pp=2, num_microbatches=2, ep=2),
     "not hybrid with pp = 2"),
    (dict(scheme="dp", dp=4, ep=0), "ep must be a positive integer"),
    (dict(scheme="dp", dp=4, ep=4), "ep = 4 needs an MoE model whose num_moe_experts it "
                                    "divides; num_moe_experts = 6"),
])
def test_invalid_plans(kwargs, msg):
    with pytest.raises(PlanError, match=msg):
        ParallelPlan(**kwargs).validate(n_heads=4, n_layers=4, num_experts=6)


def test_expert_parallel_degree_is_carved_from_dp_and_recorded_only_when_used():
    plan = ParallelPlan(scheme="dp", dp=4, ep=2)
    assert plan.world_size == 4 and plan.validate(world_size=4, num_experts=4) is plan
    assert plan.to_record()["ep"] == 2
    assert "ep" not in ParallelPlan(scheme="dp", dp=4).to_record()
    with pytest.raises(PlanError, match="num_moe_experts = 0"):
        plan.validate(num_experts=0)  # a dense model has no experts to share out


def test_stages_may_cut_over_embedding_and_head_units():
    # 4 blocks + embedding + head = 6 units: pp up to 6 is a valid cut
    plan = ParallelPlan(scheme="mp", pp=6, num_microbatches=6)
    assert plan.validate(n_heads=4, n_layers=4) is plan


def test_record_has_world_size():
    rec = ParallelPlan(scheme="dp", dp=4).to_record()
    assert rec["world_size"] == 4 and rec["dp"] == 4 and rec["scheme"] == "dp"
