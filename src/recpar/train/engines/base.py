"""What the training loop asks of a parallel scheme: the `Engine` interface.

The loop (`recpar.train.loop.train`) owns everything that is the same for every scheme: data,
batches (the same global batch indices on every rank), the timing window, validation on rank 0,
early stopping, checkpoints, the run record. An engine owns what differs: how the single-device
model is parallelised (the `apply_*` functions of `recpar.parallel`, in their documented order),
which rows of the global batch this rank feeds, one optimiser step, and how the full weights and
the training state are gathered or saved.

Contract, every method called on every rank unless stated:
- `step(inputs, targets, idx)`: one optimiser step on the global batch `inputs[idx]`; returns
  the global mean loss (exact, or this rank's estimate: say so in `loss_is_estimate`).
- `full_state_dict()`: a collective; rank 0 gets the single-device `Recommender.state_dict()`
  (CPU tensors, same keys and shapes as the unparallelised model), other ranks None. The loop
  scores it and stores it in `last.pt`/`best.pt`, so checkpoints read the same for every plan.
- `state_dict()` / `load_state_dict()`: this rank's training state (weights or shard,
  optimiser, gradient-sync residuals), saved per rank as `engine-rank<r>.pt`; engines whose
  library has its own checkpoint format override `save`/`load` instead.
- `window_opened()` / `window_closed(steps)`: the timing window's edges (drop warm-up counters,
  return per-iteration communication statistics).
- `run_epoch(...)` (optional): a whole epoch at once instead of `step` per batch (async).
- `finish(...)`: metrics measured after training (e.g. the no-sync compute time that gives the
  exposed communication), on every rank.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path

import torch

from recpar.device import forward_context
from recpar.model.config import ModelConfig
from recpar.model.recommender import Recommender
from recpar.train import checkpoint
from recpar.train.spec import RunSpec


@dataclass
class EngineContext:
    """What an engine is built from (the loop fills it; identical on every rank)."""

    spec: RunSpec
    """What the run was asked to do (plan, grad_sync, zero_stage, seed, ...)."""
    model: Recommender
    """The single-device model, built from the run seed: identical on every rank."""
    model_cfg: ModelConfig
    """Its config (text_dim resolved from the data)."""
    device: torch.device
    """This rank's device."""
    rank: int
    """Global rank."""
    world: int
    """World size (dp × tp × pp)."""
    seq_len: int
    """Length L of every training sequence ([B, L] batches)."""


@dataclass
class StepResult:
    """What one optimiser step reports back to the loop."""

    loss_mean: float | torch.Tensor
    """Mean loss over the valid positions of the global batch: a float, or a 0-d tensor left
    on its device until the loop averages the epoch (no host sync per step on a GPU)."""
    fwd_bwd_ms: float | None = None
    """Forward + backward (with gradient synchronisation) ms, when the engine measures it."""
    extra: dict = field(default_factory=dict)
    """Engine-specific per-step numbers (e.g. pipeline bubble), aggregated by the engine."""


class Engine(abc.ABC):
    """One scheme's way of training the single-device model on this rank."""

    loss_is_estimate: bool = False
    """True when `StepResult.loss_mean` is this rank's estimate, not the global value."""

    def __init__(self, ctx: EngineContext):
        self.ctx = ctx

    @abc.abstractmethod
    def step(self, inputs: torch.Tensor, targets: torch.Tensor,
             idx: torch.Tensor) -> StepResult:
        """One optimiser step on the global batch inputs[idx], targets[idx] ([B, L] each)."""

    @abc.abstractmethod
    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Collective: the single-device state dict on rank 0 (CPU), None elsewhere."""

    def autocast(self):
        """The context this rank's training forwards run in: torch.autocast to bf16 under
        train.precision bf16, none under fp32 (recpar.device). Engines wrap forwards only."""
        return forward_context(self.ctx.spec.train.autocast_dtype(), self.ctx.device.type)

    def run_epoch(self, inputs: torch.Tensor, targets: torch.Tensor,
                  batches: list[torch.Tensor], window) -> list[float] | None:
        """Optional hook for schemes that do not take one synchronous step per global batch
        (`async`): train on all of `batches` (every rank, same list), drive the loop's
        `StepWindow` itself (`before_step`/`after_step` once per global batch's worth of work)
        and return the epoch's losses (the loop averages them). None (the default): the loop
        calls `step` per batch."""
        return None

    def train(self) -> None:
        """Put the modules this rank trains into training mode (after validation)."""
        self.ctx.model.train()

    def state_dict(self) -> dict:
        """This rank's training state; the default has nothing beyond `full_state_dict`."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""

    def save(self, out_dir: Path, fingerprint: str) -> None:
        """Write this rank's training state (every rank; may be a collective)."""
        checkpoint.save(Path(out_dir) / f"engine-rank{self.ctx.rank}.pt",
                        {"state": self.state_dict(), "fingerprint": fingerprint})

    def load(self, out_dir: Path, fingerprint: str) -> None:
        """Read back what `save` wrote (every rank)."""
        path = Path(out_dir) / f"engine-rank{self.ctx.rank}.pt"
        if not path.exists():
            raise checkpoint.CheckpointError(
                f"{path}: missing; last.pt exists, so the run was saved by a plan with other "
                "ranks or the directory is incomplete; delete it or use another --out")
        self.load_state_dict(checkpoint.load(path, expect_fingerprint=fingerprint)["state"])

    def trained_state(self) -> tuple[list[torch.nn.Parameter], torch.optim.Optimizer | None] | None:
        """This rank's trained parameters and optimizer, for `recpar.train.memory`; None where
        the engine's library holds them in its own layout (ZeRO partitions, DeepSpeed)."""
        return None

    def window_opened(self) -> None:
        """The timing window starts with the next step: drop warm-up counters."""

    def window_closed(self, steps: int) -> dict:
        """The window ended after `steps` timed steps: per-iteration comm statistics."""
        return {}

    def finish(self, inputs: torch.Tensor, targets: torch.Tensor,
               batches: list[torch.Tensor], timing: dict) -> dict:
        """Metrics measured after training (every rank); `timing` = the window's metrics."""
        return {}

    def close(self) -> None:
        """Release threads, groups or files the engine holds."""
