import itertools
import math
import random

import pytest
import torch

from recpar.model.config import ModelConfig
from recpar.model.recommender import Recommender
from recpar.parallel.partition import (Profile, balanced_boundaries, cut, imbalance,
                                       profile_units, uniform_boundaries, unit_names)
from recpar.parallel.plan import PlanError


def test_unit_names():
    assert unit_names(2) == ["embedding", "block.0", "block.1", "head"]


@pytest.mark.parametrize("n_blocks, pp, expected", [
    (4, 2, [(0, 3), (3, 6)]),
    (4, 4, [(0, 2), (2, 3), (3, 4), (4, 6)]),
    (4, 3, [(0, 2), (2, 4), (4, 6)]),  # the extra block goes to the middle stage
    (5, 2, [(0, 4), (4, 7)]),  # no middle stage: the extra goes to the first (not the head's)
    (7, 3, [(0, 3), (3, 6), (6, 9)]),  # 1 extra: the middle stage
    (8, 3, [(0, 4), (4, 7), (7, 10)]),  # 2 extras: middle, then first
    (1, 1, [(0, 3)]),
])
def test_uniform_equal_block_counts(n_blocks, pp, expected):
    bounds = uniform_boundaries(n_blocks + 2, pp)
    assert bounds == expected
    assert bounds[0][0] == 0 and bounds[-1][1] == n_blocks + 2
    blocks = [b - a - (s == 0) - (s == pp - 1) for s, (a, b) in enumerate(bounds)]
    assert max(blocks) - min(blocks) <= 1 and sum(blocks) == n_blocks


def test_uniform_needs_a_block_per_stage():
    with pytest.raises(PlanError, match=r"pp = 3 > 2 blocks; use partition_method='balanced'"):
        cut(None, 3, "uniform", n_units=4)
    # balanced may give the embedding or the head a stage of its own
    assert cut([1, 1, 1, 1], 3, "balanced").num_stages == 3


@pytest.mark.parametrize("method", ["uniform", "balanced"])
def test_more_stages_than_units_is_an_error(method):
    with pytest.raises(PlanError, match=r"pp = 5 stages but the model has only 4 layer units "
                                        r"\(embedding, 2 blocks, head\)"):
        cut([1.0, 2.0, 2.0, 1.0], 5, method)


def test_balanced_hand_made_costs():
    # A heavy item-softmax head: uniform puts it with two blocks, balanced gives it a stage.
    costs = [1.0, 2.0, 2.0, 2.0, 2.0, 9.0]
    uni = cut(costs, 2, "uniform")
    bal = cut(costs, 2, "balanced")
    assert uni.boundaries == ((0, 3), (3, 6)) and uni.stage_costs == (5.0, 13.0)
    assert bal.boundaries == ((0, 5), (5, 6)) and bal.stage_costs == (9.0, 9.0)
    assert bal.imbalance == 1.0
    assert uni.imbalance == pytest.approx(13.0 / 9.0)
    # heavy embedding and head at both ends
    assert cut([10, 1, 1, 1, 1, 10], 3, "balanced").boundaries == ((0, 1), (1, 5), (5, 6))
    assert max(cut([10, 1, 1, 1, 1, 10], 2, "balanced").stage_costs) == 12


def _brute_force_minmax(costs, k):
    n = len(costs)
    best = math.inf
    for cuts in itertools.combinations(range(1, n), k - 1):
        edges = (0, *cuts, n)
        best = min(best, max(math.fsum(costs[a:b]) for a, b in zip(edges, edges[1:])))
    return best


def test_balanced_is_the_exact_optimum():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(3, 9)
        k = rng.randint(1, n)
        costs = [rng.choice([0.0, rng.uniform(0, 10), float(rng.randint(0, 5))])
                 for _ in range(n)]
        bounds = balanced_boundaries(costs, k)
        assert len(bounds) == k and bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a < b for a, b in bounds)
        assert all(b == a2 for (_, b), (a2, _) in zip(bounds, bounds[1:]))
        got = max(math.fsum(costs[a:b]) for a, b in bounds)
        assert got == _brute_force_minmax(costs, k), (costs, k, bounds)


def test_balanced_never_worse_than_uniform():
    rng = random.Random(1)
    for _ in range(50):
        n_blocks = rng.randint(2, 8)
        pp = rng.randint(1, n_blocks)
        costs = [rng.uniform(0.1, 5) for _ in range(n_blocks + 2)]
        assert max(cut(costs, pp, "balanced").stage_costs) <= max(cut(costs, pp, "uniform").stage_costs)


