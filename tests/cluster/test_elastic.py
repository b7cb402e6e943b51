"""The restart budget reaches torchrun on every topology, with the agent environment a restart
needs (recpar.cluster.elastic); and a real torchrun restart on loopback gets its gloo group up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from recpar.cluster.elastic import AGENT_ENV, DEFAULT_MAX_RESTARTS, restart_args
from recpar.cluster.launch import agent_commands, launch
from recpar.cluster.slurm import srun_command, torchrun_command
from recpar.cluster.topology import Topology

from .test_launch_commands import _state
from .test_slurm_commands import fake_scontrol

RESTART_WORKER = Path(__file__).with_name("restart_worker.py")


def _restarts(cmd: list[str]) -> str:
    return cmd[cmd.index("--max-restarts") + 1]


def test_restart_args_validate():
    assert restart_args(3) == ["--max-restarts", "3"]
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="--max-restarts: must be an integer >= 0"):
            restart_args(bad)


def test_local_and_emulated_agents_get_the_budget_and_an_unshared_store():
    [(cmd, env)] = agent_commands(Topology("local", 1, 2), ["x.py"], max_restarts=3)
    assert _restarts(cmd) == "3" and env.items() >= AGENT_ENV.items()
    st = _state(nodes=2, rpn=1)
    for cmd, env in agent_commands(st.topology(), ["x.py"], st, max_restarts=3):
        assert _restarts(cmd) == "3" and env.items() >= AGENT_ENV.items()
    # `recpar cluster launch` and library callers keep the old behaviour unless they ask
    [(cmd, _)] = agent_commands(Topology("local", 1, 2), ["x.py"])
    assert _restarts(cmd) == "0"


def test_slurm_task_gets_the_budget_through_srun():
    cmd = srun_command(Topology("slurm", 2, 1), ["x.py"], "7", max_restarts=4)
    # srun runs `python -m recpar.cluster.slurm ... --max-restarts 4 -- x.py` on each node
    assert cmd[cmd.index("--max-restarts") + 1] == "4" and cmd[-2:] == ["--", "x.py"]
    env = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "gpu[07-08,11-12]",
           "SLURMD_NODENAME": "gpu08", "SLURM_NODEID": "1"}
    tr, extra = torchrun_command(env, 4, 1, ["x.py"], run=fake_scontrol(),
                                 find_interface=lambda a: None, max_restarts=4)
    assert _restarts(tr) == "4" and extra.items() >= AGENT_ENV.items()


def test_train_option_default_and_sweep_option():
    from recpar.cli import build_parser
    from recpar.train.cli import apply_run_options

    args = build_parser().parse_args(["train", "--data", "d", "--out", "o"])
    assert args.max_restarts == DEFAULT_MAX_RESTARTS == 2
    apply_run_options(args, '{"max_restarts": 0}')
    assert args.max_restarts == 0
    with pytest.raises(ValueError, match="max_restarts = 'x' should be a int"):
        apply_run_options(args, '{"max_restarts": "x"}')


def test_negative_restarts_fail_before_any_rank_starts(tmp_path):
    r = subprocess.run([sys.executable, "-m", "recpar.cli", "train", "--scheme", "dp", "--dp",
                        "2", "--data", str(tmp_path), "--out", str(tmp_path / "run"),
                        "--max-restarts", "-1"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "--max-restarts: must be an integer >= 0" in r.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.multiprocess
def test_a_killed_rank_is_restarted_and_its_gloo_group_comes_up(tmp_path):
    """The root cause of the first attempt's hang, end to end on loopback: attempt 0's rank 1
    kills itself after a gloo all-reduce; attempt 1 must build a new gloo group (with the
    agent's shared store, rank 1 read the dead rank 0's address and got "connection refused")
    and all-reduce correctly."""
    rc = launch(Topology("local", 1, 2), [str(RESTART_WORKER), str(tmp_path)],
                max_restarts=1, timeout_s=180)
    assert rc == 0
    seen = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("attempt*-rank*.json"))]
    assert {(s["attempt"], s["rank"]) for s in seen} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert all(s["sum"] == 3.0 for s in seen)  # 1 + 2 on both ranks, in both attempts
    # every attempt's store is its own, hosted by its rank 0 (not the agent's, kept across rounds)
    assert {s["use_agent_store"] for s in seen} == {"False"}
