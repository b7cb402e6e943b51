"""`recpar cluster up|down|status|calibrate|launch|fault`."""

from __future__ import annotations

import argparse
import json
import os

from recpar.cluster.netns import DEFAULT_PREFIX, ClusterError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prefix", default=DEFAULT_PREFIX,
                   help="name prefix of every namespace/link of the cluster (default: rp)")
    p.add_argument("--state-dir", default=None,
                   help="directory of the state file (default: $RECPAR_CLUSTER_STATE_DIR or /run/recpar)")


def _fail(e: Exception) -> SystemExit:
    return SystemExit(f"recpar: {e}")


def _parse(fn, text, what):
    try:
        return fn(text, what)
    except ValueError as e:
        raise _fail(e) from None


def _cmd_up(a: argparse.Namespace) -> int:
    from recpar.cluster import scale_links
    from recpar.cluster.emulated import up
    from recpar.cluster.shaping import LinkShape
    from recpar.cluster.units import parse_duration, parse_loss, parse_rate

    if a.nodes < 1 or a.ranks_per_node < 1:
        raise SystemExit("recpar: --nodes and --ranks-per-node must be >= 1")
    scale = None
    if a.scale_model is not None:
        given = [o for o, v in (("--inter-bw", a.inter_bw), ("--intra-bw", a.intra_bw),
                                ("--intra-latency", a.intra_latency)) if v is not None]
        if given or a.inter_latency != "0":
            raise SystemExit(f"recpar: --scale-model sets every link; do not also give "
                             f"{', '.join(given or ['--inter-latency'])}")
        try:
            scale = scale_links.load_or_measure(a.scale_model, a.cpu_budget, a.prefix,
                                                a.state_dir)
        except (ClusterError, ValueError) as e:
            raise _fail(e) from None
        shape = LinkShape(*scale.inter, _parse(parse_loss, a.loss, "--inter-loss/--loss"))
        intra = LinkShape(*scale.intra)
    else:
        rate = (None if a.inter_bw in (None, "none")
                else _parse(parse_rate, a.inter_bw, "--inter-bw"))
        shape = LinkShape(rate, _parse(parse_duration, a.inter_latency, "--inter-latency"),
                          _parse(parse_loss, a.loss, "--inter-loss/--loss"))
        intra = None
        if a.intra_bw is not None or a.intra_latency is not None:
            intra = LinkShape(
                None if a.intra_bw in (None, "none") else _parse(parse_rate, a.intra_bw,
                                                                 "--intra-bw"),
                _parse(parse_duration, a.intra_latency or "0", "--intra-latency"))
    try:
        st = up(a.nodes, a.ranks_per_node, shape, a.prefix, a.state_dir, data_path=a.data_path,
                intra_shape=intra, scale_model=None if scale is None else scale.record)
    except (ClusterError, ValueError) as e:
        raise _fail(e) from None
    intra_text = ("loopback" if st.intra_shape is None
                  else f"{json.dumps(st.intra_shape)} per device")
    print(f"cluster {a.prefix}: {st.nodes} node(s) x {st.ranks_per_node} rank(s) up; "
          f"link {json.dumps(st.base_shape)}; intra-node {intra_text}; "
          f"data path {st.data_path}")
    if scale is not None:
        print(f"scale model {scale.record['profile']}: D = {scale.record['dilation']:.4g} "
              f"(device {scale.record['device_flops_per_s']:.4g} FLOP/s)")
    return 0


def _cmd_check(a: argparse.Namespace) -> int:
    from recpar.cluster import cpu_budget, vde
    from recpar.cluster.emulated import resolve_topology

    kind, why = resolve_topology("auto")
    print(f"topology {kind} ({why})")
    if kind != "emulated":
        return 1
    if a.scale_model:
        # every device of the scale model is a cgroup, every intra-node link a vde2 hub
        reasons = [r for r in (cpu_budget.unavailable_reason(), vde.unavailable_reason()) if r]
        if reasons:
            print(f"scale model unavailable: {'; '.join(reasons)}")
            return 1
        print("scale model available (CPU budgets and vde2 work here)")
    return 0


def _cmd_down(a: argparse.Namespace) -> int:
    from recpar.cluster.emulated import down

    try:
        removed = down(a.prefix, a.state_dir)
    except ClusterError as e:
        raise _fail(e) from None
    print(f"cluster {a.prefix}: removed {len(removed['namespaces'])} namespace(s), "
          f"{removed['processes']} process(es), {len(removed['links'])} stray link(s)"
          + (", the VDE run directory" if removed["vde_run_dir"] else ""))
    return 0


def _cmd_status(a: argparse.Namespace) -> int:
    from recpar.cluster.emulated import status

    try:
        st = status(a.prefix, a.state_dir)
    except ClusterError as e:
        raise _fail(e) from None
    print(json.dumps(st, indent=2, sort_keys=True))
    return 0 if st["up"] else 3


def _load_state(a):
    from recpar.cluster.state import ClusterState

    try:
        return ClusterState.load(a.prefix, a.state_dir)
    except ClusterError as e:
        raise _fail(e) from None


