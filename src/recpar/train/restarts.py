"""What elastic restarts cost a run: restarts, lost steps and lost time, for its record.

When a rank dies, torchrun (`recpar train --max-restarts N`, `recpar.cluster.elastic`) restarts
every rank, and the new ranks resume from the last complete checkpoint (`last.pt`,
`recpar.train.loop`). So that the attempt after a restart can tell what the dead one had done,
rank 0 keeps two small files in the run directory:

- `progress.txt`: one fixed-width line, rewritten in place after every step: the launch
  (torchrun's TORCHELASTIC_RUN_ID), the attempt, the last step rank 0 completed and when. One
  `pwrite`, no rename and no fsync (microseconds a step); a rank killed by a signal loses
  nothing the kernel already has.
- `restarts.json` (written atomically): the attempts of this launch (when each was ready to
  train, from which step, and what the restart before it cost), and when the last few
  checkpoints were committed.

Only a torchrun job that can restart (TORCHELASTIC_MAX_RESTARTS > 0) keeps them. The files of an
earlier launch in the same directory (a run resumed by hand) are superseded, not counted.

Definitions (the record's `metrics`; per restart, summed over the restarts of the launch):

- `restarts_count`: how often the ranks were restarted, i.e. the attempts before the one that
  finished: the larger of the attempts rank 0 recorded and its agent's
  TORCHELASTIC_RESTART_COUNT (which also counts an attempt that died before it began training;
  it is per agent, and an agent restarted by another node's failure does not count that one).
- `restart_lost_steps_count`: the last step the previous attempt completed minus the step the
  next attempt resumed from: the steps done twice.
- `restart_lost_s`: from when the state the next attempt resumed from was reached (the commit
  of that checkpoint, or the previous attempt's start of training where that is later: it
  resumed from the same state) to when the next attempt was ready to train (ranks restarted,
  data and model set up, checkpoint loaded). That is the dead attempt's work after that state,
  which is redone, plus the time to notice the failure and restart: how much later the run
  ends than it would have without the failure, up to step-time noise. Both times are rank 0's
  wall clock; rank 0 runs on the same node in every attempt (c10d numbers the nodes by their
  addresses, which a restart does not change).

Schemes whose engine trains whole epochs (async) report progress once per epoch: their lost
steps count only whole epochs completed after the checkpoint, not the part of an epoch the dead
attempt had done (the lost time includes it).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from recpar.atomic_write import write_text

PROGRESS_FILE = "progress.txt"
HISTORY_FILE = "restarts.json"
_LINE_BYTES = 160
"""Width of the progress line (padded), so that a rewrite in place covers the previous one."""
_COMMITS_KEPT = 4
"""Checkpoint commits remembered: enough for a resume that falls back a generation or two."""

ASYNC_NOTE = (
    "scheme async after a restart: the parameter server resumed from its state at the last "
    "checkpoint (weights, AdamW state, version and update statistics, engine-rank0.pt); the "
    "updates the dead attempt applied after it were lost and redone. The order in which the "
    "workers' pushes arrive is not deterministic, so the final weights equal neither those of "
    "an uninterrupted run nor those of another async run (as for any two async runs), and the "
    "staleness statistics cover the kept updates only. Lost steps count only whole epochs "
    "completed after the checkpoint (an async epoch reports its progress when it ends), not "
    "the part of an epoch the dead attempt had done; the lost time includes it.")


@dataclass(frozen=True)
class Progress:
    """The last step an attempt completed (one line of `progress.txt`)."""

    launch_id: str
    attempt: int
    step: int
    unix_s: float

    def to_line(self) -> bytes:
        raw = f"{self.launch_id} {self.attempt} {self.step} {self.unix_s:.6f}".encode()
        if len(raw) >= _LINE_BYTES:
            raise ValueError(f"{PROGRESS_FILE}: launch id too long ({self.launch_id!r})")
        return raw.ljust(_LINE_BYTES - 1) + b"\n"

    @classmethod
    def parse(cls, text: str) -> Progress | None:
        """The line's values, or None for anything else (a missing or damaged file)."""
        parts = text.split()
        if len(parts) != 4:
            return None
        try:
            return cls(parts[0], int(parts[1]), int(parts[2]), float(parts[3]))
        except ValueError:
            return None

    @classmethod
    def read(cls, path: Path) -> Progress | None:
        try:
            return cls.parse(path.read_text(errors="replace"))
        except OSError:
            return None


@dataclass
class Attempt:
    """One attempt of a launch, as its rank 0 recorded it once ready to train."""

    attempt: int
    """0 for the launch's first attempt, k after its k-th recorded restart."""
    resumed_step: int
    """The step the attempt started from (0: from scratch)."""
    ready_unix_s: float
    """When it was ready to train: set up, checkpoint loaded."""
    previous_last_step: int | None = None
    """The last step the attempt before it completed (None for the first attempt)."""
    previous_last_unix_s: float | None = None
    """When that step completed (None if it completed none after resuming)."""
    lost_steps: int = 0
    """Steps of the previous attempt done again by this one."""
    lost_s: float = 0.0
    """Time lost to the restart that started this attempt (module docstring)."""


