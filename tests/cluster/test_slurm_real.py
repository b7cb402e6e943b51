"""A real Slurm (munged, slurmctld, one slurmd per emulated node) running the `.test` pipeline
through `--profile profiles/slurm`, including a 2-node run whose torchrun rendezvous crosses the
shaped link between two network namespaces.

Layout: an emulated cluster of 2 nodes (namespaces rps-n0, rps-n1, 100 Mbit/s links). slurmctld
and slurmd n0 run in rps-n0 (a controller that is also a compute node), slurmd n1 in rps-n1,
each node's `NodeAddr` its namespace's address. Snakemake (the "login node") runs in rps-n0 too:
the namespaces have no route to the host. munged runs on the host with its own key and socket
(the namespaces share the file system); slurm.conf names that socket.

slurm.conf reaches every Slurm command at the default path /etc/slurm/slurm.conf: each daemon and
the Snakemake run start in a private mount namespace where the test's config directory is
bind-mounted over /etc/slurm (the host's /etc/slurm is untouched). SLURM_CONF cannot carry it:
the plugin's jobstep executor removes every SLURM_* variable before it runs a rule.

Every daemon is stopped by its pid, and the namespaces, spool and state directories are removed,
also when the test fails. Needs root and network namespaces; installs Debian's
slurm-wlm and munge when missing (skipped with the reason when that fails).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from .conftest import needs_root

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.slurm, needs_root]

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "rps"  # not rp / rpt: never disturbs a user's cluster or the emulated tests
NODES = 2
NODE_REGISTER_TIMEOUT_S = 30.0


def _install_reason() -> str | None:
    if shutil.which("slurmctld") and shutil.which("slurmd") and shutil.which("munged"):
        return None
    try:
        r = subprocess.run(["apt-get", "install", "-y", "slurm-wlm", "munge"],
                           capture_output=True, text=True, timeout=900,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"slurm-wlm/munge missing and apt-get failed: {e}"
    if r.returncode != 0:
        return f"slurm-wlm/munge missing and apt-get install failed: {r.stderr.strip()[-300:]}"
    return None


def _slurm_conf(tmp: Path, names) -> str:
    host = socket.gethostname().split(".")[0]
    nodes = "\n".join(f"NodeName=n{i} NodeAddr={names.node_addr(i)} CPUs={os.cpu_count()} "
                      f"RealMemory=8192 State=UNKNOWN" for i in range(NODES))
    return f"""# recpar test cluster (tests/cluster/test_slurm_real.py)
