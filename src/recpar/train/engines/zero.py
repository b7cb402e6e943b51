"""Engine `zero`: DeepSpeed ZeRO stage 1/2/3 (`recpar.parallel.zero`) inside the common loop."""

from __future__ import annotations

from pathlib import Path

from recpar.model.recommender import Recommender
from recpar.parallel.zero import apply_zero, zero_state_dict, zero_step
from recpar.train.engines.base import Engine, EngineContext, StepResult


class ZeroEngine(Engine):
    """Forward, backward, ZeRO collectives, clipping and the optimiser step are DeepSpeed's."""

    def __init__(self, ctx: EngineContext):
        super().__init__(ctx)
        spec = ctx.spec
        self.dp = spec.plan.dp
        # Persistence threshold 0: under ZeRO-3 every parameter is partitioned, not only the
        # large ones (DeepSpeed keeps tensors below 1e5 elements whole by default).
        self.engine = apply_zero(ctx.model, spec.train, spec.plan, spec.zero_stage,
                                 zero_overrides={"stage3_param_persistence_threshold": 0}
                                 if spec.zero_stage == 3 else None)

    def step(self, inputs, targets, idx) -> StepResult:
        local = idx[self.ctx.rank::self.dp]
        gcount = Recommender.valid_positions(inputs[idx], targets[idx]).sum()
        # zero_step's loss is already the global mean (all-reduced).
        return StepResult(loss_mean=float(zero_step(self.engine, inputs[local], targets[local],
                                                     gcount)))

    def full_state_dict(self):
        # Gathering is a collective on every rank: the engine's modules carry ZeRO-3 fetch
        # hooks, so rank 0 alone must never run a forward through them.
        full = zero_state_dict(self.engine)
        return full if self.ctx.rank == 0 else None

    def save(self, out_dir: Path, fingerprint: str) -> None:
        # DeepSpeed's own format: partitioned optimiser state per rank (a collective).
        self.engine.save_checkpoint(str(Path(out_dir) / "deepspeed"), tag="last",
                                    client_state={"fingerprint": fingerprint})

    def load(self, out_dir: Path, fingerprint: str) -> None:
        from recpar.train.checkpoint import CheckpointError

        path, client = self.engine.load_checkpoint(str(Path(out_dir) / "deepspeed"), tag="last")
        if path is None:
            raise CheckpointError(f"{Path(out_dir) / 'deepspeed'}: no DeepSpeed checkpoint "
                                  "'last' although last.pt exists; delete the directory")
        if (client or {}).get("fingerprint") != fingerprint:
            raise CheckpointError(f"{path}: written by a run with config fingerprint "
                                  f"{(client or {}).get('fingerprint')}, this run is {fingerprint}")
