"""One emulated device stepping the recommender, alone or beside others, each in its own CPU
budget: what the scale model's dilation is measured with, and what bench/test_bench_cpu_budget.py
checks the budgets' isolation with.

    python -m recpar.perfmodel.device_step STEPS [MODEL_SIZE N_ITEMS BATCH [OVERRIDES_JSON]]

The process prints `ready` once the model is built, waits for one line on stdin (the launcher
moves it into its budget group meanwhile), runs 3 warm-up and STEPS timed AdamW steps on a fixed
random batch (no data loading, no communication), and prints the timed steps' seconds as JSON.
OVERRIDES_JSON: ModelConfig fields that replace the named size's (a grid's `model.overrides`:
the step's FLOP/s per core depends on the model's shape).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

from recpar.cluster import cpu_budget
from recpar.cluster.cpu_budget import CpuBudget, budget_groups

WARMUP_STEPS = 3
DEFAULT_SHAPE = ("tiny", 1682, 32)
"""Model size, items (MovieLens-100k's 1,682) and batch (× max_seq_len positions)."""


def _config(model_size: str, overrides: dict | None):
    from recpar.model.config import ModelConfig

    return ModelConfig.named(model_size, **{**(overrides or {}), "dropout": 0.0})


def _step_loop(steps: int, model_size: str, n_items: int, batch: int,
               overrides: dict | None = None) -> list[float]:
    import torch

    from recpar.model.recommender import Recommender

    torch.set_num_threads(1)
    cfg = _config(model_size, overrides)
    torch.manual_seed(0)
    model = Recommender(cfg, n_items).train()  # ID embeddings only: no per-step text projection
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(1, n_items + 1, (batch, cfg.max_seq_len))  # [b, T] item ids
    y = torch.randint(1, n_items + 1, (batch, cfg.max_seq_len))  # [b, T] next items

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model.loss(x, y).backward()
        opt.step()

    print("ready", flush=True)
    sys.stdin.readline()
    for _ in range(WARMUP_STEPS):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def step_flops(model_size: str, n_items: int, batch: int,
               overrides: dict | None = None) -> float:
    """Training FLOPs of one step (ModelConfig.flops_per_token × b × T, the MFU convention)."""
    cfg = _config(model_size, overrides)
    return float(cfg.flops_per_token(n_items) * batch * cfg.max_seq_len)


def run_devices(n: int, budget: CpuBudget, steps: int,
                shape: tuple[str, int, int] = DEFAULT_SHAPE,
                overrides: dict | None = None) -> dict:
    """n devices stepping together, each in its own budget group; per-device rates, jitter and
    throttling. `overrides`: ModelConfig fields replacing the named size's."""
    overrides = dict(overrides or {})
    flops = step_flops(*shape, overrides)  # also checks the overrides before any process starts
    cmd = [sys.executable, "-m", "recpar.perfmodel.device_step", str(steps), *map(str, shape),
           json.dumps(overrides)]
    env = {**os.environ, "OMP_NUM_THREADS": str(budget.intra_op_threads)}
    with budget_groups(budget, ranks=n, tag=f"device-step-n{n}-p{budget.period_us}") as groups:
        procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                  env=env) for _ in range(n)]
        try:
            for k, p in enumerate(procs):
                if p.stdout.readline().strip() != "ready":
                    raise RuntimeError(f"device_step {k} did not start (exit {p.wait()})")
                cpu_budget.join(groups.path, k, pid=p.pid)
            for p in procs:
                p.stdin.write("go\n")
                p.stdin.flush()
            times = [json.loads(p.stdout.readline()) for p in procs]
            for p in procs:
                p.wait(timeout=60)
            throttled = groups.throttling()
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
    rates = [len(t) / sum(t) for t in times]  # steps/s of each device
    return {"devices": n, "steps_per_s_sum": float(sum(rates)),
            "steps_per_s_min": float(min(rates)),
            "device_flops_per_s_mean": float(np.mean(rates)) * flops,
            "step_cv_pct_mean": float(np.mean([100.0 * np.std(t) / np.mean(t) for t in times])),
            "throttled_periods_pct_mean": float(np.mean([t["throttled_periods_pct"] or 0.0
                                                         for t in throttled])),
            "model_size": shape[0], "model_overrides": overrides, "n_items": shape[1],
            "batch": shape[2],
            "step_flops": flops, "cores_per_device": budget.cores,
            "period_us": budget.period_us}


def main(argv: list[str]) -> int:
    steps = int(argv[0])
    model_size, n_items, batch = (argv[1], int(argv[2]), int(argv[3])) if len(argv) > 1 \
        else DEFAULT_SHAPE
    overrides = json.loads(argv[4]) if len(argv) > 4 else None
    print(json.dumps(_step_loop(steps, model_size, n_items, batch, overrides)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
