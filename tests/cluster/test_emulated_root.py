"""The emulated cluster on the real kernel: namespaces, shaped links, launch, faults, cleanup.

World sizes: 2 nodes x 1 rank (all-reduce), 1 node x 2 processes (loopback), 2 x 1 (faults).
Skipped with the reason when not root or `ip netns` does not work.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from recpar.cluster import emulated, netns
from recpar.cluster.calibrate import measure_pair, package_env
from recpar.cluster.shaping import LinkShape, qdisc_stats

from .conftest import TEST_PREFIX, needs_root
from .udp import udp_delivered

pytestmark = [pytest.mark.root, needs_root]


def _ours():
    ns = [n for n in netns.list_namespaces() if n.startswith(f"{TEST_PREFIX}-")]
    links = [l for l in netns.list_links(None) if l.startswith(f"{TEST_PREFIX}-")]
    return ns, links


def test_up_down_idempotent(cluster):
    st = cluster(2, 1, LinkShape(5e7))
    again = cluster(2, 1, LinkShape(5e7))  # same config: a no-op
    assert again.created_unix_s == st.created_unix_s
    with pytest.raises(netns.ClusterError, match="different configuration"):
        cluster(3, 1, LinkShape(5e7))
    ns, links = _ours()
    assert sorted(ns) == [f"{TEST_PREFIX}-n0", f"{TEST_PREFIX}-n1", f"{TEST_PREFIX}-sw"]
    assert links == []  # nothing of ours in the host namespace, ever
    # Both ends of each veth carry the shaping tree.
    for i in range(2):
        assert "htb" in qdisc_stats(st.names.node_ns(i), st.names.node_dev(i))["kinds"]
        assert "htb" in qdisc_stats(st.names.switch_ns, st.names.switch_dev(i))["kinds"]
    status = emulated.status(TEST_PREFIX, cluster.state_dir)
    assert status["up"] and status["topology"]["nodes"] == 2
    emulated.down(TEST_PREFIX, cluster.state_dir)
    second = emulated.down(TEST_PREFIX, cluster.state_dir)
    assert second["namespaces"] == [] and _ours() == ([], [])
    assert not emulated.status(TEST_PREFIX, cluster.state_dir)["up"]


def test_shaped_link_measurably_slower_than_unshaped(cluster):
    st = cluster(2, 1, LinkShape(2e7))  # 20 Mbit/s
    shaped = measure_pair(st, 0, 1, "bulk", seconds=0.6)["rate_bit_per_s"]
    from recpar.cluster.fault import link

    link(st, 0, reset=False, rate_bit_per_s=None, state_dir=cluster.state_dir)  # no-op change
    emulated.down(TEST_PREFIX, cluster.state_dir)
    st = cluster(2, 1, LinkShape())
    unshaped = measure_pair(st, 0, 1, "bulk", seconds=0.6)["rate_bit_per_s"]
    # TCP goodput is ~95 % of the L2 rate; a shaper that does nothing would give Gbit/s here.
    assert 0.8 * 2e7 < shaped < 1.05 * 2e7
    assert unshaped > 5 * shaped


def test_intra_node_traffic_stays_on_loopback(cluster):
    """Two processes in one node namespace talking to the node's own (veth) address: the bytes
    must not cross the shaped veth (the kernel routes local addresses via lo)."""
    st = cluster(1, 2, LinkShape(1e7))  # 10 Mbit/s: 20 MB over the veth would take 16 s
    ns, dev = st.names.node_ns(0), st.names.node_dev(0)
    before = netns.link_counters(ns, dev)
    res = measure_pair(st, 0, 0, "bulk", seconds=0.5)
    after = netns.link_counters(ns, dev)
    assert res["bytes"] > 20e6
    assert after["tx_bytes"] - before["tx_bytes"] < 10_000


def test_two_node_gloo_all_reduce_via_torchrun(cluster, tmp_path):
    """Rendezvous across namespaces (c10d on node 0) and a correct all-reduce sum."""
    from recpar.cluster.launch import launch

    st = cluster(2, 1, LinkShape(1e9))
    out = tmp_path / "ar.json"
    rc = launch(st.topology(), ["-m", "recpar.cluster.allreduce_probe", "--sizes", "256k",
                                "--iters", "2", "--out", str(out)],
                prefix=TEST_PREFIX, state_dir=cluster.state_dir, timeout_s=120,
                log_dir=tmp_path / "logs")
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["world_size"] == 2 and all(r["correct"] for r in res["sizes"])
    assert sorted(r["node_index"] for r in res["ranks"]) == ["0", "1"]
    assert {r["gloo_ifname"] for r in res["ranks"]} == {f"{TEST_PREFIX}-v0", f"{TEST_PREFIX}-v1"}
    assert res["topology"]["kind"] == "emulated"
    assert res["topology"]["inter_node"]["configured"]["rate_bit_per_s"] == 1e9
    # The bytes really crossed the inter-node link.
    assert qdisc_stats(st.names.node_ns(0), st.names.node_dev(0))["sent_bytes"] > 256e3
    assert netns.namespace_pids(st.names.node_ns(0)) == []  # nothing left running


def _launch_cli(tmp_path, *cmd):
    env = package_env()
    return subprocess.Popen([sys.executable, "-m", "recpar.cli", "cluster", "launch",
                             "--prefix", TEST_PREFIX, "--state-dir", str(tmp_path / "state"),
                             "--timeout-s", "120", "--", *cmd], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_for(pred, timeout_s=60.0):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.1)
    return False


def test_cleanup_after_launcher_is_sigkilled(cluster, tmp_path):
    from recpar.cluster.fault import rank_pids

    st = cluster(2, 1, LinkShape(1e8))
    launcher = _launch_cli(tmp_path, "--no-python", "sleep", "300")
    try:
        assert _wait_for(lambda: all(rank_pids(st, i) for i in range(2))), "ranks never started"
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        # The agents get SIGTERM from the kernel (parent death) and stop their workers.
        assert _wait_for(lambda: not any(netns.namespace_pids(st.names.node_ns(i))
                                         for i in range(2)), 30), "processes outlived launcher"
    finally:
        if launcher.poll() is None:
            launcher.kill()
    emulated.down(TEST_PREFIX, cluster.state_dir)
    assert _ours() == ([], [])


def test_kill_rank_fails_the_run_and_stops_the_others(cluster, tmp_path):
    from recpar.cluster.fault import kill_rank, rank_pids

    st = cluster(2, 1, LinkShape(1e8))
    launcher = _launch_cli(tmp_path, "--no-python", "sleep", "300")
    try:
        assert _wait_for(lambda: all(rank_pids(st, i) for i in range(2))), "ranks never started"
        killed = kill_rank(st, 1, 0)
        assert killed
        rc = launcher.wait(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert rc != 0
    assert not any(netns.namespace_pids(st.names.node_ns(i)) for i in range(2))


def test_live_link_change_rate_loss_and_reset(cluster):
    from recpar.cluster.fault import FaultEvent, link, run_schedule

    st = cluster(2, 1, LinkShape(1e8))
    fast = measure_pair(st, 0, 1, "bulk", seconds=0.5)["rate_bit_per_s"]
    assert udp_delivered(st, 0, 1, 200) == 200  # no loss configured: nothing lost
    log = run_schedule(st, [FaultEvent(0.0, "link", {"node": 0, "rate": 1e7, "loss": 0.2})],
                       threading.Event(), cluster.state_dir)
    assert log[0]["ok"], log
    st = emulated.ClusterState.load(TEST_PREFIX, cluster.state_dir)
    assert st.node_shapes[0]["rate_bit_per_s"] == 1e7 and st.node_shapes[1]["rate_bit_per_s"] == 1e8
    # Path loss node 0 -> node 1 is now 20 % (node 1's end is unchanged and loses nothing):
    # of 2000 datagrams ~1600 arrive (binomial sd ~18; the bounds are > 10 sd wide).
    got = udp_delivered(st, 0, 1, 2000)
    assert 1400 < got < 1800, got
    slow = measure_pair(st, 0, 1, "bulk", seconds=0.5)["rate_bit_per_s"]
    assert slow < 0.2 * fast
    link(st, 0, reset=True, state_dir=cluster.state_dir)
    assert udp_delivered(st, 0, 1, 200) == 200
    back = measure_pair(st, 0, 1, "bulk", seconds=0.5)["rate_bit_per_s"]
    assert back > 5 * slow


def test_straggler_stops_and_resumes_node_processes(cluster):
    from recpar.cluster.fault import straggler

    st = cluster(2, 1, LinkShape())
    proc = subprocess.Popen(netns.netns_exec(st.names.node_ns(1), ["sleep", "30"]))
    try:
        seen = []

        def watch():
            for _ in range(60):
                state = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                seen.append(state)
                time.sleep(0.02)

        w = threading.Thread(target=watch)
        w.start()
        cycles = straggler(st, 1, slowdown=4, duration_s=1.0, period_s=0.1)
        w.join()
        assert cycles >= 3
        assert "T" in seen  # stopped part of the time
        after = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        assert after != "T"  # resumed at the end
    finally:
        proc.kill()
        proc.wait()


def test_down_sweeps_by_prefix_when_state_file_is_lost(cluster):
    st = cluster(2, 1, LinkShape(1e8))
    emulated.state_path(TEST_PREFIX, cluster.state_dir).unlink()
    stray = subprocess.Popen(netns.netns_exec(st.names.node_ns(0), ["sleep", "30"]))
    removed = emulated.down(TEST_PREFIX, cluster.state_dir)
    assert stray.wait(timeout=10) == -signal.SIGKILL
    assert len(removed["namespaces"]) == 3 and _ours() == ([], [])


def test_latency_needs_netem_or_is_measured(cluster):
    """With sch_netem, the configured one-way latency shows up in the ping-pong; without it,
    `up` refuses in one line and leaves nothing behind."""
    try:
        st = cluster(2, 1, LinkShape(1e8, latency_s=0.004))
    except netns.ClusterError as e:
        assert "netem" in str(e) and "\n" not in str(e)
        assert _ours() == ([], [])
        return
    res = measure_pair(st, 0, 1, "pingpong", count=20)
    assert res["rtt_median_s"] >= 2 * 0.004


def test_probe_builds_and_removes_its_own_cluster(tmp_path):
    assert emulated.unavailable_reason(state_dir=tmp_path) is None
    left = [n for n in netns.list_namespaces() if n.startswith(f"{emulated.PROBE_PREFIX}-")]
    assert left == [] and list(tmp_path.iterdir()) == []
