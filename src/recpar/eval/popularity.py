"""Most-popular baseline: every user gets items ranked by their train-split interaction count.

The non-learned reference a trained model must beat. Used as a score function for
`recpar.eval.protocols.evaluate`; items with equal counts tie and the protocol breaks ties by
item id (lower first).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from recpar.constants import PAD_ITEM


class PopularityScorer:
    """Score function [B, L] histories -> [B, n_items + 1] train counts (pad column -inf)."""

    def __init__(self, counts: torch.Tensor):
        if counts.dim() != 1 or counts.shape[0] < 2:
            raise ValueError(f"PopularityScorer: counts must be [n_items + 1] with n_items >= 1, "
                             f"got shape {tuple(counts.shape)}")
        scores = counts.to(torch.float32).clone()  # [n_items + 1]
        scores[PAD_ITEM] = float("-inf")
        self.scores = scores

    @classmethod
    def from_interactions(cls, train: pd.DataFrame, n_items: int) -> "PopularityScorer":
        """Counts of each item in an interaction frame (column item, ids 1..n_items)."""
        items = train["item"].to_numpy(np.int64)
        if len(items) and (items.min() < 1 or items.max() > n_items):
            raise ValueError(f"PopularityScorer: item ids must lie in 1..{n_items}, "
                             f"found {items.min()}..{items.max()}")
        return cls(torch.from_numpy(np.bincount(items, minlength=n_items + 1)))

    def __call__(self, histories: torch.Tensor) -> torch.Tensor:
        # histories: [B, L] -> [B, n_items + 1], the same row for everybody
        return self.scores.to(histories.device).expand(histories.shape[0], -1)


def popularity_scorer(ds) -> PopularityScorer:
    """Most-popular scorer of a `recpar.data.prepared.PreparedDataset` (train-split counts)."""
    return PopularityScorer.from_interactions(ds.train, int(ds.n_items))
