"""Raw ids -> dense ids (users 0..U-1, items 1..I; item 0 is padding)."""

from __future__ import annotations

import numpy as np


def natural_order(raw_ids: np.ndarray) -> np.ndarray:
    """Permutation sorting raw id strings: numerically if all are decimal digits, else as text.

    Makes the mapping independent of the order in which a source lists its data, and keeps
    numeric ids (MovieLens) in numeric order ("2" before "10").
    """
    ids = [str(x) for x in raw_ids]
    if ids and all(s.isascii() and s.isdigit() for s in ids):
        key = lambda j: (len(ids[j].lstrip("0")), ids[j].lstrip("0"), ids[j])  # noqa: E731
    else:
        key = lambda j: ids[j]  # noqa: E731
    return np.array(sorted(range(len(ids)), key=key), dtype=np.int64)


def dense_ids(codes: np.ndarray, raw_ids: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray]:
    """Remap the codes that occur in `codes` to start, start+1, ... in natural raw-id order.

    codes: [n] int64 indices into raw_ids. Returns (new ids [n] int64, raw ids of the new ids
    in order [n_used] object) so that raw_of_new[new - start] is the raw id of new.
    """
    used = np.unique(codes)
    names = raw_ids[used]
    ordered = used[natural_order(names)]
    lookup = np.full(len(raw_ids), -1, dtype=np.int64)
    lookup[ordered] = np.arange(start, start + len(ordered), dtype=np.int64)
    return lookup[codes], raw_ids[ordered]
