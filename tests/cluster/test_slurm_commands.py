"""The sbatch / srun / torchrun command lines of a Slurm run (nothing started, no Slurm needed).

The sbatch line is built by snakemake-executor-plugin-slurm itself from the resources the
workflow gives a run (recpar.cluster.slurm.job_resources) and the ones profiles/slurm sets.
"""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from recpar.cluster import slurm
from recpar.cluster.launch import agent_commands, slurm_commands
from recpar.cluster.slurm import SlurmError, job_resources, srun_command, torchrun_command
from recpar.cluster.topology import ENV_VAR, Topology

ROOT = Path(__file__).resolve().parents[2]
NODES = ["gpu07", "gpu08", "gpu11", "gpu12"]
ADDRS = {n: f"10.0.0.{i + 7}" for i, n in enumerate(NODES)}


def fake_scontrol(num_nodes=4, node_list="gpu[07-08,11-12]"):
    """What `scontrol` answers for a 4-node job (one line per `-o` query)."""
    calls = []

    def run(argv):
        calls.append(argv)
        if argv[:3] == ["scontrol", "show", "job"]:
            return (f"JobId={argv[-1]} JobName=x UserId=u(1) JobState=RUNNING "
                    f"NodeList={node_list} BatchHost=gpu07 NumNodes={num_nodes} NumCPUs=128 "
                    "CPUs/Task=32 TRES=cpu=128,node=4,gres/gpu=32\n")
        if argv[:3] == ["scontrol", "show", "hostnames"]:
            assert argv[3] == node_list
            return "\n".join(NODES) + "\n"
        if argv[:3] == ["scontrol", "show", "node"]:
            name = argv[-1]
            return f"NodeName={name} Arch=x86_64 NodeAddr={ADDRS[name]} NodeHostName={name}\n"
        raise AssertionError(argv)

    run.calls = calls
    return run


def test_srun_starts_one_task_per_node_for_4_nodes_of_8_gpus():
    cmd = srun_command(Topology("slurm", 4, 8), ["-m", "recpar.train.worker", "spec.json"],
                       "4242", rdzv_port=29500, python="/venv/bin/python")
    assert cmd == ["srun", "--jobid=4242", "--nodes=4", "--ntasks=4", "--ntasks-per-node=1",
                   "--overlap", "--kill-on-bad-exit=1", "--export=ALL",
                   "/venv/bin/python", "-m", "recpar.cluster.slurm", "--nnodes", "4",
                   "--nproc-per-node", "8", "--rdzv-port", "29500", "--max-restarts", "0", "--",
                   "-m", "recpar.train.worker", "spec.json"]


@pytest.mark.parametrize("node_id", range(4))
def test_each_task_starts_torchrun_with_rendezvous_on_the_first_node(node_id):
    me = NODES[node_id]
    env = {"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "3", "SLURM_STEP_NODELIST": "gpu[07-08,11-12]",
           "SLURMD_NODENAME": me, "SLURM_NODEID": str(node_id)}
    seen = []
    cmd, extra = torchrun_command(env, 4, 8, ["-m", "recpar.train.worker", "spec.json"],
                                  rdzv_port=29500, run=fake_scontrol(),
                                  find_interface=lambda a: seen.append(a) or "ib0")
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert cmd[cmd.index("--nnodes") + 1] == "4"
    assert cmd[cmd.index("--nproc-per-node") + 1] == "8"
    assert cmd[cmd.index("--rdzv-backend") + 1] == "c10d"
    assert cmd[cmd.index("--rdzv-endpoint") + 1] == "10.0.0.7:29500"  # gpu07's NodeAddr
    assert cmd[cmd.index("--rdzv-id") + 1] == "slurm-4242.3"
    assert cmd[cmd.index("--rdzv-conf") + 1] == f"is_host={'true' if node_id == 0 else 'false'}"
    assert cmd[cmd.index("--local-addr") + 1] == ADDRS[me]
    assert cmd[-3:] == ["-m", "recpar.train.worker", "spec.json"]
    assert cmd[cmd.index("--max-restarts") + 1] == "0"
    assert extra == {"RECPAR_NODE_INDEX": str(node_id), "GLOO_SOCKET_IFNAME": "ib0",
                     "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    assert seen == [ADDRS[me]]


def test_task_keeps_the_users_gloo_interface_and_falls_back_to_the_job_node_list():
    env = {"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "gpu[07-08,11-12]", "SLURMD_NODENAME":
           "gpu08", "SLURM_NODEID": "1", "GLOO_SOCKET_IFNAME": "eth9"}
    _, extra = torchrun_command(env, 4, 8, ["x.py"], run=fake_scontrol(),
                                find_interface=lambda a: "ib0")
    assert "GLOO_SOCKET_IFNAME" not in extra  # the user's choice stays in the environment


def test_task_outside_srun_or_with_a_wrong_node_count_says_why():
    with pytest.raises(SlurmError, match="SLURMD_NODENAME, SLURM_NODEID.*srun task"):
        torchrun_command({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "a"}, 1, 1, ["x"],
                         run=fake_scontrol())
    env = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "gpu[07-08,11-12]",
           "SLURMD_NODENAME": "gpu07", "SLURM_NODEID": "0"}
    with pytest.raises(SlurmError, match="4 node.*--nnodes is 2"):
        torchrun_command(env, 2, 8, ["x"], run=fake_scontrol())


