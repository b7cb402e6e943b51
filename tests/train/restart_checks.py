"""Shared by the elastic-restart tests (tests/train/test_elastic_restart.py on loopback,
tests/cluster/test_elastic_root.py on the emulated cluster): the run, bounded waits, and the
checks of a recovered run against an uninterrupted one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from recpar.train import record
from recpar.train.restarts import PROGRESS_FILE, Progress

BATCH = 16
STEPS_PER_EPOCH = 39
"""611 training sequences of small_prepared (max_seq_len 12) in global batches of 16."""
RUN = ["--scheme", "dp", "--dp", "2", "--model-size", "tiny", "--model-override",
       "max_seq_len=12", "--set", "max_epochs=4", "--set", "patience=10", "--set",
       f"global_batch_size={BATCH}", "--set", "warmup_steps=2", "--set", "timed_steps=4",
       "--set", "collective_timeout_s=60", "--no-progress", "--timeout-s", "400"]
RUN_TIMEOUT_S = 450
"""Longest a run may take (the launcher's own --timeout-s fires first)."""


def train_cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "recpar.cli", "train", "--data", str(data), "--out", str(out),
            *RUN, *extra]


def run_uninterrupted(data: Path, out: Path) -> Path:
    """The reference: the same run without a fault (loopback); its run directory."""
    r = subprocess.run(train_cmd(data, out), capture_output=True, text=True,
                       timeout=RUN_TIMEOUT_S, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def wait_for(pred, timeout_s: float, what: str, poll_s: float = 0.05):
    """pred()'s first truthy value; fails the test after `timeout_s`."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(poll_s)
    pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")


def settled_progress(out: Path, quiet_s: float = 1.5) -> Progress:
    """progress.txt once it has not changed for `quiet_s` (rank 0 is blocked on its frozen
    peer)."""
    last, since = None, time.monotonic()
    end = since + 60
    while time.monotonic() < end:
        now = Progress.read(out / PROGRESS_FILE)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return last
        time.sleep(0.1)
    pytest.fail("rank 0's progress never settled after its peer was frozen")


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def committed_step(out: Path) -> tuple[int, float]:
    """(steps, commit time) of the complete checkpoint last.pt."""
    return (int(torch.load(out / "last.pt", map_location="cpu", weights_only=False)["step"]),
            (out / "last.pt").stat().st_mtime)


def mid_epoch(out: Path) -> Progress | None:
    """rank 0's progress in the middle of an epoch after the first (so a checkpoint exists and
    the steps since it are neither none nor the whole epoch)."""
    if not (out / "last.pt").exists():
        return None
    p = Progress.read(out / PROGRESS_FILE)
    ok = p is not None and p.step > STEPS_PER_EPOCH and 3 <= p.step % STEPS_PER_EPOCH <= 25
    return p if ok else None


def check_recovered_run(rec: dict, ref_dir: Path, out: Path, stopped_at: int, ckpt: int,
                        ckpt_mtime: float, killed_unix_s: float) -> None:
    """The record's restart metrics, and the final weights against the uninterrupted run."""
    m = rec["metrics"]
    assert m["restarts_count"] == 1, rec["notes"]
    assert 0 < stopped_at - ckpt < STEPS_PER_EPOCH
    assert m["restart_lost_steps_count"] == stopped_at - ckpt, (stopped_at, ckpt, rec["notes"])
    # lost time runs from the checkpoint's commit to the resumed attempt's start, so it covers
    # at least the time up to the kill, and at most the run's remaining life
    assert killed_unix_s - ckpt_mtime - 1.0 <= m["restart_lost_s"] <= time.time() - ckpt_mtime
    assert any(n.startswith("restart 1 ") for n in rec["notes"]), rec["notes"]
    ref = record.read(ref_dir / "record.json")
    assert ref["metrics"]["restarts_count"] == 0 and ref["metrics"]["restart_lost_s"] == 0
    assert [h["train_loss"] for h in rec["history"]] == [h["train_loss"] for h in ref["history"]]
    assert rec["quality"] == ref["quality"]
    a, b = weights(ref_dir / "last.pt"), weights(out / "last.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), \
        max(float((a[k] - b[k]).abs().max()) for k in a)
