"""Engine `deepspeed`: DeepSpeed pipeline + ZeRO-1 + data parallelism, with megatron-core
tensor parallelism inside the stages when tp > 1 (`recpar.parallel.deepspeed_pipeline`),
inside the common loop."""

from __future__ import annotations

from pathlib import Path

from recpar.parallel.deepspeed_pipeline import (apply_deepspeed_pipeline, pipeline_state_dict,
                                                pipeline_step)
from recpar.parallel.plan import PlanError
from recpar.train import checkpoint
from recpar.train.engines.base import Engine, EngineContext, StepResult

CHECKPOINT_DIR = "deepspeed"
"""Sub-directory of the run directory holding DeepSpeed's checkpoint (tag `last`)."""


class DeepSpeedPipelineEngine(Engine):
    """Schedule, pipeline communication, tied-table and dp reductions, clipping and the ZeRO-1
    optimiser step are DeepSpeed's (`engine.train_batch`); every rank feeds the same global
    batch and DeepSpeed's first/last stages of each dp replica read their rows of it."""

    def __init__(self, ctx: EngineContext):
        super().__init__(ctx)
        spec = ctx.spec
        # tp > 1: ctx.model is sharded in place by apply_tp (the loop scores a separate
        # single-device model filled from full_state_dict).
        self.engine = apply_deepspeed_pipeline(ctx.model, spec.train, spec.plan,
                                               seed=spec.seed)
        grid = self.engine.grid  # DeepSpeed's pipe x data (x model) topology
        self.dp = grid.data_parallel_size
        have = (self.dp, grid.get_slice_parallel_world_size(), grid.pipe_parallel_size)
        want = (spec.plan.dp, spec.plan.tp, spec.plan.pp)
        if have != want:
            raise PlanError("DeepSpeed's topology has dp = {}, tp = {}, pp = {}; the plan has "
                            "dp = {}, tp = {}, pp = {}".format(*have, *want))

    def step(self, inputs, targets, idx) -> StepResult:
        # train_batch's loss is the global mean over valid positions (see the module docstring
        # of recpar.parallel.deepspeed_pipeline), broadcast to every rank.
        return StepResult(loss_mean=float(pipeline_step(self.engine, inputs[idx], targets[idx])))

    def train(self) -> None:
        self.engine.module.train()  # the stage's layers (copies), not ctx.model

    def full_state_dict(self):
        return pipeline_state_dict(self.engine)  # collective; rank 0 gets the weights

    def save(self, out_dir: Path, fingerprint: str) -> None:
        # DeepSpeed's own format: one file per layer (written by dp replica 0) and each rank's
        # ZeRO-1 optimizer partition; a collective.
        checkpoint.save_deepspeed(self.engine, Path(out_dir) / CHECKPOINT_DIR, fingerprint)

    def load(self, out_dir: Path, fingerprint: str) -> None:
        checkpoint.load_deepspeed(self.engine, Path(out_dir) / CHECKPOINT_DIR, fingerprint)

    def close(self) -> None:
        self.engine.destroy()
