"""Engine `zero`: DeepSpeed ZeRO stage 1/2/3 (`recpar.parallel.zero`) inside the common loop."""

from __future__ import annotations

from pathlib import Path

from recpar.model.loss import valid_positions
from recpar.parallel.zero import apply_zero, zero_state_dict, zero_step
from recpar.train import checkpoint
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
        self._comm = DeepSpeedCommTimer()

    def step(self, inputs, targets, idx) -> StepResult:
        local = idx[self.ctx.rank::self.dp]
        gcount = valid_positions(inputs[idx], targets[idx]).sum()
        # zero_step's loss is already the global mean (all-reduced); left on the device
        return StepResult(loss_mean=zero_step(
            self.engine, inputs[local], targets[local], gcount,
            autocast_dtype=self.ctx.spec.train.autocast_dtype()).detach())

    def window_opened(self) -> None:
        self._comm.start()

    def window_closed(self, steps: int) -> dict:
        return self._comm.stop(steps)

    def close(self) -> None:
        self._comm.stop(0)

    def full_state_dict(self):
        # Gathering is a collective on every rank: the engine's modules carry ZeRO-3 fetch
        # hooks, so rank 0 alone must never run a forward through them.
        full = zero_state_dict(self.engine)
        return full if self.ctx.rank == 0 else None

    def save(self, out_dir: Path, fingerprint: str) -> None:
        # DeepSpeed's own format: partitioned optimiser state per rank (a collective).
        checkpoint.save_deepspeed(self.engine, Path(out_dir) / "deepspeed", fingerprint)

    def load(self, out_dir: Path, fingerprint: str) -> None:
        checkpoint.load_deepspeed(self.engine, Path(out_dir) / "deepspeed", fingerprint)

class DeepSpeedCommTimer:
    """Time and size of ZeRO's collectives, from DeepSpeed's own comms logger.

    Every collective DeepSpeed issues goes through `deepspeed.comm`, whose `timed_op` wrapper
    times it (blocking: it synchronises the device after the op) and logs its message size
    when the comms logger is enabled. Its per-op `latency` entries are cumulative (the op's
    timer is read without reset), so the total here is read from the timers themselves,
    reset when the window opens: sum over ops of the timed milliseconds.

    collective_msg_bytes_per_iter: DeepSpeed's message size (bytes of the tensor handed to
    the collective: the gathered output of all-gather, the input of reduce-scatter and
    all-reduce), summed over calls; not bytes on the wire (those depend on the algorithm).
    `<op>_msg_bytes_per_iter` splits it by DeepSpeed's op name.
    """

    def __init__(self):
        import deepspeed.comm.comm as ds_comm

        self._ds = ds_comm
        self._active = False

    def start(self) -> None:
        logger = self._ds.comms_logger
        logger.enabled, logger.prof_all, logger.verbose = True, True, False
        logger.reset_data()
        for t in self._ds.timers.get_timers().values():
            t.reset()
        self._active = True

    def stop(self, steps: int) -> dict:
        if not self._active:
            return {}
        logger = self._ds.comms_logger
        logger.enabled = False
        self._active = False
        if not steps:
            return {}
        ms = sum(t._get_elapsed_msec() for t in self._ds.timers.get_timers().values())
        per_op = {name: sum(entry[0] * size for size, entry in sizes.items())
                  for name, sizes in logger.get_raw_data().items()}
        calls = sum(entry[0] for sizes in logger.get_raw_data().values()
                    for entry in sizes.values())
        return {"comm_ms_per_iter": ms / steps,
                "collective_msg_bytes_per_iter": sum(per_op.values()) / steps,
                "collective_calls_per_iter": calls / steps,
                **{f"{op}_msg_bytes_per_iter": v / steps for op, v in sorted(per_op.items())}}
