"""Schema-valid run records as dicts, built without training anything (report tests only)."""

from __future__ import annotations

from pathlib import Path

from recpar.train import record

HARDWARE_CPU = {"device": "cpu", "cpu_model": "Test CPU", "logical_cpus": 2, "mem_gib": 8.0,
                "accelerators": []}
HARDWARE_A100 = {"device": "cuda", "cpu_model": "Test CPU", "logical_cpus": 64, "mem_gib": 512.0,
                 "accelerators": [{"name": "NVIDIA A100-SXM4-40GB", "mem_gib": 40.0}] * 8}


def make_run(scheme: str = "baseline", *, dp: int = 1, tp: int = 1, pp: int = 1, nodes: int = 1,
             throughput: float = 100.0, seed: int = 0, hr: float = 0.20, ndcg: float = 0.10,
             util: float | None = 90.0, gpu_util: float | None = None,
             comm_ms: float | None = None, exposed_ms: float | None = None,
             iter_ms: float = 100.0, dataset: str = "movielens-100k", d_model: int = 64,
             hardware: dict | None = None, run_id: str | None = None, status: str = "completed",
             stats: dict | None = None, metrics: dict | None = None) -> dict:
    """One record; world = dp·tp·pp ranks spread evenly over `nodes`; `metrics` adds fields."""
    world = dp * tp * pp
    q = {"hr_at_10": hr, "ndcg_at_10": ndcg, "n_examples": 100, "protocol": "full"}
    extra = metrics
    metrics = {"throughput_samples_per_s": throughput,
               "throughput_samples_per_s_per_device": throughput / world,
               "iter_ms": iter_ms, "cpu_util_pct": util,
               "comm_ms_per_iter": 0.0 if world == 1 else comm_ms}
    if exposed_ms is not None:
        metrics["exposed_comm_ms_per_iter"] = exposed_ms
    if gpu_util is not None:
        metrics["gpu_util_pct"] = gpu_util
    metrics.update(extra or {})
    rec = {
        "schema_version": 1, "run_id": run_id or f"{scheme}-dp{dp}tp{tp}pp{pp}-n{nodes}",
        "scheme": scheme, "status": status, "created_utc": "2026-01-01T00:00:00.000Z",
        "config": {"model": {"d_model": d_model, "n_layers": 2},
                   "train": {"global_batch_size": 64 * world, "device": "cpu"},
                   "grad_sync": ({"algorithm": "ring", "compressor": "none"} if dp > 1 else None),
                   "use_text": True},
        "plan": {"scheme": scheme, "dp": dp, "tp": tp, "pp": pp, "num_microbatches": 1,
                 "world_size": world},
        "topology": {"kind": "local" if nodes == 1 else "emulated", "nodes": nodes,
                     "ranks_per_node": max(1, world // nodes)},
        "dataset": {"source": dataset, "path": f"results/data/{dataset}",
                    "stats": stats or {"users": 3, "items": 5}},
        "versions": {"python": "3.12", "torch": "2.13", "recpar": "0.0"},
        "git": {"commit": "a" * 40, "dirty": False},
        "hardware": hardware or HARDWARE_CPU, "seed": seed,
        "timing": {"warmup_steps": 1, "timed_steps": 2, "window_start_utc": None,
                   "window_end_utc": None, "window_s": None, "device_sync": "none"},
        "metrics": metrics,
        "quality": {"test": {"full": q, "sampled100": {**q, "protocol": "sampled100"}}},
    }
    record.validate(rec)
    return rec


def write_runs(tmp: Path, runs: list[dict]) -> list[Path]:
    return [record.write(r, tmp / f"r{i}-{r['run_id']}" / "record.json")
            for i, r in enumerate(runs)]
