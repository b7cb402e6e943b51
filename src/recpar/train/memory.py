"""Memory a rank holds for training: its model state, counted from the tensors themselves.

`model_state_gib` sums the bytes of this rank's trained parameters, their gradients and its
optimizer's state tensors (AdamW: exp_avg, exp_avg_sq, step). A gradient is counted at its
parameter's size for every parameter that requires one, whether or not it is allocated at the
moment of counting (engines free gradients between steps at different points; during a step
each one exists). Unlike the process's peak RSS
(`recpar.train.timing.peak_rss_gib`), which on CPU is dominated by the Python/torch runtime
(about 0.5 GiB) and briefly includes the full single-device model every rank builds before the
plan is applied, it shows directly what tensor and pipeline parallelism save per rank: a TP
shard holds 1/tp of the sharded weights, a pipeline stage only its layers.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def _tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def model_state_gib(params: Iterable[torch.nn.Parameter],
                    optimizer: torch.optim.Optimizer | None) -> float:
    """Parameters + their gradients + optimizer state of this rank, GiB (each tensor once)."""
    seen: set[int] = set()
    total = 0

    def add(t: torch.Tensor | None) -> None:
        nonlocal total
        if isinstance(t, torch.Tensor) and id(t) not in seen:
            seen.add(id(t))
            total += _tensor_bytes(t)

    for p in params:
        if id(p) in seen:
            continue
        add(p)
        if p.requires_grad:
            total += _tensor_bytes(p)  # its gradient: same shape and dtype
    if optimizer is not None:
        for state in optimizer.state.values():
            for v in state.values():
                add(v)
    return total / 2**30
