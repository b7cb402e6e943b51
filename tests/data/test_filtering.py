"""Duplicate removal and the k-core fixed point on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest

from recpar.data.filtering import first_occurrences, kcore


def test_duplicates_keep_the_earliest_and_first_on_ties():
    user = np.array([0, 0, 1, 0, 1, 0])
    item = np.array([5, 5, 2, 7, 2, 5])
    ts = np.array([30, 10, 4, 1, 4, 10])
    # (0,5): ts 30, 10, 10 -> row 1 (earliest, first of the tie); (1,2): tie -> row 2; (0,7) row 3
    assert first_occurrences(user, item, ts).tolist() == [1, 2, 3]


def test_no_duplicates_keeps_everything_in_order():
    user, item = np.array([2, 1, 0]), np.array([0, 1, 2])
    assert first_occurrences(user, item, np.zeros(3, int)).tolist() == [0, 1, 2]
    assert first_occurrences(user[:0], item[:0], item[:0]).tolist() == []


def _core_case():
    """2-core hand case needing three passes.

    Users 0,1,2 x items 0,1 form a 2-core. Chain: user 3 has items 0 and 2; item 2 also has
    user 4; user 4 has only item 2 -> pass 1 drops user 4's row (user 4 has 1 < 2), making
    item 2 have 1 row -> pass 2 drops (3,2), making user 3 have 1 row -> pass 3 drops (3,0).
    """
    pairs = [(u, i) for u in range(3) for i in range(2)] + [(3, 0), (3, 2), (4, 2)]
    user = np.array([p[0] for p in pairs])
    item = np.array([p[1] for p in pairs])
    return user, item


def test_kcore_reaches_the_fixed_point():
    user, item = _core_case()
    res = kcore(user, item, 2)
    assert res.keep.tolist() == [True] * 6 + [False] * 3
    assert res.passes == 3
    assert res.dropped == 3
    again = kcore(user[res.keep], item[res.keep], 2)
    assert again.passes == 0 and again.keep.all()  # idempotent: it is a 2-core


def test_kcore_result_has_every_degree_at_least_k_on_random_data():
    rng = np.random.default_rng(3)
    user = rng.integers(0, 300, 4000)
    item = (rng.zipf(1.6, 4000) - 1) % 500
    keep = first_occurrences(user, item, np.zeros(4000, int))
    user, item = user[keep], item[keep]
    res = kcore(user, item, 5)
    u, i = user[res.keep], item[res.keep]
    assert len(u) > 0
    assert np.bincount(u)[np.unique(u)].min() >= 5
    assert np.bincount(i)[np.unique(i)].min() >= 5
    # maximality: the dropped rows cannot be part of any 5-core containing the kept rows
    assert kcore(u, i, 5).passes == 0


def test_kcore_can_empty_everything_and_rejects_bad_k():
    res = kcore(np.array([0, 1]), np.array([0, 0]), 3)
    assert not res.keep.any() and res.dropped == 2
    with pytest.raises(ValueError, match="k_core=0"):
        kcore(np.array([0]), np.array([0]), 0)
