"""How data-parallel gradients are synchronised: `GradSyncConfig` and its validation.

Validation runs before any rank starts (`validate(world_size)`), so a bad combination is a
one-line error at the command line instead of a hang or a crash inside a collective.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

ALGORITHMS = ("ring", "hierarchical")
"""Dense all-reduce algorithms. 'ring' is the backend's own all-reduce (gloo/NCCL pick the
schedule; on NCCL and gloo with large messages that is a ring), 'hierarchical' is
reduce-scatter in node -> all-reduce across nodes -> all-gather in node."""

COMPRESSORS = ("none", "sign", "topk", "powersgd", "fp16", "bf16")
"""Gradient compressors. 'sign' and 'topk' are recpar's (paper Formulas 10-11); 'powersgd',
'fp16' and 'bf16' are torch's own DDP hooks, wrapped only for accounting."""

_BYTES_PER_MIB = 1024 * 1024  # torch DDP's bucket_cap_mb is in MiB (distributed.py _MB_TO_BYTES)


class GradSyncConfigError(ValueError):
    """A GradSyncConfig value is invalid; the message names the key and the value."""


@dataclass
class GradSyncConfig:
    """Gradient synchronisation settings for synchronous data parallelism (paper III.B)."""

    algorithm: str = "ring"
    """Dense all-reduce algorithm: 'ring' (backend all-reduce, the reference) or
    'hierarchical' (needs >= 2 nodes of `ranks_per_node` ranks; only with compressor 'none')."""

    compressor: str = "none"
    """'none' | 'sign' | 'topk' | 'powersgd' | 'fp16' | 'bf16'. Compressors other than 'none'
    replace the dense all-reduce by their own collectives over the whole data-parallel group."""

    topk_ratio: float = 0.01
    """Top-k keeps k = ceil(topk_ratio * n) elements of each n-element bucket; in (0, 1]."""

    error_feedback: bool = True
    """Keep the compression residual per bucket and add it to the next gradient (Formula 11).
    Used by 'sign', 'topk' and 'powersgd' (torch's use_error_feedback)."""

    ranks_per_node: int = 1
    """Ranks on one node (torchrun --nproc-per-node / LOCAL_WORLD_SIZE). Ranks are numbered
    node-major: node = rank // ranks_per_node, local rank = rank % ranks_per_node."""

    powersgd_rank: int = 1
    """PowerSGD matrix_approximation_rank (torch PowerSGDState)."""

    powersgd_start_iter: int = 2
    """PowerSGD start_powerSGD_iter: plain all-reduce before this many iterations. Must be > 1:
    recpar enables torch's warm_start, and DDP rebuilds its buckets after iteration 0."""

    overlap_grad_reduce: bool = True
    """megatron-core knob. True: hooks return asynchronous futures, so communication overlaps the
    rest of backward. False: each hook blocks until its bucket is reduced (no overlap)."""

    bucket_size: int | None = None
    """megatron-core knob, in ELEMENTS (parameters) per bucket, as in megatron-core's
    DistributedDataParallelConfig. None: torch DDP's default (25 MiB). Mapped to DDP's
    bucket_cap_mb by `ddp_kwargs`."""

    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form notes carried into run records (not interpreted)."""

    def validate(self, world_size: int) -> "GradSyncConfig":
        """Raise GradSyncConfigError (one line) on any invalid value; return self."""
        if not isinstance(world_size, int) or world_size < 1:
            raise GradSyncConfigError(f"grad_sync: world_size must be an int >= 1, got {world_size!r}")
        if self.algorithm not in ALGORITHMS:
            raise GradSyncConfigError(
                f"grad_sync.algorithm: unknown value {self.algorithm!r} (choose from {', '.join(ALGORITHMS)})")
        if self.compressor not in COMPRESSORS:
            raise GradSyncConfigError(
                f"grad_sync.compressor: unknown value {self.compressor!r} (choose from {', '.join(COMPRESSORS)})")
        ratio = self.topk_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) \
                or not 0.0 < ratio <= 1.0:
            raise GradSyncConfigError(f"grad_sync.topk_ratio: must be in (0, 1], got {ratio!r}")
        if isinstance(self.ranks_per_node, bool) or not isinstance(self.ranks_per_node, int) \
                or self.ranks_per_node < 1:
            raise GradSyncConfigError(
                f"grad_sync.ranks_per_node: must be an int >= 1, got {self.ranks_per_node!r}")
        if world_size % self.ranks_per_node != 0:
            raise GradSyncConfigError(
                f"grad_sync.ranks_per_node: world size {world_size} is not divisible by "
                f"ranks_per_node={self.ranks_per_node}")
        if self.algorithm == "hierarchical":
            if world_size // self.ranks_per_node < 2:
                raise GradSyncConfigError(
                    f"grad_sync.algorithm: 'hierarchical' needs >= 2 nodes, got world size {world_size} "
                    f"with ranks_per_node={self.ranks_per_node} (1 node)")
            if self.compressor != "none":
                raise GradSyncConfigError(
                    f"grad_sync.compressor: {self.compressor!r} cannot be combined with algorithm "
                    "'hierarchical' (compressors run their own collectives); use compressor 'none'")
        if isinstance(self.powersgd_rank, bool) or not isinstance(self.powersgd_rank, int) \
                or self.powersgd_rank < 1:
            raise GradSyncConfigError(f"grad_sync.powersgd_rank: must be an int >= 1, got {self.powersgd_rank!r}")
        if not isinstance(self.powersgd_start_iter, int) or self.powersgd_start_iter < 0:
            raise GradSyncConfigError(
                f"grad_sync.powersgd_start_iter: must be an int >= 0, got {self.powersgd_start_iter!r}")
        if self.compressor == "powersgd" and self.powersgd_start_iter <= 1:
            # recpar always enables torch's warm_start, which (like error feedback) needs > 1.
            raise GradSyncConfigError(
                f"grad_sync.powersgd_start_iter: must be > 1 for torch PowerSGD with warm start, "
                f"got {self.powersgd_start_iter}")
        if self.bucket_size is not None and (isinstance(self.bucket_size, bool)
                                             or not isinstance(self.bucket_size, int)
                                             or self.bucket_size < 1):
            raise GradSyncConfigError(
                f"grad_sync.bucket_size: must be an int >= 1 (elements) or null, got {self.bucket_size!r}")
        for name in ("error_feedback", "overlap_grad_reduce"):
            if not isinstance(getattr(self, name), bool):
                raise GradSyncConfigError(f"grad_sync.{name}: must be true or false, got {getattr(self, name)!r}")
        return self

    def nodes(self, world_size: int) -> int:
        """Number of nodes for `world_size` ranks."""
        return world_size // self.ranks_per_node

    def ddp_kwargs(self, element_size_bytes: int = 4) -> dict[str, Any]:
        """Keyword arguments for torch.nn.parallel.DistributedDataParallel.

        bucket_cap_mb = bucket_size elements × element size / 2^20 (MiB, as DDP multiplies by
        1024*1024); element_size_bytes is the gradient dtype's size (4 for fp32 grads).
        """
        if self.bucket_size is None:
            return {}
        return {"bucket_cap_mb": self.bucket_size * element_size_bytes / _BYTES_PER_MIB}

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for run records / YAML."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "grad_sync") -> "GradSyncConfig":
        """Build from a mapping; an unknown key is a one-line error naming it."""
        known = set(cls.__dataclass_fields__)
        for key in data:
            if key not in known:
                raise GradSyncConfigError(f"{where}.{key}: unknown key (known: {', '.join(sorted(known))})")
        return cls(**dict(data))
