"""Elastic restart on the emulated cluster: 2 nodes x 1 rank (dp2, gloo), one torchrun agent per
node namespace with c10d rendezvous on node 0. Node 1's rank is killed with the existing
`recpar cluster fault kill-rank` mid-epoch; both agents restart their ranks, the run resumes
from its last complete checkpoint and ends with the weights of an uninterrupted run.

As on loopback (tests/train/test_elastic_restart.py), the rank is frozen first so that rank 0's
progress stops at a known step. Skipped with the reason when not root. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from recpar.cluster import netns
from recpar.cluster.calibrate import package_env
from recpar.cluster.fault import rank_pids
from recpar.cluster.shaping import LinkShape
from recpar.train import record
from recpar.train.restarts import PROGRESS_FILE, Progress

from ..train.restart_checks import (
    RUN,
    RUN_TIMEOUT_S,
    check_recovered_run,
    committed_step,
    mid_epoch,
    settled_progress,
    wait_for,
)
from .conftest import TEST_PREFIX, needs_root

pytestmark = [pytest.mark.root, needs_root]


def _write_spec(data, out, nodes: int):
    """spec.json as `recpar train --topology emulated` writes it before it launches."""
    from recpar.cli import build_parser
    from recpar.train.cli import _spec
    from recpar.train.spec import spec_to_dict

    args = build_parser().parse_args(["train", "--data", str(data), "--out", str(out), *RUN,
                                      "--topology", "emulated", "--nodes", str(nodes)])
    out.mkdir(parents=True)
    path = out / "spec.json"
    path.write_text(json.dumps(spec_to_dict(_spec(args, "dp"))))
    return path


@pytest.mark.multiprocess
def test_a_rank_killed_on_node_1_is_restarted_across_nodes(cluster, small_prepared, tmp_path,
                                                             request):
    st = cluster(2, 1, LinkShape(1e9))
    reference = request.getfixturevalue("uninterrupted_dp2_run")
    out = tmp_path / "run"
    spec = _write_spec(small_prepared, out, nodes=2)
    state_dir = str(cluster.state_dir)
    log = tmp_path / "launch.log"
    with log.open("w") as f:
        p = subprocess.Popen(
            [sys.executable, "-m", "recpar.cli", "cluster", "launch", "--prefix", TEST_PREFIX,
             "--state-dir", state_dir, "--max-restarts", "2", "--timeout-s", "400",
             "--log-dir", str(tmp_path / "logs"), "--", "-m", "recpar.train.worker", str(spec)],
            stdout=f, stderr=subprocess.STDOUT, env=package_env({"OMP_NUM_THREADS": "1"}))
    try:
        victims = wait_for(lambda: rank_pids(st, 1) or p.poll() is not None, 240,
                           "node 1's rank")
        assert p.poll() is None, log.read_text()[-3000:]
        # freeze node 1's rank the moment rank 0 is a few steps into an epoch
        wait_for(lambda: mid_epoch(out) or p.poll() is not None, 240, "a mid-epoch step")
        assert p.poll() is None, log.read_text()[-3000:]
        for pid in victims:
            os.kill(pid, signal.SIGSTOP)
        stopped = settled_progress(out)
        ckpt, ckpt_mtime = committed_step(out)
        fault = subprocess.run(
            [sys.executable, "-m", "recpar.cli", "cluster", "fault", "kill-rank", "--prefix",
             TEST_PREFIX, "--state-dir", state_dir, "--node", "1"],
            capture_output=True, text=True, timeout=60, env=package_env())
        killed_unix_s, t_kill = time.time(), time.monotonic()
        assert fault.returncode == 0, fault.stderr
        wait_for(lambda: (Progress.read(out / PROGRESS_FILE) or stopped).attempt == 1
                 or p.poll() is not None, 180, "the restarted attempt")
        recovery_s = time.monotonic() - t_kill
        p.wait(timeout=RUN_TIMEOUT_S)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    print(f"time to recovery (kill -> restarted attempt ready to train): {recovery_s:.1f} s")
    assert p.returncode == 0, log.read_text()[-3000:]
    rec = record.read(out / "record.json")
    print(f"record: {rec['metrics']['restart_lost_steps_count']} lost step(s), "
          f"{rec['metrics']['restart_lost_s']:.1f} s lost")
    assert rec["topology"]["kind"] == "emulated" and rec["topology"]["nodes"] == 2
    check_recovered_run(rec, reference, out, stopped.step, ckpt, ckpt_mtime, killed_unix_s)
    assert not any(netns.namespace_pids(st.names.node_ns(i)) for i in range(2))
