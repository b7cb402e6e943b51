"""What a run's record says: its configuration, dataset and environment (`base_record`) and the
metrics the training loop measured on every rank (`training_metrics`). `recpar.train.record`
validates and writes it."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict

import torch

from recpar.data.prepared import PreparedDataset
from recpar.model.config import ModelConfig
from recpar.train import record
from recpar.train.spec import RunSpec

MAX_OVER_RANKS = ("peak_rss_gib", "model_state_gib", "comm_ms_per_iter",
                  "exposed_comm_ms_per_iter", "tp_comm_ms_per_iter",
                  "payload_bytes_per_rank_per_iter", "cpu_util_pct",
                  "cpu_throttled_periods_pct", "cpu_throttled_s")
"""Per-rank measurements whose maximum over ranks the record keeps (`<key>_max_over_ranks`)."""


def dataset_record(ds: PreparedDataset) -> dict:
    return {"source": str(ds.stats.get("source", "unknown")), "path": str(ds.root),
            "stats": ds.stats}


def base_record(spec: RunSpec, ds: PreparedDataset, scheme: str,
                model_cfg: ModelConfig | None = None) -> dict:
    """Everything but timing, metrics and quality."""
    return {
        "schema_version": 1,
        "run_id": spec.run_id,
        "scheme": scheme,
        "status": "completed",
        "created_utc": record.utc_now(),
        "config": {"model": (model_cfg or spec.model).to_record(), "train": spec.train.to_record(),
                   "grad_sync": (spec.grad_sync.to_dict()
                                 if spec.plan.dp > 1 and spec.plan.scheme != "async" else None),
                   **({"async_ps": asdict(dataclasses.replace(
                       spec.async_ps, clip_grad=spec.train.clip_grad))}
                      if spec.plan.scheme == "async" else {}),
                   "use_text": spec.use_text},
        "plan": spec.plan.to_record(),
        "topology": spec.topology,
        "dataset": dataset_record(ds),
        "versions": record.versions(),
        "git": record.git_state(),
        "hardware": record.hardware(spec.train.device),
        "seed": spec.seed,
    }


def training_metrics(timing: dict, comm_stats: dict, this_rank: dict, all_ranks: list[dict], *,
                     world: int, device: torch.device, params_count: int,
                     train_sequences_count: int, steps_count: int, epochs_count: int,
                     best_valid_metric: float) -> dict:
    """The record's `metrics`: rank 0's timing window and communication statistics, counts,
    and the spread over ranks of what each rank measured (`this_rank` is rank 0's entry of
    `all_ranks`)."""
    metrics = {
        **timing,
        "comm_ms_per_iter": 0.0 if world == 1 else comm_stats.get("comm_ms_per_iter"),
        "peak_device_mem_gib": (torch.cuda.max_memory_allocated() / 2**30
                                if device.type == "cuda" else None),
        "params_count": params_count,
        "train_sequences_count": train_sequences_count,
        "steps_count": steps_count,
        "epochs_count": epochs_count,
        "best_valid_metric": best_valid_metric,
    }
    if timing.get("throughput_samples_per_s") is not None:
        metrics["throughput_samples_per_s_per_device"] = timing["throughput_samples_per_s"] / world
    for k, v in comm_stats.items():
        metrics.setdefault(k, v)
    # Per-rank spread of what each rank measured (max over ranks is what the slowest sees).
    for key in MAX_OVER_RANKS:
        vals = [r[key] for r in all_ranks if r.get(key) is not None]
        if vals:
            metrics[f"{key}_max_over_ranks"] = float(max(vals))
    metrics["peak_rss_gib"] = this_rank["peak_rss_gib"]
    for key in ("model_state_gib", "cpu_throttled_periods_pct", "cpu_throttled_s"):
        if key in this_rank:
            metrics[key] = this_rank[key]
    return metrics
