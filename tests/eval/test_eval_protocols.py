import math

import numpy as np
import pytest
import torch

from recpar.eval.popularity import PopularityScorer, popularity_scorer
from recpar.eval.protocols import (build_eval_examples, evaluate, evaluate_protocols,
                                   sample_negatives)

# Hand case, 6 items, users 0..3; 6 train rows, 2 valid, 2 test (order = row index here).
HAND_ROWS = [
    (0, 1, 1), (1, 2, 2), (0, 2, 3), (1, 3, 4), (0, 3, 5), (2, 1, 6),  # train
    (0, 4, 7), (3, 5, 8),                                              # valid
    (1, 6, 9), (0, 2, 10),                                             # test
]


@pytest.fixture
def hand(make_prepared):
    return make_prepared(HAND_ROWS, n_users=4, n_items=6, n_train=6, n_valid=2)


def fixed_scorer(vec):
    s = torch.tensor(vec, dtype=torch.float32)
    return lambda hist: s.expand(hist.shape[0], -1)


def test_examples_hand_case(hand):
    test = build_eval_examples(hand, "test", max_seq_len=3)
    assert test.histories.tolist() == [[0, 2, 3], [2, 3, 4]]
    assert test.targets.tolist() == [6, 2]
    assert test.users.tolist() == [1, 0]
    assert test.n_prior.tolist() == [2, 4]
    assert test.n_skipped_no_history == 0
    valid = build_eval_examples(hand, "valid", max_seq_len=3)
    # user 3's only interaction has no history: skipped and counted
    assert valid.histories.tolist() == [[1, 2, 3]]
    assert valid.targets.tolist() == [4]
    assert valid.n_skipped_no_history == 1


def test_full_protocol_masking_and_ties(hand):
    test = build_eval_examples(hand, "test", max_seq_len=3)
    # scores of items 0..6 (0 = pad)
    s = [9.0, 0.2, 0.9, 0.9, 0.1, 0.9, 0.2]
    # ex 1: user 1, seen {2, 3} masked, target 6 (0.2); candidates 1 (0.2, tie, lower id ->
    #       above), 4 (0.1), 5 (0.9 above) -> rank 2. The pad column's 9.0 never counts.
    # ex 2: user 0, seen {1, 2, 3, 4}, target 2 is a repeat and stays a candidate (0.9);
    #       5 ties with a higher id -> not above; 6 lower score -> rank 0.
    r = evaluate(fixed_scorer(s), test, "full", k=1)
    assert r["hr_at_1"] == pytest.approx(0.5)
    assert r["ndcg_at_1"] == pytest.approx(0.5)
    r = evaluate(fixed_scorer(s), test, "full", k=3)
    assert r["hr_at_3"] == pytest.approx(1.0)
    assert r["ndcg_at_3"] == pytest.approx((1 / math.log2(4) + 1.0) / 2)
    assert r["n_examples"] == 2 and r["protocol"] == "full" and r["split"] == "test"
    # constant scores: rank = number of unmasked candidates with a lower id
    # ex 1: {1, 4, 5} -> 3; ex 2: item 1 is masked (seen, outside the last 2 items too) -> 0
    short = build_eval_examples(hand, "test", max_seq_len=2)
    r = evaluate(fixed_scorer([0.0] * 7), short, "full", k=3)
    assert r["hr_at_3"] == pytest.approx(0.5)
    r = evaluate(fixed_scorer([0.0] * 7), short, "full", k=4)
    assert r["ndcg_at_4"] == pytest.approx((1 / math.log2(5) + 1.0) / 2)


def test_popularity_hand_case(hand):
    pop = popularity_scorer(hand)
    # train counts: item 1 x2, 2 x2, 3 x2, 4..6 x0; pad -inf
    assert pop.scores.tolist() == [float("-inf"), 2, 2, 2, 0, 0, 0]
    out = pop(torch.zeros((3, 5), dtype=torch.int64))
    assert out.shape == (3, 7)
    test = build_eval_examples(hand, "test", max_seq_len=3)
    # ex 1: target 6 (0); candidates 1 (2, above), 4, 5 (0, lower ids -> above) -> rank 3
    # ex 2: target 2 (2); candidates 5, 6 (0) -> rank 0
    r = evaluate(pop, test, "full", k=10)
    assert r["hr_at_10"] == pytest.approx(1.0)
    assert r["ndcg_at_10"] == pytest.approx((1 / math.log2(5) + 1.0) / 2)
    with pytest.raises(ValueError, match="item ids must lie in 1..2"):
        PopularityScorer.from_interactions(hand.train, 2)