ClusterName=recpartest
SlurmctldHost={host}({names.node_addr(0)})
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={tmp}/munge/munge.socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation={tmp}/state
SlurmdSpoolDir={tmp}/spool/%n
SlurmctldPidFile={tmp}/slurmctld.pid
SlurmdPidFile={tmp}/slurmd-%n.pid
SlurmctldLogFile={tmp}/slurmctld.log
SlurmdLogFile={tmp}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MinJobAge=300
KillWait=5
InactiveLimit=0
{nodes}
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def _in_ns(i: int, etc_slurm: Path, argv: list[str]) -> list[str]:
    """argv in node i's network namespace and a private mount namespace whose /etc/slurm is
    `etc_slurm` (Slurm's default config path; the host's /etc/slurm is not touched). Not `ip
    netns exec`: it mounts a fresh /sys without the cgroup file systems slurmd needs. Every step
    execs the next, so the pid is argv's."""
    return ["nsenter", f"--net=/run/netns/{PREFIX}-n{i}", "unshare", "--mount",
            "--propagation", "slave", "sh", "-c",
            f'mount --bind {etc_slurm} /etc/slurm && exec "$@"', "sh", *argv]


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in reversed(procs):  # slurmds, slurmctld, then munged
        if p.poll() is None:
            p.terminate()
    for p in reversed(procs):
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@pytest.fixture(scope="module")
def slurm_cluster():
    reason = _install_reason()
    if reason is not None:
        pytest.skip(reason)
    from recpar.cluster import emulated
    from recpar.cluster.shaping import LinkShape

    tmp = Path(tempfile.mkdtemp(prefix="recpar-slurm-"))
    os.chmod(tmp, 0o755)
    procs: list[subprocess.Popen] = []
    emulated.down(PREFIX, tmp / "cluster")  # leftovers of a crashed run
    try:
        st = emulated.up(NODES, 1, LinkShape(rate_bit_per_s=100e6), PREFIX, tmp / "cluster")
        # munged: own key and socket, started as the munge user (it refuses root)
        mdir = tmp / "munge"
        mdir.mkdir()
        key = mdir / "munge.key"
        key.write_bytes(os.urandom(1024))
        for p in (mdir, key):
            shutil.chown(p, "munge", "munge")
        key.chmod(0o400)
        procs.append(subprocess.Popen(
            ["munged", "-F", "--socket", str(mdir / "munge.socket"), "--key-file", str(key),
             "--pid-file", str(mdir / "munged.pid"), "--log-file", str(mdir / "munged.log"),
             "--seed-file", str(mdir / "munged.seed")], user="munge", group="munge",
            stdout=subprocess.DEVNULL, stderr=open(mdir / "munged.err", "w")))
        for d in ("state", "spool"):
            (tmp / d).mkdir()
        etc = tmp / "etc"
        etc.mkdir()
        (etc / "slurm.conf").write_text(_slurm_conf(tmp, st.names))
        deadline = time.monotonic() + 10
        while not (mdir / "munge.socket").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        log = open(tmp / "daemons.out", "w")
        procs.append(subprocess.Popen(_in_ns(0, etc, ["slurmctld", "-D", "-c"]), stdout=log,
                                      stderr=subprocess.STDOUT))
        for i in range(NODES):
            procs.append(subprocess.Popen(_in_ns(i, etc, ["slurmd", "-D", "-N", f"n{i}"]),
                                          stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + NODE_REGISTER_TIMEOUT_S
        states = ""
        while time.monotonic() < deadline:
            r = subprocess.run(_in_ns(0, etc, ["sinfo", "-h", "-N", "-o", "%N %T"]),
                               capture_output=True, text=True)
            states = r.stdout + r.stderr
            if r.returncode == 0 and states.count("idle") == NODES:
                break
            time.sleep(1)
        else:
            dead = [p.args for p in procs if p.poll() is not None]
            logs = "".join(f"\n--- {f.name}\n{f.read_text()[-1500:]}"
                           for f in sorted(tmp.glob("*.out")) + sorted(tmp.glob("slurm*.log")))
            pytest.fail(f"Slurm nodes did not register in {NODE_REGISTER_TIMEOUT_S:.0f} s: "
                        f"{states!r}; exited: {dead}{logs}")
        yield {"tmp": tmp, "state": st, "etc": etc}
    finally:
        _stop(procs)
        emulated.down(PREFIX, tmp / "cluster")
        shutil.rmtree(tmp, ignore_errors=True)
        from recpar.cluster import netns

        assert not [n for n in netns.list_namespaces() if n.startswith(f"{PREFIX}-")]
        assert all(p.poll() is not None for p in procs)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    return env


def test_test_pipeline_through_the_slurm_profile_with_a_two_node_run(slurm_cluster, tmp_path):
    cfg = yaml.safe_load((ROOT / ".test" / "config" / "config.yaml").read_text())
    cfg["topology"] = "slurm"
    cfg["seeds"] = [0]
    # The sweep's part of the DAG (prepare, embed, the runs, the paper tables) as Slurm jobs:
    # its reference run and a 2-node run. The whole DAG runs locally in
    # tests/workflow/test_snakemake.py; each Slurm job costs tens of seconds of scheduling here
    # (make test stays under 20 min).
    cfg["sweep"]["runs"] = {"baseline-tiny-n1": cfg["sweep"]["runs"]["baseline-tiny-n1"],
                            "dp2-ring-tiny-n2": {"scheme": "dp", "dp": 2, "nodes": 2}}
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    snakemake = str(Path(sys.executable).parent / "snakemake")
    t0 = time.monotonic()
    r = subprocess.run(_in_ns(0, slurm_cluster["etc"], [
        snakemake, *[f"paper_tables/laptop/{name}" for name in ("table2.md", "table3.md",
                                                                 "claims.md")],
        "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
        "--profile", str(ROOT / "profiles" / "slurm"),
        "--slurm-init-seconds-before-status-checks", "2",
        "--default-resources", "slurm_partition=test", "runtime=20", "mem_mb=1000"]),
        env=_env(), capture_output=True, text=True, timeout=900)
    took_s = time.monotonic() - t0
    out = r.stdout + r.stderr
    logs = "\n".join(f"--- {p}\n{p.read_text()[-1500:]}"
                     for p in sorted((tmp_path / ".snakemake" / "slurm_logs").rglob("*.log")))
    assert r.returncode == 0, out[-4000:] + logs[-6000:]
    assert "recpar: topology slurm" in out
    print(f"slurm pipeline: {took_s:.0f} s")

    from recpar.train import record

    run_dir = tmp_path / "results" / "movielens-100k" / "laptop"
    rec = record.read(run_dir / "dp2-ring-tiny-n2" / "seed0" / "record.json")
    topo = rec["topology"]
    assert (topo["kind"], topo["nodes"], topo["ranks_per_node"], topo["world_size"]) == \
        ("slurm", 2, 1, 2)
    for name in ("table2.md", "table3.md", "claims.md"):
        assert (tmp_path / "paper_tables" / "laptop" / name).exists(), name
    assert (tmp_path / "paper_tables" / "laptop" / "records").is_dir()
    # the same run on this machine's loopback trains the same model
    train = {**cfg["train"], **cfg["sweep"]["train"]}
    local = tmp_path / "local"
    rl = subprocess.run(
        [sys.executable, "-m", "recpar.cli", "train", "--run-id", "dp2-ring-tiny-n2",
         "--data", str(tmp_path / "results" / "data" / "movielens-100k"), "--out", str(local),
         "--model-size", "tiny", "--seed", "0", "--no-progress", "--topology", "local",
         "--run-options", json.dumps({"scheme": "dp", "dp": 2, "nodes": 2}),
         *[f"--set={k}={v}" for k, v in train.items()],
         *[f"--model-override={k}={v}" for k, v in cfg["model"]["overrides"].items()]],
        env=_env(), capture_output=True, text=True, timeout=600)
    assert rl.returncode == 0, (rl.stdout + rl.stderr)[-3000:]
    loc = record.read(local / "record.json")
    assert loc["topology"]["kind"] == "local"
    assert [h["train_loss"] for h in rec["history"]] == \
        pytest.approx([h["train_loss"] for h in loc["history"]], rel=1e-5)
    assert rec["quality"]["test"] == loc["quality"]["test"]
