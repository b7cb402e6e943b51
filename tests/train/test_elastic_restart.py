"""A rank that dies mid-epoch is restarted by torchrun, the run resumes from its last complete
checkpoint and finishes with the weights of an uninterrupted run; the record counts the
restart, the lost steps and the lost time.

World size 2 (dp2, gloo, the real launcher on loopback: `recpar train` -> torchrun ->
recpar.train.worker). In the middle of an epoch after the first (a checkpoint exists), rank 1 is
frozen (SIGSTOP) so that rank 0's progress stops at a known step, then killed (SIGKILL): the
record must charge exactly the steps between that checkpoint and that step. Every wait is
bounded; a hang fails the test within minutes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from recpar.train import record
from recpar.train.restarts import ASYNC_NOTE, PROGRESS_FILE, Progress

from ..comm.mp_launch import skip_unless_ranks
from .rank_procs import alive, rank_pid
from .restart_checks import (
    RUN_TIMEOUT_S,
    STEPS_PER_EPOCH,
    check_recovered_run,
    committed_step,
    mid_epoch,
    settled_progress,
    train_cmd,
    wait_for,
)


@pytest.mark.multiprocess
def test_a_killed_rank_is_restarted_and_the_run_ends_as_if_uninterrupted(small_prepared,
                                                                         tmp_path, request):
    skip_unless_ranks(2)
    uninterrupted = request.getfixturevalue("uninterrupted_dp2_run")
    out = tmp_path / "run"
    log = tmp_path / "train.log"
    with log.open("w") as f:
        p = subprocess.Popen(train_cmd(small_prepared, out), stdout=f, stderr=subprocess.STDOUT,
                             env=dict(os.environ, OMP_NUM_THREADS="1"))
    victim = None
    try:
        victim = wait_for(lambda: rank_pid(out / "spec.json", 1) or p.poll() is not None, 240,
                          "rank 1's process")
        assert p.poll() is None, log.read_text()[-3000:]
        # freeze it the moment rank 0 is a few steps into an epoch (pid looked up beforehand)
        wait_for(lambda: mid_epoch(out) or p.poll() is not None, 240, "a mid-epoch step")
        assert p.poll() is None, log.read_text()[-3000:]
        os.kill(victim, signal.SIGSTOP)
        stopped = settled_progress(out)
        ckpt, ckpt_mtime = committed_step(out)
        os.kill(victim, signal.SIGKILL)
        killed_unix_s, t_kill = time.time(), time.monotonic()
        # recovered: the next attempt is ready to train (its first progress line)
        wait_for(lambda: (Progress.read(out / PROGRESS_FILE) or stopped).attempt == 1
                 or p.poll() is not None, 180, "the restarted attempt")
        recovery_s = time.monotonic() - t_kill
        p.wait(timeout=RUN_TIMEOUT_S)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        if victim is not None and alive(victim):
            os.kill(victim, signal.SIGKILL)
    print(f"time to recovery (kill -> restarted attempt ready to train): {recovery_s:.1f} s")
    assert p.returncode == 0, log.read_text()[-3000:]
    rec = record.read(out / "record.json")
    print(f"record: {rec['metrics']['restart_lost_steps_count']} lost step(s), "
          f"{rec['metrics']['restart_lost_s']:.1f} s lost")
    check_recovered_run(rec, uninterrupted, out, stopped.step, ckpt, ckpt_mtime, killed_unix_s)
    assert rank_pid(out / "spec.json", 0) is None and rank_pid(out / "spec.json", 1) is None


@pytest.mark.multiprocess
def test_an_async_run_recovers_and_its_record_says_what_differs(small_prepared, tmp_path):
    """Scheme async (rank 0 = parameter server, 2 workers): a worker killed after the first
    checkpoint; the run finishes all its epochs and the record says what a restart changes."""
    skip_unless_ranks(3)
    out = tmp_path / "run"
    cmd = [*train_cmd(small_prepared, out), "--scheme", "async", "--dp", "3"]  # later flags win
    log = tmp_path / "train.log"
    with log.open("w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT,
                             env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        wait_for(lambda: (out / "last.pt").exists() or p.poll() is not None, 240, "a checkpoint")
        victim = rank_pid(out / "spec.json", 1)
        assert p.poll() is None and victim is not None, log.read_text()[-3000:]
        os.kill(victim, signal.SIGKILL)
        p.wait(timeout=RUN_TIMEOUT_S)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, log.read_text()[-3000:]
    rec = record.read(out / "record.json")
    m = rec["metrics"]
    assert m["restarts_count"] == 1 and m["restart_lost_s"] > 0
    assert m["epochs_count"] == 4 and m["steps_count"] == 4 * STEPS_PER_EPOCH
    assert rec["notes"][-1] == ASYNC_NOTE
