"""Spawn helper shared by the multi-process tests (gloo on CPU, file-store rendezvous)."""

from __future__ import annotations


import pytest
import torch


def skip_unless_ranks(world_size: int) -> None:
    """Skip (with the reason) when `world_size` gloo ranks cannot run here."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip(f"needs torch.distributed with gloo for {world_size} ranks")


def spawn_ranks(fn, world_size: int, out_dir) -> list[dict]:
    """Run fn(rank, world_size, out_dir) on world_size spawned processes; load rank<k>.pt."""
    import torch.multiprocessing as mp

    mp.spawn(fn, args=(world_size, str(out_dir)), nprocs=world_size, join=True)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(world_size)]
