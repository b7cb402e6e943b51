"""Time the collectives a library issues on one process group (e.g. megatron-core's tensor-
parallel all-reduces), as the calling rank sees them.

    timer = GroupCollectiveTimer(tp_group, device)
    with timer:                       # patches torch.distributed's collectives while active
        train_step()
    timer.snapshot_and_reset(steps)   # {calls, payload bytes, blocked ms} per iteration

Written here because nothing maintained does it for gloo: torch's per-work completion hooks
(`ProcessGroup._register_on_completion_hook`) exist only for NCCL, and megatron-core's
tensor-parallel layers call `torch.distributed.all_reduce` from inside their autograd
functions without timing it. The timer wraps the module attributes `torch.distributed.<op>`
(megatron looks them up at call time) and counts only calls whose `group` is the timed group,
so data-parallel and pipeline traffic on other groups is not mixed in.

What the time means: wall time the calling thread is blocked in the group's collectives: a
synchronous call's duration, plus for `async_op=True` the launch and the later `wait()` (the
part the work does in the background, overlapped with compute, is not counted): the exposed
communication time. On CUDA a collective returns once it is enqueued, so the time would mean
nothing; there only calls and bytes are counted and `blocked_ms` is None.
"""

from __future__ import annotations

import functools
import inspect
import time

import torch
import torch.distributed as dist

TIMED_OPS = ("all_reduce", "all_gather_into_tensor", "reduce_scatter_tensor", "all_gather")
"""torch.distributed functions that are wrapped."""

_PAYLOAD_ARG = {"all_reduce": "tensor", "all_gather_into_tensor": "input_tensor",
                "reduce_scatter_tensor": "input", "all_gather": "tensor"}
"""The argument whose size is the call's payload (this rank's contribution)."""


class _TimedWork:
    """Wraps an async collective's Work so the time blocked in `wait()` is counted."""

    def __init__(self, work, timer: "GroupCollectiveTimer"):
        self._work, self._timer = work, timer

    def wait(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return self._work.wait(*args, **kwargs)
        finally:
            self._timer.seconds += time.perf_counter() - t0

    def __getattr__(self, name):
        return getattr(self._work, name)


class GroupCollectiveTimer:
    """Counts calls, payload bytes and blocked time of collectives on `group` (a context
    manager; re-entering after exit re-installs the wrappers)."""

    def __init__(self, group, device: torch.device):
        self.group = group
        self.timed = torch.device(device).type == "cpu"
        self._originals: dict = {}
        self.reset()

    def reset(self) -> None:
        self.calls = 0
        self.payload_bytes = 0
        self.seconds = 0.0

    def snapshot_and_reset(self, steps: int) -> dict:
        """Per-iteration averages over `steps` iterations since the last reset."""
        n = max(1, steps)
        out = {"calls_per_iter": self.calls / n,
               "payload_bytes_per_iter": self.payload_bytes / n,
               "blocked_ms_per_iter": self.seconds * 1e3 / n if self.timed else None}
        self.reset()
        return out

    def __enter__(self) -> "GroupCollectiveTimer":
        if self._originals:
            raise RuntimeError("GroupCollectiveTimer is already active")
        for name in TIMED_OPS:
            fn = getattr(dist, name)
            self._originals[name] = fn
            setattr(dist, name, self._wrap(name, fn))
        return self

    def __exit__(self, *exc) -> None:
        for name, fn in self._originals.items():
            setattr(dist, name, fn)
        self._originals = {}

    def _wrap(self, name: str, fn):
        sig = inspect.signature(fn)
        payload_arg = _PAYLOAD_ARG[name]

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            bound = sig.bind(*args, **kwargs)
            if bound.arguments.get("group") is not self.group:
                return fn(*args, **kwargs)
            t = bound.arguments[payload_arg]
            self.calls += 1
            self.payload_bytes += t.numel() * t.element_size()
            t0 = time.perf_counter()
            work = fn(*args, **kwargs)
            self.seconds += time.perf_counter() - t0
            if bound.arguments.get("async_op") and work is not None:
                return _TimedWork(work, self)
            return work

        return wrapper
