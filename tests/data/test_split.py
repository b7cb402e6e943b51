"""Chronological split: rounding rule and tie-breaking."""

from __future__ import annotations

import numpy as np
import pytest

from recpar.data.split import chronological_order, split_sizes


def test_paper_table_i_sizes_follow_from_the_rounding_rule():
    assert split_sizes(2_169_567) == (1_735_654, 216_957, 216_956)


@pytest.mark.parametrize("n, expected", [
    (0, (0, 0, 0)), (1, (1, 0, 0)), (4, (3, 0, 1)), (5, (4, 1, 0)), (10, (8, 1, 1)),
    (25, (20, 3, 2)),  # 0.1 * 25 = 2.5 rounds half up (Python's round() would give 2)
    (35, (28, 4, 3)), (99_287, (79_430, 9_929, 9_928)),
])
def test_split_sizes_hand_cases(n, expected):
    assert split_sizes(n) == expected


def test_split_sizes_always_partition_n():
    for n in range(0, 2000):
        tr, va, te = split_sizes(n)
        assert tr + va + te == n and min(tr, va, te) >= 0
        assert abs(tr - 0.8 * n) <= 0.5 and abs(va - 0.1 * n) <= 0.5


def test_order_breaks_ties_by_user_then_item_stably():
    ts = np.array([5, 3, 5, 3, 5, 5])
    user = np.array([1, 2, 0, 2, 1, 1])
    item = np.array([9, 1, 4, 0, 2, 9])
    # ts 3: (2,1) row 1, (2,0) row 3 -> item 0 first: 3, 1
    # ts 5: (0,4) row 2; (1,2) row 4; (1,9) rows 0 and 5 keep input order: 0, 5
    assert chronological_order(ts, user, item).tolist() == [3, 1, 2, 4, 0, 5]
