"""A rank whose peer stops answering ends the run after train.collective_timeout_s, with one
line naming the rank, the collective and its group, and no process left behind.

World size: 2 (dp2, gloo, the real launcher: `recpar train` -> torchrun -> recpar.train.worker).
Rank 1 is frozen with SIGSTOP once rank 0 has logged its first epoch, so rank 0 waits in the
next gradient all-reduce; once rank 0 has given up and exited, rank 1 may run again
(TERM_SENT_S).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from ..comm.mp_launch import skip_unless_ranks
from .rank_procs import alive, rank_pid

TIMEOUT_S = 10
"""collective_timeout_s of the run (short, so that the test is)."""
EXIT_MARGIN_S = 60
"""After the error, torchrun stops the other rank (SIGTERM; SIGKILL after a 30 s grace)."""
TERM_SENT_S = 2.0
"""How long after rank 0 has exited the test lets the stopped rank run again: torchrun notices
the exit within its 0.1 s monitor interval and sends SIGTERM, which stays pending on a stopped
process. Resumed, the rank acts on it at once; left stopped, it would cost torchrun's fixed
30 s grace before SIGKILL (a hung but running peer takes signals: SIGSTOP stands in for it only
until the error is out)."""


@pytest.mark.multiprocess
def test_a_stopped_rank_ends_the_run_with_the_collective_named(small_prepared, tmp_path):
    skip_unless_ranks(2)
    out = tmp_path / "run"
    err_path = tmp_path / "stderr.txt"
    cmd = [sys.executable, "-m", "recpar.cli", "train", "--scheme", "dp", "--dp", "2",
           "--data", str(small_prepared), "--out", str(out), "--model-size", "tiny",
           "--model-override", "max_seq_len=12", "--set", "max_epochs=200",
           "--set", "patience=200", "--set", "global_batch_size=128",
           "--set", f"collective_timeout_s={TIMEOUT_S}", "--no-progress",
           # The error path itself: with restarts (the default), torchrun would replace the
           # stopped rank and resume (tests/train/test_elastic_restart.py).
           "--max-restarts", "0"]
    with err_path.open("w") as err:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                             env=dict(os.environ, OMP_NUM_THREADS="1"))
    stopped = None
    try:
        for line in p.stdout:  # rank 0's epoch lines: training is under way
            if "epoch=" in line:
                break
        stopped = rank_pid(out / "spec.json", 1)
        assert stopped is not None, "rank 1's process not found"
        os.kill(stopped, signal.SIGSTOP)
        t0 = time.monotonic()
        line_s = gone_s = None
        while p.poll() is None and time.monotonic() - t0 < TIMEOUT_S + EXIT_MARGIN_S + 60:
            if line_s is None and "a peer stopped answering" in err_path.read_text():
                line_s = time.monotonic() - t0
            if line_s is not None and gone_s is None and rank_pid(out / "spec.json", 0) is None:
                gone_s = time.monotonic() - t0
            if gone_s is not None and time.monotonic() - t0 > gone_s + TERM_SENT_S \
                    and alive(stopped):
                os.kill(stopped, signal.SIGCONT)
            time.sleep(0.2)
        exit_s = time.monotonic() - t0
        p.stdout.read()
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
        if stopped is not None and alive(stopped):
            os.kill(stopped, signal.SIGKILL)
    stderr = err_path.read_text()
    print(f"time to the error line {line_s} s, to the launcher's exit {exit_s:.1f} s")
    lines = [ln for ln in stderr.splitlines() if "a peer stopped answering" in ln]
    assert p.returncode != 0
    assert len(lines) == 1, stderr[-3000:]
    assert lines[0].startswith("recpar: rank 0 of 2: a peer stopped answering (collective "
                               f"timeout {TIMEOUT_S} s) in "), lines[0]
    assert " on group [0, 1]" in lines[0] or " on the default group [0, 1]" in lines[0], lines[0]
    assert line_s is not None and line_s <= TIMEOUT_S + 10, line_s
    assert exit_s <= TIMEOUT_S + EXIT_MARGIN_S, exit_s
    assert rank_pid(out / "spec.json", 0) is None and rank_pid(out / "spec.json", 1) is None
