"""Toy training batches shared by the spawned DeepSpeed workers (zero_workers, dsp_workers)."""

from __future__ import annotations

import torch


def unequal_padding_batches(steps: int, batch: int, seq_len: int, n_items: int,
                            seed: int = 11) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) [steps, batch, seq_len], left-padded with 0; the first half of each
    batch is padded more, so halves (ranks) and micro-batches hold different numbers of valid
    positions: normalising by anything but the global count gives another loss."""
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, n_items + 1, (steps, batch, seq_len + 1), generator=g)
    pad = torch.randint(0, seq_len - 1, (steps, batch), generator=g)
    pad[:, : batch // 2] = (pad[:, : batch // 2] + seq_len // 2).clamp(max=seq_len - 1)
    cols = torch.arange(seq_len + 1)
    seq = seq.masked_fill(cols[None, None, :] < pad[..., None], 0)
    x, y = seq[..., :-1].clone(), seq[..., 1:].clone()
    y = y.masked_fill(x == 0, 0)
    return x, y
