"""The VDE data path (vde2 wirefilters between vde_switches; recpar.cluster.vde).

The settings arithmetic runs everywhere. The rest builds clusters on the real kernel and skips
with the reason when not root / `ip netns` does not work, or when vde2 is not installed. The
clusters ask for the VDE path explicitly, so the tests also run on kernels that have netem.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recpar.cluster import emulated, netns, vde
from recpar.cluster.netns import ClusterError
from recpar.cluster.shaping import LinkShape

from .conftest import TEST_PREFIX, needs_root
from .udp import udp_delivered

VDE_REASON = vde.unavailable_reason()
needs_vde = pytest.mark.skipif(VDE_REASON is not None, reason=VDE_REASON or "")


# ---- settings arithmetic (no root) -------------------------------------------------------

def test_alike_nodes_put_latency_and_loss_on_the_senders_pass():
    s = vde.wire_settings(LinkShape(1e8, latency_s=0.005, loss=0.02))
    assert (s.delay_lr_ms, s.delay_rl_ms) == (5, 0)
    assert (s.loss_lr, s.loss_rl) == (0.02, 0.0)
    assert s.band_bytes_per_s == 12_500_000
    # frames on the wire (rate x delay) + the veth path's 1000-frame queue
    assert s.chanbuf_bytes == 62_500 + vde.QUEUE_BYTES
    assert "delay LR5" in s.commands() and "bandwidth 12500000" in s.commands()


def test_changed_node_makes_paths_from_unchanged_nodes_total_its_values():
    base = LinkShape(None, latency_s=0.002, loss=0.01)
    s = vde.wire_settings(LinkShape(None, latency_s=0.010, loss=0.05), base)
    # node -> partner: its LR alone; partner -> node: partner's LR (2 ms, 1 %) + its RL
    assert s.delay_lr_ms == 10  # the partner's RL adds nothing
    assert 2 + s.delay_rl_ms == 10
    assert 1 - (1 - 0.01) * (1 - s.loss_rl) == pytest.approx(0.05)
    assert s.band_bytes_per_s == 0 and s.chanbuf_bytes == 0  # no rate: nothing to bound
    # A path cannot be made shorter than the partner's own pass (as on the tc path).
    assert vde.wire_settings(LinkShape(latency_s=0.001), base).delay_rl_ms == 0


def test_latency_finer_than_a_millisecond_is_refused_in_one_line():
    with pytest.raises(ClusterError, match="whole milliseconds") as e:
        vde.wire_settings(LinkShape(latency_s=0.0025))
    assert "\n" not in str(e.value)
    assert vde.delay_ms(0.007) == 7


def test_auto_data_path_uses_vde_only_for_latency_without_netem():
    choose = emulated.choose_data_path
    assert choose(LinkShape(1e8), netem=False) == "tc"
    assert choose(LinkShape(1e8, loss=0.01), netem=False) == "tc"  # htb + BPF drop do loss
    assert choose(LinkShape(1e8, latency_s=0.005), netem=False) == "vde"
    assert choose(LinkShape(1e8, latency_s=0.005), netem=True) == "tc"
    assert choose(LinkShape(), netem=True, requested="vde") == "vde"
    with pytest.raises(ClusterError, match="netem"):
        choose(LinkShape(latency_s=0.005), netem=False, requested="tc")


# ---- on the kernel (root + vde2) ----------------------------------------------------------

@pytest.fixture
def vcluster(tmp_path):
    """Factory: vcluster(nodes, shape) -> ClusterState on the VDE path; always torn down."""
    state_dir = tmp_path / "state"
    emulated.down(TEST_PREFIX, state_dir)

    def make(nodes, shape):
        return emulated.up(nodes, 1, shape, TEST_PREFIX, state_dir, data_path="vde")

    make.state_dir = state_dir
    make.run_dir = vde.run_dir(emulated.state_path(TEST_PREFIX, state_dir))
    yield make
    emulated.down(TEST_PREFIX, state_dir)
    assert _leftovers(make.run_dir) == {}


def _vde_pids_for(rdir: Path) -> list[int]:
    """Live (not zombie) processes whose command line names `rdir`."""
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            if str(rdir).encode() in (p / "cmdline").read_bytes():
                state = (p / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state not in ("Z", "X"):
                    found.append(int(p.name))
        except OSError:
            continue
    return found


def _leftovers(rdir: Path) -> dict:
    """Whatever of a cluster with the test prefix still exists (empty: nothing)."""
    out = {"namespaces": [n for n in netns.list_namespaces() if n.startswith(f"{TEST_PREFIX}-")],
           "host_links": [lk for lk in netns.list_links(None) if lk.startswith(f"{TEST_PREFIX}-")],
           "processes": _vde_pids_for(rdir),
           "run_dir": [str(p) for p in rdir.rglob("*")] if rdir.exists() else []}
    if rdir.exists():
        out["run_dir"].append(str(rdir))
    return {k: v for k, v in out.items() if v}


@pytest.mark.root
@needs_root
@needs_vde
def test_up_builds_taps_and_processes_and_down_removes_them(vcluster):
    st = vcluster(2, LinkShape(5e7, latency_s=0.003))
    assert st.data_path == "vde"
    rdir = vcluster.run_dir
    procs = vde.processes(rdir)
    assert sorted(p["role"] for p in procs) == ["n0", "n1", "sw", "wf0", "wf1"]
    assert all(p["running"] for p in procs)
    assert sorted(_vde_pids_for(rdir)) == sorted(p["pid"] for p in procs)
    # Every process runs in the switch namespace, out of reach of node-namespace cleanups.
    assert sorted(netns.namespace_pids(st.names.switch_ns)) == sorted(p["pid"] for p in procs)
    for i in range(2):
        ns = st.names.node_ns(i)
        assert netns.namespace_pids(ns) == []
        detail = netns.run(["ip", "-n", ns, "-d", "link", "show", st.names.node_dev(i)]).stdout
        assert "tun type tap" in detail
        addrs = netns.run(["ip", "-n", ns, "-o", "addr", "show", st.names.node_dev(i)]).stdout
        assert f"{st.names.node_addr(i)}/" in addrs
    assert not [lk for lk in netns.list_links(None) if lk.startswith(f"{TEST_PREFIX}-")]
    assert list((rdir / "sw.ctl").iterdir())  # the sockets live in the run directory
    status = emulated.status(TEST_PREFIX, vcluster.state_dir)
    assert status["data_path"] == "vde"
    assert {p["role"] for p in status["vde"]["processes"]} == {"n0", "n1", "sw", "wf0", "wf1"}
    assert all(isinstance(p["cpu_s"], float) for p in status["vde"]["processes"])
    removed = emulated.down(TEST_PREFIX, vcluster.state_dir)
    assert removed["processes"] >= 5 and removed["vde_run_dir"] == str(rdir)
    assert _leftovers(rdir) == {}
    assert not emulated.status(TEST_PREFIX, vcluster.state_dir)["up"]


@pytest.mark.root
@needs_root
@needs_vde
def test_down_after_up_was_sigkilled_midway(tmp_path):
    """`up` killed while it builds (some VDE daemons started, others not, no state file):
    `down` still removes every process, tap, namespace and socket."""
    from recpar.cluster.calibrate import package_env

    state_dir = tmp_path / "state"
    emulated.down(TEST_PREFIX, state_dir)
    rdir = vde.run_dir(emulated.state_path(TEST_PREFIX, state_dir))
    proc = subprocess.Popen(
        [sys.executable, "-m", "recpar.cli", "cluster", "up", "--nodes", "4",
         "--ranks-per-node", "1", "--inter-latency", "3ms", "--data-path", "vde",
         "--prefix", TEST_PREFIX, "--state-dir", str(state_dir)],
        env=package_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not (rdir / "wf0.pid").exists():  # node 0 is wired, nodes 1-3 are not yet
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "up never started a wirefilter"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not emulated.state_path(TEST_PREFIX, state_dir).exists(), "up finished first"
        assert _vde_pids_for(rdir), "the daemons `up` started should outlive it"
        emulated.down(TEST_PREFIX, state_dir)
        assert _leftovers(rdir) == {}
    finally:
        if proc.poll() is None:
            proc.kill()
        emulated.down(TEST_PREFIX, state_dir)


@pytest.mark.root
@needs_root
@needs_vde
@pytest.mark.parametrize("latency_ms, concurrent_repeats", [(10, 3), (20, 0)])
def test_latency_set_by_up_is_measured_back_by_calibrate(vcluster, latency_ms,
                                                         concurrent_repeats):
    """Within 10 % at the scale model's latencies (tens of ms). The VDE path adds a fixed
    0.1-0.4 ms (wake-up and copying, more on a busy machine: 4 ms came back as 4.40 ms in a CI
    run), so below ~5 ms it misses 10 %; the README states this. The concurrent streams are
    measured at one latency (3 trials) and left out at the other (0)."""
    from recpar.cluster.calibrate import calibrate

    st = vcluster(2, LinkShape(5e7, latency_s=latency_ms / 1e3))
    res = calibrate(st, seconds=1.0, count=100, state_dir=vcluster.state_dir,
                    concurrent_repeats=concurrent_repeats)
    for link in res["links"]:  # one-way = half the median 1-byte TCP round trip
        assert link["latency_s"] == pytest.approx(latency_ms / 1e3, rel=0.10), link
        assert link["emulator_cpu_s"] > 0  # the wirefilters and switches did the carrying
    assert res["data_path"] == "vde" and res["emulator_cpu"]["cpu_s_per_gbyte"] > 0
    stored = emulated.ClusterState.load(TEST_PREFIX, vcluster.state_dir)
    assert stored.topology().calibrated_latency_s == res["latency_s"]
    if not concurrent_repeats:
        assert res["concurrent"] == []
        assert stored.topology(2).calibrated_concurrent_rate_bit_per_s is None
        return
    # both directions at once: two streams of the same bytes, each under the wirefilters'
    # rate; a trial's rate is those bytes over the time until the later one is done, so at
    # most the slower stream's own rate; the median of 3 trials
    (both,) = res["concurrent"]
    assert both["nodes"] == 2 and len(both["trials"]) == 3
    for trial in both["trials"]:
        assert len(trial["rate_bit_per_s_each"]) == 2 and trial["bytes_each"] > 0
        assert 0 < trial["rate_bit_per_s"] <= min(trial["rate_bit_per_s_each"]) * 1.0001
        assert trial["rate_bit_per_s"] == pytest.approx(
            trial["bytes_each"] * 8 / trial["wall_s"])
        assert max(trial["rate_bit_per_s_each"]) <= 5e7
    assert both["rate_bit_per_s"] == sorted(t["rate_bit_per_s"] for t in both["trials"])[1]
    assert stored.topology(2).calibrated_concurrent_rate_bit_per_s == both["rate_bit_per_s"]


@pytest.mark.root
@needs_root
@needs_vde
def test_wirefilter_rate_caps_tcp_goodput(vcluster):
    """The rate is the wirefilters' bandwidth limit, in both directions. Goodput never exceeds
    it; reaching ~95 % of it needs the VDE processes to get a CPU in time: on a busy machine a
    transfer now and then loses a burst of frames and comes in at 65-85 %, so the floor is
    checked on the best of three transfers per direction (a wrong rate, e.g. bits taken for
    bytes, fails either bound by far)."""
    from recpar.cluster.calibrate import measure_pair

    rate_bit_per_s = 2e7
    st = vcluster(2, LinkShape(rate_bit_per_s, latency_s=0.004))
    for src, dst in ((0, 1), (1, 0)):
        got = [measure_pair(st, src, dst, "bulk", seconds=1.0)["rate_bit_per_s"]
               for _ in range(3)]
        assert max(got) < 1.05 * rate_bit_per_s, got
        assert max(got) > 0.85 * rate_bit_per_s, got




@pytest.mark.root
@needs_root
@needs_vde
def test_loss_drops_frames_and_tcp_still_finishes(vcluster):
    from recpar.cluster.calibrate import measure_pair

    st = vcluster(2, LinkShape(None, latency_s=0.002, loss=0.05))
    res = measure_pair(st, 0, 1, "bulk", seconds=0.5)  # TCP retransmits what was lost
    assert res["bytes"] > 1e6 and res["rate_bit_per_s"] > 0
    # 5 % of 2000 datagrams are dropped on the sender's pass: ~1900 arrive (binomial sd ~10;
    # the bounds are 6 sd wide each side, and a path that drops nothing gives 2000).
    got = udp_delivered(st, 0, 1, 2000)
    assert 1840 < got < 1960, got


@pytest.mark.root
@needs_root
@needs_vde
def test_fault_link_changes_latency_through_the_management_socket(vcluster):
    from recpar.cluster.calibrate import measure_pair
    from recpar.cluster.fault import link

    st = vcluster(2, LinkShape(None, latency_s=0.002))
    link(st, 0, latency_s=0.012, state_dir=vcluster.state_dir)
    for src, dst in ((0, 1), (1, 0)):  # both directions of the changed node's paths
        rtt_s = measure_pair(st, src, dst, "pingpong", count=40)["rtt_median_s"]
        assert rtt_s / 2 == pytest.approx(0.012, rel=0.10)
    with pytest.raises(ClusterError, match="whole milliseconds"):
        link(st, 0, latency_s=0.0035, state_dir=vcluster.state_dir)
    assert emulated.ClusterState.load(TEST_PREFIX, vcluster.state_dir).node_shapes[0][
        "latency_s"] == 0.012  # a refused change leaves the recorded link as it is
    link(st, 0, reset=True, state_dir=vcluster.state_dir)
    rtt_s = measure_pair(st, 0, 1, "pingpong", count=40)["rtt_median_s"]
    assert rtt_s / 2 < 0.006  # back to the 2 ms `up` set, far from 12 ms


@pytest.mark.root
@needs_root
def test_latency_without_vde2_or_netem_is_refused_in_one_line(tmp_path, monkeypatch):
    """Where neither the kernel (netem) nor vde2 can add latency, `up` says what to install
    and leaves nothing behind."""
    monkeypatch.setattr(vde, "TOOLS", ("vde_switch-not-installed", "wirefilter-not-installed"))
    monkeypatch.setattr(emulated, "netem_available", lambda ns: False)
    state_dir = tmp_path / "state"
    with pytest.raises(ClusterError, match="apt-get install -y vde2") as e:
        emulated.up(2, 1, LinkShape(latency_s=0.005), TEST_PREFIX, state_dir)
    assert "\n" not in str(e.value)
    assert _leftovers(vde.run_dir(emulated.state_path(TEST_PREFIX, state_dir))) == {}


@pytest.mark.root
@needs_root
@needs_vde
def test_gloo_all_reduce_across_the_wirefilters(vcluster, tmp_path):
    """torchrun agents on a VDE cluster: rendezvous and gloo traffic cross the taps (the
    nodes' only interface besides lo), i.e. the switches and wirefilters."""
    from recpar.cluster.launch import launch

    st = vcluster(2, LinkShape(1e8, latency_s=0.002))
    before = [netns.link_counters(st.names.node_ns(i), st.names.node_dev(i)) for i in range(2)]
    cpu0_s = vde.cpu_seconds(vcluster.run_dir)
    out = tmp_path / "ar.json"
    rc = launch(st.topology(), ["-m", "recpar.cluster.allreduce_probe", "--sizes", "256k",
                                "--iters", "2", "--out", str(out)],
                prefix=TEST_PREFIX, state_dir=vcluster.state_dir, timeout_s=180,
                log_dir=tmp_path / "logs")
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["world_size"] == 2 and all(r["correct"] for r in res["sizes"])
    assert {r["gloo_ifname"] for r in res["ranks"]} == {f"{TEST_PREFIX}-v0", f"{TEST_PREFIX}-v1"}
    for i in range(2):
        after = netns.link_counters(st.names.node_ns(i), st.names.node_dev(i))
        assert after["tx_bytes"] - before[i]["tx_bytes"] > 256e3
    assert vde.cpu_seconds(vcluster.run_dir) > cpu0_s
    # The launcher's cleanup of node namespaces leaves the data path running.
    assert all(p["running"] for p in vde.processes(vcluster.run_dir))