def _random_dataset(make_prepared, n_items, n_users=6, per_user=12, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        for t, it in enumerate(rng.choice(np.arange(1, n_items + 1), per_user, replace=False)):
            rows.append((u, int(it), int(t * n_users + u)))
    n = len(rows)
    return make_prepared(rows, n_users, n_items, n_train=int(0.5 * n), n_valid=int(0.25 * n))


@pytest.mark.parametrize("n_items", [400, 115])  # 115: most rows need the exact fallback
def test_sampled_negatives(make_prepared, n_items):
    ds = _random_dataset(make_prepared, n_items)
    ex = build_eval_examples(ds, "test", max_seq_len=5)
    neg = sample_negatives(ex, seed=3)
    assert neg.shape == (len(ex), 100) and neg.dtype == torch.int64
    everything = ds.all_interactions()
    for m in range(len(ex)):
        row = neg[m].tolist()
        user_items = set(everything.loc[everything.user == int(ex.users[m]), "item"])
        assert len(set(row)) == 100  # distinct
        assert not set(row) & user_items  # never an item of the user, past or future
        assert min(row) >= 1 and max(row) <= n_items
    assert torch.equal(sample_negatives(ex, seed=3), neg)
    ex_fresh = build_eval_examples(ds, "test", max_seq_len=5)  # no cache: redrawn
    assert torch.equal(sample_negatives(ex_fresh, seed=3), neg)
    assert not torch.equal(sample_negatives(ex_fresh, seed=4), neg)


def test_sampled_negatives_uniform(make_prepared):
    # one user, 40 interactions among 200 items; 160 free items, 30 test examples x 100 draws
    rows = [(0, i, i) for i in range(1, 41)]
    ds = make_prepared(rows, n_users=1, n_items=200, n_train=5, n_valid=5)
    ex = build_eval_examples(ds, "test", max_seq_len=5)
    counts = torch.bincount(sample_negatives(ex, seed=0).flatten(), minlength=201)[41:].double()
    expected = len(ex) * 100 / 160
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    # Pearson's statistic against uniform. Each row draws 100 of the 160 without replacement,
    # which makes the counts LESS variable than multinomial draws, so the multinomial chi2(159)
    # 0.999 quantile (about 225, Wilson-Hilferty) is a conservative bound that still fails for
    # a biased sampler (e.g. preferring low ids: ~ 4800 here).
    assert chi2 < 225, chi2
    assert counts.min() > 0


def test_protocols_scored_once_equal_separate_evaluations(make_prepared):
    ds = _random_dataset(make_prepared, 300)
    ex = build_eval_examples(ds, "test", max_seq_len=5)
    table = torch.rand(301, generator=torch.Generator().manual_seed(2))
    calls = []

    def scorer(hist):
        calls.append(hist.shape[0])
        return table.expand(hist.shape[0], -1)

    both = evaluate_protocols(scorer, ex, ("full", "sampled100"), batch_size=64, seed=3)
    assert sum(calls) == len(ex)  # every history scored once for both protocols
    for proto in ("full", "sampled100"):
        assert both[proto] == evaluate(scorer, ex, proto, batch_size=64, seed=3)
    with pytest.raises(ValueError, match="sampled50"):
        evaluate_protocols(scorer, ex, ("full", "sampled50"))


def test_sampled_protocol_batch_invariant(make_prepared):
    ds = _random_dataset(make_prepared, 300)
    ex = build_eval_examples(ds, "test", max_seq_len=5)
    g = torch.Generator().manual_seed(0)
    table = torch.rand(301, generator=g)
    scorer = fixed_scorer(table.tolist())
    results = [evaluate(scorer, ex, "sampled100", batch_size=b, seed=1) for b in (1, 7, 256)]
    assert results[0] == results[1] == results[2]
    # hand recomputation of one example's rank from the negatives
    neg = sample_negatives(ex, seed=1)
    ranks = [int((table[neg[m]] > table[ex.targets[m]]).sum()) for m in range(len(ex))]
    assert results[0]["hr_at_10"] == pytest.approx(np.mean([r < 10 for r in ranks]))


def test_bad_input(hand, make_prepared):
    test = build_eval_examples(hand, "test", max_seq_len=3)
    with pytest.raises(ValueError, match="unknown protocol 'sampled50'"):
        evaluate(fixed_scorer([0.0] * 7), test, "sampled50")
    with pytest.raises(ValueError, match=r"returned shape \(2, 6\)"):
        evaluate(fixed_scorer([0.0] * 6), test, "full")
    with pytest.raises(ValueError, match="NaN"):
        evaluate(fixed_scorer([float("nan")] * 7), test, "full")
    with pytest.raises(ValueError, match="split 'train'"):
        build_eval_examples(hand, "train", 3)
    # 6 items: nobody has 100 never-seen items
    with pytest.raises(ValueError, match="fewer than the 100 negatives"):
        evaluate(fixed_scorer([0.0] * 7), test, "sampled100")
    lonely = make_prepared([(0, 1, 0), (1, 2, 1)], n_users=2, n_items=2, n_train=1, n_valid=0)
    empty = build_eval_examples(lonely, "test", 3)
    assert empty.n_skipped_no_history == 1
    with pytest.raises(ValueError, match="no example with history"):
        evaluate(fixed_scorer([0.0] * 3), empty, "full")
