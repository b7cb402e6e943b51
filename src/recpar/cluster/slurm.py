"""Multi-node runs inside a Slurm allocation: one `srun` task per node, each starting torchrun.

Two halves, both thin over Slurm's own tools:

- launcher side (`srun_command`, `check_allocation`): `recpar train --topology slurm`, run inside
  an allocation (a batch script of `sbatch`, a shell of `salloc`, or a job of
  `profiles/slurm`), starts one job step of N tasks, one per node:
  `srun --nodes N --ntasks N --ntasks-per-node 1 --overlap ... python -m recpar.cluster.slurm
  --nnodes N --nproc-per-node R --rdzv-port P -- <argv>`.
- task side (`torchrun_command`, `main`), run by srun on every node of the step: reads the
  step's node list, expands it with `scontrol show hostnames`, takes the first node as the
  rendezvous host (its Slurm `NodeAddr`, from `scontrol show node`) and execs torchrun with c10d
  rendezvous there, `--local-addr` = this node's `NodeAddr`.

Why the rendezvous is computed inside the task: snakemake-executor-plugin-slurm's jobstep
executor removes every SLURM_* variable except the job id before it runs a rule, so the batch
script's SLURM_JOB_NODELIST / SLURM_NNODES are gone by the time `recpar train` runs. The
variables of the srun'd step (SLURM_STEP_NODELIST, SLURMD_NODENAME, SLURM_NODEID) are set by
slurmstepd in each task, so they are always there. The only thing the launcher needs is the job
id (kept by the plugin); the allocation's size comes from `scontrol show job`.

Why NodeAddr and not the host name: NodeAddr is the address Slurm itself reaches the node at, so
it is routable from the other nodes even where node names do not resolve (the emulated test
cluster, whose nodes are network namespaces of one machine). When GLOO_SOCKET_IFNAME is not set,
it is set to the interface that carries that address (gloo otherwise binds to whatever the host
name resolves to); NCCL's interface choice is left to NCCL and the user.

Why by hand: torchrun has no Slurm integration (`torch.distributed.run` does not read Slurm's
node list) and Slurm does not start torchrun; the glue is these few lines.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from recpar.cluster import elastic
from recpar.cluster.topology import Topology

DEFAULT_RDZV_PORT = 29400
SCONTROL_TIMEOUT_S = 30.0

Runner = Callable[[list[str]], str]
"""Runs a command and returns its stdout (tests pass a fake; default: subprocess)."""


class SlurmError(RuntimeError):
    """A Slurm launch cannot proceed; the message names the variable, command or value."""


def _run(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=SCONTROL_TIMEOUT_S)
    except FileNotFoundError:
        raise SlurmError(f"{argv[0]}: not found (topology slurm needs Slurm's client "
                         "commands on PATH)") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{' '.join(argv)}: no answer in {SCONTROL_TIMEOUT_S:.0f} s") from None
    if proc.returncode != 0:
        raise SlurmError(f"{' '.join(argv)} failed (exit {proc.returncode}): "
                         f"{proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def _field(text: str, key: str, what: str) -> str:
    """Value of `key=` in one-line `scontrol -o` output."""
    m = re.search(rf"(?:^|\s){re.escape(key)}=(\S*)", text)
    if m is None:
        raise SlurmError(f"{what}: no {key}= in scontrol's answer: {text.strip()[:200]!r}")
    return m.group(1)


def job_id(environ: Mapping[str, str] | None = None) -> str:
    """The allocation this process runs in (SLURM_JOB_ID), or a SlurmError saying how to get one."""
    env = os.environ if environ is None else environ
    jid = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")
    if not jid:
        raise SlurmError("topology slurm: SLURM_JOB_ID is not set; run inside a Slurm allocation "
                         "(an sbatch script, an salloc shell, or snakemake --profile "
                         "profiles/slurm)")
    if not re.fullmatch(r"\d+(_\d+)?", jid):
        raise SlurmError(f"topology slurm: SLURM_JOB_ID = {jid!r} is not a Slurm job id")
    return jid


@dataclass(frozen=True)
class Allocation:
    """What `scontrol show job` says about the allocation (no host names leave this module)."""

    job_id: str
    nodes: int
    node_list: str
    """Slurm's compressed node list, e.g. `gpu[01-04]`."""