def _cmd_calibrate(a: argparse.Namespace) -> int:
    from recpar.cluster.calibrate import calibrate

    st = _load_state(a)
    try:
        res = calibrate(st, seconds=a.seconds, count=a.pings, state_dir=a.state_dir,
                        concurrent_repeats=a.concurrent_repeats)
    except (ClusterError, ValueError) as e:
        raise _fail(e) from None
    print(json.dumps(res, indent=2, sort_keys=True))
    return 0


def _cmd_launch(a: argparse.Namespace) -> int:
    from recpar.cluster.fault import load_schedule
    from recpar.cluster.launch import launch
    from recpar.cluster.topology import Topology

    argv = list(a.command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise SystemExit("recpar: cluster launch needs a command after --")
    try:
        if a.topology == "emulated":
            topo = _load_state(a).topology()
        else:
            topo = Topology("local", 1, a.nproc_per_node)
        sched = load_schedule(a.fault_schedule) if a.fault_schedule else None
        return launch(topo, argv, log_dir=a.log_dir, prefix=a.prefix, state_dir=a.state_dir,
                      rdzv_port=a.rdzv_port, fault_schedule=sched, timeout_s=a.timeout_s,
                      max_restarts=a.max_restarts)
    except (ClusterError, ValueError, FileNotFoundError) as e:
        raise _fail(e) from None


def _cmd_fault_link(a: argparse.Namespace) -> int:
    from recpar.cluster.fault import link
    from recpar.cluster.units import parse_duration, parse_loss, parse_rate

    rate = None if a.rate is None else _parse(parse_rate, a.rate, "--rate")
    lat = None if a.latency is None else _parse(parse_duration, a.latency, "--latency")
    loss = None if a.loss is None else _parse(parse_loss, a.loss, "--loss")
    if not a.reset and rate is None and lat is None and loss is None:
        raise SystemExit("recpar: fault link needs --rate, --latency, --loss or --reset")
    st = _load_state(a)
    try:
        new = link(st, a.node, rate, lat, loss, reset=a.reset, state_dir=a.state_dir)
    except (ClusterError, ValueError) as e:
        raise _fail(e) from None
    print(f"node {a.node} link now {json.dumps(new.to_dict())}")
    return 0


def _cmd_fault_straggler(a: argparse.Namespace) -> int:
    from recpar.cluster.fault import straggler
    from recpar.cluster.units import parse_duration, parse_slowdown

    slow = _parse(parse_slowdown, a.slowdown, "--slowdown")
    dur = _parse(lambda t, w: parse_duration(t, w, max_s=86400.0), a.duration, "--duration")
    st = _load_state(a)
    st.stragglers[str(a.node)] = os.getpid()  # so `down` can stop us
    try:
        st.save(a.state_dir)
        cycles = straggler(st, a.node, slow, dur, period_s=a.period_s)
    except (ClusterError, ValueError) as e:
        raise _fail(e) from None
    finally:
        from recpar.cluster.state import ClusterState

        try:  # the cluster may have been taken down meanwhile
            st = ClusterState.load(a.prefix, a.state_dir)
            st.stragglers.pop(str(a.node), None)
            st.save(a.state_dir)
        except ClusterError:
            pass
    print(f"node {a.node}: slowed {slow:g}x for {cycles} cycle(s) of {a.period_s:g} s")
    return 0


def _cmd_fault_kill(a: argparse.Namespace) -> int:
    from recpar.cluster.fault import kill_rank

    st = _load_state(a)
    try:
        pids = kill_rank(st, a.node, a.local_rank)
    except (ClusterError, ValueError) as e:
        raise _fail(e) from None
    print(f"node {a.node} local_rank {a.local_rank}: killed pid(s) {pids}")
    return 0


def _cmd_fault_schedule(a: argparse.Namespace) -> int:
    import threading

    from recpar.cluster.fault import load_schedule, run_schedule

    try:
        events = load_schedule(a.file)
    except (ValueError, FileNotFoundError) as e:
        raise _fail(e) from None
    st = _load_state(a)
    log = run_schedule(st, events, threading.Event(), a.state_dir)
    print(json.dumps(log, indent=2))
    return 0 if all(e.get("ok") for e in log) else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    g = subparsers.add_parser("cluster", help="emulated multi-node cluster (network namespaces + tc)")
    sub = g.add_subparsers(dest="cluster_cmd", metavar="<command>", required=True)

    p = sub.add_parser("up", help="create N node namespaces joined by a shaped bridge (root)")
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--ranks-per-node", type=int, required=True)
    p.add_argument("--inter-bw", default=None,
                   help="rate of each node's uplink, e.g. 100mbit, 1gbit (default: unshaped)")
    p.add_argument("--inter-latency", default="0",
                   help="one-way node-to-node latency, e.g. 5ms (without the kernel's netem: "
                        "whole ms, carried by vde2 wirefilters)")
    p.add_argument("--inter-loss", "--loss", dest="loss", default="0",
                   help="node-to-node packet loss, e.g. 0.1%% or 0.001")
    p.add_argument("--intra-bw", default=None,
                   help="rate of each device's intra-node link, e.g. 100mbit: every rank gets "
                        "its own namespace and reaches its node's other ranks over vde2 "
                        "(default: no intra-node link, ranks share the node's loopback)")
    p.add_argument("--intra-latency", default=None,
                   help="one-way device-to-device latency inside a node, whole ms, e.g. 24ms")
    p.add_argument("--scale-model", default=None, metavar="PROFILE|FILE",
                   help="scale every link from a hardware profile (e.g. paper-a100) by the "
                        "dilation D = budgeted device FLOP/s / profile FLOP/s: rates x D, "
                        "latencies / D, intra-node links included. PROFILE measures the device "
                        "first (`recpar perfmodel scale-model`, needs --cpu-budget); FILE is "
                        "that command's --out")
    p.add_argument("--cpu-budget", type=float, default=None, metavar="CORES",
                   help="with --scale-model PROFILE: the device budget to measure at")
    p.add_argument("--data-path", choices=("auto", "tc", "vde"), default="auto",
                   help="what carries inter-node frames: tc (veth + kernel shaping), vde "
                        "(user-space vde2 switches and wirefilters), auto (default): vde only "
                        "for a latency on a kernel without netem")
    _common(p)
    p.set_defaults(func=_cmd_up)

    p = sub.add_parser("check", help="say which topology `auto` resolves to here and why; "
                                     "exit 0 when an emulated cluster can be built (root)")
    p.add_argument("--scale-model", action="store_true",
                   help="also require what the scale model needs (a cgroup cpu controller for "
                        "the device budgets, vde2 for the device links); exit 0 when it can run")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("down", help="remove every namespace/link/qdisc with the prefix")
    _common(p)
    p.set_defaults(func=_cmd_down)

    p = sub.add_parser("status", help="print the cluster's state as JSON (exit 3 if not up)")
    _common(p)
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("calibrate", help="measure each link's TCP rate and latency; store them")
    p.add_argument("--seconds", type=float, default=2.0, help="bulk transfer per link (s)")
    p.add_argument("--pings", type=int, default=200, help="ping-pong round trips per link")
    p.add_argument("--concurrent-repeats", type=int, default=3,
                   help="trials of every run size's concurrent streams (their median is kept; "
                        "0: not measured)")
    _common(p)
    p.set_defaults(func=_cmd_calibrate)

    p = sub.add_parser("launch", help="run a command with torchrun on a topology",
                       description="recpar cluster launch [--topology emulated] -- "
                                   "-m recpar train ...")
    p.add_argument("--topology", choices=("local", "emulated"), default="emulated")
    p.add_argument("--nproc-per-node", type=int, default=1, help="ranks (local topology)")
    p.add_argument("--log-dir", default=None, help="torchrun --log-dir base (one dir per node)")
    p.add_argument("--rdzv-port", type=int, default=29400)
    p.add_argument("--fault-schedule", default=None, help="YAML fault schedule to run alongside")
    p.add_argument("--timeout-s", type=float, default=None, help="kill the run after this long")
    p.add_argument("--max-restarts", type=int, default=0,
                   help="torchrun --max-restarts: restart every rank this often after one fails "
                        "(default 0: a failure ends the run)")
    p.add_argument("command", nargs=argparse.REMAINDER,
                   help="after --: what torchrun runs (script + args, or -m module ...)")
    _common(p)
    p.set_defaults(func=_cmd_launch)

    f = sub.add_parser("fault", help="inject faults into a running emulated cluster")
    fsub = f.add_subparsers(dest="fault_cmd", metavar="<fault>", required=True)
    p = fsub.add_parser("link", help="change a node's live link")
    p.add_argument("--node", type=int, required=True)
    p.add_argument("--rate", default=None)
    p.add_argument("--latency", default=None)
    p.add_argument("--loss", default=None)
    p.add_argument("--reset", action="store_true", help="back to what `up` configured")
    _common(p)
    p.set_defaults(func=_cmd_fault_link)
    p = fsub.add_parser("straggler", help="slow one node by SIGSTOP/SIGCONT duty cycling")
    p.add_argument("--node", type=int, required=True)
    p.add_argument("--slowdown", required=True, help="F >= 1: the node runs 1/F of the time")
    p.add_argument("--duration", required=True, help="how long, e.g. 30s")
    p.add_argument("--period-s", type=float, default=0.1)
    _common(p)
    p.set_defaults(func=_cmd_fault_straggler)
    p = fsub.add_parser("kill-rank", help="SIGKILL one rank")
    p.add_argument("--node", type=int, required=True)
    p.add_argument("--local-rank", type=int, default=0)
    _common(p)
    p.set_defaults(func=_cmd_fault_kill)
    p = fsub.add_parser("schedule", help="run a YAML fault schedule now (blocking)")
    p.add_argument("file")
    _common(p)
    p.set_defaults(func=_cmd_fault_schedule)
