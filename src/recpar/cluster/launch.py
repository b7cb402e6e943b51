"""Start ranks on a topology with torchrun, wait for them, leave nothing behind.

- `local`: `torchrun --standalone --nproc-per-node R <argv>`.
- `slurm`: inside a Slurm allocation, one `srun` step with one task per node, each task starting
  torchrun with c10d rendezvous on the step's first node (`recpar.cluster.slurm`); Slurm starts
  and stops the agents on the other nodes.
- `emulated`: one torchrun agent per node namespace (`ip netns exec <prefix>-n<i> torchrun
  --nnodes N --nproc-per-node R --rdzv-backend c10d --rdzv-endpoint
  198.18.0.1:<port> --local-addr <node addr> ...`), with GLOO_SOCKET_IFNAME set to the node's
  uplink so gloo binds to the node's address: traffic to another node crosses the shaped link,
  traffic to a rank of the same node goes over that namespace's loopback (the kernel delivers
  packets for a local address via `lo`; tests/cluster measures this). On a cluster with
  intra-node links, each rank instead enters its own device namespace (`nsenter --net`, see
  `recpar.cluster.device_links`), binds to the device's address, and reaches the node's other
  ranks over the shaped intra-node path.

The launcher waits for all agents, returns the first non-zero exit code, and on a failure (or
when it is itself interrupted) terminates every other agent's process group. Each agent also gets
SIGTERM from the kernel if the launcher dies (PR_SET_PDEATHSIG), and torchrun then stops its
workers; `recpar cluster down` kills whatever is left in our namespaces.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from recpar.cluster import device_links, elastic, netns, slurm
from recpar.cluster.calibrate import package_env
from recpar.cluster.netns import ClusterError
from recpar.cluster.state import ClusterState
from recpar.cluster.topology import Topology

DEFAULT_RDZV_PORT = 29400
TERM_GRACE_S = 5.0  # torchrun forwards SIGTERM to its workers and waits for them
_PR_SET_PDEATHSIG = 1


def _torchrun() -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run"]


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the launcher dies (Linux prctl)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def agent_commands(topology: Topology, argv: list[str], state: ClusterState | None = None,
                   log_dir: str | os.PathLike | None = None, rdzv_port: int = DEFAULT_RDZV_PORT,
                   rdzv_id: str | None = None, max_restarts: int = 0,
                   ) -> list[tuple[list[str], dict[str, str]]]:
    """(command, extra env) for each torchrun agent; pure, so it is unit-testable.
    `max_restarts`: torchrun's restarts of the ranks after a failure (recpar.cluster.elastic)."""
    if not argv:
        raise ValueError("launch: empty command (give a script and its arguments, or -m module)")
    common = ["--nproc-per-node", str(topology.ranks_per_node),
              *elastic.restart_args(max_restarts)]
    env_topo = {**topology.to_env(), **elastic.AGENT_ENV}
    if topology.kind == "local":
        cmd = [*_torchrun(), "--standalone", *common]
        if log_dir is not None:
            cmd += ["--log-dir", str(Path(log_dir) / "node0")]
        return [([*cmd, *argv], dict(env_topo))]
    if topology.kind != "emulated":
        raise ValueError(f"launch: topology kind {topology.kind!r} is started by its scheduler "
                         f"(srun), not by recpar.cluster.launch")
    if state is None:
        raise ValueError("launch: an emulated topology needs the cluster state (recpar cluster up)")
    # A run may use the first `topology.nodes` nodes of a larger cluster (one `up` serves a
    # 1..N-node sweep); a namespace does not limit how many ranks run in it, so ranks per node
    # is the run's own choice.
    if topology.nodes > state.nodes:
        raise ClusterError(f"launch: topology needs {topology.nodes} node(s) but the cluster "
                           f"that is up has {state.nodes}")
    names = state.names
    devices = state.intra_shape is not None
    if devices:
        device_links.check_ranks(state.ranks_per_node, topology.ranks_per_node)
    rdzv_id = rdzv_id or f"recpar-{uuid.uuid4().hex[:12]}"
    out = []
    for i in range(topology.nodes):
        cmd = [*_torchrun(), "--nnodes", str(topology.nodes), *common,
               # No --node-rank: c10d rendezvous numbers the nodes in the sorted order of
               # (--local-addr, agent pid), the same in every round of a restart (torchrun
               # ignores --node-rank with a warning); each agent's ranks stay contiguous.
               "--rdzv-backend", "c10d",
               "--rdzv-endpoint", f"{names.node_addr(0)}:{rdzv_port}", "--rdzv-id", rdzv_id,
               # Explicit: node 0's agent hosts the rendezvous store (no hostname guessing).
               "--rdzv-conf", f"is_host={'true' if i == 0 else 'false'}",
               "--local-addr", names.node_addr(i)]
        if log_dir is not None:
            cmd += ["--log-dir", str(Path(log_dir) / f"node{i}")]
        ifname = names.device_dev if devices else names.node_dev(i)
        env = {**env_topo,
               "GLOO_SOCKET_IFNAME": ifname,
               "NCCL_SOCKET_IFNAME": ifname,
               "TP_SOCKET_IFNAME": ifname,
               "RECPAR_NODE_INDEX": str(i)}
        worker = ([*device_links.worker_wrapper(names, i), sys.executable, *argv] if devices
                  else argv)
        if devices:
            cmd.append("--no-python")
        out.append((netns.netns_exec(names.node_ns(i), [*cmd, *worker]), env))
    return out