def allocation(jid: str, run: Runner = _run) -> Allocation:
    out = run(["scontrol", "show", "job", "-o", jid])
    what = f"scontrol show job {jid}"
    nodes = _field(out, "NumNodes", what).split("-")[0]  # "2" or a range "2-4" while pending
    if not nodes.isdigit():
        raise SlurmError(f"{what}: NumNodes = {nodes!r} is not a number")
    return Allocation(job_id=jid, nodes=int(nodes), node_list=_field(out, "NodeList", what))


def check_allocation(topology: Topology, environ: Mapping[str, str] | None = None,
                     run: Runner = _run) -> Allocation:
    """The run fits the allocation: a job id, and at least `topology.nodes` nodes in it."""
    if topology.kind != "slurm":
        raise ValueError(f"slurm launch: topology kind is {topology.kind!r}, not 'slurm'")
    alloc = allocation(job_id(environ), run)
    if alloc.nodes < topology.nodes:
        raise SlurmError(f"topology slurm: the run needs {topology.nodes} node(s) but job "
                         f"{alloc.job_id} has {alloc.nodes} (ask sbatch/salloc for --nodes "
                         f"{topology.nodes}, or set the run's nodes)")
    return alloc


KEEP_FOR_SRUN = ("SLURM_JOB_ID", "SLURM_JOBID", "SLURM_CONF", "SLURM_CLUSTER_NAME")
"""SLURM_* variables `srun` may inherit: the allocation's identity, nothing of a step."""


