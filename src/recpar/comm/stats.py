"""Per-rank accounting of gradient communication: bytes, compression time, communication time.

The training loop calls `snapshot_and_reset(iterations)` once per timing window (or per
iteration) and gets per-iteration averages with units in every key.

What the times mean (DDP overlaps hook communication with the rest of backward):

- `compress_ms_per_iter`: local encode + decode work in the hook (packing signs, top-k
  selection, scatter-add decode, residual update; for torch's hooks the part of the hook that
  runs before it returns, e.g. the fp16 cast or PowerSGD's first matmul).
- `comm_ms_per_iter`: wall time during which at least one of this rank's hook collectives was
  outstanding (union of [launch, completion] intervals, so two overlapping buckets are not
  counted twice). For torch's asynchronous hooks the interval ends when the hook's future
  completes, so it also contains work torch chains onto the collectives (PowerSGD's
  orthogonalisation and the fp16->fp32 copy). On CUDA the end is taken after a device
  synchronisation for recpar's own hooks; torch's async hooks are host-side times.
- Neither is the *exposed* communication time (the part not hidden behind backward): that is
  measured by the training loop as the time from the end of backward compute to gradients
  ready, which only the loop can see.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

SCOPES = ("world", "intra_node", "inter_node")
"""Which process group a collective ran on: the whole data-parallel group, the ranks of one
node, or the ranks with the same local rank across nodes (hierarchical stage 2)."""


@dataclass
class _Totals:
    """Running sums since the last reset (all per this rank)."""

    payload_bytes: int = 0
    """Bytes of the tensors handed to collectives as input."""
    wire_bytes: dict[str, float] = field(default_factory=lambda: {s: 0.0 for s in SCOPES})
    """Standard-formula bytes sent by this rank, by process-group scope."""
    dense_bytes: int = 0
    """Bytes of the uncompressed gradient buckets (the reference size)."""
    compress_s: float = 0.0
    """Seconds of local encode/decode work."""
    comm_intervals: list[tuple[float, float]] = field(default_factory=list)
    """(start, end) perf_counter seconds of each collective (or chained future)."""
    collectives: int = 0
    """Number of collective calls."""
    buckets: int = 0
    """Number of gradient buckets reduced."""


class CommStats:
    """Thread-safe accumulator (hooks may run on DDP's autograd thread, a gloo callback thread
    or recpar's hook worker thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._t = _Totals()

    def add_bucket(self, dense_bytes: int) -> None:
        """One gradient bucket of `dense_bytes` (uncompressed) went through a hook."""
        with self._lock:
            self._t.dense_bytes += int(dense_bytes)
            self._t.buckets += 1

    def add_collective(self, payload_bytes: int, wire_bytes: float, scope: str = "world") -> None:
        """One collective call with this rank's input of `payload_bytes`."""
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}")
        with self._lock:
            self._t.payload_bytes += int(payload_bytes)
            self._t.wire_bytes[scope] += float(wire_bytes)
            self._t.collectives += 1

    def add_compress_time(self, seconds: float) -> None:
        """Local encode/decode work."""
        with self._lock:
            self._t.compress_s += seconds

    def add_comm_interval(self, start_s: float, end_s: float) -> None:
        """A collective was outstanding from start_s to end_s (time.perf_counter seconds)."""
        with self._lock:
            self._t.comm_intervals.append((start_s, max(start_s, end_s)))

    def snapshot_and_reset(self, iterations: int = 1) -> dict[str, float]:
        """Per-iteration averages over `iterations` iterations since the last reset; then reset."""
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations!r}")
        with self._lock:
            t, self._t = self._t, _Totals()
        comm_s = _union_length(t.comm_intervals)
        wire_total = sum(t.wire_bytes.values())
        n = float(iterations)
        return {
            "payload_bytes_per_rank_per_iter": t.payload_bytes / n,
            "wire_bytes_per_rank_per_iter": wire_total / n,
            "wire_bytes_world_per_rank_per_iter": t.wire_bytes["world"] / n,
            "wire_bytes_intra_node_per_rank_per_iter": t.wire_bytes["intra_node"] / n,
            "wire_bytes_inter_node_per_rank_per_iter": t.wire_bytes["inter_node"] / n,
            "dense_bytes_per_rank_per_iter": t.dense_bytes / n,
            "compression_ratio": (t.dense_bytes / t.payload_bytes) if t.payload_bytes else 0.0,
            "compress_ms_per_iter": 1e3 * t.compress_s / n,
            "comm_ms_per_iter": 1e3 * comm_s / n,
            "collectives_per_iter": t.collectives / n,
            "buckets_per_iter": t.buckets / n,
        }


def _union_length(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by a set of [start, end] intervals."""
    total = 0.0
    cur_start = cur_end = None
    for start, end in sorted(intervals):
        if cur_end is None or start > cur_end:
            if cur_end is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_end is not None:
        total += cur_end - cur_start
    return total
