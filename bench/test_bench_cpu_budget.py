"""Fidelity of the per-device CPU budget (recpar.cluster.cpu_budget), pytest-benchmark.

    make bench   (or: pytest bench/test_bench_cpu_budget.py --benchmark-only)   needs root

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

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from recpar.cluster import cpu_budget
from recpar.cluster.cpu_budget import CpuBudget, budget_groups

REASON = cpu_budget.unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"CPU budgets: {REASON}")

CORES = 0.2
"""Budget per device: 8 devices = 1.6 of this machine's 2 cores."""
STEPS = 12
"""Timed steps per device (after 3 warm-up steps)."""

DEVICE = textwrap.dedent("""
    import json, sys, time
    import torch
    torch.set_num_threads(1)
    from recpar.model.config import ModelConfig
    from recpar.model.recommender import Recommender
    cfg = ModelConfig.named("tiny", dropout=0.0)
    torch.manual_seed(0)
    n_items, b = 1682, 32                       # MovieLens-100k items; batch 32 x 50 positions
    model = Recommender(cfg, n_items).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(1, n_items + 1, (b, cfg.max_seq_len))
    y = torch.randint(1, n_items + 1, (b, cfg.max_seq_len))
    def step():
        opt.zero_grad(set_to_none=True)
        model.loss(x, y).backward()
        opt.step()
    print("ready", flush=True)
    sys.stdin.readline()                        # go: every device is in its group
    for _ in range(3):
        step()
    times = []
    for _ in range(int(sys.argv[1])):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    print(json.dumps(times), flush=True)
""")


def _run_devices(n: int, budget: CpuBudget) -> dict:
    """n budgeted devices stepping together; per-device step times and the throttling."""
    with budget_groups(budget, ranks=n, tag=f"bench-n{n}-p{budget.period_us}") as groups:
        procs = [subprocess.Popen([sys.executable, "-c", DEVICE, str(STEPS)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                  env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
                 for _ in range(n)]
        for k, p in enumerate(procs):
            assert p.stdout.readline().strip() == "ready"
            cpu_budget.join(groups.path, k, pid=p.pid)
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        times = [json.loads(p.stdout.readline()) for p in procs]
        for p in procs:
            p.wait(timeout=60)
        throttled = groups.throttling()
    rates = [len(t) / sum(t) for t in times]  # steps/s of each device
    cv = [100.0 * np.std(t) / np.mean(t) for t in times]
    return {"steps_per_s_sum": float(sum(rates)), "steps_per_s_min": float(min(rates)),
            "step_cv_pct_mean": float(np.mean(cv)),
            "throttled_periods_pct_mean": float(np.mean([t["throttled_periods_pct"] or 0
                                                         for t in throttled]))}


@pytest.fixture(scope="module")
def one_device():
    return _run_devices(1, CpuBudget(cores=CORES))


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_bench_budgeted_devices_scale(benchmark, one_device, n):
    budget = CpuBudget(cores=CORES)
    out = benchmark.pedantic(_run_devices, args=(n, budget), rounds=1, iterations=1)
    fidelity = out["steps_per_s_sum"] / (n * one_device["steps_per_s_sum"])
    benchmark.extra_info.update({**out, "devices": n, "cores_per_device": CORES,
                                 "period_us": budget.period_us,
                                 "one_device_steps_per_s": one_device["steps_per_s_sum"],
                                 "fidelity": fidelity})


@pytest.mark.parametrize("period_us", [5_000, 10_000, 100_000])
def test_bench_budget_period_jitter(benchmark, period_us):
    budget = CpuBudget(cores=CORES, period_us=period_us)
    out = benchmark.pedantic(_run_devices, args=(4, budget), rounds=1, iterations=1)
    benchmark.extra_info.update({**out, "devices": 4, "cores_per_device": CORES,
                                 "period_us": period_us})
