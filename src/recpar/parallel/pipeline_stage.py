"""The recpar side of `torch.distributed.pipelining`: an instrumented stage and its schedule.

`InstrumentedStage` is a torch `PipelineStage` that measures what one rank's stage did in a
schedule step: time in its forward and backward compute, bytes of activations and of
activation gradients it sent. torch has no public hook for either, so it overrides four
methods of `torch.distributed.pipelining.stage._PipelineStageBase` that are not part of
torch's documented API (checked against torch 2.13.0, the version pinned in
envs/requirements-cpu.txt; recheck them when that pin moves):

- `forward_maybe_with_nosync(*args, **kwargs)`: runs the stage module's forward for one
  micro-batch (under DDP's `no_sync` when the module is DDP); called by `forward_one_chunk`.
  Wrapped to time the forward compute.
- `backward_maybe_with_nosync(backward_type, bwd_kwargs, last_backward=False)`: runs one
  micro-batch's backward (DDP/FSDP gradient sync on the last one); called by
  `backward_one_chunk`. Wrapped to time the backward compute (on the last stage it includes
  the loss backward).
- `get_fwd_send_ops(fwd_chunk_id)` / `get_bwd_send_ops(bwd_chunk_id)`: the P2P send ops
  every schedule asks the stage for; wrapped to add up the bytes of the tensors they send.

Each override calls the base method unchanged and only adds timing or counting, so all
scheduling, buffering and communication stay torch's. On CUDA each timed region is
bracketed by device syncs (the schedule blocks on its P2P work anyway).

`StageSchedule` is this rank's stages plus the schedule object driving them, built once per
micro-batch shape by `build_schedule`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from torch.distributed.pipelining import (
    PipelineStage,
    Schedule1F1B,
    ScheduleGPipe,
    ScheduleInterleaved1F1B,
)

from recpar.device import device_sync

SCHEDULE_CLASSES = {
    "gpipe": ScheduleGPipe,
    "1f1b": Schedule1F1B,
    "interleaved-1f1b": ScheduleInterleaved1F1B,
}
"""ParallelPlan.pipeline_schedule -> torch.distributed.pipelining schedule class."""


class InstrumentedStage(PipelineStage):
    """A `PipelineStage` that times its forward/backward compute and counts bytes it sends
    (the overridden torch methods: module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reset_counters()

    def reset_counters(self) -> None:
        self.forward_s = 0.0
        self.backward_s = 0.0
        self.activation_bytes_sent = 0
        self.grad_bytes_sent = 0

    def forward_maybe_with_nosync(self, *args, **kwargs):
        device_sync(self.device)
        t0 = time.perf_counter()
        out = super().forward_maybe_with_nosync(*args, **kwargs)
        device_sync(self.device)
        self.forward_s += time.perf_counter() - t0
        return out

    def backward_maybe_with_nosync(self, *args, **kwargs):
        device_sync(self.device)
        t0 = time.perf_counter()
        out = super().backward_maybe_with_nosync(*args, **kwargs)
        device_sync(self.device)
        self.backward_s += time.perf_counter() - t0
        return out

    def get_fwd_send_ops(self, fwd_chunk_id: int):
        ops = super().get_fwd_send_ops(fwd_chunk_id)
        self.activation_bytes_sent += sum(op.tensor.numel() * op.tensor.element_size()
                                          for op in ops)
        return ops

    def get_bwd_send_ops(self, bwd_chunk_id: int):
        ops = super().get_bwd_send_ops(bwd_chunk_id)
        self.grad_bytes_sent += sum(op.tensor.numel() * op.tensor.element_size() for op in ops)
        return ops


@dataclass
class StageSchedule:
    """Stage objects and schedule for one micro-batch shape."""

    stages: list[InstrumentedStage]
    """This rank's torch PipelineStage wrappers (over the runner's StageModules)."""
    schedule: object
    """The torch.distributed.pipelining schedule driving them."""

    def reset_counters(self) -> None:
        for st in self.stages:
            st.reset_counters()

    @property
    def forward_s(self) -> float:
        return sum(st.forward_s for st in self.stages)

    @property
    def backward_s(self) -> float:
        return sum(st.backward_s for st in self.stages)

    @property
    def activation_bytes_sent(self) -> int:
        return sum(st.activation_bytes_sent for st in self.stages)

    @property
    def grad_bytes_sent(self) -> int:
        return sum(st.grad_bytes_sent for st in self.stages)


def build_schedule(schedule_name: str, stages: list[InstrumentedStage], num_microbatches: int,
                   loss_fn: Callable) -> StageSchedule:
    """torch's schedule `schedule_name` (a `ParallelPlan.pipeline_schedule`) over this rank's
    stages. Gradients are not scaled (scale_grads=False): `loss_fn` already divides by the
    global batch's valid count."""
    cls = SCHEDULE_CLASSES[schedule_name]
    arg = stages if schedule_name == "interleaved-1f1b" else stages[0]
    schedule = cls(arg, num_microbatches, loss_fn=loss_fn, scale_grads=False)
    return StageSchedule(stages, schedule)
