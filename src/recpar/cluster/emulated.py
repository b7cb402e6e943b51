"""`up`, `down`, `status` of an emulated multi-node cluster on one machine.

N nodes = N network namespaces `<prefix>-n<i>`, each with its own loopback (intra-node traffic)
and one veth uplink to a Linux bridge in the switch namespace `<prefix>-sw`. Addresses come from
198.18.0.0/24 (node i = 198.18.0.<i+1>) and exist only inside these namespaces: nothing is
added to the host's namespace, so the emulator cannot route traffic anywhere else.
See `recpar.cluster.shaping` for how the uplinks are shaped.

Data paths (`ClusterState.data_path`): `tc`, the veth star above, shaped in the kernel (rate and
loss everywhere, latency where the kernel has sch_netem); `vde`, where a latency is asked for and
the kernel has no netem: the node's uplink is a tap and the bridge is user-space vde_switches
joined by wirefilters that delay, drop and rate-limit (`recpar.cluster.vde`). Addresses,
interface names and namespaces are the same on both, so `launch` and `calibrate` do not care.

A state file (`recpar.cluster.state`: `<state_dir>/<prefix>.json`, default /run/recpar) records
what `up` built and what `calibrate` measured, so `down`, `status`, `launch` and `fault` find
everything. `down` also sweeps by prefix, so a crash that lost the state file leaves nothing
behind.
"""

from __future__ import annotations

import os
import tempfile
import time

from recpar.cluster import cpu_budget, device_links, netns, vde
from recpar.cluster.fault import stop_stragglers
from recpar.cluster.netns import ClusterError, Names, run
from recpar.cluster.shaping import LinkShape, apply_shape, netem_available, qdisc_stats
from recpar.cluster.state import ClusterState, state_path

DATA_PATHS = ("auto", "tc", "vde")
"""What `up` may be asked for: `auto` picks `vde` only for a latency without netem."""


def choose_data_path(shape: LinkShape, netem: bool, requested: str = "auto") -> str:
    """`tc` or `vde` for `shape` on a kernel with or without netem (see the module doc)."""
    if requested not in DATA_PATHS:
        raise ValueError(f"data_path: {requested!r} is not one of {', '.join(DATA_PATHS)}")
    if requested != "auto":
        if requested == "tc" and shape.latency_s > 0 and not netem:
            raise ClusterError("latency on the tc data path needs the kernel's netem qdisc "
                               "(CONFIG_NET_SCH_NETEM), which this kernel lacks; "
                               "use the vde data path or latency 0")
        return requested
    return "vde" if shape.latency_s > 0 and not netem else "tc"


