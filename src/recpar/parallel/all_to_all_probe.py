"""A torchrun worker that times expert parallelism's token exchange alone, without the model.

    recpar cluster launch -- -m recpar.parallel.all_to_all_probe --ep 2 --sizes 315k --out r.json

It runs the training path's own exchange (`expert_parallel.AllToAllDispatch`: the token
counts, the dispatch, the combine) in EP groups carved as `expert_groups` carves them from the
launched world, with identity experts, so there is no compute between the exchanges and every
call starts from a barrier: what it measures is the transfer, with no rank waiting for a slower
one. `recpar.perfmodel.expert_dispatch` sets this against the cost model's all-to-all term and
against the same exchange timed inside training, where the wait for the slowest rank is
included.

Each rank's send buffer is `size` bytes of fp32 rows of `d_model` elements, spread evenly over
the `num_experts` experts (uniform routing); a row comes back to its place unchanged through
identity experts, which is checked exactly. Reported: the slowest rank's mean over the timed
calls (nccl-tests' convention, as `recpar.cluster.allreduce_probe`), of the whole exchange and
of its token-count part.
"""

from __future__ import annotations

import argparse
import json
import os
from types import SimpleNamespace

import torch
import torch.distributed as dist
from torch import nn

from recpar.atomic_write import write_text
from recpar.cluster.allreduce_probe import parse_size
from recpar.parallel.expert_parallel import AllToAllDispatch, expert_groups


def _buffer(nbytes: int, d_model: int, num_experts: int, rank: int
            ) -> tuple[torch.Tensor, list[int]]:
    """fp32 rows [rows, d_model] of about `nbytes`, a whole number per expert; row values name
    (rank, row) exactly (integers below 2^24)."""
    per_expert = max(1, round(nbytes / (4 * d_model * num_experts)))
    rows = per_expert * num_experts
    x = (rank * rows + torch.arange(rows, dtype=torch.float32))[:, None].expand(rows, d_model)
    return x.contiguous(), [per_expert] * num_experts


def _counters() -> SimpleNamespace:
    """What AllToAllDispatch adds its bytes and seconds to (the fields of model.moe.MoEStats
    it writes)."""
    return SimpleNamespace(all_to_all_bytes=0, all_to_all_s=0.0, all_to_all_counts_s=0.0,
                           all_to_all_element_bytes=4)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recpar.parallel.all_to_all_probe")
    p.add_argument("--ep", type=int, required=True, help="ranks per EP group; divides the world")
    p.add_argument("--sizes", default="256k",
                   help="comma-separated send-buffer sizes per rank (bytes, k, m): the rows one "
                        "rank holds before the dispatch, its own share included")
    p.add_argument("--num-experts", type=int, default=4, help="experts over the EP group")
    p.add_argument("--d-model", type=int, default=64, help="elements per token row")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", default=None, help="rank 0 writes the JSON result here")
    a = p.parse_args(argv)
    if a.num_experts % a.ep:
        raise SystemExit(f"--num-experts {a.num_experts} is not a multiple of --ep {a.ep}")
    sizes = [parse_size(s) for s in a.sizes.split(",") if s.strip()]

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    groups = expert_groups(world, a.ep)  # raises naming ep and the world when ep does not divide
    local = a.num_experts // a.ep
    dispatch = AllToAllDispatch(groups, local)
    experts = nn.ModuleDict({str(e): nn.Identity() for e in range(local)})
    rows_out = []
    for nbytes in sizes:
        x, counts = _buffer(nbytes, a.d_model, a.num_experts, rank)
        ok = True
        for it in range(a.warmup + a.iters):
            if it in (0, a.warmup):  # the timed calls are counted from zero
                stats = _counters()
            dist.barrier()
            with torch.no_grad():
                out = dispatch(x, counts, experts, stats)
            ok = ok and torch.equal(out, x)
        mean = torch.tensor([stats.all_to_all_s, stats.all_to_all_counts_s],
                            dtype=torch.float64) / a.iters
        dist.all_reduce(mean, op=dist.ReduceOp.MAX)  # the slowest rank's, each on its own
        flags = torch.tensor([0 if ok else 1])
        dist.all_reduce(flags)
        rows_out.append({"buffer_bytes": x.numel() * 4,
                         "bytes_to_others_per_call": stats.all_to_all_bytes / a.iters,
                         "time_ms": 1e3 * mean[0].item(),
                         "counts_ms": 1e3 * mean[1].item(),
                         "correct": int(flags.item()) == 0})
    dist.destroy_process_group()
    if rank == 0:
        result = {"world_size": world, "ep": a.ep, "num_experts": a.num_experts,
                  "d_model": a.d_model, "iters": a.iters, "warmup": a.warmup,
                  "local_world_size": int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
                  "sizes": rows_out,
                  "topology": json.loads(os.environ.get("RECPAR_TOPOLOGY", "null"))}
        text = json.dumps(result, indent=2)
        if a.out:
            write_text(a.out, text)
        else:
            print(text)
    return 0 if all(r["correct"] for r in rows_out) else 1


if __name__ == "__main__":
    from recpar.rank_exit import run_rank

    # A rank ends without interpreter finalization (recpar.rank_exit: gloo threads vs exit).
    run_rank(main)
