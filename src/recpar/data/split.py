"""Global chronological train/valid/test split.

All interactions are put in one order, by (ts, user, item) with a stable sort; the first
round(0.8 n) rows are train, the next round(0.1 n) valid, the rest test. Rounding is half up
in exact integer arithmetic: round(0.8 n) = (8 n + 5) // 10, round(0.1 n) = (n + 5) // 10
(0.8 n is never exactly x.5; 0.1 n is when n ends in 5, e.g. n = 25 -> valid = 3).
With n = 2,169,567 this gives 1,735,654 / 216,957 / 216,956, the sizes in the paper's Table I.
"""

from __future__ import annotations

import numpy as np

TRAIN_TENTHS = 8  # 80 % train
VALID_TENTHS = 1  # 10 % valid; test is the remainder


def split_sizes(n: int) -> tuple[int, int, int]:
    """(n_train, n_valid, n_test) for n interactions."""
    if n < 0:
        raise ValueError(f"n={n}: must be >= 0")
    n_train = (TRAIN_TENTHS * n + 5) // 10
    n_valid = (VALID_TENTHS * n + 5) // 10
    n_test = n - n_train - n_valid
    assert n_test >= 0, (n, n_train, n_valid)  # holds for every n >= 0
    return n_train, n_valid, n_test


def chronological_order(ts: np.ndarray, user: np.ndarray, item: np.ndarray) -> np.ndarray:
    """[n] int64 permutation sorting rows by (ts, user, item); equal keys keep input order."""
    return np.lexsort((item, user, ts)).astype(np.int64)  # lexsort is stable; last key first
