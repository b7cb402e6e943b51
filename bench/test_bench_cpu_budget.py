"""Fidelity of the per-device CPU budget (recpar.cluster.cpu_budget), pytest-benchmark.

    make bench   (or: pytest bench/test_bench_cpu_budget.py --benchmark-enable --benchmark-only)   needs root

N budgeted "devices" (processes, each in its own CPU cgroup with `cores` CPU-s/s and one
intra-op thread) each step the tiny model on its own batch, with no communication. Budgets
isolate well when N of them do N times the work of one:

    fidelity(N) = sum over devices of steps/s  /  (N × steps/s of one budgeted device alone)

The scale model needs fidelity ≥ 0.90 for every N it runs (N × cores must stay below the
machine's cores, or the budgets cannot all be served). The CFS period sets how evenly a
device's share is spread over a step: `step_cv_pct` (step-time coefficient of variation) shows
the jitter each period causes, at N = 4.

Numbers belong to a quiet machine: run alone (the README's bench section says so).
"""

from __future__ import annotations

import pytest

from recpar.cluster import cpu_budget
from recpar.cluster.cpu_budget import CpuBudget
from recpar.perfmodel.device_step import run_devices

REASON = cpu_budget.unavailable_reason()
pytestmark = [pytest.mark.skipif(REASON is not None, reason=f"CPU budgets: {REASON}"),
              pytest.mark.benchmark(group="cpu_budget")]

CORES = 0.2
"""Budget per device: 8 devices = 1.6 of this machine's 2 cores."""
STEPS = 12
"""Timed steps per device (after 3 warm-up steps); the tiny model, batch 32 × 50 positions."""
SMOKE_STEPS = 1
"""Under --benchmark-disable (make test): the code path once, with one timed step..."""
SMOKE_DEVICES = 2
"""... and at most 2 devices (the same code for any N; each device is a process to start)."""


@pytest.fixture(scope="module")
def steps(timed_run) -> int:
    return STEPS if timed_run else SMOKE_STEPS


@pytest.fixture(scope="module")
def one_device(steps, timed_run):
    """The reference of `fidelity`; not run in make test (no figure is judged there)."""
    return run_devices(1, CpuBudget(cores=CORES), steps) if timed_run else None


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_bench_budgeted_devices_scale(benchmark, one_device, steps, n):
    budget = CpuBudget(cores=CORES)
    n = n if one_device is not None else min(n, SMOKE_DEVICES)
    out = benchmark.pedantic(run_devices, args=(n, budget, steps), rounds=1, iterations=1)
    assert out["devices"] == n and out["steps_per_s_min"] > 0, out
    if one_device is not None:
        fidelity = out["steps_per_s_sum"] / (n * one_device["steps_per_s_sum"])
        benchmark.extra_info.update({**out, "fidelity": fidelity,
                                     "one_device_steps_per_s": one_device["steps_per_s_sum"]})


@pytest.mark.parametrize("period_us", [5_000, 10_000, 100_000])
def test_bench_budget_period_jitter(benchmark, steps, timed_run, period_us):
    budget = CpuBudget(cores=CORES, period_us=period_us)
    n = 4 if timed_run else SMOKE_DEVICES
    out = benchmark.pedantic(run_devices, args=(n, budget, steps), rounds=1, iterations=1)
    assert out["devices"] == n and out["steps_per_s_min"] > 0, out
    benchmark.extra_info.update(out)
