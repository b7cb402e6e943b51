"""Timing protocol (DESIGN.md): warm-up steps, then a timed window of steps.

The device is synchronised only at the window's two edges (never inside it), so the window
measures steady-state throughput including any asynchronous device work. On the CPU there is
nothing to synchronise. Process CPU time over the same window gives the CPU utilisation.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass, field

from recpar.train.record import utc_from_unix


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


@dataclass
class StepWindow:
    """Counts optimiser steps and records the wall/CPU clock at the timed window's edges."""

    warmup_steps: int
    timed_steps: int
    device: str = "cpu"
    steps_seen: int = 0
    samples_in_window: int = 0
    tokens_in_window: int = 0
    _t0: float | None = None
    _t1: float | None = None
    _wall0: float | None = None
    _wall1: float | None = None
    _cpu0: float | None = None
    _cpu1: float | None = None
    component_ms: dict = field(default_factory=dict)

    @property
    def open(self) -> bool:
        return self._t0 is not None and self._t1 is None

    @property
    def closed(self) -> bool:
        return self._t1 is not None

    def before_step(self) -> None:
        if self._t0 is None and self.steps_seen == self.warmup_steps and self.timed_steps > 0:
            _sync(self.device)
            self._t0 = time.perf_counter()
            self._wall0 = time.time()
            self._cpu0 = _process_cpu_s()

    def after_step(self, samples: int, tokens: int, components: dict | None = None) -> None:
        """Call after each optimiser step; `components` are per-step ms (compute, comm, ...)."""
        self.steps_seen += 1
        if self.open:
            self.samples_in_window += samples
            self.tokens_in_window += tokens
            for k, v in (components or {}).items():
                self.component_ms[k] = self.component_ms.get(k, 0.0) + v
            if self.steps_seen - self.warmup_steps >= self.timed_steps:
                self.close()

    def close(self) -> None:
        """Close the window early (training ended before timed_steps were reached)."""
        if self.open:
            _sync(self.device)
            self._t1 = time.perf_counter()
            self._wall1 = time.time()
            self._cpu1 = _process_cpu_s()

    @property
    def steps_in_window(self) -> int:
        if self._t0 is None:
            return 0
        return min(self.steps_seen - self.warmup_steps, self.timed_steps)

    def to_record(self) -> dict:
        done = self.closed
        return {
            "warmup_steps": self.warmup_steps,
            "timed_steps": self.steps_in_window,
            "requested_timed_steps": self.timed_steps,
            "window_start_utc": utc_from_unix(self._wall0) if self._wall0 else None,
            "window_end_utc": utc_from_unix(self._wall1) if done else None,
            "window_s": (self._t1 - self._t0) if done else None,
            "device_sync": "torch.cuda.synchronize at window edges" if self.device == "cuda"
            else "none needed (cpu)",
        }

    def metrics(self) -> dict:
        """Throughput and per-iteration times over the window (None when no window closed)."""
        if not self.closed or self.steps_in_window == 0:
            return {"throughput_samples_per_s": None, "throughput_tokens_per_s": None,
                    "iter_ms": None, "cpu_util_pct": None}
        window_s = self._t1 - self._t0
        n = self.steps_in_window
        out = {
            "throughput_samples_per_s": self.samples_in_window / window_s,
            "throughput_tokens_per_s": self.tokens_in_window / window_s,
            "iter_ms": 1e3 * window_s / n,
            # Process CPU seconds per wall second over the window, as a share of all logical CPUs.
            "cpu_util_pct": 100.0 * (self._cpu1 - self._cpu0) / (window_s * (os.cpu_count() or 1)),
        }
        for k, v in self.component_ms.items():
            out[f"{k}_ms_per_iter"] = v / n
        return out


def _process_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
