"""RunSpec <-> JSON, so the launcher can hand a validated spec to every rank."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from recpar.comm.async_ps import AsyncPSConfig
from recpar.comm.config import GradSyncConfig
from recpar.model.config import ModelConfig
from recpar.parallel.plan import ParallelPlan
from recpar.train.config import TrainConfig
from recpar.train.loop import RunSpec


def spec_to_dict(spec: RunSpec) -> dict:
    return {
        "data_dir": str(spec.data_dir), "out_dir": str(spec.out_dir), "run_id": spec.run_id,
        "model": asdict(spec.model), "train": spec.train.to_record(),
        "plan": asdict(spec.plan), "seed": spec.seed, "use_text": spec.use_text,
        "topology": spec.topology, "grad_sync": spec.grad_sync.to_dict(),
        "zero_stage": spec.zero_stage, "async_ps": asdict(spec.async_ps),
    }


def _async_ps_from_dict(d: dict | None) -> AsyncPSConfig:
    if d is None:
        return AsyncPSConfig()
    order = d.get("push_order")
    return AsyncPSConfig(**{**d, "push_order": tuple(order) if order is not None else None})


def spec_from_dict(d: dict) -> RunSpec:
    return RunSpec(
        data_dir=Path(d["data_dir"]), out_dir=Path(d["out_dir"]), run_id=d["run_id"],
        model=ModelConfig(**d["model"]), train=TrainConfig.from_mapping(d["train"]),
        plan=ParallelPlan(**d["plan"]), seed=int(d["seed"]), use_text=bool(d["use_text"]),
        topology=d["topology"], grad_sync=GradSyncConfig.from_dict(d["grad_sync"]),
        zero_stage=int(d.get("zero_stage", 0)),
        async_ps=_async_ps_from_dict(d.get("async_ps")),
    )
