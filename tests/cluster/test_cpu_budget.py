"""recpar.cluster.cpu_budget: a fixed CPU budget per emulated device.

The validation tests run anywhere. The rest write cgroup files and skip with the reason without
root or a cgroup cpu controller. World sizes: 1 (the single-device CLI run), 2 (dp2 through the
real launcher, one group per rank).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recpar.cluster import cpu_budget
from recpar.cluster.cpu_budget import CpuBudget, budget_groups

REASON = cpu_budget.unavailable_reason()
needs_cgroup = pytest.mark.skipif(REASON is not None, reason=f"CPU budgets: {REASON}")


@pytest.mark.parametrize("kwargs, message", [
    ({"cores": 0}, "cores = 0 must be in (0, "),
    ({"cores": (os.cpu_count() or 1) + 1}, "this machine has"),
    ({"cores": 0.5, "period_us": 500}, "period_us = 500 must be in [1000, 1000000]"),
    ({"cores": 0.05, "period_us": 10_000}, "0.05 × 10000 = 500 µs is below the kernel's minimum"),
    ({"cores": 0.5, "intra_op_threads": 0}, "intra_op_threads = 0 < 1"),
])
def test_a_budget_the_kernel_cannot_apply_fails_with_its_numbers(kwargs, message):
    with pytest.raises(ValueError) as e:
        CpuBudget(**kwargs)
    assert message in str(e.value)


def test_quota_is_cores_times_period():
    assert CpuBudget(cores=0.2).quota_us == 2000  # 0.2 × 10 ms
    assert CpuBudget(cores=0.25, period_us=100_000).quota_us == 25_000
    assert CpuBudget(cores=1.5, period_us=4000).quota_us == 6000


def _ours(ctl) -> list[str]:
    top = ctl.root / cpu_budget.ROOT_NAME
    return sorted(p.name for p in top.iterdir() if p.is_dir()) if top.exists() else []


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


BUSY = [sys.executable, "-c", "while True: pass"]


@needs_cgroup
def test_groups_are_applied_enforced_and_removed():
    ctl = cpu_budget.find_controller()
    others = _ours(ctl)
    budget = CpuBudget(cores=0.2)
    child = subprocess.Popen(BUSY)
    try:
        with budget_groups(budget, ranks=2, tag="test-applied") as groups:
            assert groups.path.name in _ours(ctl)
            for k in range(2):
                g = groups.path / f"rank{k}"
                if ctl.version == 1:
                    assert (g / "cpu.cfs_quota_us").read_text().strip() == "2000"
                    assert (g / "cpu.cfs_period_us").read_text().strip() == "10000"
                else:
                    assert (g / "cpu.max").read_text().split() == ["2000", "10000"]
            # Ranks reach the group through the launcher's view (also from inside a netns).
            assert groups.dir.as_posix().startswith(f"/proc/{os.getpid()}/root/")
            cpu_budget.join(groups.dir, 1, pid=child.pid)
            assert str(child.pid) in (groups.path / "rank1" / "cgroup.procs").read_text().split()
            c0, t0 = _cpu_s(child.pid), time.monotonic()
            time.sleep(2.0)
            used = (_cpu_s(child.pid) - c0) / (time.monotonic() - t0)
            # A busy loop gets at most its quota (one period of slack for the edges).
            assert used <= 0.2 + 0.01 / 2.0 + 0.02, used
            throttled = groups.throttling()[1]
            assert throttled["throttled_periods_count"] > 0 and throttled["throttled_s"] > 0
        assert groups.path.name not in _ours(ctl)
        if not others:  # nothing of recpar stays in the hierarchy
            assert not (ctl.root / cpu_budget.ROOT_NAME).exists()
        assert child.poll() is None  # moved out, not killed
        root_procs = (ctl.root / "cgroup.procs").read_text().split()
        assert str(child.pid) in root_procs
    finally:
        child.kill()
        child.wait()


LAUNCHER = """
import os, sys, time
from recpar.cluster.cpu_budget import CpuBudget, budget_groups
with budget_groups(CpuBudget(cores=0.5), ranks=1, tag="test-killed") as g:
    print(g.path, flush=True)
    time.sleep(600)
