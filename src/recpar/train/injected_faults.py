"""A run's fault schedule and what the injector did, for the run record (`faults`).

`recpar train --fault-schedule` (emulated topology) hands the schedule to the launcher, which
runs it alongside the ranks (`recpar.cluster.fault.run_schedule`). Its times count from when
training begins: rank 0 creates `<out>/training_started` then, and the injector waits for it,
so a fault lands at the same point of training however long the ranks took to start. The
injector writes each applied event to `<out>/faults.json` as it happens. Rank 0 reads that
file when it writes the record and puts every event on its own time line: `applied_s` is
seconds after this attempt began training (after a restart, an event of an earlier attempt is
negative), so a slow window (`recpar.train.step_timeline`) can be set against the straggler or
link change that caused it.
"""

from __future__ import annotations

import json
from pathlib import Path

LOG_FILE = "faults.json"
"""Written by the launcher in the run directory; read by rank 0."""
START_MARKER = "training_started"
"""Created by rank 0 when training begins; the fault schedule's clock starts then."""


def mark_training_started(out: str | Path) -> None:
    """Rank 0, as training begins (every attempt; the first one starts the schedule)."""
    Path(out, START_MARKER).touch()


def for_record(schedule: list[dict], log_path: str | Path, t0_unix_s: float) -> dict:
    """{"schedule": the events as given, "injected": what was applied and when, "log_error":
    why the log could not be read (absent when it could)}."""
    out: dict = {"schedule": schedule, "injected": []}
    try:
        log = json.loads(Path(log_path).read_text())
    except FileNotFoundError:
        return out  # nothing applied yet (every event after the end of training)
    except (OSError, json.JSONDecodeError) as e:
        out["log_error"] = f"{log_path}: {e}"
        return out
    for e in log:
        entry = {"action": e["action"], "args": e["args"], "at_s": e["at_s"],
                 "applied_s": e["unix_s"] - t0_unix_s, "ok": bool(e.get("ok"))}
        if e.get("error"):
            entry["error"] = e["error"]
        out["injected"].append(entry)
    return out
