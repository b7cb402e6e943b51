"""`RunSpec`, everything `recpar train` was asked to do, and its JSON form (so the launcher can
hand a validated spec to every rank)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from recpar.cluster.cpu_budget import CpuBudget
from recpar.comm.async_config import AsyncPSConfig
from recpar.comm.config import GradSyncConfig
from recpar.model.config import ModelConfig
from recpar.parallel.plan import ParallelPlan
from recpar.train.config import TrainConfig


@dataclass
class RunSpec:
    """Everything `recpar train` was asked to do, resolved and validated."""

    data_dir: Path
    """Prepared dataset directory (`recpar data prepare` output)."""
    out_dir: Path
    """Where record.json, checkpoints and the log go."""
    run_id: str
    """Spells out what ran, e.g. `baseline-tiny-n1`."""
    model: ModelConfig
    """Model architecture (named size plus overrides)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimiser, schedule, timing window."""
    plan: ParallelPlan = field(default_factory=ParallelPlan)
    """Parallel degrees; baseline = all ones."""
    seed: int = 0
    """Seeds torch (init, dropout, shuffling) and the sampled-negatives protocol."""
    use_text: bool = True
    """Fuse the item text embeddings (needs `recpar data embed`); False = ID embeddings only."""
    topology: dict = field(default_factory=lambda: {"kind": "local", "nodes": 1,
                                                     "ranks_per_node": 1})
    """Topology actually used (recpar.cluster provides it for multi-node runs)."""
    grad_sync: GradSyncConfig = field(default_factory=GradSyncConfig)
    """How data-parallel gradients travel (scheme dp; ignored when dp = 1)."""
    zero_stage: int = 0
    """ZeRO stage 1/2/3 for scheme `zero` (DeepSpeed); 0 otherwise."""
    async_ps: AsyncPSConfig = field(default_factory=AsyncPSConfig)
    """Parameter-server settings for scheme `async` (damping, timeout); its clip_grad is
    replaced by train.clip_grad (one clipping setting for every scheme)."""
    cpu_budget: CpuBudget | None = None
    """Each rank (and a single-device run) in its own CPU cgroup with this quota; None = the
    ranks share the machine's cores (recpar.cluster.cpu_budget)."""
    fault_schedule: list[dict] | None = None
    """Faults injected while the run trains (emulated topology): validated events
    {at_s, action, args} in canonical units (recpar.cluster.fault); None = no schedule."""


def spec_to_dict(spec: RunSpec) -> dict:
    return {
        "data_dir": str(spec.data_dir), "out_dir": str(spec.out_dir), "run_id": spec.run_id,
        "model": spec.model.to_record(), "train": spec.train.to_record(),
        "plan": asdict(spec.plan), "seed": spec.seed, "use_text": spec.use_text,
        "topology": spec.topology, "grad_sync": spec.grad_sync.to_dict(),
        "zero_stage": spec.zero_stage, "async_ps": asdict(spec.async_ps),
        "cpu_budget": asdict(spec.cpu_budget) if spec.cpu_budget else None,
        "fault_schedule": spec.fault_schedule,
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
        cpu_budget=CpuBudget(**d["cpu_budget"]) if d.get("cpu_budget") else None,
        fault_schedule=d.get("fault_schedule"),
    )
