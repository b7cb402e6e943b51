"""Training examples: each user's train-split history cut into next-item windows.

Per user, the train interactions in global chronological order form one sequence s[0..n-1].
It is cut into windows of max_seq_len + 1 items taken from the END (the most recent history is
never dropped), consecutive windows overlapping by one item, so every transition
s[j] -> s[j+1] is a training target exactly once. A window shorter than max_seq_len + 1 (the
user's oldest) is left-padded with 0. inputs = window[:-1], targets = window[1:]; a target
whose input is padding (the user's first item, with nothing before it) is set to padding too,
matching evaluation, which skips interactions without history.

Example, max_seq_len = 3, s = [1, 2, 3, 4, 5, 6, 7, 8]:
    windows [5, 6, 7, 8], [2, 3, 4, 5], [0, 0, 1, 2]
    inputs  [5, 6, 7],    [2, 3, 4],    [0, 0, 1]
    targets [6, 7, 8],    [3, 4, 5],    [0, 0, 2]
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DistributedSampler

from recpar.constants import PAD_ITEM


class TrainSequences(NamedTuple):
    """Windowed next-item examples; unpacks as (inputs, targets)."""

    inputs: torch.Tensor
    """[N, max_seq_len] int64 item ids, left-padded with 0."""
    targets: torch.Tensor
    """[N, max_seq_len] int64 next item at each position, 0 where there is nothing to learn."""


def user_sequences(frame: pd.DataFrame) -> list[np.ndarray]:
    """Item sequences per user in global chronological order (users in ascending id order).

    `frame` needs columns user, item and order (the prepared split files have them).
    """
    missing = [c for c in ("user", "item", "order") if c not in frame.columns]
    if missing:
        raise ValueError(f"user_sequences: interaction frame lacks column(s) {', '.join(missing)}")
    if len(frame) == 0:
        return []
    users = frame["user"].to_numpy(np.int64)
    items = frame["item"].to_numpy(np.int64)
    order = np.lexsort((frame["order"].to_numpy(np.int64), users))  # by user, then time
    users, items = users[order], items[order]
    cuts = np.flatnonzero(np.diff(users)) + 1
    return np.split(items, cuts)


def windows_from_sequences(sequences: Sequence[np.ndarray], max_seq_len: int) -> TrainSequences:
    """Cut item sequences into left-padded windows as described in the module docstring."""
    if max_seq_len < 1:
        raise ValueError(f"windows_from_sequences: max_seq_len={max_seq_len} must be >= 1")
    l = max_seq_len
    w = l + 1
    # Window end positions per sequence: n, n - l, n - 2l, ... while the window holds >= 2
    # items. Built with numpy over all users at once (2 M interactions for Amazon).
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    n_win = np.where(lengths >= 2, (lengths - 2) // l + 1, 0)  # windows per sequence
    total = int(n_win.sum())
    if total == 0:
        empty = torch.zeros((0, l), dtype=torch.int64)
        return TrainSequences(empty, empty.clone())
    flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences])  # [sum n]
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))  # offset of each sequence in flat
    seq_of_win = np.repeat(np.arange(len(sequences)), n_win)  # [total]
    k = np.arange(total) - np.repeat(np.cumsum(n_win) - n_win, n_win)  # window index in seq
    end = lengths[seq_of_win] - k * l  # exclusive end within the sequence
    pos = end[:, None] - w + np.arange(w)[None, :]  # [total, w] positions, may be < 0
    win = np.where(pos >= 0, flat[starts[seq_of_win][:, None] + np.maximum(pos, 0)], PAD_ITEM)
    inputs, targets = win[:, :-1].copy(), win[:, 1:].copy()
    targets[inputs == PAD_ITEM] = PAD_ITEM
    return TrainSequences(torch.from_numpy(inputs), torch.from_numpy(targets))


def build_training_sequences(train: pd.DataFrame, max_seq_len: int) -> TrainSequences:
    """Training windows of the train split (a PreparedDataset's `train` frame)."""
    return windows_from_sequences(user_sequences(train), max_seq_len)


class TrainBatches:
    """Seeded mini-batches of TrainSequences, reshuffled each epoch, sharded by rank.

    The index order is torch's `DistributedSampler` (a torch.Generator seeded with
    seed + epoch, then every world_size-th index from `rank`), so a rank's batch k and the
    single-process batch k of size batch_size * world_size hold the same examples: data
    parallelism sees the same global batches as the baseline. Without drop_last the sampler
    repeats a few indices so every rank gets the same number (DistributedSampler's rule).
    """

    def __init__(self, data: TrainSequences, batch_size: int, *, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = False, rank: int = 0,
                 world_size: int = 1):
        if batch_size < 1:
            raise ValueError(f"TrainBatches: batch_size={batch_size} must be >= 1")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"TrainBatches: rank={rank} must be in [0, world_size={world_size})")
        self.data = data
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        # DistributedSampler takes explicit num_replicas/rank, so no process group is needed.
        self._sampler = DistributedSampler(range(len(data.inputs)), num_replicas=world_size,
                                           rank=rank, shuffle=shuffle, seed=seed,
                                           drop_last=drop_last)

    def shard(self, rank: int, world_size: int) -> "TrainBatches":
        """The same batches as seen by `rank` of `world_size` (batch_size is per rank)."""
        out = TrainBatches(self.data, self.batch_size, seed=self.seed, shuffle=self.shuffle,
                           drop_last=self.drop_last, rank=rank, world_size=world_size)
        out.set_epoch(self.epoch)
        return out

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._sampler.set_epoch(epoch)

    def indices(self) -> torch.Tensor:
        """[n_local] example indices of this rank for the current epoch, in batch order."""
        return torch.tensor(list(iter(self._sampler)), dtype=torch.int64)

    def __len__(self) -> int:
        n = len(self._sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yields (inputs [b, L], targets [b, L]) for the current epoch."""
        idx = self.indices()
        for b in range(len(self)):
            sel = idx[b * self.batch_size:(b + 1) * self.batch_size]
            yield self.data.inputs[sel], self.data.targets[sel]
