"""Rank-process helpers shared by the multi-process tests (gloo on CPU, file-store rendezvous).

Ranks start from Python's multiprocessing forkserver, which imports PRELOAD once per pytest
session; every rank is then a fork of it. Under the `spawn` start method every rank imported
torch, recpar and megatron-core again: 2-5 s of CPU per rank on this 2-core machine, before
its first line of test code. A forked rank runs the same code from the same fresh state: the
server only imports modules (no tensor op has run in it, so no OpenMP pool is forked). Every
rank starts from the server's RNG state; the workers seed torch themselves (recpar's training
loop from the run's seed).
"""

from __future__ import annotations

import multiprocessing

import pytest
import torch

PRELOAD = ["torch", "torch.distributed", "recpar.train.loop", "recpar.train.engines",
           "megatron.core.parallel_state", "megatron.core.tensor_parallel"]
"""What the rank workers import (the training loop and engines, megatron-core for TP). Not
deepspeed: only its own workers import it."""

multiprocessing.set_forkserver_preload(PRELOAD)


def skip_unless_ranks(world_size: int) -> None:
    """Skip (with the reason) when `world_size` gloo ranks cannot run here."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip(f"needs torch.distributed with gloo for {world_size} ranks")


def start_ranks(fn, args: tuple, nprocs: int) -> None:
    """fn(rank, *args) on `nprocs` processes forked from the preloaded forkserver; joined, a
    rank's exception re-raised here (torch.multiprocessing.start_processes)."""
    import torch.multiprocessing as mp

    mp.start_processes(fn, args=args, nprocs=nprocs, join=True, start_method="forkserver")


def spawn_ranks(fn, world_size: int, out_dir) -> list[dict]:
    """Run fn(rank, world_size, out_dir) on world_size rank processes; load rank<k>.pt."""
    start_ranks(fn, (world_size, str(out_dir)), world_size)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(world_size)]
