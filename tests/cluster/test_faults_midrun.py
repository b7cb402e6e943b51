"""Faults injected mid-run through `recpar train --fault-schedule` on the emulated cluster
(issue 15 item 3): a synchronous run slowed by a straggler and then given a lossy link finishes,
and its record shows the straggler's slow window next to the faults as applied; an async run
with a straggling worker keeps going, and the straggler's gradients are the stale ones.

Schedule times count from when training begins (the injector waits for rank 0), so the faults
land mid-training however long the ranks take to start. Needs root; every wait is bounded.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from recpar.cluster import netns
from recpar.cluster.shaping import LinkShape
from recpar.train import record

from .conftest import TEST_PREFIX, needs_root

pytestmark = [pytest.mark.root, pytest.mark.multiprocess, needs_root]

RUN_TIMEOUT_S = 400
COMMON = ["--model-size", "tiny", "--model-override", "max_seq_len=12", "--set",
          "global_batch_size=16", "--set", "warmup_steps=2", "--set", "timed_steps=4",
          "--no-progress", "--max-restarts", "0", "--timeout-s", "360"]
"""small_prepared: 611 training sequences of 12 positions, 39 steps of 16 per epoch."""

STRAGGLER_AT_S, STRAGGLER_S = 2.0, 4.0
SYNC_SCHEDULE = [
    {"at_s": STRAGGLER_AT_S, "action": "straggler",
     "args": {"node": 1, "slowdown": 4, "duration_s": STRAGGLER_S}},
    {"at_s": 8.0, "action": "link", "args": {"node": 1, "loss": "2%"}},
    {"at_s": 11.0, "action": "reset-link", "args": {"node": 1}},
]


def _train(cluster, data, out, schedule, *run):
    sched = out.parent / f"{out.name}-faults.yaml"
    sched.write_text(yaml.safe_dump(schedule))
    cmd = [sys.executable, "-m", "recpar.cli", "train", "--data", str(data), "--out", str(out),
           *COMMON, *run, "--topology", "emulated", "--cluster-prefix", TEST_PREFIX,
           "--cluster-state-dir", str(cluster.state_dir), "--fault-schedule", str(sched)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return record.read(out / "record.json")


def test_sync_run_survives_a_straggler_and_a_lossy_link(cluster, small_prepared, tmp_path):
    # A latency puts the links on the VDE data path (no netem here), which can lose packets.
    st = cluster(2, 1, LinkShape(1e8, latency_s=0.002))
    rec = _train(cluster, small_prepared, tmp_path / "sync", SYNC_SCHEDULE,
                 "--scheme", "dp", "--dp", "2", "--nodes", "2", "--set", "max_epochs=8",
                 "--set", "patience=8", "--set", "eval_every=8")
    faults = rec["faults"]
    assert [e["action"] for e in faults["injected"]] == ["straggler", "link", "reset-link"]
    assert all(e["ok"] for e in faults["injected"]), faults
    for e in faults["injected"]:  # on the training time line, where the schedule put them
        assert e["at_s"] <= e["applied_s"] < e["at_s"] + 1.0, e
    # training went on past the last fault, so every fault hit a running job
    assert rec["timing"]["total_train_s"] > SYNC_SCHEDULE[-1]["at_s"], rec["timing"]
    straggler = faults["injected"][0]
    start, end = straggler["applied_s"], straggler["applied_s"] + STRAGGLER_S
    hits = [w for w in rec["slow_windows"] if w["from_s"] < end and w["to_s"] > start]
    print(f"slow windows: {rec['slow_windows']}; straggler {start:.1f}-{end:.1f} s")
    assert hits, (rec["slow_windows"], start, end)
    assert max(w["slowdown"] for w in hits) > 2.0
    assert rec["metrics"]["slow_steps_count"] > 0
    assert not any(netns.namespace_pids(st.names.node_ns(i)) for i in range(2))


def test_async_run_keeps_going_and_the_straggler_is_the_stale_one(cluster, small_prepared,
                                                                  tmp_path):
    cluster(3, 1, LinkShape(1e9))
    # A 20 ms duty cycle, finer than the default 100 ms (short steps could otherwise finish
    # inside one run slice); the default gave the same staleness here (1.00 vs 0.46). Slowed
    # 8x, not 4x: at 4x a machine busy with other work slows the fast worker too, and it then
    # loses the race to the straggler often enough to come out at 1.00 vs 0.68 (seen once,
    # with a training grid running beside the tests).
    schedule = [{"at_s": 0.5, "action": "straggler",
                 "args": {"node": 2, "slowdown": 8, "duration_s": 300, "period_s": 0.02}}]
    rec = _train(cluster, small_prepared, tmp_path / "async", schedule,
                 "--scheme", "async", "--dp", "3", "--nodes", "3", "--set", "max_epochs=3",
                 "--set", "patience=3")
    assert rec["faults"]["injected"][0]["ok"], rec["faults"]
    m = rec["metrics"]
    assert len(rec["history"]) == 3  # every epoch ran: the run kept going
    print(f"mean staleness: worker 1 {m['mean_staleness_rank1']:.2f}, straggling worker 2 "
          f"{m['mean_staleness_rank2']:.2f}")
    # Equal workers interleave their pushes, so their mean staleness is about equal. The
    # straggler's gradients are computed on weights the fast worker has since updated several
    # times, the fast worker's rarely see one of the straggler's: measured here at 4x on a
    # quiet machine 1.00 vs 0.47 (three runs alike), at 8x beside a training grid 1.00 vs
    # 0.52; 1.5x leaves room for scheduling noise.
    assert m["mean_staleness_rank2"] > 1.5 * m["mean_staleness_rank1"], m