@dataclass
class History:
    """`restarts.json`: the attempts of one launch and the recent checkpoint commits."""

    launch_id: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    commits: list[dict] = field(default_factory=list)
    """{"step", "unix_s"} of the last checkpoint commits, oldest first."""

    def commit_time(self, step: int) -> float | None:
        """When the checkpoint after `step` steps was committed, if remembered."""
        times = [c["unix_s"] for c in self.commits if c["step"] == step]
        return times[-1] if times else None

    @classmethod
    def read(cls, path: Path) -> History:
        """The file's history; an empty one if it is missing or damaged (nothing to count)."""
        try:
            raw = json.loads(path.read_text())
            return cls(launch_id=raw["launch_id"],
                       attempts=[Attempt(**a) for a in raw["attempts"]],
                       commits=[{"step": int(c["step"]), "unix_s": float(c["unix_s"])}
                                for c in raw["commits"]])
        except (OSError, ValueError, KeyError, TypeError):
            return cls()

    def write(self, path: Path) -> None:
        write_text(path, json.dumps({"launch_id": self.launch_id,
                                     "attempts": [asdict(a) for a in self.attempts],
                                     "commits": self.commits}, indent=1) + "\n")


def charge_restart(new: Attempt, previous: Attempt, history: History,
                   last: Progress | None, launch_id: str) -> None:
    """Fill in what the restart before `new` cost (the module docstring's definitions);
    `last` is what progress.txt held when `new` began."""
    done, done_s = previous.resumed_step, None
    if last is not None and last.launch_id == launch_id and last.attempt == previous.attempt:
        done, done_s = last.step, last.unix_s
    new.previous_last_step, new.previous_last_unix_s = done, done_s
    new.lost_steps = max(0, done - new.resumed_step)
    reached = previous.ready_unix_s
    committed = history.commit_time(new.resumed_step)
    if committed is not None:
        reached = max(reached, committed)
    new.lost_s = max(0.0, new.ready_unix_s - reached)


class RestartTracker:
    """Rank 0's bookkeeping of one attempt (`begin`); a disabled tracker does nothing and
    reports no restarts (other ranks, runs without torchrun or without restarts)."""

    def __init__(self, out: Path | None = None, history: History | None = None,
                 attempt: int = 0, max_restarts: int = 0, agent_restart_count: int = 0):
        self.out = out
        self.history = history or History()
        self.attempt = attempt
        self.max_restarts = max_restarts
        self.agent_restart_count = agent_restart_count

    @classmethod
    def disabled(cls) -> RestartTracker:
        return cls()

    @property
    def active(self) -> bool:
        return self.out is not None

    @classmethod
    def begin(cls, out: str | os.PathLike, rank: int, resumed_step: int,
              environ: Mapping[str, str] | None = None,
              now: float | None = None) -> RestartTracker:
        """Call when this attempt is ready to train, having resumed from `resumed_step`:
        records the attempt (and, after a restart, what the restart cost) on rank 0."""
        env = os.environ if environ is None else environ
        launch_id = "_".join(env.get("TORCHELASTIC_RUN_ID", "").split())
        max_restarts = int(env.get("TORCHELASTIC_MAX_RESTARTS") or 0)
        if rank != 0 or not launch_id or max_restarts <= 0:
            return cls.disabled()
        now = time.time() if now is None else now
        out = Path(out)
        history = History.read(out / HISTORY_FILE)
        if history.launch_id != launch_id:  # a new launch: its own attempts, the same files
            history = History(launch_id=launch_id, commits=history.commits)
        new = Attempt(attempt=len(history.attempts), resumed_step=resumed_step,
                      ready_unix_s=now)
        if history.attempts:
            charge_restart(new, history.attempts[-1], history,
                           Progress.read(out / PROGRESS_FILE), launch_id)
        history.attempts.append(new)
        history.write(out / HISTORY_FILE)
        tracker = cls(out, history, new.attempt, max_restarts,
                      int(env.get("TORCHELASTIC_RESTART_COUNT") or 0))
        tracker.step_done(resumed_step, now)
        return tracker

    def step_done(self, step: int, now: float | None = None) -> None:
        """Rank 0, after each completed step (per epoch for engines that train whole ones)."""
        if not self.active:
            return
        line = Progress(self.history.launch_id, self.attempt, step,
                        time.time() if now is None else now).to_line()
        fd = os.open(self.out / PROGRESS_FILE, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, line, 0)
        finally:
            os.close(fd)

    def committed(self, step: int, now: float | None = None) -> None:
        """Rank 0, after last.pt of the state after `step` steps was written."""
        if not self.active:
            return
        self.history.commits.append({"step": step,
                                     "unix_s": time.time() if now is None else now})
        del self.history.commits[:-_COMMITS_KEPT]
        self.history.write(self.out / HISTORY_FILE)

    @property
    def restarts(self) -> list[Attempt]:
        """The recorded attempts that followed a restart."""
        return self.history.attempts[1:] if self.active else []

    def metrics(self) -> dict:
        """`restarts_count`, `restart_lost_steps_count`, `restart_lost_s` of the launch."""
        restarts = self.restarts
        return {"restarts_count": max(len(restarts), self.agent_restart_count),
                "restart_lost_steps_count": sum(a.lost_steps for a in restarts),
                "restart_lost_s": float(sum(a.lost_s for a in restarts))}

    def notes(self, scheme: str) -> list[str]:
        """One line per restart, and what differs for scheme async."""
        out = [f"restart {a.attempt} (torchrun --max-restarts {self.max_restarts}): the ranks "
               f"were restarted after step {a.previous_last_step} and resumed from step "
               f"{a.resumed_step}, the last complete checkpoint; lost {a.lost_steps} step(s) "
               f"and {a.lost_s:.1f} s" for a in self.restarts]
        unrecorded = self.metrics()["restarts_count"] - len(self.restarts)
        if unrecorded > 0:
            out.append(f"{unrecorded} more restart(s) (TORCHELASTIC_RESTART_COUNT) ended before "
                       "training began; their time is in the next restart's lost time")
        if scheme == "async" and self.metrics()["restarts_count"]:
            out.append(ASYNC_NOTE)
        return out
