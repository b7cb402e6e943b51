"""Measure each emulated link: TCP goodput (bulk transfer) and latency (ping-pong).

For every node i, node i sends to node (i+1) mod N, so each node's uplink (sender side) and each
node's downlink (receiver side) is crossed once. Rates are goodput of one TCP stream, i.e. what
gloo can get: about 95 % of the configured L2 rate at MTU 1500 (TCP/IP/Ethernet headers).
Latency is half the median round trip of 1-byte TCP ping-pongs (includes the software path).

The cluster-level summary keeps the slowest link's rate and the largest latency: the bottleneck
a ring collective runs at. Then the links are measured under the load a collective step puts on
them (`concurrent`): for every run size k = 2..N the first k nodes send at once (i -> i+1 mod k,
so every node's link carries traffic both ways, as in a ring or an all-to-all step), the same
bytes each, and the rate is those bytes over the time until the last stream is done, the median
of a few trials; with intra-node links, the same inside each of the first k = 1..N nodes at once
(`intra_node.concurrent`). Both directions busy give a stream less than it gets alone: on the VDE
data path the emulator's processes share the host's cores (2 nodes at 100 Mbit/s: the slower
direction got 46-77 Mbit/s over 13 trials of 2-3 s, against 95 alone), and on a slow link TCP
splits it unevenly (13 Mbit/s uplinks: 12.0 Mbit/s one way, 5.9-7.5 the other, in 3 trials).

On the VDE data path (`recpar.cluster.vde`) the emulator itself uses CPU that the nodes' work
then lacks: each bulk transfer also records the CPU seconds the vde_switch/wirefilter processes
used during it (`emulator_cpu_s`, from /proc/<pid>/stat), and the summary its cost per second of
transfer and per gigabyte carried, so it can be kept out of the devices' CPU budgets.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from recpar.cluster import netns, vde
from recpar.cluster.netns import ClusterError
from recpar.cluster.state import ClusterState, state_path

PROBE_PORT = 5201


def package_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """os.environ + PYTHONPATH that finds this `recpar` (also when it is not installed)."""
    import recpar

    env = dict(os.environ)
    src = str(Path(recpar.__file__).resolve().parent.parent)
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if src not in parts:
        env["PYTHONPATH"] = os.pathsep.join([src, *parts])
    env.update(extra or {})
    return env


def _probe_argv(ns: str, *args: str) -> list[str]:
    return netns.netns_exec(ns, [sys.executable, "-m", "recpar.cluster.probe", *args])


def measure_pair(state: ClusterState, src: int, dst: int, mode: str, seconds: float = 2.0,
                 count: int = 200, timeout_s: float = 60.0) -> dict:
    """One measurement from node `src` to node `dst`; returns the probe's JSON (merged).
    With intra-node links the endpoints are the nodes' device 0, as ranks see the path."""
    names = state.names
    if state.intra_shape is not None:
        return measure_between((names.device_ns(src, 0), f"node {src} device 0"),
                               (names.device_ns(dst, 0), f"node {dst} device 0"),
                               names.device_addr(dst, 0), mode, seconds, count, timeout_s)
    return measure_between((names.node_ns(src), f"node {src}"), (names.node_ns(dst), f"node {dst}"),
                           names.node_addr(dst), mode, seconds, count, timeout_s)


