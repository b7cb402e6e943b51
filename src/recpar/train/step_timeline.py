"""Rank 0's wall time of every training step, and the windows in which steps ran slow.

A straggler or a degraded link mid-run makes a synchronous run slower for a while; the record
says when, so a slowdown can be matched against what was injected (`faults` in the record,
`recpar.cluster.fault`). Only the engine's `step()` call is timed (validation and checkpoints
between epochs are not steps), on rank 0, whose synchronous steps wait for the slowest rank.

Definitions (written once, used by the record):

- a step is *slow* when it takes more than `SLOW_FACTOR` × the median step of the attempt;
- a *slow window* is a run of slow steps in which at most `MAX_GAP_STEPS` consecutive steps
  were not slow (a duty-cycled straggler lets some steps through at full speed); it is kept
  when it holds at least `MIN_SLOW_STEPS` slow steps;
- its `slowdown` is the window's mean step time / the median step;
- times are seconds since this attempt began training (`from_s`, `to_s`: the first slow step's
  start, the last slow step's end).

Engines that train whole epochs (async) have no steps here; their straggler shows in the
parameter server's staleness statistics instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

SLOW_FACTOR = 2.0
"""A step slower than twice the median is slow: below a 4x straggler (its window measured x3.1
in tests/cluster/test_faults_midrun.py), and a factor that step-time noise alone rarely
reaches for a run of MIN_SLOW_STEPS steps."""
MAX_GAP_STEPS = 2
"""Steps at normal speed allowed inside one window."""
MIN_SLOW_STEPS = 2
"""Fewer slow steps than this are noise (a page fault, a scheduler hiccup), not a window."""


@dataclass
class StepTimeline:
    """Start and end of each step since `t0_unix_s` (this attempt's start of training)."""

    t0_unix_s: float = field(default_factory=time.time)
    steps: list[int] = field(default_factory=list)
    start_s: list[float] = field(default_factory=list)
    end_s: list[float] = field(default_factory=list)

    def add(self, step: int, start_unix_s: float, end_unix_s: float) -> None:
        self.steps.append(step)
        self.start_s.append(start_unix_s - self.t0_unix_s)
        self.end_s.append(end_unix_s - self.t0_unix_s)

    @property
    def durations_s(self) -> np.ndarray:
        return np.asarray(self.end_s) - np.asarray(self.start_s)

    def metrics(self) -> dict:
        """`step_median_s`, `step_max_s`, `slow_steps_count` (nothing without steps)."""
        d = self.durations_s
        if d.size == 0:
            return {}
        return {"step_median_s": float(np.median(d)), "step_max_s": float(d.max()),
                "slow_steps_count": int((d > SLOW_FACTOR * np.median(d)).sum())}

    def slow_windows(self) -> list[dict]:
        """The slow windows of the module docstring, in time order."""
        d = self.durations_s
        if d.size == 0:
            return []
        median = float(np.median(d))
        slow = np.flatnonzero(d > SLOW_FACTOR * median)
        groups: list[list[int]] = []
        for i in slow:
            if groups and i - groups[-1][-1] - 1 <= MAX_GAP_STEPS:
                groups[-1].append(int(i))
            else:
                groups.append([int(i)])
        out = []
        for g in groups:
            if len(g) < MIN_SLOW_STEPS:
                continue
            first, last = g[0], g[-1]
            out.append({"from_s": self.start_s[first], "to_s": self.end_s[last],
                        "first_step": self.steps[first], "last_step": self.steps[last],
                        "slow_steps": len(g),
                        "slowdown": float(d[first:last + 1].mean() / median)})
        return out