def srun_env(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` without the variables of the step `recpar train` runs in (SLURM_NNODES,
    SLURM_NODELIST, SLURM_STEP_*, SRUN_*/SBATCH_* defaults): srun would take them as the size of
    the allocation ("Only allocated 1 nodes asked for 2") or as options for the new step. The
    plugin's jobstep executor cleans its own nested srun the same way."""
    return {k: v for k, v in environ.items()
            if not (k.startswith(("SLURM_", "SRUN_", "SBATCH_")) and k not in KEEP_FOR_SRUN)}


def srun_command(topology: Topology, argv: Sequence[str], jid: str,
                 rdzv_port: int = DEFAULT_RDZV_PORT,
                 python: str | None = None, max_restarts: int = 0) -> list[str]:
    """The one `srun` that starts the run: one task per node, each running `task_main`.

    `--overlap`: the step may share CPUs, memory and GPUs with the step `recpar train` itself
    runs in (the plugin runs every rule inside an `srun -n1` step); without it the new step would
    wait for resources that step holds. Without `--exact` a step gets every CPU the job has on
    its nodes, and every GPU the job asked for.
    """
    if not argv:
        raise ValueError("slurm launch: empty command (give a script and its arguments, "
                         "or -m module)")
    n = str(topology.nodes)
    return ["srun", f"--jobid={jid}", f"--nodes={n}", f"--ntasks={n}", "--ntasks-per-node=1",
            "--overlap", "--kill-on-bad-exit=1", "--export=ALL",
            python or sys.executable, "-m", "recpar.cluster.slurm",
            "--nnodes", n, "--nproc-per-node", str(topology.ranks_per_node),
            "--rdzv-port", str(rdzv_port), *elastic.restart_args(max_restarts), "--", *argv]


def job_resources(nodes: int, ranks_per_node: int, device: str) -> dict:
    """Snakemake resources of one run's Slurm job (snakemake-executor-plugin-slurm's names).

    `nodes` always; on `cuda`, `gres=gpu:<ranks per node>` and no task count (the plugin turns
    `tasks` into --ntasks-per-gpu on GPU jobs; Slurm's default is one task per node); on `cpu`,
    `tasks=nodes` (the plugin passes --ntasks, 1 by default, which would shrink the job to one
    node).
    """
    for name, v in (("nodes", nodes), ("ranks_per_node", ranks_per_node)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"slurm job: {name} must be an integer >= 1, got {v!r}")
    if device == "cuda":
        return {"nodes": nodes, "gres": f"gpu:{ranks_per_node}"}
    if device == "cpu":
        return {"nodes": nodes, "tasks": nodes}
    raise ValueError(f"slurm job: train.device {device!r} is not cpu or cuda")


# ---- task side: runs once per node, started by srun ----

def hostnames(node_list: str, run: Runner = _run) -> list[str]:
    names = run(["scontrol", "show", "hostnames", node_list]).split()
    if not names:
        raise SlurmError(f"scontrol show hostnames {node_list}: empty")
    return names


def node_addr(name: str, run: Runner = _run) -> str:
    """Slurm's NodeAddr of node `name` (where slurmctld reaches its slurmd)."""
    return _field(run(["scontrol", "show", "node", "-o", name]), "NodeAddr",
                  f"scontrol show node {name}")


def interface_of(addr: str) -> str | None:
    """The local interface that holds `addr` (an IP or a name resolving to one), or None."""
    import psutil

    try:
        ip = socket.gethostbyname(addr)
    except OSError:
        return None
    for dev, addrs in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == ip for a in addrs):
            return dev
    return None


def torchrun_command(environ: Mapping[str, str], nnodes: int, nproc_per_node: int,
                     argv: Sequence[str], rdzv_port: int = DEFAULT_RDZV_PORT,
                     run: Runner = _run,
                     find_interface: Callable[[str], str | None] = interface_of,
                     max_restarts: int = 0) -> tuple[list[str], dict[str, str]]:
    """(torchrun argv, env additions) for this srun task; pure given `run`, so unit-testable."""
    missing = [v for v in ("SLURM_JOB_ID", "SLURMD_NODENAME", "SLURM_NODEID")
               if not environ.get(v)]
    node_list = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST")
    if missing or not node_list:
        missing += [] if node_list else ["SLURM_STEP_NODELIST"]
        raise SlurmError(f"recpar.cluster.slurm: {', '.join(missing)} not set; this runs as an "
                         "srun task (started by `recpar train --topology slurm`)")
    names = hostnames(node_list, run)
    if len(names) != nnodes:
        raise SlurmError(f"recpar.cluster.slurm: the step has {len(names)} node(s) "
                         f"({node_list}) but --nnodes is {nnodes}")
    me = environ["SLURMD_NODENAME"]
    first_addr = node_addr(names[0], run)
    my_addr = first_addr if me == names[0] else node_addr(me, run)
    step = environ.get("SLURM_STEP_ID", "0")
    cmd = [sys.executable, "-m", "torch.distributed.run",
           "--nnodes", str(nnodes), "--nproc-per-node", str(nproc_per_node),
           *elastic.restart_args(max_restarts),
           # No --node-rank: c10d numbers the nodes in the sorted order of (--local-addr,
           # agent pid), the same in every round of a restart; each node's ranks stay
           # contiguous.
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{first_addr}:{rdzv_port}",
           "--rdzv-id", f"slurm-{environ['SLURM_JOB_ID']}.{step}",
           # The first node's agent hosts the rendezvous store (no host name guessing).
           "--rdzv-conf", f"is_host={'true' if me == names[0] else 'false'}",
           "--local-addr", my_addr, *argv]
    env = {"RECPAR_NODE_INDEX": environ["SLURM_NODEID"], **elastic.AGENT_ENV}
    if not environ.get("GLOO_SOCKET_IFNAME"):
        dev = find_interface(my_addr)
        if dev is not None:
            env["GLOO_SOCKET_IFNAME"] = dev
    return cmd, env


def main(args: Sequence[str] | None = None) -> int:
    """srun task entry point: replace this process with torchrun (slurmstepd tracks it)."""
    p = argparse.ArgumentParser(prog="python -m recpar.cluster.slurm",
                                description="one node's torchrun agent under srun")
    p.add_argument("--nnodes", type=int, required=True)
    p.add_argument("--nproc-per-node", type=int, required=True)
    p.add_argument("--rdzv-port", type=int, default=DEFAULT_RDZV_PORT)
    p.add_argument("--max-restarts", type=int, default=0)
    p.add_argument("command", nargs=argparse.REMAINDER)
    a = p.parse_args(args)
    argv = a.command[1:] if a.command[:1] == ["--"] else a.command
    try:
        cmd, extra = torchrun_command(os.environ, a.nnodes, a.nproc_per_node, argv, a.rdzv_port,
                                      max_restarts=a.max_restarts)
    except (SlurmError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sys.stdout.flush()
    os.execve(cmd[0], cmd, {**os.environ, **extra})
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