"""


@needs_cgroup
def test_paused_leaves_the_group_for_the_block_and_rejoins_it():
    def my_group() -> str:
        # cgroup v1 "<n>:cpu:<path>" (or "cpu,cpuacct"), else v2 "0::<path>"
        lines = Path("/proc/self/cgroup").read_text().splitlines()
        v1 = [ln for ln in lines if "cpu" in ln.split(":")[1].split(",")]
        return (v1 or [ln for ln in lines if ln.startswith("0::")])[0]

    outside = my_group()
    with budget_groups(CpuBudget(cores=0.5), ranks=1, tag="test-paused") as groups:
        cpu_budget.join(groups.path, 0)
        try:
            inside = my_group()
            assert inside != outside and groups.path.name in inside
            with cpu_budget.paused():
                assert groups.path.name not in my_group()
            assert my_group() == inside and cpu_budget.own_throttling() != {}
        finally:
            cpu_budget.leave()
    assert my_group() == outside


@needs_cgroup
def test_the_groups_of_a_killed_launcher_are_removed_by_the_next_run():
    ctl = cpu_budget.find_controller()
    p = subprocess.Popen([sys.executable, "-c", LAUNCHER], stdout=subprocess.PIPE, text=True)
    path = Path(p.stdout.readline().strip())
    assert path.exists()
    p.send_signal(signal.SIGKILL)  # no finally, no cleanup
    p.wait()
    assert path.exists()  # left behind
    with budget_groups(CpuBudget(cores=0.5), ranks=1, tag="test-next"):
        assert not path.exists()
    assert not [n for n in _ours(ctl) if n.startswith(f"{p.pid}-")]


@needs_cgroup
def test_cluster_down_removes_the_groups_of_a_killed_run_and_keeps_a_live_one(tmp_path):
    from recpar.cluster import emulated, netns

    if netns.unavailable_reason() is not None:
        pytest.skip(f"recpar cluster down: {netns.unavailable_reason()}")
    with budget_groups(CpuBudget(cores=0.5), ranks=1, tag="test-live") as live:
        p = subprocess.Popen([sys.executable, "-c", LAUNCHER], stdout=subprocess.PIPE,
                             text=True)
        stale = Path(p.stdout.readline().strip())
        p.send_signal(signal.SIGKILL)
        p.wait()
        removed = emulated.down(prefix="rpcg", state_dir=tmp_path)
        assert removed["cpu_budget_groups"] == [stale.name]
        assert not stale.exists() and live.path.exists()


COMMON = ["--model-size", "tiny", "--model-override", "max_seq_len=12", "--set", "max_epochs=1",
          "--set", "global_batch_size=128", "--set", "warmup_steps=1", "--set", "timed_steps=2",
          "--no-progress"]


def _train(args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "recpar.cli", "train", *args, *COMMON],
                          capture_output=True, text=True, timeout=600, env=env)


@needs_cgroup
@pytest.mark.multiprocess
@pytest.mark.parametrize("scheme_args, run_id, world", [
    (["--scheme", "baseline"], "baseline-tiny-n1-cpu0.5", 1),
    (["--scheme", "dp", "--dp", "2"], "dp2-ring-tiny-n1-cpu0.5", 2),
])
def test_budgeted_runs_record_the_budget_and_leave_no_group(small_prepared, tmp_path,
                                                            scheme_args, run_id, world):
    from recpar.train import record

    ctl = cpu_budget.find_controller()
    before = _ours(ctl)
    r = _train([*scheme_args, "--cpu-budget", "0.5", "--data", str(small_prepared),
                "--out", str(tmp_path / "run")])
    assert r.returncode == 0, r.stderr[-3000:]
    rec = record.read(tmp_path / "run" / "record.json")  # schema-checked
    assert rec["run_id"] == run_id
    budget = rec["topology"]["cpu_budget"]
    assert budget["cores_per_device"] == 0.5 and budget["quota_us"] == 5000
    assert budget["intra_op_threads"] == 1 and "cgroup" in budget["mechanism"]
    m = rec["metrics"]
    # Every rank ran inside its group: the kernel counted CFS periods for it.
    assert m["cpu_throttled_periods_pct"] is not None
    if world > 1:
        assert m["cpu_throttled_periods_pct_max_over_ranks"] is not None
    # the budget paced the training steps; set-up (joined as training starts), validation
    # (cpu_budget.paused) and the final evaluation (cpu_budget.release) ran outside it
    assert any("set-up, validation and the final evaluation ran outside the device's CPU "
               "budget" in n for n in rec["notes"])
    assert _ours(ctl) == before


def test_an_invalid_budget_fails_before_any_rank_starts(small_prepared, tmp_path):
    r = _train(["--scheme", "dp", "--dp", "2", "--cpu-budget", "0", "--data",
                str(small_prepared), "--out", str(tmp_path / "run")])
    assert r.returncode != 0
    assert "cpu budget: cores = 0.0 must be in (0, " in r.stderr
    assert not (tmp_path / "run" / "spec.json").exists()


def test_a_budget_on_slurm_nodes_is_refused_before_any_rank_starts(small_prepared, tmp_path):
    r = _train(["--scheme", "dp", "--dp", "2", "--nodes", "2", "--topology", "slurm",
                "--cpu-budget", "0.5", "--data", str(small_prepared),
                "--out", str(tmp_path / "run")])
    assert r.returncode != 0
    assert "--cpu-budget 0.5: CPU budgets emulate devices on one machine" in r.stderr
