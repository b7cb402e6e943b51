"""A torchrun worker that checks and times all-reduce on whatever topology launched it.

    recpar cluster launch -- -m recpar.cluster.allreduce_probe --sizes 1m,64m --out r.json

Every rank contributes a tensor filled with (rank + 1), so the correct sum is W(W+1)/2 in every
element; the result is checked exactly (integers in float32 are exact below 2^24). Timing follows
nccl-tests: warm-up iterations, then `iters` timed back-to-back calls; algbw = bytes / time,
busbw = algbw × 2(n-1)/n (nccl-tests PERFORMANCE.md), reported as the slowest rank's time.

`--algo flat`: one torch.distributed.all_reduce over all ranks (gloo's own algorithm).
`--algo hierarchical`: reduce-scatter inside each node (loopback), then `local` concurrent
all-reduces of one shard each across nodes (ranks with the same local rank), then all-gather
inside each node: the two-level scheme `recpar.perfmodel.collectives.hierarchical_all_reduce`
models. A plain composition of torch.distributed collectives for benchmarking the topology;
the training path's hierarchical hook lives in recpar.comm.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.distributed as dist

from recpar.atomic_write import write_text

_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    """'64m' -> 64 MiB in bytes; '4096' -> 4096."""
    t = text.strip().lower().removesuffix("b")
    unit = t[-1] if t and t[-1] in "kmg" else ""
    try:
        n = int(float(t[: len(t) - len(unit)]) * _SIZE_UNITS[unit])
    except ValueError:
        raise ValueError(f"--sizes: cannot parse size {text!r} (expected e.g. 4k, 1m, 64m)") from None
    if n < 4:
        raise ValueError(f"--sizes: {text!r} is smaller than one float32")
    return n


class _Groups:
    """Process groups of the hierarchical composition (every rank must create every group)."""

    def __init__(self, world: int, local: int):
        if world % local:
            raise ValueError(f"world size {world} is not a multiple of LOCAL_WORLD_SIZE {local}")
        self.nodes, self.local = world // local, local
        rank = dist.get_rank()
        # torchrun gives each agent (node) a contiguous block of ranks.
        self.node, self.local_rank = divmod(rank, local)
        self.intra = self.inter = None
        for n in range(self.nodes):
            g = dist.new_group(list(range(n * local, (n + 1) * local)))
            if n == self.node:
                self.intra = g
        for lr in range(local):
            g = dist.new_group([n * local + lr for n in range(self.nodes)])
            if lr == self.local_rank:
                self.inter = g


PHASES = ("intra_reduce_scatter", "inter_all_reduce", "intra_all_gather")
"""The hierarchical composition's phases, each timed on its own (this rank's wall time)."""


def _hierarchical(t: torch.Tensor, g: _Groups) -> dict[str, float]:
    """Two-level all-reduce of `t` in place; returns each phase's seconds on this rank."""
    chunks = list(t.view(g.local, -1))  # [local][numel/local] views into t
    shard = torch.empty_like(chunks[0])
    took = {}
    t0 = time.perf_counter()
    if g.local > 1:
        dist.reduce_scatter(shard, chunks, group=g.intra)
    else:
        shard.copy_(chunks[0])
    t1 = time.perf_counter()
    if g.nodes > 1:
        dist.all_reduce(shard, group=g.inter)
    t2 = time.perf_counter()
    if g.local > 1:
        dist.all_gather(chunks, shard, group=g.intra)  # writes straight into t's chunks
    else:
        chunks[0].copy_(shard)
    t3 = time.perf_counter()
    took.update(zip(PHASES, (t1 - t0, t2 - t1, t3 - t2)))
    return took


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recpar.cluster.allreduce_probe")
    p.add_argument("--sizes", default="1m", help="comma-separated message sizes (bytes, k, m, g)")
    p.add_argument("--algo", choices=("flat", "hierarchical"), default="flat")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--out", default=None, help="rank 0 writes the JSON result here")
    a = p.parse_args(argv)
    sizes = [parse_size(s) for s in a.sizes.split(",") if s.strip()]

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    groups = _Groups(world, local) if a.algo == "hierarchical" else None
    expect = world * (world + 1) / 2
    rows = []
    for nbytes in sizes:
        numel = max(local, nbytes // 4 // local * local)  # divisible into `local` shards
        t = torch.empty(numel, dtype=torch.float32)
        ok = True
        times = []
        phase_s = {k: 0.0 for k in PHASES}
        for it in range(a.warmup + a.iters):
            t.fill_(rank + 1)
            dist.barrier()
            t0 = time.perf_counter()
            if groups is None:
                dist.all_reduce(t)
            else:
                took = _hierarchical(t, groups)
            dt = time.perf_counter() - t0
            ok = ok and bool(torch.all(t == expect))
            if it >= a.warmup:
                times.append(dt)
                if groups is not None:
                    for k in PHASES:
                        phase_s[k] += took[k] / a.iters
        # The slowest rank's time is the collective's time.
        mean_s = torch.tensor([sum(times) / len(times)], dtype=torch.float64)
        dist.all_reduce(mean_s, op=dist.ReduceOp.MAX)
        flags = torch.tensor([0 if ok else 1])
        dist.all_reduce(flags)
        algbw = numel * 4 / mean_s.item()
        row = {"bytes": numel * 4, "time_ms": mean_s.item() * 1e3,
               "algbw_bytes_per_s": algbw,
               "busbw_bytes_per_s": algbw * 2 * (world - 1) / world,
               "correct": int(flags.item()) == 0}
        if groups is not None:  # each phase's mean, the slowest rank's
            ph = torch.tensor([phase_s[k] for k in PHASES], dtype=torch.float64)
            dist.all_reduce(ph, op=dist.ReduceOp.MAX)
            row["phase_ms"] = {k: v * 1e3 for k, v in zip(PHASES, ph.tolist())}
        rows.append(row)
    info = {"rank": rank, "node_index": os.environ.get("RECPAR_NODE_INDEX"),
            "local_rank": int(os.environ.get("LOCAL_RANK", "0")),
            "gloo_ifname": os.environ.get("GLOO_SOCKET_IFNAME"),
            "netns": os.readlink("/proc/self/ns/net")}  # "net:[<inode>]": which namespace
    everyone = [None] * world
    dist.all_gather_object(everyone, info)
    dist.destroy_process_group()
    if rank == 0:
        result = {"world_size": world, "local_world_size": local, "algo": a.algo,
                  "iters": a.iters, "warmup": a.warmup, "ranks": everyone, "sizes": rows,
                  "topology": json.loads(os.environ.get("RECPAR_TOPOLOGY", "null"))}
        text = json.dumps(result, indent=2)
        if a.out:
            write_text(a.out, text)
        else:
            print(text)
    return 0 if all(r["correct"] for r in rows) else 1


if __name__ == "__main__":
    from recpar.rank_exit import run_rank

    # A rank ends without interpreter finalization (recpar.rank_exit: gloo threads vs exit).
    run_rank(main)
