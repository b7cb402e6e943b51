"""Timing protocol (DESIGN.md): warm-up steps, then a timed window of steps.

The device is synchronised only at the edges of the window's training segments (never inside
one), so the window measures steady-state throughput including asynchronous device work. Work
between epochs (validation, checkpoints) is not training: the loop pauses the window there and
the paused time is excluded; the record says how many segments the window had. On the CPU
there is nothing to synchronise. Process CPU time over the same segments gives utilisation.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass, field

from recpar.device import device_sync
from recpar.train.record import utc_from_unix


@dataclass
class StepWindow:
    """Counts optimiser steps; sums the wall/CPU time of the timed window's training segments."""

    warmup_steps: int
    timed_steps: int
    device: str = "cpu"
    steps_seen: int = 0
    samples_in_window: int = 0
    tokens_in_window: int = 0
    _t0: float | None = None  # perf_counter when the running segment started
    _wall0: float | None = None  # wall clock when the window opened
    _wall1: float | None = None  # wall clock when it closed
    _cpu0: float | None = None  # process CPU seconds when the running segment started
    _elapsed_s: float = 0.0  # training seconds inside the window (segments summed)
    _cpu_s: float = 0.0  # process CPU seconds inside the window
    _opened: bool = False
    _closed: bool = False
    segments: int = 0
    component_ms: dict = field(default_factory=dict)

    @property
    def open(self) -> bool:
        return self._opened and not self._closed

    @property
    def closed(self) -> bool:
        return self._closed

    def _start_segment(self) -> None:
        device_sync(self.device)
        self._t0 = time.perf_counter()
        self._cpu0 = _process_cpu_s()
        self.segments += 1

    def _end_segment(self) -> None:
        if self._t0 is not None:
            device_sync(self.device)
            self._elapsed_s += time.perf_counter() - self._t0
            self._cpu_s += _process_cpu_s() - self._cpu0
            self._t0 = None

    def before_step(self) -> None:
        if not self._opened and self.steps_seen == self.warmup_steps and self.timed_steps > 0:
            self._opened = True
            self._wall0 = time.time()
        if self.open and self._t0 is None:
            self._start_segment()

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

    def pause(self) -> None:
        """Stop the clock for non-training work (validation, checkpoints); the next step resumes."""
        if self.open:
            self._end_segment()

    def close(self) -> None:
        """Close the window (also early, when training ended before timed_steps were reached)."""
        if self.open:
            self._end_segment()
            self._closed = True
            self._wall1 = time.time()

    @property
    def steps_in_window(self) -> int:
        if not self._opened:
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
            "window_s": self._elapsed_s if done else None,
            "window_segments": self.segments,
            "device_sync": "torch.cuda.synchronize at window edges" if self.device == "cuda"
            else "none needed (cpu)",
        }

    def metrics(self) -> dict:
        """Throughput and per-iteration times over the window (None when no window closed)."""
        if not self.closed or self.steps_in_window == 0:
            return {"throughput_samples_per_s": None, "throughput_tokens_per_s": None,
                    "iter_ms": None, "cpu_util_pct": None}
        window_s = self._elapsed_s
        n = self.steps_in_window
        out = {
            "throughput_samples_per_s": self.samples_in_window / window_s,
            "throughput_tokens_per_s": self.tokens_in_window / window_s,
            "iter_ms": 1e3 * window_s / n,
            # Process CPU seconds per wall second over the window, as a share of all logical CPUs.
            "cpu_util_pct": 100.0 * self._cpu_s / (window_s * (os.cpu_count() or 1)),
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