def up(nodes: int, ranks_per_node: int, shape: LinkShape, prefix: str = netns.DEFAULT_PREFIX,
       state_dir: str | os.PathLike | None = None, data_path: str = "auto",
       intra_shape: LinkShape | None = None, scale_model: dict | None = None) -> ClusterState:
    """Build the cluster; idempotent when one with the same configuration is already up.

    On any failure everything built so far is removed again before the error propagates.
    `data_path`: `auto` (tc, or vde for a latency the kernel cannot add), `tc` or `vde`.
    `intra_shape`: a shaped link per device inside each node (`ranks_per_node` device
    namespaces per node, recpar.cluster.device_links); None: ranks share the node's loopback.
    `scale_model`: what the shapes were derived from, kept in the state and the records.
    """
    names = Names(prefix)
    if not (isinstance(nodes, int) and 1 <= nodes <= netns.MAX_NODES):
        raise ValueError(f"nodes: must be an integer in [1, {netns.MAX_NODES}], got {nodes!r}")
    if not (isinstance(ranks_per_node, int) and ranks_per_node >= 1):
        raise ValueError(f"ranks_per_node: must be an integer >= 1, got {ranks_per_node!r}")
    if data_path not in DATA_PATHS:
        raise ValueError(f"data_path: {data_path!r} is not one of {', '.join(DATA_PATHS)}")
    if intra_shape is not None:
        device_links.check_devices(ranks_per_node)
        if intra_shape.loss:
            raise ValueError("intra-node links: loss is not supported (only rate and latency)")
        vde.wire_settings(intra_shape)  # whole milliseconds, before anything is built
    netns.require_root_and_iproute2("cluster up")

    path = state_path(prefix, state_dir)
    existing = [n for n in netns.list_namespaces() if names.is_namespace(n)]
    if path.exists() or existing or vde.run_dir(path).exists():
        try:
            st = ClusterState.load(prefix, state_dir)
        except ClusterError:
            st = None
        wanted_ns = {names.node_ns(i) for i in range(nodes)} | {names.switch_ns}
        if intra_shape is not None:
            wanted_ns |= set(device_links.device_namespaces(names, nodes, ranks_per_node))
        wanted_intra = None if intra_shape is None else intra_shape.to_dict()
        if (st is not None and st.nodes == nodes and st.ranks_per_node == ranks_per_node
                and LinkShape.from_dict(st.base_shape) == shape and set(existing) == wanted_ns
                and data_path in ("auto", st.data_path) and st.intra_shape == wanted_intra
                and st.scale_model == scale_model):
            return st  # already up as asked: nothing to do
        raise ClusterError(f"an emulated cluster with prefix {prefix!r} is already up with a "
                           f"different configuration (or half built); run `recpar cluster down` first")

    try:
        sw = names.switch_ns
        run(["ip", "netns", "add", sw])
        run(["ip", "-n", sw, "link", "set", "lo", "up"])
        netem = netem_available(sw)
        chosen = choose_data_path(shape, netem, data_path)
        if chosen == "vde":  # refuse what the VDE path cannot do before building anything
            settings = vde.wire_settings(shape)
            reason = vde.unavailable_reason()
            if reason is not None:
                raise ClusterError(reason)
        for i in range(nodes):
            run(["ip", "netns", "add", names.node_ns(i)])
            run(["ip", "-n", names.node_ns(i), "link", "set", "lo", "up"])
        vde_info = None
        if chosen == "vde":
            vde_info = vde.start(names, [names.node_addr(i) for i in range(nodes)],
                                 netns.SUBNET_PREFIX_LEN, [settings] * nodes, vde.run_dir(path))
        else:
            _build_veth_star(names, nodes, shape, netem)
        dev_info = None
        if intra_shape is not None:
            dev_info = device_links.build(names, nodes, ranks_per_node, intra_shape,
                                          vde.run_dir(path))
        state = ClusterState(prefix=prefix, nodes=nodes, ranks_per_node=ranks_per_node,
                             base_shape=shape.to_dict(),
                             node_shapes=[shape.to_dict() for _ in range(nodes)],
                             netem=netem, created_unix_s=time.time(),
                             data_path=chosen, vde=vde_info,
                             intra_shape=None if intra_shape is None else intra_shape.to_dict(),
                             device_links=dev_info, scale_model=scale_model)
        state.save(state_dir)
        return state
    except BaseException:
        down(prefix, state_dir)
        raise


def _build_veth_star(names: Names, nodes: int, shape: LinkShape, netem: bool) -> None:
    """The tc data path: a bridge in the switch namespace, one shaped veth pair per node."""
    sw = names.switch_ns
    run(["ip", "-n", sw, "link", "add", names.bridge, "type", "bridge"])
    run(["ip", "-n", sw, "link", "set", names.bridge, "up"])
    for i in range(nodes):
        ns, dev, peer = names.node_ns(i), names.node_dev(i), names.switch_dev(i)
        # Both ends are created directly inside their namespaces: never in the host's.
        run(["ip", "link", "add", dev, "netns", ns, "type", "veth",
             "peer", "name", peer, "netns", sw])
        run(["ip", "-n", ns, "addr", "add",
             f"{names.node_addr(i)}/{netns.SUBNET_PREFIX_LEN}", "dev", dev])
        run(["ip", "-n", ns, "link", "set", dev, "up"])
        run(["ip", "-n", sw, "link", "set", peer, "master", names.bridge])
        run(["ip", "-n", sw, "link", "set", peer, "up"])
        apply_shape(ns, dev, shape, netem)
        apply_shape(sw, peer, shape, netem)


def down(prefix: str = netns.DEFAULT_PREFIX, state_dir: str | os.PathLike | None = None) -> dict:
    """Remove everything with `prefix`: the VDE processes its pid files name, processes in our
    namespaces, the namespaces (and with them every veth, tap, bridge and qdisc), stray links in
    the host namespace, the VDE run directory (sockets), the state file, and the CPU-budget
    groups of runs whose launcher is gone (cpu_budget.remove_stale; a live run keeps its own).
    Idempotent. Returns what was removed."""
    names = Names(prefix)
    netns.require_root_and_iproute2("cluster down")
    removed = {"processes": 0, "namespaces": [], "links": [], "state_file": None,
               "vde_run_dir": None}
    path = state_path(prefix, state_dir)
    rdir = vde.run_dir(path)
    if rdir.exists():  # also when the switch namespace is gone and `ip netns pids` cannot see
        removed["processes"] += vde.kill_processes(rdir)
    # Straggler duty-cyclers run in the host namespace; stop them first (see fault.py).
    try:
        stop_stragglers(ClusterState.load(prefix, state_dir), state_dir, save=False)
    except ClusterError:
        pass
    ours = [n for n in netns.list_namespaces() if names.is_namespace(n)]
    for ns in ours:
        removed["processes"] += netns.kill_namespace_processes(ns)
    for ns in ours:
        run(["ip", "netns", "del", ns])
        removed["namespaces"].append(ns)
    for link in netns.list_links(None):  # only after a crash between creation steps
        if names.owns(link):
            run(["ip", "link", "del", link], check=False)
            removed["links"].append(link)
    if vde.remove_run_dir(rdir):
        removed["vde_run_dir"] = str(rdir)
    if path.exists():
        path.unlink()
        removed["state_file"] = str(path)
    removed["cpu_budget_groups"] = ([] if cpu_budget.unavailable_reason() is not None
                                    else cpu_budget.remove_stale())
    return removed


