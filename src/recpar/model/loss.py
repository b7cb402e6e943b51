"""The training loss's pieces, shared by every parallel form: which positions count, the
masked targets, the summed cross-entropy and the divisor that makes it a mean.

The loss of a global batch is sum(CE over valid positions) / N, N = valid positions of the
whole global batch (clamped to 1: an all-padding batch has loss 0). A data-parallel rank, a
pipeline micro-batch or a DeepSpeed micro-batch sums its own part and divides by the global N,
so the summed gradient equals the single-device one. The vocab-parallel cross-entropy of a
tensor-parallel head is `recpar.parallel.tensor_parallel.vocab_parallel_cross_entropy_sum`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from recpar.constants import IGNORE_INDEX, PAD_ITEM


def valid_positions(input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[B, L] bool: positions that count in the loss (a real target after a real input: a
    target after pure padding has no history to be predicted from). Data-parallel ranks count
    it over the whole global batch to normalise their local loss sums by the global count,
    which makes the averaged gradient equal the single-device one."""
    return (targets != PAD_ITEM) & (input_ids != PAD_ITEM)


def mask_targets(input_ids: torch.Tensor,
                 targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets [B, L] with IGNORE_INDEX at the positions that do not count, their number of
    valid positions as an int64 scalar). Shapes are static: no host sync."""
    if targets.shape != input_ids.shape:
        raise ValueError(f"Recommender: targets {tuple(targets.shape)} and input_ids "
                         f"{tuple(input_ids.shape)} differ in shape")
    valid = valid_positions(input_ids, targets)  # [B, L]
    return targets.masked_fill(~valid, IGNORE_INDEX), valid.sum()


def mean_divisor(valid_count: torch.Tensor) -> torch.Tensor:
    """N: the valid-position count clamped to 1, as float32 (what a loss sum is divided by)."""
    return valid_count.clamp(min=1).to(torch.float32)


def cross_entropy_sum(logits: torch.Tensor, masked_targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over the positions whose target is not IGNORE_INDEX.

    logits [..., L, V] against the whole item vocabulary (the pad column is -inf, so it takes
    no probability mass); masked_targets [..., L].
    """
    return F.cross_entropy(logits.flatten(0, -2), masked_targets.flatten(),
                           ignore_index=IGNORE_INDEX, reduction="sum")
