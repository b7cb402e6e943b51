"""Training-loop configuration (optimiser, schedule, early stopping, timing window)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

EVAL_PROTOCOLS = ("full", "sampled100")


class ConfigError(ValueError):
    """A training option with a value the loop cannot use; the message names the key."""


@dataclass
class TrainConfig:
    """How one run trains. Defaults suit the tiny model on movielens-100k on a CPU."""

    lr: float = 1e-3
    """AdamW learning rate."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay (applied to matrices only, not to norms/biases)."""
    betas: tuple[float, float] = (0.9, 0.98)
    """AdamW betas (0.98 as in SASRec/transformer recommenders: short, noisy sequences)."""
    global_batch_size: int = 128
    """Training sequences per optimiser step, summed over data-parallel ranks."""
    max_epochs: int = 50
    """Upper bound on passes over the training sequences."""
    patience: int = 5
    """Early stopping: epochs without a better validation metric before stopping."""
    early_stopping_metric: str = "ndcg_at_10"
    """Validation metric (full-ranking protocol) that selects the best checkpoint."""
    clip_grad: float = 1.0
    """Max global gradient norm (0 disables clipping)."""
    warmup_steps: int = 5
    """Timing protocol: optimiser steps excluded from the throughput window."""
    timed_steps: int = 50
    """Timing protocol: optimiser steps inside the throughput window (fewer if training ends)."""
    eval_batch_size: int = 256
    """Histories scored per evaluation batch."""
    eval_every: int = 1
    """Validate every this many epochs."""
    device: str = "cpu"
    """`cpu` or `cuda`."""
    num_threads: int = 0
    """torch intra-op threads (0 = torch's default)."""
    deterministic: bool = True
    """torch.use_deterministic_algorithms (bit-reproducible on CPU)."""
    measure_mfu: bool = False
    """At the end of the run, rank 0 measures the GEMM peak of its device (fp32, its threads
    and CPU budget; recpar.device.gemm_flops_per_s, about a second) and the record carries
    `gemm_peak_tflops_per_s` and `mfu_pct` = model FLOP/s over that peak. `model_tflops_per_s`
    is recorded either way."""
    max_steps: int = 0
    """Stop after this many optimiser steps in total (0 = no limit); for smoke tests."""
    collective_timeout_s: float = 120.0
    """Longest wait for one collective (the process groups' timeout): a peer that stops
    answering ends the run after this, with the rank and the collective named."""
    rank0_phase_timeout_s: float = 3600.0
    """Longest wait of the other ranks while rank 0 alone validates (a monitored barrier), so
    a long validation does not count against collective_timeout_s."""

    def validate(self) -> "TrainConfig":
        positive = ("lr", "global_batch_size", "max_epochs", "patience", "eval_batch_size",
                    "eval_every", "collective_timeout_s", "rank0_phase_timeout_s")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("weight_decay", "clip_grad", "warmup_steps", "timed_steps", "num_threads",
                     "max_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"train.betas must be two numbers in [0, 1), got {self.betas!r}")
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f"train.device must be 'cpu' or 'cuda', got {self.device!r}")
        for name in ("deterministic", "measure_mfu"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"train.{name} must be true or false, got "
                                  f"{getattr(self, name)!r}")
        if self.early_stopping_metric not in ("ndcg_at_10", "hr_at_10"):
            raise ConfigError("train.early_stopping_metric must be ndcg_at_10 or hr_at_10, "
                              f"got {self.early_stopping_metric!r}")
        return self

    @classmethod
    def from_mapping(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown train option(s): {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(known))}")
        values = dict(values)
        if "betas" in values:
            values["betas"] = tuple(values["betas"])
        return cls(**values).validate()

    def to_record(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d