def _start_server(ns: str, name: str, addr: str, mode: str, timeout_s: float,
                  env: dict[str, str]) -> subprocess.Popen:
    """A probe server in namespace `ns` listening on `addr`, once it says it is ready (killed
    and ClusterError, naming `name`, when it does not)."""
    server = subprocess.Popen(
        _probe_argv(ns, "serve", "--bind", addr, "--port", str(PROBE_PORT), "--mode", mode,
                    "--timeout-s", str(timeout_s)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = server.stdout.readline().strip()
    if line != "ready":
        server.kill()
        server.wait()
        raise ClusterError(f"probe server on {name} did not start: "
                           f"{(server.stderr.read() or line).strip().splitlines()[-1:]}")
    return server


def measure_between(src: tuple[str, str], dst: tuple[str, str], dst_addr: str, mode: str,
                    seconds: float = 2.0, count: int = 200, timeout_s: float = 60.0) -> dict:
    """One measurement from namespace src[0] to dst[0] (listening on `dst_addr`); [1] names
    each end in errors. Returns the probe's JSON (client and server merged)."""
    (src_ns, src_name), (dst_ns, dst_name) = src, dst
    env = package_env()
    server = _start_server(dst_ns, dst_name, dst_addr, mode, timeout_s, env)
    try:
        client = subprocess.run(
            _probe_argv(src_ns, "client", "--connect", dst_addr,
                        "--port", str(PROBE_PORT), "--mode", mode, "--seconds", str(seconds),
                        "--count", str(count), "--timeout-s", str(timeout_s)),
            capture_output=True, text=True, env=env, timeout=timeout_s + seconds + 10)
        if client.returncode != 0:
            raise ClusterError(f"probe client {src_name} -> {dst_name} failed: "
                               f"{client.stderr.strip().splitlines()[-1:]}")
        out, err = server.communicate(timeout=timeout_s)
        if server.returncode != 0:
            raise ClusterError(f"probe server on {dst_name} failed: "
                               f"{err.strip().splitlines()[-1:]}")
        return {**json.loads(client.stdout.strip().splitlines()[-1]),
                **json.loads(out.strip().splitlines()[-1])}
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def _endpoint(state: ClusterState, node: int, device: int = 0) -> tuple[str, str, str]:
    """(namespace, name, address) of a node's end of a path: its device `device` where the
    cluster has intra-node links (as ranks see the path), else the node itself."""
    names = state.names
    if state.intra_shape is not None:
        return (names.device_ns(node, device), f"node {node} device {device}",
                names.device_addr(node, device))
    return names.node_ns(node), f"node {node}", names.node_addr(node)


def measure_streams(streams: list[tuple[tuple[str, str, str], tuple[str, str, str]]],
                    nbytes: int, timeout_s: float = 60.0) -> dict:
    """Every (src, dst) stream sends the same `nbytes` at once, as the streams of one
    collective step do (a ring's hops, an all-to-all's pairs), and the step is over when the
    last byte of the last stream has arrived. `rate_bit_per_s` = nbytes x 8 / (last byte's
    arrival - first byte's arrival, over all streams): the rate each stream of such a step
    gets. Each stream's own rate (its bytes over its own first-to-last byte) is kept too: on
    a link busy both ways TCP splits it unevenly (one direction's acknowledgements queue behind
    the other's data), and the faster stream, once done, leaves the link to the slower."""
    env = package_env()
    servers, clients = [], []
    try:
        for _, (dst_ns, dst_name, addr) in streams:
            servers.append(_start_server(dst_ns, dst_name, addr, "bulk", timeout_s, env))
        for (src_ns, _, _), (_, _, addr) in streams:  # every stream starts together
            clients.append(subprocess.Popen(
                _probe_argv(src_ns, "client", "--connect", addr, "--port", str(PROBE_PORT),
                            "--mode", "bulk", "--bytes", str(nbytes), "--timeout-s",
                            str(timeout_s)),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
        got = []
        for ((_, src_name, _), (_, dst_name, _)), cli, srv in zip(streams, clients, servers):
            _, cerr = cli.communicate(timeout=timeout_s * 2)
            out, err = srv.communicate(timeout=timeout_s)
            if cli.returncode != 0 or srv.returncode != 0:
                raise ClusterError(f"concurrent probe {src_name} -> {dst_name} failed: "
                                   f"{(cerr or err).strip().splitlines()[-1:]}")
            got.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in servers + clients:
            if p.poll() is None:
                p.kill()
                p.wait()
    each = [g["bytes"] * 8 / (g["t_last_s"] - g["t_first_s"])
            if g["bytes"] and g["t_last_s"] > g["t_first_s"] else None for g in got]
    wall = (max(g["t_last_s"] for g in got) - min(g["t_first_s"] for g in got)
            if all(g["bytes"] for g in got) else 0.0)
    return {"streams": len(streams), "bytes_each": nbytes, "wall_s": wall,
            "rate_bit_per_s_each": each,
            "rate_bit_per_s": nbytes * 8 / wall if wall > 0 else None}


def ring_streams(state: ClusterState, nodes: int) -> list:
    """Node i -> node (i + 1) mod `nodes` for every i < `nodes`: every node's uplink busy both
    ways, as in a ring or an all-to-all step of a run on that many nodes (2 nodes: 0 -> 1 and
    1 -> 0)."""
    return [(_endpoint(state, i), _endpoint(state, (i + 1) % nodes)) for i in range(nodes)]


def intra_ring_streams(state: ClusterState, nodes: int) -> list:
    """Inside each of the first `nodes` nodes, device j -> device (j + 1) mod devices, all
    nodes at once: every intra-node link busy both ways, as a tensor-parallel all-reduce in
    every node of a run on that many nodes makes them."""
    d = state.ranks_per_node
    return [(_endpoint(state, i, j), _endpoint(state, i, (j + 1) % d))
            for i in range(nodes) for j in range(d)]


def concurrent_rate(streams: list, nbytes: int, repeats: int = 3, **key) -> dict:
    """`measure_streams` `repeats` times; the median of the trials' rates. One trial is noisy
    on the VDE data path: the emulator's processes compete for the cores, and which direction
    TCP favours changes from trial to trial."""
    trials = [measure_streams(streams, nbytes) for _ in range(repeats)]
    rates = [t["rate_bit_per_s"] for t in trials if t["rate_bit_per_s"]]
    return {**key, "rate_bit_per_s": statistics.median(rates) if rates else None,
            "trial_rates_bit_per_s": rates, "trials": trials}


def equal_bytes(rate_bit_per_s: float | None, seconds: float) -> int:
    """Bytes each concurrent stream sends: what one stream alone carries in `seconds`."""
    return max(1, int((rate_bit_per_s or 8e6) * seconds / 8))


def calibrate(state: ClusterState, seconds: float = 2.0, count: int = 200,
              state_dir: str | os.PathLike | None = None, save: bool = True,
              concurrent_repeats: int = 3) -> dict:
    """Measure every link, store the result in the state file, and return it.
    `concurrent_repeats`: trials of every run size's concurrent streams (`concurrent_rate`);
    0 measures none (the all-to-all term then prices with one stream's rate)."""
    if concurrent_repeats < 0:
        raise ValueError(f"--concurrent-repeats must be >= 0, got {concurrent_repeats}")
    netns.require_root_and_iproute2("cluster calibrate")
    if state.nodes < 2:
        raise ClusterError("calibrate needs at least 2 nodes (there is no inter-node link)")
    rdir = (vde.run_dir(state_path(state.prefix, state_dir))
            if state.data_path == "vde" or state.intra_shape is not None else None)
    links = []
    for src in range(state.nodes):
        dst = (src + 1) % state.nodes
        cpu0_s = vde.cpu_seconds(rdir) if rdir else None
        bulk = measure_pair(state, src, dst, "bulk", seconds=seconds)
        cpu1_s = vde.cpu_seconds(rdir) if rdir else None
        ping = measure_pair(state, src, dst, "pingpong", count=count)
        links.append({"src": src, "dst": dst,
                      "configured": {"src": state.node_shapes[src], "dst": state.node_shapes[dst]},
                      "rate_bit_per_s": bulk["rate_bit_per_s"],
                      "bulk_window_s": bulk.get("window_s"),
                      "bulk_bytes": bulk.get("bytes"),
                      "bulk_wall_s": bulk.get("seconds"),
                      "emulator_cpu_s": None if rdir is None else cpu1_s - cpu0_s,
                      "rtt_median_s": ping["rtt_median_s"],
                      "rtt_min_s": ping["rtt_min_s"],
                      "latency_s": ping["rtt_median_s"] / 2})
    rates = [l["rate_bit_per_s"] for l in links if l["rate_bit_per_s"]]
    # every run size the cluster serves (a run may use its first k nodes)
    nbytes = equal_bytes(min(rates) if rates else None, seconds)
    concurrent = [concurrent_rate(ring_streams(state, k), nbytes, concurrent_repeats, nodes=k)
                  for k in range(2, state.nodes + 1)] if concurrent_repeats else []
    intra = None
    if state.intra_shape is not None and state.ranks_per_node >= 2:
        intra = calibrate_intra(state, seconds, count)
        intra_bytes = equal_bytes(intra["rate_bit_per_s"], seconds)
        intra["concurrent"] = [
            concurrent_rate(intra_ring_streams(state, k), intra_bytes, concurrent_repeats,
                            nodes=k)
            for k in range(1, state.nodes + 1)] if concurrent_repeats else []
    result = {"links": links, "intra_node": intra,
              "rate_bit_per_s": min(rates) if rates else None,
              "latency_s": max(l["latency_s"] for l in links),
              "concurrent": concurrent,
              "data_path": state.data_path,
              "emulator_cpu": emulator_cpu_summary(links) if rdir else None,
              "method": {"bulk_seconds": seconds, "pingpong_count": count,
                         "rate": "TCP goodput of one stream after a warm-up",
                         "concurrent": "for k = 2..nodes: streams node i -> i+1 mod k at "
                                       "once, the same bytes each (one stream's rate x "
                                       "bulk_seconds); rate = those bytes / the time until "
                                       "the last stream's last byte arrived; the median of "
                                       f"{concurrent_repeats} trials. intra_node.concurrent: "
                                       "the same for device j -> j+1 mod devices inside "
                                       "each of the first k = 1..nodes nodes at once",
                         "latency": "half the median 1-byte TCP round trip",
                         "rtt_min": "the fastest round trip: the configured delays plus the "
                                    "emulator's unloaded software path",
                         "emulator_cpu": "user+system CPU of the VDE processes during the "
                                         "bulk transfers (/proc/<pid>/stat)"}}
    if save:
        state.calibration = result
        state.save(state_dir)
    return result


def calibrate_intra(state: ClusterState, seconds: float, count: int) -> dict:
    """Device 0 -> device 1 of node 0 over the intra-node link: goodput and latency."""
    names = state.names
    ends = ((names.device_ns(0, 0), "node 0 device 0"), (names.device_ns(0, 1), "node 0 device 1"))
    bulk = measure_between(*ends, names.device_addr(0, 1), "bulk", seconds=seconds)
    ping = measure_between(*ends, names.device_addr(0, 1), "pingpong", count=count)
    return {"configured": state.intra_shape, "rate_bit_per_s": bulk["rate_bit_per_s"],
            "rtt_median_s": ping["rtt_median_s"], "rtt_min_s": ping["rtt_min_s"],
            "latency_s": ping["rtt_median_s"] / 2}


def emulator_cpu_summary(links: list[dict]) -> dict:
    """The VDE processes' CPU over all bulk transfers: seconds, cores busy while transferring
    (CPU s per wall s) and CPU seconds per gigabyte (1e9 bytes) of TCP payload carried."""
    cpu_s = sum(l["emulator_cpu_s"] for l in links)
    wall_s = sum(l["bulk_wall_s"] or 0.0 for l in links)
    gbyte = sum(l["bulk_bytes"] or 0 for l in links) / 1e9
    return {"cpu_s": cpu_s, "transfer_wall_s": wall_s,
            "cpu_s_per_s": cpu_s / wall_s if wall_s > 0 else None,
            "cpu_s_per_gbyte": cpu_s / gbyte if gbyte > 0 else None}
