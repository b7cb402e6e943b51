"""Training-loop configuration (optimiser, schedule, early stopping, timing window)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from recpar.device import PRECISIONS, autocast_dtype, resolve_precision

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
    precision: str = "auto"
    """`fp32`, `bf16` (torch.autocast mixed precision: bf16 matmuls and attention in the
    forward, fp32 weights, gradients, optimiser and communication; recpar.device) or `auto`:
    fp32 on CPU, bf16 on CUDA. The record stores the resolved value."""
    num_threads: int = 0
    """torch intra-op threads (0 = torch's default)."""
    deterministic: bool = True
    """torch.use_deterministic_algorithms (bit-reproducible on CPU)."""
    measure_mfu: bool = False
    """At the end of the run, rank 0 measures the GEMM peak of its device in the run's
    precision, with its threads and CPU budget (recpar.device.gemm_flops_per_s: about a second
    in fp32; minutes for bf16 on a CPU without bf16 units) and the record carries
    `gemm_peak_tflops_per_s` and `mfu_pct` = model FLOP/s over that peak. `model_tflops_per_s`
    is recorded either way."""
    compile: bool = False
    """torch.compile the training step's forward (the loss included: inductor fuses the
    logits' masking with the cross-entropy) in place, before DDP wraps it (names and
    checkpoints unchanged); schemes baseline and dp. Compiles during the first steps (the
    warm-up: train.warmup_steps should cover it)."""
    compile_backend: str = "inductor"
    """torch.compile's backend: `inductor` (code generation), or `eager` (dynamo traces, runs
    the same ops uncompiled: a cheap check that the step traces)."""
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
        if self.compile_backend not in ("inductor", "eager", "aot_eager"):
            raise ConfigError("train.compile_backend must be inductor, eager or aot_eager, got "
                              f"{self.compile_backend!r}")
        for name in ("deterministic", "measure_mfu", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"train.{name} must be true or false, got "
                                  f"{getattr(self, name)!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"train.precision must be one of {', '.join(PRECISIONS)}, got "
                              f"{self.precision!r}")
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

    def with_precision(self, precision: str) -> "TrainConfig":
        """A copy with `precision` replaced."""
        from dataclasses import replace

        return replace(self, precision=precision)

    def resolved_precision(self) -> str:
        """`fp32` or `bf16`: `precision` on `device` (`auto` resolved)."""
        return resolve_precision(self.precision, self.device)

    def autocast_dtype(self):
        """torch.bfloat16 when the forward runs under autocast, else None (fp32)."""
        return autocast_dtype(self.precision, self.device)

    def to_record(self) -> dict:
        """The config as it ran: betas a list, precision resolved (`auto` -> fp32 or bf16)."""
        d = asdict(self)
        d["betas"] = list(self.betas)
        d["precision"] = self.resolved_precision()
        return d