def status(prefix: str = netns.DEFAULT_PREFIX, state_dir: str | os.PathLike | None = None) -> dict:
    """What is up: the state file's content plus what the kernel actually has."""
    names = Names(prefix)
    netns.require_root_and_iproute2("cluster status")
    present = sorted(n for n in netns.list_namespaces() if names.is_namespace(n))
    try:
        st = ClusterState.load(prefix, state_dir)
    except ClusterError:
        st = None
    out: dict = {"prefix": prefix, "up": st is not None, "namespaces": present,
                 "state_file": str(state_path(prefix, state_dir)) if st else None}
    if st is None:
        out["stray"] = bool(present)
        return out
    out["topology"] = st.topology().to_record()
    out["netem"] = st.netem
    out["data_path"] = st.data_path
    out["intra_shape"] = st.intra_shape
    out["scale_model"] = st.scale_model
    if st.data_path == "vde" or st.intra_shape is not None:
        procs = vde.processes(vde.run_dir(state_path(prefix, state_dir)))
        out["vde"] = {"processes": procs,
                      "cpu_s_total": sum(p["cpu_s"] or 0.0 for p in procs),
                      "cpu_s_note": "user+system CPU the emulator's own processes used since "
                                    "`up` (not the nodes' work)"}
    nodes = []
    for i in range(st.nodes):
        ns = names.node_ns(i)
        entry = {"node": i, "namespace": ns, "address": names.node_addr(i),
                 "ifname": names.node_dev(i), "shape": st.node_shapes[i],
                 "processes": (sum(len(netns.namespace_pids(n)) for n in st.namespaces_of_node(i)
                                   if n in present) if ns in present else None)}
        if ns in present:
            entry["uplink_qdisc"] = qdisc_stats(ns, names.node_dev(i))
        nodes.append(entry)
    out["nodes"] = nodes
    out["calibration"] = st.calibration
    out["stragglers"] = st.stragglers
    return out


PROBE_PREFIX = "rpchk"
"""Prefix of the throw-away one-node cluster `unavailable_reason` builds (not the default's)."""


def unavailable_reason(state_dir: str | os.PathLike | None = None) -> str | None:
    """Why an emulated cluster cannot be built here, or None when it can.

    Being root with iproute2 is not enough (a container may lack CAP_NET_ADMIN, or the kernel
    veth, bridge or HTB): this builds a one-node cluster under its own prefix, shaped to
    100 Mbit/s, and removes it again, so the answer is what `up` itself does. About a second.
    """
    reason = netns.unavailable_reason()
    if reason is not None:
        return reason
    with tempfile.TemporaryDirectory() as tmp:
        where = state_dir or tmp
        try:
            up(1, 1, LinkShape(rate_bit_per_s=100e6), prefix=PROBE_PREFIX, state_dir=where)
        except (ClusterError, OSError) as e:
            return f"building a one-node test cluster failed: {e}"
        finally:
            try:
                down(PROBE_PREFIX, where)
            except (ClusterError, OSError):
                pass
    return None


TOPOLOGY_CHOICES = ("auto", "local", "emulated")
"""What a workflow config may ask for; `auto` is resolved by `resolve_topology`."""


def resolve_topology(requested: str, probe=unavailable_reason) -> tuple[str, str]:
    """(`local` or `emulated`, why) for a config's `topology`: `auto` becomes `emulated` when
    an emulated cluster can be built here (root, iproute2, namespaces, veth, HTB), else
    `local` with the reason; the others are taken as asked."""
    if requested not in TOPOLOGY_CHOICES:
        raise ValueError(f"topology: {requested!r} is not one of {', '.join(TOPOLOGY_CHOICES)}")
    if requested != "auto":
        return requested, "set in the config"
    reason = probe()
    if reason is None:
        return "emulated", "auto: root, network namespaces and tc shaping work here"
    return "local", f"auto: {reason}"
