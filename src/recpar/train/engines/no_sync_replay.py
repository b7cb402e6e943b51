"""Exposed DP communication: fwd+bwd with gradient sync − the same fwd+bwd without it.

After training, a DDP engine replays a few of the first epoch's batches inside DDP's
`no_sync()` (no gradient all-reduce, no optimiser step, gradients dropped), times them, and
subtracts their mean from the timing window's synchronised fwd+bwd. What is left is the DP
communication the backward pass could not hide. Collectives other than DP's (megatron's TP
all-reduces) still run in the replay, so they are not counted as exposed DP time.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterable

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from recpar.device import device_sync

REPLAY_STEPS = 10
"""At most this many batches are replayed (fewer if the window timed fewer steps)."""


def no_sync_fwd_bwd_ms(ddp: DDP | None, fwd_bwd: Callable[[object], None], batches: Iterable,
                       timed_steps: int, zero_grad: Callable[[], None],
                       device: torch.device) -> float:
    """Mean ms of `fwd_bwd(batch)` under `ddp.no_sync()` over the first min(REPLAY_STEPS,
    timed_steps) batches; `zero_grad` drops each replay's gradients (weights are untouched).
    `ddp` None: a single replica, nothing to skip (its fwd+bwd as is)."""
    times = []
    for idx in list(batches)[:min(REPLAY_STEPS, max(1, timed_steps))]:
        device_sync(device)
        t0 = time.perf_counter()
        with ddp.no_sync() if ddp is not None else contextlib.nullcontext():
            fwd_bwd(idx)
        device_sync(device)
        times.append(1e3 * (time.perf_counter() - t0))
        zero_grad()
    return float(np.mean(times))


def exposed_metrics(fwd_bwd_ms: float, no_sync_ms: float) -> dict:
    """Record fields: the replay's fwd+bwd and the exposed DP time (ms per iteration)."""
    return {"fwd_bwd_no_sync_ms_per_iter": no_sync_ms,
            "exposed_comm_ms_per_iter": max(0.0, fwd_bwd_ms - no_sync_ms)}