def test_imbalance():
    assert imbalance([2.0, 2.0]) == 1.0
    assert imbalance([3.0, 1.0]) == 1.5
    assert imbalance([0.0, 0.0]) == 1.0


@pytest.mark.parametrize("costs, msg", [
    ([1.0, -1.0, 1.0], "cost of unit 1 is -1.0"),
    ([1.0, float("nan"), 1.0], "cost of unit 1 is nan"),
])
def test_bad_costs(costs, msg):
    with pytest.raises(PlanError, match=msg):
        cut(costs, 2, "balanced")


def test_bad_method_and_missing_costs():
    with pytest.raises(PlanError, match="unknown method 'greedy'"):
        cut([1, 1, 1], 1, "greedy")
    with pytest.raises(PlanError, match="'balanced' needs a cost per unit"):
        cut(None, 2, "balanced", n_units=4)
    with pytest.raises(PlanError, match="pp must be a positive integer"):
        cut([1, 1, 1], 0, "uniform")


# --- profiling -------------------------------------------------------------------------------

N_ITEMS, TEXT_DIM, MB, L = 300, 8, 4, 10


@pytest.fixture(scope="module")
def tiny_profile():
    torch.manual_seed(0)
    cfg = ModelConfig.named("tiny", max_seq_len=L, text_dim=TEXT_DIM)
    model = Recommender(cfg, N_ITEMS, torch.randn(N_ITEMS + 1, TEXT_DIM))
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(1, N_ITEMS + 1, (MB, L), generator=gen)
    ids[0, :4] = 0  # some left padding
    tgt = torch.randint(1, N_ITEMS + 1, (MB, L), generator=gen)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng_before = torch.get_rng_state()
    prof = profile_units(model, (ids, tgt), repeats=3, warmup=1)
    return cfg, model, prof, before, rng_before


def test_profile_has_every_unit_with_measured_times(tiny_profile):
    cfg, _, prof, _, _ = tiny_profile
    assert prof.names() == unit_names(cfg.n_layers)
    assert (prof.microbatch_size, prof.seq_len, prof.repeats) == (MB, L, 3)
    for u in prof.units:
        assert len(u.fwd_bwd_ms_samples) == 3 and all(t > 0 for t in u.fwd_bwd_ms_samples)
        assert min(u.fwd_bwd_ms_samples) <= u.fwd_bwd_ms <= max(u.fwd_bwd_ms_samples)
    assert prof.times_ms() == [u.fwd_bwd_ms for u in prof.units]


def test_profile_memory_matches_the_model(tiny_profile):
    cfg, _, prof, _, _ = tiny_profile
    c = cfg.param_counts(N_ITEMS)
    per_block = c.blocks // cfg.n_layers
    by_name = {u.name: u for u in prof.units}
    assert by_name["embedding"].param_bytes == 4 * (c.item_id_emb + c.text_proj + c.pos_emb)
    assert by_name["block.0"].param_bytes == 4 * per_block
    # the head holds its own copy of the tied table (ID embedding + text projection)
    assert by_name["head"].param_bytes == 4 * (c.item_id_emb + c.text_proj + c.final_ln)
    assert by_name["embedding"].buffer_bytes == by_name["head"].buffer_bytes \
        == 4 * (N_ITEMS + 1) * TEXT_DIM
    assert by_name["block.0"].buffer_bytes == 0
    # cross-entropy keeps the [mb*L, n_items+1] log-probabilities for backward
    assert by_name["head"].activation_bytes >= 4 * MB * L * (N_ITEMS + 1)
    # a block saves at least its input and its MLP hidden [mb, L, d_ff]
    assert by_name["block.0"].activation_bytes >= 4 * MB * L * (cfg.d_model + cfg.d_ff)


def test_profile_leaves_model_and_rng_untouched(tiny_profile):
    _, model, _, before, rng_before = tiny_profile
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_profile_record_round_trip(tiny_profile):
    prof = tiny_profile[2]
    assert Profile.from_record(prof.to_record()) == prof


def test_profile_bad_input():
    torch.manual_seed(0)
    model = Recommender(ModelConfig.named("tiny", max_seq_len=L), N_ITEMS)
    with pytest.raises(ValueError, match=r"two \[mb, L\] tensors"):
        profile_units(model, (torch.ones(4, L, dtype=torch.long), torch.ones(4, L - 1,
                                                                             dtype=torch.long)))
