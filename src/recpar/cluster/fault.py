"""Fault injection on a running emulated cluster: a slower/lossier link, a straggler node, a
killed rank; each callable directly (`recpar cluster fault ...`) or as a timed schedule that runs
alongside a launch.

On the VDE data path (`recpar.cluster.vde`, clusters brought up with a latency on a kernel
without netem) a link change goes to the node's wirefilter through its management socket, while
it runs (latency in whole milliseconds); on the tc path it changes the veth ends' qdiscs.

Straggler mechanism: SIGSTOP/SIGCONT duty cycling of every process in the node's namespace
(runs 1/F of each period, stopped the rest). Chosen over cgroup cpu.max / cpu.cfs_quota_us
because it needs no cgroup hierarchy we may write to (v1 vs v2, containers with read-only
/sys/fs/cgroup) and acts on exactly the node's processes, which `ip netns pids` names. Its cost:
coarse (period 100 ms by default) rather than smooth throttling, and a duty-cycler killed with
SIGKILL would leave processes stopped; `down` and the launcher's cleanup send SIGCONT/SIGKILL.
The kernel keeps ACKing TCP while a process is stopped, so this slows the node's compute, not
its network.

Schedule file (YAML): a list of events, times in seconds after the launch starts (after the
run began training, for `recpar train --fault-schedule`):

    - {at_s: 5,  action: link, args: {node: 1, rate: 50mbit, loss: 1%}}
    - {at_s: 10, action: straggler, args: {node: 0, slowdown: 2, duration_s: 5}}
    - {at_s: 20, action: reset-link, args: {node: 1}}
    - {at_s: 30, action: kill-rank, args: {node: 1, local_rank: 0}}
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from recpar.atomic_write import write_text
from recpar.cluster import netns, vde
from recpar.cluster.netns import ClusterError
from recpar.cluster.shaping import LinkShape, change_shape
from recpar.cluster.state import ClusterState, state_path
from recpar.cluster.units import parse_duration, parse_loss, parse_rate, parse_slowdown

DEFAULT_PERIOD_S = 0.1  # straggler duty-cycle period
_PID_REFRESH_S = 0.5  # how often the straggler re-reads the namespace's process list
_MARKER_POLL_S = 0.05  # how often a schedule waiting for its start marker looks for it

ACTIONS = {
    # action -> (required args, optional args)
    "link": ({"node"}, {"rate", "latency", "loss"}),
    "reset-link": ({"node"}, set()),
    "straggler": ({"node", "slowdown", "duration_s"}, {"period_s"}),
    "kill-rank": ({"node"}, {"local_rank"}),
}


def _check_node(state: ClusterState, node: int) -> int:
    if isinstance(node, bool) or not isinstance(node, int) or not (0 <= node < state.nodes):
        raise ValueError(f"node: {node!r} is not a node of this cluster (0..{state.nodes - 1})")
    return node


def link(state: ClusterState, node: int, rate_bit_per_s: float | None = None,
         latency_s: float | None = None, loss: float | None = None, reset: bool = False,
         state_dir: str | os.PathLike | None = None) -> LinkShape:
    """Change node `node`'s live link (both ends); unspecified values stay as they are.
    `reset` restores the configuration `up` was given. Returns the new shape.

    Latency and loss are path values, as in `up`: afterwards a path between this node and an
    unchanged node has this one-way latency and loss (this node's ends carry what the
    unchanged node's end does not). Rate is the node's uplink rate in each direction."""
    _check_node(state, node)
    names = state.names
    old = LinkShape.from_dict(state.node_shapes[node])
    new = (LinkShape.from_dict(state.base_shape) if reset
           else old.updated(rate_bit_per_s, latency_s, loss))
    base = LinkShape.from_dict(state.base_shape)
    if state.data_path == "vde":  # the node's wirefilter, through its management socket
        vde.set_wire(vde.run_dir(state_path(state.prefix, state_dir)), node,
                     vde.wire_settings(new, base))
    else:
        if new.latency_s > 0 and not state.netem:
            raise ClusterError("this cluster's links are tc-shaped and the kernel has no netem: "
                               "latency can be changed only on a cluster brought up with "
                               "--inter-latency (the VDE data path)")
        change_shape(names.node_ns(node), names.node_dev(node), old, new, state.netem, base)
        change_shape(names.switch_ns, names.switch_dev(node), old, new, state.netem, base)
    state.node_shapes[node] = new.to_dict()
    state.save(state_dir)
    return new


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def node_pids(state: ClusterState, node: int) -> list[int]:
    """Processes of node `node`: in its namespace and its devices' (intra-node links)."""
    return [pid for ns in state.namespaces_of_node(node) for pid in netns.namespace_pids(ns)]


def straggler(state: ClusterState, node: int, slowdown: float, duration_s: float,
              period_s: float = DEFAULT_PERIOD_S, stop: threading.Event | None = None) -> int:
    """Slow node `node` to 1/`slowdown` of its speed for `duration_s` (blocking).
    Returns the number of duty cycles run. Every process is resumed before returning."""
    _check_node(state, node)
    parse_slowdown(slowdown)
    if not (period_s > 0):
        raise ValueError(f"period_s: must be > 0, got {period_s!r}")
    stop = stop or threading.Event()
    run_s = period_s / slowdown
    end = time.monotonic() + duration_s
    pids: list[int] = []
    refreshed = -1e9
    cycles = 0
    try:
        while not stop.is_set() and time.monotonic() < end:
            if time.monotonic() - refreshed > _PID_REFRESH_S:
                pids, refreshed = node_pids(state, node), time.monotonic()
            _signal_all(pids, signal.SIGCONT)
            if stop.wait(run_s):
                break
            if slowdown > 1:
                _signal_all(pids, signal.SIGSTOP)
                stop.wait(period_s - run_s)
            cycles += 1
    finally:
        _signal_all(pids, signal.SIGCONT)
        _signal_all(node_pids(state, node), signal.SIGCONT)
    return cycles


def _is_ours(pid: int) -> bool:
    try:
        return b"recpar" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def stop_stragglers(state: ClusterState, state_dir: str | os.PathLike | None = None,
                    save: bool = True) -> list[int]:
    """Stop straggler processes recorded in the state (CLI runs) and resume every process."""
    stopped = []
    for node, pid in list(state.stragglers.items()):
        if _is_ours(int(pid)):
            try:
                os.kill(int(pid), signal.SIGTERM)
                stopped.append(int(pid))
            except ProcessLookupError:
                pass
        _signal_all(node_pids(state, int(node)), signal.SIGCONT)
    state.stragglers.clear()
    if save:
        state.save(state_dir)
    return stopped


def rank_pids(state: ClusterState, node: int, local_rank: int = 0) -> list[int]:
    """pids of the torchrun worker(s) with LOCAL_RANK=`local_rank` in node `node` (topmost
    only: a worker's own children inherit LOCAL_RANK)."""
    _check_node(state, node)
    want = f"LOCAL_RANK={local_rank}".encode()
    found: dict[int, int] = {}
    for pid in node_pids(state, node):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if want in env and b"TORCHELASTIC_RUN_ID" in b"\0".join(env):
            found[pid] = int(stat[stat.rfind(")") + 2:].split()[1])
    return [pid for pid, ppid in found.items() if ppid not in found]


def kill_rank(state: ClusterState, node: int, local_rank: int = 0,
              sig: int = signal.SIGKILL) -> list[int]:
    """Kill the rank with `local_rank` on node `node`; returns the pids signalled."""
    pids = rank_pids(state, node, local_rank)
    if not pids:
        raise ClusterError(f"no rank with local_rank {local_rank} is running on node {node}")
    _signal_all(pids, sig)
    return pids


@dataclass(frozen=True)
class FaultEvent:
    """One scheduled fault."""

    at_s: float
    """Seconds after the schedule starts (the launch's start)."""
    action: str
    """One of ACTIONS: link, reset-link, straggler, kill-rank."""
    args: dict
    """Parsed arguments (rates in bit/s, times in s, loss as a probability)."""


def parse_event(raw: object, where: str) -> FaultEvent:
    """Validate one schedule entry; errors name `where` (file and index)."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping with at_s, action, args")
    extra = set(raw) - {"at_s", "action", "args"}
    if extra:
        raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(extra))}")
    action = raw.get("action")
    if action not in ACTIONS:
        raise ValueError(f"{where}: action {action!r} is not one of {', '.join(ACTIONS)}")
    try:
        at_s = float(raw.get("at_s"))
    except (TypeError, ValueError):
        raise ValueError(f"{where}: at_s {raw.get('at_s')!r} is not a number of seconds") from None
    if not (at_s >= 0):
        raise ValueError(f"{where}: at_s must be >= 0, got {at_s!r}")
    args = raw.get("args") or {}
    if not isinstance(args, dict):
        raise ValueError(f"{where}.args: expected a mapping")
    required, optional = ACTIONS[action]
    missing = required - set(args)
    if missing:
        raise ValueError(f"{where}.args: {action} needs {', '.join(sorted(missing))}")
    unknown = set(args) - required - optional
    if unknown:
        raise ValueError(f"{where}.args: {action} does not take {', '.join(sorted(unknown))}")
    out: dict = {}
    for k, v in args.items():
        w = f"{where}.args.{k}"
        if k in ("node", "local_rank"):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{w}: must be an integer >= 0, got {v!r}")
            out[k] = v
        elif k == "rate":
            out[k] = parse_rate(v, w)
        elif k == "latency":
            out[k] = parse_duration(v, w)
        elif k == "loss":
            out[k] = parse_loss(v, w)
        elif k == "slowdown":
            out[k] = parse_slowdown(v, w)
        elif k in ("duration_s", "period_s"):
            out[k] = parse_duration(v, w, max_s=86400.0)
    return FaultEvent(at_s, action, out)


def load_schedule(path: str | os.PathLike) -> list[FaultEvent]:
    """Read and validate a YAML schedule; events sorted by time."""
    import yaml

    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{p}: fault schedule not found") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, list):
        raise ValueError(f"{p}: a fault schedule is a YAML list of events")
    events = [parse_event(e, f"{p}[{i}]") for i, e in enumerate(raw)]
    return sorted(events, key=lambda e: e.at_s)


def apply_event(state: ClusterState, ev: FaultEvent, stop: threading.Event,
                state_dir: str | os.PathLike | None = None) -> threading.Thread | None:
    """Carry out one event now; a straggler runs in a thread that is returned."""
    a = ev.args
    if ev.action == "link":
        link(state, a["node"], a.get("rate"), a.get("latency"), a.get("loss"), state_dir=state_dir)
    elif ev.action == "reset-link":
        link(state, a["node"], reset=True, state_dir=state_dir)
    elif ev.action == "kill-rank":
        kill_rank(state, a["node"], a.get("local_rank", 0))
    elif ev.action == "straggler":
        _check_node(state, a["node"])
        t = threading.Thread(target=straggler, name=f"recpar-straggler-n{a['node']}",
                             args=(state, a["node"], a["slowdown"], a["duration_s"],
                                   a.get("period_s", DEFAULT_PERIOD_S), stop), daemon=True)
        t.start()
        return t
    return None


def run_schedule(state: ClusterState, events: list[FaultEvent], stop: threading.Event,
                 state_dir: str | os.PathLike | None = None,
                 log: list | None = None, log_path: str | os.PathLike | None = None,
                 start_marker: str | os.PathLike | None = None) -> list[dict]:
    """Run `events` at their times until done or `stop` is set; returns what happened (also
    appended to `log` as it happens, and written whole to `log_path` after each event, as JSON:
    a run's rank 0 reads it into its record). Each entry: the event (`at_s`, `action`, `args`),
    `started_s` after the schedule began, `unix_s` when it was applied, `ok` and `error`. A
    failing event is logged, not raised: a schedule that kills a rank must not also kill the
    launcher's cleanup.

    Times count from the schedule's start: now, or, with `start_marker`, from when that file
    appears (`recpar train` has rank 0 create it when training begins, so that faults land at
    the same point of training however long the ranks took to start)."""
    log = [] if log is None else log
    if start_marker is not None:
        while not Path(start_marker).exists():
            if stop.wait(_MARKER_POLL_S):
                return log
    t0 = time.monotonic()
    threads = []
    for ev in sorted(events, key=lambda e: e.at_s):
        if stop.wait(max(0.0, t0 + ev.at_s - time.monotonic())):
            break
        entry = {"at_s": ev.at_s, "action": ev.action, "args": ev.args,
                 "started_s": time.monotonic() - t0, "unix_s": time.time()}
        try:
            t = apply_event(state, ev, stop, state_dir)
            if t is not None:
                threads.append(t)
            entry["ok"] = True
        except (ClusterError, ValueError, OSError) as e:
            entry["ok"], entry["error"] = False, str(e)
        log.append(entry)
        if log_path is not None:
            write_text(log_path, json.dumps(log, indent=1) + "\n")
    for t in threads:
        t.join()
    return log
