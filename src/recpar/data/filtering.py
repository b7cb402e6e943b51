"""Duplicate removal and the iterative k-core filter, on integer-coded interactions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def first_occurrences(user: np.ndarray, item: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Row indices to keep so that each (user, item) pair occurs once: its earliest event.

    Ties on the timestamp keep the row that comes first in the input. Returned indices are
    sorted ascending (input order preserved). Shapes: user, item, ts [n] int -> [n_kept] int64.
    """
    n = len(user)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    n_items = int(item.max()) + 1
    key = user.astype(np.int64) * n_items + item.astype(np.int64)
    order = np.lexsort((ts, key))  # by pair, then time; stable, so ties keep input order
    sorted_key = key[order]
    first = np.ones(n, dtype=bool)
    first[1:] = sorted_key[1:] != sorted_key[:-1]
    return np.sort(order[first])


@dataclass
class KCoreResult:
    """Outcome of the k-core filter."""

    keep: np.ndarray  # [n] bool, rows of the k-core
    passes: int  # filtering passes that removed at least one row (0: input already a k-core)
    dropped: int  # rows removed in total


def kcore(user: np.ndarray, item: np.ndarray, k: int) -> KCoreResult:
    """Keep the largest subset in which every user and every item has >= k rows.

    Removing a sparse user can make an item sparse and vice versa, so the filter repeats
    until a pass removes nothing (a fixed point; that subset is unique: the k-core).
    Assumes (user, item) pairs are already distinct.
    """
    if k < 1:
        raise ValueError(f"k_core={k}: must be >= 1")
    n = len(user)
    keep = np.ones(n, dtype=bool)
    if n == 0:
        return KCoreResult(keep, 0, 0)
    n_users, n_items = int(user.max()) + 1, int(item.max()) + 1
    passes = 0
    alive = n
    while True:
        u_count = np.bincount(user[keep], minlength=n_users)
        i_count = np.bincount(item[keep], minlength=n_items)
        keep &= (u_count[user] >= k) & (i_count[item] >= k)
        now = int(keep.sum())
        if now == alive:
            return KCoreResult(keep, passes, n - now)
        passes += 1
        alive = now
