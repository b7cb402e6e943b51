"""Shaped intra-node links: every device (rank) of an emulated node in its own namespace.

Without this, the ranks of one node share the node namespace and talk over its loopback,
which no shaper can slow down: an intra-node path is then infinitely fast. The scale model
(`recpar.perfmodel.dilation`) needs NVLink-class paths scaled like the inter-node ones, so
`up` with an intra-node link builds, for node i and device j:

    device ns  rp-n<i>d<j>:  rp-e   198.19.<i>.<j+1>/32   (veth; the device's address)
                             rp-t<i>d<j>  (tap, no address) -- hub d<i>x<j>
                                                                |  wirefilter w<i>x<j>
                                                             vde_switch i<i>  (node i's
                                                                intra-node switch)
    node ns    rp-n<i>:      rp-e<j>  198.19.<i>.254/32     (veth peer; the node routes)
                             rp-v<i>  198.18.0.<i+1>/24     (uplink, as without devices)

Routes: in a device namespace, the other devices of the same node (/32 each) via the tap,
everything else via the node (default route); in a node namespace, each own device (/32) via
its veth and every other node's devices (198.19.<m>.0/24) via that node's uplink address;
node namespaces forward. So a frame between two devices of one node crosses only the
intra-node wirefilters, and a frame to another node crosses the node's uplink (shaped by
`recpar.cluster.shaping` or the VDE path) and no intra-node wirefilter, as NVLink and the NIC
are separate paths on the hardware the profiles describe. The device-to-node veth is not
shaped (a PCIe-class hop whose cost the profiles fold into the NIC's).

Intra-node links always use the VDE path (the scale model's latencies are many milliseconds
and this kernel has no netem). Every VDE process runs in the switch namespace, outside the
devices' CPU budgets (`recpar.cluster.cpu_budget` groups hold only ranks). The ranks enter
their device namespace with `nsenter --net` when torchrun starts them (see `worker_wrapper`),
so they keep the node's mount namespace, and with it the cgroup file system.
"""

from __future__ import annotations

from pathlib import Path

from recpar.cluster import vde
from recpar.cluster.netns import MAX_DEVICES_PER_NODE, ClusterError, Names, netns_exec, run
from recpar.cluster.shaping import LinkShape


def check_devices(devices_per_node: int) -> None:
    if not (isinstance(devices_per_node, int) and 1 <= devices_per_node <= MAX_DEVICES_PER_NODE):
        raise ValueError(f"devices per node: with intra-node links it must be an integer in "
                         f"[1, {MAX_DEVICES_PER_NODE}], got {devices_per_node!r}")


def device_namespaces(names: Names, nodes: int, devices_per_node: int) -> list[str]:
    return [names.device_ns(i, j) for i in range(nodes) for j in range(devices_per_node)]


def _sysctl(ns: str, key: str, value: str) -> None:
    run(netns_exec(ns, ["sysctl", "-q", "-w", f"{key}={value}"]))


def build(names: Names, nodes: int, devices_per_node: int, intra: LinkShape, rdir: Path) -> dict:
    """Create the device namespaces, their veths and routes, and the intra-node VDE switches
    and wirefilters. The node namespaces and their uplinks exist already. Returns the pids
    (kept in the state). Nothing is undone here on a failure: the caller's `down` does it."""
    check_devices(devices_per_node)
    settings = vde.wire_settings(intra)
    vde.prepare_run_dir(rdir)
    sw = names.switch_ns
    pids: dict = {"nodes": []}
    for i in range(nodes):
        node_ns = names.node_ns(i)
        _sysctl(node_ns, "net.ipv4.ip_forward", "1")
        for m in range(nodes):  # other nodes' devices: via that node's uplink address
            if m != i:
                run(["ip", "-n", node_ns, "route", "add", names.device_subnet(m),
                     "via", names.node_addr(m)])
        node_pids = {"switch": vde.start_switch(sw, rdir, f"i{i}"), "devices": []}
        for j in range(devices_per_node):
            ns, addr = names.device_ns(i, j), names.device_addr(i, j)
            run(["ip", "netns", "add", ns])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
            # The device's veth to its node: both ends created inside their namespaces.
            run(["ip", "link", "add", names.device_dev, "netns", ns, "type", "veth",
                 "peer", "name", names.node_device_dev(j), "netns", node_ns])
            run(["ip", "-n", ns, "addr", "add", f"{addr}/32", "dev", names.device_dev])
            run(["ip", "-n", ns, "link", "set", names.device_dev, "up"])
            run(["ip", "-n", node_ns, "addr", "add", f"{names.device_gateway(i)}/32",
                 "dev", names.node_device_dev(j)])
            run(["ip", "-n", node_ns, "link", "set", names.node_device_dev(j), "up"])
            run(["ip", "-n", node_ns, "route", "add", f"{addr}/32",
                 "dev", names.node_device_dev(j)])
            run(["ip", "-n", ns, "route", "add", f"{names.device_gateway(i)}/32",
                 "dev", names.device_dev])
            run(["ip", "-n", ns, "route", "add", "default", "via", names.device_gateway(i)])
            # The intra-node path: a hub whose tap moves into the device namespace, and a
            # wirefilter from the hub to the node's intra-node switch.
            tap = names.intra_tap(i, j)
            hub = vde.start_switch(sw, rdir, f"d{i}x{j}", tap=tap)
            run(["ip", "-n", sw, "link", "set", tap, "netns", ns])
            run(["ip", "-n", ns, "link", "set", tap, "up"])
            for k in range(devices_per_node):
                if k != j:
                    run(["ip", "-n", ns, "route", "add", f"{names.device_addr(i, k)}/32",
                         "dev", tap])
            wire = vde.start_wirefilter(sw, rdir, f"w{i}x{j}", f"d{i}x{j}", f"i{i}", settings)
            node_pids["devices"].append({"switch": hub, "wirefilter": wire})
        pids["nodes"].append(node_pids)
    return {"run_dir": str(rdir), "pids": pids, "settings": settings.commands()}


def worker_wrapper(names: Names, node: int) -> list[str]:
    """What torchrun (`--no-python`) starts in node `node` instead of python: a shell that
    moves the rank into the namespace of its device (LOCAL_RANK) and points it at global
    rank 0's address, where rank 0 hosts the process group's store (torchrun hands the
    workers node 0's agent address, which is not in any device namespace)."""
    script = (f'export MASTER_ADDR={names.device_addr(0, 0)}; '
              f'exec nsenter --net=/run/netns/{names.prefix}-n{node}d"$LOCAL_RANK" -- "$@"')
    return ["sh", "-c", script, "recpar-device"]


def check_ranks(devices_per_node: int, ranks_per_node: int) -> None:
    """A run on a cluster with intra-node links may use at most its devices per node."""
    if ranks_per_node > devices_per_node:
        raise ClusterError(f"launch: {ranks_per_node} ranks per node, but the cluster that is up "
                           f"has {devices_per_node} device namespace(s) per node (intra-node "
                           f"links); run `recpar cluster up` with --ranks-per-node "
                           f"{ranks_per_node}")
