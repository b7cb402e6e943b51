"""Settings of the asynchronous parameter server (recpar.comm.async_ps), importable without
torch: `recpar train` validates them before any rank starts, in a process that never trains."""

from __future__ import annotations

from dataclasses import dataclass

WORK_ASSIGNMENTS = ("static", "dynamic")


class AsyncPSError(RuntimeError):
    """The parameter-server protocol broke (timeout, unexpected message, bad configuration)."""


@dataclass
class AsyncPSConfig:
    """Asynchronous parameter-server settings (same object on every rank)."""

    staleness_damping: bool = True
    """Formula 12: scale each gradient by 1/(1 + tau) before the optimizer step."""
    clip_grad: float = 0.0
    """Clip each pushed gradient to this global norm before damping (0 = off), as the
    synchronous loop clips its averaged gradient (train.clip_grad)."""
    timeout_s: float = 300.0
    """Longest wait for any single message, in seconds; exceeded -> AsyncPSError."""
    work_assignment: str = "static"
    """static: each worker computes its own share of every global batch of the round, so the
    round waits for the slowest worker; dynamic: the server hands out the round's pieces one at
    a time, so a fast worker takes more and a straggler fewer (module docstring)."""
    push_order: tuple[int, ...] | None = None
    """Deterministic schedule (tests, controlled experiments): the server takes the worker
    messages of a round strictly from these ranks in this order, then from whichever worker
    comes first. None: always whichever comes first (real asynchrony)."""

    def validate(self, world_size: int) -> "AsyncPSConfig":
        if world_size < 2:
            raise AsyncPSError(f"async_ps: needs >= 2 ranks (a server and a worker), got world "
                               f"size {world_size}")
        if not isinstance(self.staleness_damping, bool):
            raise AsyncPSError(f"async_ps.staleness_damping: must be true or false, got "
                               f"{self.staleness_damping!r}")
        if not self.clip_grad >= 0:
            raise AsyncPSError(f"async_ps.clip_grad: must be >= 0, got {self.clip_grad!r}")
        if self.work_assignment not in WORK_ASSIGNMENTS:
            raise AsyncPSError(f"async_ps.work_assignment: must be one of {WORK_ASSIGNMENTS}, "
                               f"got {self.work_assignment!r}")
        if not self.timeout_s > 0:
            raise AsyncPSError(f"async_ps.timeout_s: must be > 0, got {self.timeout_s!r}")
        for r in self.push_order or ():
            if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r < world_size:
                raise AsyncPSError(f"async_ps.push_order: {r!r} is not a worker rank "
                                   f"(1..{world_size - 1})")
        return self
