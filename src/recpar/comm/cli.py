"""`recpar bench collectives`: the gradient-collective sweep, launched by torchrun.

    torchrun --standalone --nproc-per-node 4 -m recpar.cli bench collectives \\
        --out-dir results/bench/collectives --min-bytes 4K --max-bytes 64M --factor 4

`python -m recpar.comm.cli bench collectives ...` is the same command without the other groups.
Every rank runs the sweep; rank 0 prints the table and writes collectives.csv/.json.
ranks_per_node (for 'hierarchical'): --ranks-per-node, else $RECPAR_RANKS_PER_NODE, else
torchrun's $LOCAL_WORLD_SIZE (one torchrun agent per node, as the emulated and Slurm
topologies launch it), else the world size (one node).
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `bench` group with its `collectives` command."""
    bench = subparsers.add_parser("bench", help="micro-benchmarks (run under torchrun)")
    sub = bench.add_subparsers(dest="command", metavar="<command>", required=True)
    p = sub.add_parser("collectives", help="sweep message sizes for ring, hierarchical and each compressor",
                       description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", type=Path, required=True, help="writes collectives.csv and collectives.json")
    p.add_argument("--min-bytes", default="4K", help="smallest message (K/M/G = 1024-based), default 4K")
    p.add_argument("--max-bytes", default="64M", help="largest message, default 64M")
    p.add_argument("--factor", type=int, default=4, help="size multiplier between steps, default 4")
    p.add_argument("--cases", default="auto",
                   help="comma list of ring,hierarchical,sign,topk,powersgd,fp16,bf16; 'auto' = all, "
                        "hierarchical only when there are >= 2 nodes")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls per size (powersgd: at least 2)")
    p.add_argument("--iters", type=int, default=10, help="timed calls per size")
    p.add_argument("--ranks-per-node", type=int, default=None, help="see module help for the default")
    p.add_argument("--topk-ratio", type=float, default=0.01, help="top-k fraction k/n, default 0.01")
    p.add_argument("--powersgd-rank", type=int, default=1, help="PowerSGD matrix_approximation_rank")
    p.add_argument("--no-error-feedback", action="store_true", help="disable error feedback")
    p.add_argument("--backend", choices=("auto", "gloo", "nccl"), default="auto",
                   help="auto: nccl when CUDA is available, else gloo")
    p.set_defaults(func=run_collectives)


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"recpar: ${name}={value!r} is not an integer") from None


def _resolve_ranks_per_node(args: argparse.Namespace, world: int) -> int:
    for value in (args.ranks_per_node, _env_int("RECPAR_RANKS_PER_NODE"), _env_int("LOCAL_WORLD_SIZE")):
        if value is not None:
            return value
    return world


def run_collectives(args: argparse.Namespace) -> int:
    """Body of `recpar bench collectives` (runs on every rank)."""
    from recpar.comm import collective_bench as cb
    from recpar.comm.config import GradSyncConfigError

    world, rank = _env_int("WORLD_SIZE"), _env_int("RANK")
    if world is None or rank is None:
        raise SystemExit("recpar: bench collectives must run under torchrun "
                         "(e.g. torchrun --standalone --nproc-per-node 2 -m recpar.cli bench collectives ...); "
                         "$WORLD_SIZE/$RANK are not set")
    if world < 2:
        raise SystemExit(f"recpar: bench collectives needs >= 2 ranks, got WORLD_SIZE={world}")
    try:
        sizes = cb.message_sizes(cb.parse_size(args.min_bytes), cb.parse_size(args.max_bytes), args.factor)
    except ValueError as e:
        raise SystemExit(f"recpar: {e}") from None
    if args.warmup < 0 or args.iters < 1:
        raise SystemExit(f"recpar: --warmup must be >= 0 and --iters >= 1 (got {args.warmup}, {args.iters})")
    rpn = _resolve_ranks_per_node(args, world)
    nodes = world // rpn if rpn > 0 and world % rpn == 0 else 0
    if args.cases == "auto":
        cases = [c for c in cb.CASES if c != "hierarchical" or nodes >= 2]
    else:
        cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    # Validate every case's config before the process group exists: a one-line error, no hang.
    try:
        for case in cases:
            cb.case_config(case, rpn, args.topk_ratio, args.powersgd_rank,
                           not args.no_error_feedback).validate(world)
    except (GradSyncConfigError, ValueError) as e:
        raise SystemExit(f"recpar: bench collectives: {e}") from None

    import torch
    import torch.distributed as dist

    backend = args.backend
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        local_rank = _env_int("LOCAL_RANK") or 0
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    dist.init_process_group(backend)
    try:
        if rank == 0:
            print(f"# recpar bench collectives: world {world}, ranks_per_node {rpn}, backend {backend}, "
                  f"warmup {args.warmup}, iters {args.iters}; busbw = algbw*2(n-1)/n (nccl-tests)")
            print(cb.TABLE_HEADER, flush=True)
        log = (lambda row: print(cb.format_row(row), flush=True)) if rank == 0 else None
        rows = cb.run_collective_bench(cases, sizes, warmup=args.warmup, iters=args.iters, ranks_per_node=rpn,
                                       device=device, topk_ratio=args.topk_ratio,
                                       powersgd_rank=args.powersgd_rank,
                                       error_feedback=not args.no_error_feedback, log=log)
        if rank == 0:
            meta = {"world_size": world, "ranks_per_node": rpn, "nodes": nodes, "backend": backend,
                    "device": device.type, "warmup": args.warmup, "iters": args.iters,
                    "topk_ratio": args.topk_ratio, "powersgd_rank": args.powersgd_rank,
                    "error_feedback": not args.no_error_feedback, "torch": torch.__version__,
                    "python": platform.python_version(), "cpu_count": os.cpu_count(),
                    "time_definition": "slowest rank's mean seconds per call over the timed window",
                    "busbw_definition": "algbw * 2(n-1)/n (nccl-tests doc/PERFORMANCE.md, all-reduce)",
                    "units": {"size_bytes": "bytes", "time_us": "microseconds",
                              "algbw_gb_per_s": "1e9 bytes/s", "busbw_gb_per_s": "1e9 bytes/s"}}
            cb.write_results(rows, args.out_dir / "collectives.csv", args.out_dir / "collectives.json", meta)
            print(f"# wrote {args.out_dir / 'collectives.csv'} and collectives.json", flush=True)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: `python -m recpar.comm.cli bench collectives ...`."""
    parser = argparse.ArgumentParser(prog="recpar")
    register(parser.add_subparsers(dest="group", metavar="<group>", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    from recpar.rank_exit import run_rank

    # A rank ends without interpreter finalization (recpar.rank_exit: gloo threads vs exit).
    run_rank(main)