def slurm_commands(topology: Topology, argv: list[str], environ: dict[str, str] | None = None,
                   rdzv_port: int = DEFAULT_RDZV_PORT, run=None,
                   max_restarts: int = 0) -> list[tuple[list[str], dict[str, str]]]:
    """The one (srun command, extra env) of a `slurm` topology, after checking that this process
    runs in an allocation with enough nodes (a wrong setting fails before any rank starts)."""
    kw = {} if run is None else {"run": run}
    alloc = slurm.check_allocation(topology, environ, **kw)
    cmd = slurm.srun_command(topology, argv, alloc.job_id, rdzv_port=rdzv_port,
                             max_restarts=max_restarts)
    return [(cmd, topology.to_env())]


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process, from /proc/<pid>/stat."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2:].split()  # the command name may contain spaces
    return int(fields[1]), int(fields[19])


def _descendants(roots: list[int]) -> dict[int, int]:
    """pid -> start time of every live descendant of `roots` (one /proc scan).

    torchrun starts each worker in a session of its own, so killing the agent's process group
    misses the workers; the launcher remembers the whole tree instead (pid + start time, so a
    recycled pid is never signalled).
    """
    parent: dict[int, int] = {}
    start: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _proc_stat(int(entry))
            if st is not None:
                parent[int(entry)], start[int(entry)] = st
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    out: dict[int, int] = {}
    todo = list(roots)
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out[c] = start[c]
                todo.append(c)
    return out


def _kill_remembered(tree: dict[int, int]) -> None:
    for pid, started in tree.items():
        st = _proc_stat(pid)
        if st is not None and st[1] == started:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def with_cluster_links(topology: Topology, state: ClusterState) -> Topology:
    """A run's topology on the emulated cluster `state`: the links as configured and as the
    calibration measured them for the run's node count, next to its own layout (what the ranks
    and the record see; `recpar train` puts the same in the spec before any rank starts)."""
    cal = state.topology(topology.nodes)
    return Topology(**{**topology.__dict__,
                       "calibrated_rate_bit_per_s": cal.calibrated_rate_bit_per_s,
                       "calibrated_latency_s": cal.calibrated_latency_s,
                       "calibrated_concurrent_rate_bit_per_s":
                           cal.calibrated_concurrent_rate_bit_per_s,
                       "inter_rate_bit_per_s": cal.inter_rate_bit_per_s,
                       "inter_latency_s": cal.inter_latency_s,
                       "inter_loss": cal.inter_loss,
                       "intra_rate_bit_per_s": cal.intra_rate_bit_per_s,
                       "intra_latency_s": cal.intra_latency_s,
                       "calibrated_intra_rate_bit_per_s":
                           cal.calibrated_intra_rate_bit_per_s,
                       "calibrated_intra_latency_s": cal.calibrated_intra_latency_s,
                       "calibrated_intra_concurrent_rate_bit_per_s":
                           cal.calibrated_intra_concurrent_rate_bit_per_s,
                       "scale_model": cal.scale_model})


