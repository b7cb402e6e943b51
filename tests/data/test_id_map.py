"""Raw id -> dense id remapping."""

from __future__ import annotations

import numpy as np

from recpar.data.id_map import dense_ids, natural_order


def test_numeric_ids_sort_numerically_text_ids_lexically():
    assert natural_order(np.array(["10", "2", "1"], dtype=object)).tolist() == [2, 1, 0]
    assert natural_order(np.array(["b", "a10", "a2"], dtype=object)).tolist() == [1, 2, 0]


def test_dense_ids_use_only_codes_present_and_start_where_asked():
    raw = np.array(["x", "b", "unused", "a"], dtype=object)
    codes = np.array([0, 3, 1, 3, 0])
    new, order = dense_ids(codes, raw, start=1)
    assert order.tolist() == ["a", "b", "x"]
    assert new.tolist() == [3, 1, 2, 1, 3]
    assert [order[n - 1] for n in new] == raw[codes].tolist()
