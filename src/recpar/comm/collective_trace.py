"""The last collective a rank entered, so that a timeout can say what it was waiting for.

A gloo timeout surfaces as "Timed out waiting 120000ms for recv operation to complete", which
names neither the collective nor its group. `CollectiveTrace` wraps torch.distributed's
collective functions, module attributes that megatron-core, DeepSpeed and recpar all look up at
call time (the technique of recpar.comm.group_timer, which nests inside it), and remembers the
last one called with its group; `describe_failure` turns a communication error into one line.

Written here because torch offers no such record for gloo (the flight recorder is NCCL-only).
Collectives issued from C++ (DDP's built-in reducer) do not pass through these functions; the
line then names the last one that did and says so.
"""

from __future__ import annotations

import functools
import inspect
import re

import torch.distributed as dist

TRACED_OPS = ("all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object",
              "reduce_scatter", "reduce_scatter_tensor", "all_to_all", "all_to_all_single",
              "broadcast", "broadcast_object_list", "reduce", "gather", "scatter", "barrier",
              "monitored_barrier", "send", "recv", "batch_isend_irecv")
"""torch.distributed functions that are traced. Not isend/irecv: torch's P2POp (pipelining's
batched p2p) accepts only those two function objects themselves, so a wrapper would be refused;
their batches pass through batch_isend_irecv, which is traced."""

_FAILURE = re.compile(r"timed out|timeout|connection (closed|reset) by peer|"
                      r"connection refused|broken pipe|monitoredbarrier", re.IGNORECASE)
"""What gloo, TCPStore and monitored_barrier say when a peer stopped answering or died."""


class CollectiveTrace:
    """Installs the wrappers on `install()`; `last` is (op, group) of the last call."""

    def __init__(self) -> None:
        self.last: tuple[str, object] | None = None
        self._originals: dict = {}

    def install(self) -> "CollectiveTrace":
        for op in TRACED_OPS:
            original = getattr(dist, op, None)
            if original is None or op in self._originals:
                continue
            self._originals[op] = original
            setattr(dist, op, self._wrap(op, original))
        return self

    def uninstall(self) -> None:
        for op, original in self._originals.items():
            setattr(dist, op, original)
        self._originals.clear()

    def _wrap(self, op: str, original):
        names = list(inspect.signature(original).parameters)
        at = names.index("group") if "group" in names else None  # group passed by position

        @functools.wraps(original)
        def traced(*args, **kwargs):
            group = kwargs.get("group")
            if group is None and at is not None and len(args) > at:
                group = args[at]
            self.last = (op, group)
            return original(*args, **kwargs)
        return traced

    def last_call(self) -> str:
        """`all_reduce on group [0, 1]`, or a note that nothing passed here yet."""
        if self.last is None:
            return "no collective issued from Python yet"
        op, group = self.last
        try:
            ranks = dist.get_process_group_ranks(group if group is not None
                                                 else dist.group.WORLD)
            where = f"group {ranks}" if group is not None else f"the default group {ranks}"
        except (RuntimeError, ValueError, AttributeError):  # the group is already destroyed
            where = "the default group" if group is None else "a destroyed group"
        return f"{op} on {where}"


def describe_failure(exc: BaseException, trace: CollectiveTrace, rank: int, world: int,
                     timeout_s: float) -> str | None:
    """One line for a communication failure (a peer stopped answering or died); None for any
    other error."""
    text = " ".join(str(exc).split())
    if not _FAILURE.search(text):
        return None
    return (f"recpar: rank {rank} of {world}: a peer stopped answering (collective timeout "
            f"{timeout_s:g} s) in {trace.last_call()}, the last collective this rank entered "
            f"from Python; backend said: {text[:300]}")