def test_launch_checks_the_allocation_before_any_rank_starts():
    topo = Topology("slurm", 4, 8)
    [(cmd, env)] = slurm_commands(topo, ["x.py"], environ={"SLURM_JOB_ID": "4242"},
                                  run=fake_scontrol())
    assert cmd[:5] == ["srun", "--jobid=4242", "--nodes=4", "--ntasks=4", "--ntasks-per-node=1"]
    rec = json.loads(env[ENV_VAR])
    assert (rec["kind"], rec["nodes"], rec["ranks_per_node"], rec["world_size"]) == \
        ("slurm", 4, 8, 32)
    with pytest.raises(SlurmError, match="SLURM_JOB_ID is not set.*sbatch"):
        slurm_commands(topo, ["x.py"], environ={}, run=fake_scontrol())
    with pytest.raises(SlurmError, match="needs 4 node.*job 4242 has 2"):
        slurm_commands(topo, ["x.py"], environ={"SLURM_JOB_ID": "4242"},
                       run=fake_scontrol(num_nodes=2))
    with pytest.raises(SlurmError, match="not a Slurm job id"):
        slurm_commands(topo, ["x.py"], environ={"SLURM_JOB_ID": "abc"}, run=fake_scontrol())
    with pytest.raises(ValueError, match="scheduler"):  # torchrun agents are srun's job
        agent_commands(topo, ["x.py"])


def test_scontrol_failure_names_the_command(monkeypatch):
    def fail(argv):
        raise SlurmError(f"{' '.join(argv)} failed (exit 1): Invalid job id specified")

    with pytest.raises(SlurmError, match="scontrol show job -o 99 failed"):
        slurm.allocation("99", run=fail)


class _Resources(dict):
    """Snakemake's job.resources: `.get` and attribute access."""

    def __getattr__(self, name):
        return self[name]


def _plugin_sbatch(rule: str, resources: dict, threads: int) -> str:
    """The sbatch line snakemake-executor-plugin-slurm builds for one job of `rule`, with the
    profile's default-resources and set-resources applied the way Snakemake does."""
    submit = pytest.importorskip("snakemake_executor_plugin_slurm.submit_string")
    utils = pytest.importorskip("snakemake_executor_plugin_slurm.utils")
    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    res = {**profile["default-resources"], **resources,
           **profile["set-resources"].get(rule, {})}
    # profile values are Python expressions for Snakemake ("'--exclusive'" -> --exclusive)
    res = {k: (v[1:-1] if isinstance(v, str) and v[:1] == v[-1:] == "'" else v)
           for k, v in res.items()}
    job = SimpleNamespace(resources=_Resources(res), threads=threads, name=rule,
                          is_group=lambda: False)
    params = {"run_uuid": "u", "slurm_logfile": "l.log", "comment_str": f"rule_{rule}",
              "account": " -A acct", "partition": " -p gpu", "workdir": "/w"}
    settings = SimpleNamespace(requeue=False, no_requeue=False, qos=None, reservation=None)
    return submit.get_submit_command(job, params, settings=settings) + utils.set_gres_string(job)


def test_sbatch_of_a_4_node_8_gpu_run_asks_for_whole_nodes_with_8_gpus_each():
    line = _plugin_sbatch("sweep_run", job_resources(4, 8, "cuda"), threads=2).split()
    assert "--nodes=4" in line and "--gres=gpu:8" in line
    assert "--exclusive" in line  # measured runs: their nodes to themselves
    assert line[line.index("-t") + 1] == "240"
    # one task per node is Slurm's default; the plugin would turn `tasks` into --ntasks-per-gpu
    assert not any(a.startswith(("--ntasks", "--gpus=")) for a in line)


def test_sbatch_of_a_2_node_cpu_run_asks_for_one_task_per_node():
    line = _plugin_sbatch("sweep_run", job_resources(2, 1, "cpu"), threads=2).split()
    assert "--nodes=2" in line and "--ntasks=2" in line and "--cpus-per-task=2" in line
    assert not any(a.startswith("--gres") for a in line)


def test_job_resources_reject_bad_input():
    with pytest.raises(ValueError, match="train.device 'tpu'"):
        job_resources(1, 1, "tpu")
    with pytest.raises(ValueError, match="nodes must be an integer >= 1"):
        job_resources(0, 1, "cpu")


def test_srun_does_not_inherit_the_step_it_is_started_from():
    env = slurm.srun_env({"SLURM_JOB_ID": "5", "SLURM_NNODES": "1", "SLURM_NODELIST": "n0",
                          "SLURM_STEP_ID": "0", "SRUN_CPUS_PER_TASK": "2", "SLURM_CONF": "/c",
                          "PATH": "/bin"})
    assert env == {"SLURM_JOB_ID": "5", "SLURM_CONF": "/c", "PATH": "/bin"}