def launch(topology: Topology, argv: list[str], env: dict[str, str] | None = None,
           log_dir: str | os.PathLike | None = None, *, prefix: str = netns.DEFAULT_PREFIX,
           state_dir: str | os.PathLike | None = None, rdzv_port: int = DEFAULT_RDZV_PORT,
           fault_schedule: list | None = None, timeout_s: float | None = None,
           max_restarts: int = 0, fault_log: str | os.PathLike | None = None,
           fault_start_marker: str | os.PathLike | None = None) -> int:
    """Run `argv` (what follows torchrun's options: a script and its args, or `-m module ...`)
    on `topology`; return 0 or the first non-zero exit code of an agent.

    `max_restarts`: how often torchrun restarts the ranks after one fails (each agent's own
    budget; an agent exits non-zero only when its budget is spent).

    `fault_schedule`: parsed events (recpar.cluster.fault.load_schedule) run alongside;
    `fault_log`: where what they did is written as it happens (JSON, see `run_schedule`);
    `fault_start_marker`: the schedule's times count from when this file appears.
    `timeout_s`: kill everything and return 124 when the run takes longer.
    """
    state = None
    if topology.kind == "slurm":
        if fault_schedule:
            raise ValueError("launch: fault schedules need the emulated topology")
        commands = slurm_commands(topology, argv, rdzv_port=rdzv_port,
                                  max_restarts=max_restarts)
    elif topology.kind == "emulated":
        netns.require_root_and_iproute2("cluster launch")
        state = ClusterState.load(prefix, state_dir)
        topology = with_cluster_links(topology, state)
    elif fault_schedule:
        raise ValueError("launch: fault schedules need the emulated topology")
    if topology.kind != "slurm":
        commands = agent_commands(topology, argv, state, log_dir, rdzv_port,
                                  max_restarts=max_restarts)
    if log_dir is not None:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
    base_env = package_env(env)
    if topology.kind == "slurm":
        base_env = slurm.srun_env(base_env)
    procs: list[subprocess.Popen] = []
    stop = threading.Event()
    sched_thread = None
    tree: dict[int, int] = {}
    rc = 0
    try:
        for cmd, extra in commands:
            procs.append(subprocess.Popen(cmd, env={**base_env, **extra},
                                          start_new_session=True, preexec_fn=_die_with_parent))
        if fault_schedule:
            from recpar.cluster.fault import run_schedule

            sched_thread = threading.Thread(
                target=run_schedule, args=(state, fault_schedule, stop, state_dir),
                kwargs={"log_path": fault_log, "start_marker": fault_start_marker},
                name="recpar-fault-schedule", daemon=True)
            sched_thread.start()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            tree.update(_descendants([p.pid for p in procs]))
            codes = [p.poll() for p in procs]
            bad = [c for c in codes if c not in (None, 0)]
            if bad:
                rc = bad[0]
                break
            if all(c == 0 for c in codes):
                break
            if deadline is not None and time.monotonic() > deadline:
                rc = 124
                break
            time.sleep(0.1)
    finally:
        stop.set()
        tree.update(_descendants([p.pid for p in procs]))
        alive = [p for p in procs if p.poll() is None]
        for p in alive:
            _kill_group(p, signal.SIGTERM)
        end = time.monotonic() + TERM_GRACE_S
        for p in alive:
            try:
                p.wait(timeout=max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for p in procs:  # also reap grandchildren left in a finished agent's group
            _kill_group(p, signal.SIGKILL)
            p.wait()
        _kill_remembered(tree)
        if state is not None:  # our namespaces hold nothing but this run's processes
            for i in range(state.nodes):
                for ns in state.namespaces_of_node(i):
                    netns.kill_namespace_processes(ns)
        if sched_thread is not None:
            sched_thread.join(timeout=TERM_GRACE_S)
    return rc
