"""nccl-tests-style sweep of gradient-synchronisation collectives over message sizes.

For every case (ring, hierarchical, and each compressor) and message size S (bytes of the
dense fp32 gradient bucket), each rank runs the case's DDP hook on a synthetic bucket:
`warmup` untimed calls, barrier, `iters` timed calls, device sync, then a barrier outside the
window. time_us is the slowest rank's mean time per call (all-reduce MAX of window / iters).

Bandwidths follow nccl-tests (https://github.com/NVIDIA/nccl-tests, doc/PERFORMANCE.md):
algbw = S / time, busbw = algbw × 2(n-1)/n for all-reduce. Every case here implements an
all-reduce of S bytes (averaged gradients), so busbw uses the all-reduce factor on the dense
size S for all of them; for compressors it is therefore an *effective* bus bandwidth (how fast
a dense all-reduce would have to be to match), not the bytes that crossed the wire; the
payload and wire bytes actually sent are reported next to it.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist

from recpar.atomic_write import write_text
from recpar.comm.config import GradSyncConfig
from recpar.comm.hooks import SyntheticBucket, make_grad_sync_hook
from recpar.device import device_sync

CASES = ("ring", "hierarchical", "sign", "topk", "powersgd", "fp16", "bf16")
"""Benchmark cases: the dense algorithms, then the compressors (each over the ring setting)."""

GB = 1e9  # nccl-tests reports GB/s with GB = 10^9 bytes


def all_reduce_busbw(algbw: float, world_size: int) -> float:
    """Bus bandwidth of an all-reduce: algbw × 2(n-1)/n.

    Source: nccl-tests doc/PERFORMANCE.md ("AllReduce ... busBw = algBw * 2*(n-1)/n"): the
    factor makes busbw comparable to the link bandwidth whatever the rank count.
    """
    return algbw * 2.0 * (world_size - 1) / world_size


@dataclass
class BenchRow:
    """One (case, message size) measurement; identical on all ranks after the MAX reduction."""

    case: str
    """ring | hierarchical | sign | topk | powersgd | fp16 | bf16."""
    size_bytes: int
    """Dense fp32 message size S per rank (the gradient bucket)."""
    numel: int
    """Elements in the message (S / 4)."""
    time_us: float
    """Mean microseconds per call, slowest rank."""
    algbw_gb_per_s: float
    """S / time in GB/s (10^9 bytes)."""
    busbw_gb_per_s: float
    """algbw × 2(n-1)/n (all-reduce bus bandwidth, nccl-tests definition)."""
    payload_bytes_per_rank: float
    """Bytes this rank handed to the collectives per call (measured from the tensors)."""
    wire_bytes_per_rank: float
    """Bytes per call by the standard-algorithm formula (recpar.comm.byte_formulas)."""
    compress_us: float
    """Local encode/decode microseconds per call (rank 0)."""
    comm_us: float
    """Microseconds per call spent waiting on collectives (rank 0)."""
    world_size: int
    """Ranks in the group."""
    ranks_per_node: int
    """Ranks per node used for 'hierarchical'."""


def message_sizes(min_bytes: int, max_bytes: int, factor: int) -> list[int]:
    """min, min×f, ... up to max (inclusive), multiples of 4 bytes (fp32 elements)."""
    if min_bytes < 4 or max_bytes < min_bytes or factor < 2:
        raise ValueError(f"message sizes: need 4 <= min ({min_bytes}) <= max ({max_bytes}) and factor >= 2 "
                         f"(got {factor})")
    sizes, s = [], min_bytes
    while s <= max_bytes:
        sizes.append(s - s % 4)
        s *= factor
    return sizes


def parse_size(text: str) -> int:
    """'4K' -> 4096, '64M' -> 67108864, '1G', or plain bytes (binary multiples, as nccl-tests)."""
    t = text.strip().upper().removesuffix("B")
    mult = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(t[-1:], 1)
    num = t[:-1] if mult != 1 else t
    try:
        value = int(float(num) * mult)
    except ValueError:
        raise ValueError(f"size {text!r}: expected a number with optional K/M/G suffix") from None
    if value <= 0:
        raise ValueError(f"size {text!r}: must be > 0")
    return value


def matrix_shape(numel: int) -> tuple[int, int]:
    """Near-square (rows, cols) with rows*cols = numel: how PowerSGD sees the message."""
    rows = 2 ** (int(math.log2(numel)) // 2) if numel & (numel - 1) == 0 else 1
    if rows == 1:  # not a power of two: largest divisor <= sqrt
        rows = max(d for d in range(1, int(math.isqrt(numel)) + 1) if numel % d == 0)
    return rows, numel // rows


def case_config(case: str, ranks_per_node: int, topk_ratio: float, powersgd_rank: int,
                error_feedback: bool) -> GradSyncConfig:
    """GradSyncConfig of a case; synchronous hooks (overlap off) so each call is one operation."""
    if case not in CASES:
        raise ValueError(f"bench case {case!r}: choose from {', '.join(CASES)}")
    common = dict(ranks_per_node=ranks_per_node, overlap_grad_reduce=False, topk_ratio=topk_ratio,
                  powersgd_rank=powersgd_rank, error_feedback=error_feedback)
    if case in ("ring", "hierarchical"):
        return GradSyncConfig(algorithm=case, **common)
    return GradSyncConfig(compressor=case, **common)


def run_collective_bench(cases: Sequence[str], sizes: Sequence[int], *, warmup: int, iters: int,
                         ranks_per_node: int, device: torch.device, topk_ratio: float = 0.01,
                         powersgd_rank: int = 1, error_feedback: bool = True,
                         log: Any = None) -> list[BenchRow]:
    """Run the sweep on the initialised default group (collective: all ranks call it)."""
    world = dist.get_world_size()
    rows: list[BenchRow] = []
    for case in cases:
        cfg = case_config(case, ranks_per_node, topk_ratio, powersgd_rank, error_feedback)
        state, hook = make_grad_sync_hook(cfg)
        # PowerSGD runs plain all-reduce for its first start_powerSGD_iter calls: warm past them.
        case_warmup = max(warmup, cfg.powersgd_start_iter) if case == "powersgd" else warmup
        try:
            for size in sizes:
                numel = size // 4
                state.reset_residuals()
                gen = torch.Generator().manual_seed(1000 + dist.get_rank())
                buf = torch.randn(numel, generator=gen).to(device)
                shapes = [matrix_shape(numel)] if case == "powersgd" else None
                bucket = SyntheticBucket(buf, grad_shapes=shapes)
                for _ in range(case_warmup):
                    hook(state, bucket).wait()
                device_sync(device)
                state.stats.snapshot_and_reset()
                dist.barrier()
                t0 = time.perf_counter()
                for _ in range(iters):
                    hook(state, bucket).wait()
                device_sync(device)
                elapsed = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
                dist.barrier()
                dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # gloo and NCCL both take float64
                stats = state.stats.snapshot_and_reset(iters)
                per_call_s = float(elapsed.item()) / iters
                algbw = size / per_call_s / GB
                row = BenchRow(case=case, size_bytes=size, numel=numel, time_us=per_call_s * 1e6,
                               algbw_gb_per_s=algbw, busbw_gb_per_s=all_reduce_busbw(algbw, world),
                               payload_bytes_per_rank=stats["payload_bytes_per_rank_per_iter"],
                               wire_bytes_per_rank=stats["wire_bytes_per_rank_per_iter"],
                               compress_us=stats["compress_ms_per_iter"] * 1e3,
                               comm_us=stats["comm_ms_per_iter"] * 1e3,
                               world_size=world, ranks_per_node=ranks_per_node)
                rows.append(row)
                if log is not None:
                    log(row)
        finally:
            state.close()
    return rows


CSV_COLUMNS = [f for f in BenchRow.__dataclass_fields__]


def write_results(rows: Sequence[BenchRow], csv_path: Path, json_path: Path, meta: dict[str, Any]) -> None:
    """Write CSV and JSON atomically (temp file in the same directory, then rename)."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in asdict(row).items()})
    _atomic_write(csv_path, buf.getvalue())
    _atomic_write(json_path, json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=2) + "\n")


def _atomic_write(path: Path, text: str) -> None:
    write_text(path, text)


def format_row(row: BenchRow) -> str:
    """One nccl-tests-like table line."""
    return (f"{row.case:>12} {row.size_bytes:>12d} {row.time_us:>12.1f} {row.algbw_gb_per_s:>8.3f} "
            f"{row.busbw_gb_per_s:>8.3f} {row.payload_bytes_per_rank:>14.0f} {row.wire_bytes_per_rank:>14.0f}")


TABLE_HEADER = (f"{'case':>12} {'size(B)':>12} {'time(us)':>12} {'algbw':>8} {'busbw':>8} "
                f"{'payload(B)':>14} {'wire(B)':>14}")
