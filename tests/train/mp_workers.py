"""Rank body for tests/train/test_model_parallel.py: an interrupted model-parallel run resumes.

Every rank reads the validated spec the test wrote (`spec.json`, as `recpar train` writes it
for torchrun), joins a gloo group, and calls the training loop twice in the same process:
the first call is killed right after epoch 0 is checkpointed (every rank raises at the same
point, before the next collective, so no rank waits on a dead peer), the second resumes from
the checkpoints and finishes. Each rank writes what it saw to rank<k>.pt.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.distributed as dist


class SimulatedKill(Exception):
    """Stands in for the job being killed between epochs."""


def resume_after_kill(rank: int, world_size: int, out_dir: str) -> None:
    from recpar.train import loop
    from recpar.train.spec import spec_from_dict

    out = Path(out_dir)
    torch.set_num_threads(1)
    spec = spec_from_dict(json.loads((out / "spec.json").read_text()))
    dist.init_process_group("gloo", init_method=f"file://{os.path.join(out_dir, 'store')}",
                            rank=rank, world_size=world_size)
    real_bcast = loop._bcast

    def kill_at_first_stop_check(obj, r, w):
        # `stop = _bcast(stop, ...)` runs after the epoch's checkpoint generation
        # (engine-rank<r>.pt, last.pt, manifest) is committed: what a kill between epochs
        # leaves behind.
        if isinstance(obj, bool):
            raise SimulatedKill("after epoch 0")
        return real_bcast(obj, r, w)

    res: dict = {}
    loop._bcast = kill_at_first_stop_check
    try:
        loop.train(spec, progress=False)
        res["killed"] = False
    except SimulatedKill:
        res["killed"] = True
    finally:
        loop._bcast = real_bcast
    res["record_after_kill"] = (spec.out_dir / "record.json").exists()
    res["engine_files_after_kill"] = sorted(
        p.name for p in spec.out_dir.glob("checkpoints/*/engine-rank*.pt"))
    rec = loop.train(spec, progress=False)  # resumes from last.pt + engine-rank<r>.pt
    res["record"] = rec
    torch.save(res, out / f"rank{rank}.pt")
    dist.destroy_process_group()


def wait_for_slow_rank0(rank: int, world_size: int, out_dir: str) -> None:
    """Default group timeout 1 s; rank 0 'validates' for 3 s, twice: first every rank passes
    `_wait_for_rank0` on a group made as the loop makes it, then on the default group (which
    fails, so it comes last: a failed group is not used again)."""
    import time
    from datetime import timedelta

    from recpar.train.config import TrainConfig
    from recpar.train.loop import _wait_for_rank0

    dist.init_process_group("gloo", init_method=f"file://{os.path.join(out_dir, 'store')}",
                            rank=rank, world_size=world_size, timeout=timedelta(seconds=1))
    cfg = TrainConfig(rank0_phase_timeout_s=60)
    own = dist.new_group(timeout=timedelta(seconds=cfg.rank0_phase_timeout_s))
    outcome = {}
    for name, group in (("own", own), ("default", None)):
        if rank == 0:
            time.sleep(3)
        try:
            _wait_for_rank0(cfg, group)
            outcome[name] = "passed"
        except RuntimeError as e:
            outcome[name] = f"failed: {str(e).splitlines()[0][:200]}"
            break
    with open(os.path.join(out_dir, f"wait{rank}.json"), "w") as f:
        json.dump(outcome, f)
    from recpar.rank_exit import exit_rank

    exit_rank(0)
