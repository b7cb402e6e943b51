"""Property-based tests (hypothesis) of ParallelPlan's validation: every plan whose degrees
multiply to the world size passes, every other one fails with the numbers in the message, and
the record form round-trips."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recpar.parallel.plan import ParallelPlan, PlanError

EXAMPLES = 300
"""Examples per property (the closing note of the reliability issue counts them)."""

degree = st.integers(min_value=1, max_value=16)
multi_rank_scheme = st.sampled_from(["dp", "zero", "mp", "hybrid", "deepspeed"])


@st.composite
def plans(draw) -> ParallelPlan:
    dp, tp, pp = draw(degree), draw(degree), draw(degree)
    return ParallelPlan(scheme=draw(multi_rank_scheme), dp=dp, tp=tp, pp=pp,
                        num_microbatches=pp * draw(st.integers(1, 4)),
                        pipeline_schedule=draw(st.sampled_from(["1f1b", "gpipe",
                                                                "interleaved-1f1b"])),
                        partition_method=draw(st.sampled_from(["uniform", "balanced"])))


@settings(max_examples=EXAMPLES, deadline=None)
@given(plans())
def test_a_plan_whose_degrees_multiply_to_the_world_size_is_valid(plan):
    assert plan.validate(world_size=plan.dp * plan.tp * plan.pp) is plan


@settings(max_examples=EXAMPLES, deadline=None)
@given(plans(), st.integers(min_value=1, max_value=4096))
def test_any_other_world_size_fails_naming_the_numbers(plan, world):
    if world == plan.world_size:
        world += 1
    with pytest.raises(PlanError) as e:
        plan.validate(world_size=world)
    assert (f"dp×tp×pp = {plan.dp}×{plan.tp}×{plan.pp} = {plan.world_size} does not equal "
            f"the world size {world}") in str(e.value)


@settings(max_examples=EXAMPLES, deadline=None)
@given(plans(), st.sampled_from(["dp", "tp", "pp", "num_microbatches"]),
       st.integers(min_value=-8, max_value=0))
def test_a_degree_below_one_fails_naming_it(plan, name, bad):
    from dataclasses import replace

    with pytest.raises(PlanError, match=f"{name} must be a positive integer, got {bad}"):
        replace(plan, **{name: bad}).validate()


@settings(max_examples=EXAMPLES, deadline=None)
@given(plans())
def test_the_record_form_round_trips(plan):
    rec = plan.to_record()
    assert rec["world_size"] == plan.dp * plan.tp * plan.pp
    assert ParallelPlan(**{k: v for k, v in rec.items() if k != "world_size"}) == plan
