"""The chaos table: for every run of a grid with a fault schedule (config/chaos.yaml), what
was injected when, whether the run survived, and what the faults cost it.

One row per record: the faults as applied (`faults.injected`: action, target, seconds after
the attempt began training, and whether the injector succeeded), the restarts with their lost
steps and lost time (`recpar.train.restarts`), the windows in which steps ran slow
(`recpar.train.step_timeline`), and for scheme async the mean staleness per worker (a
straggler's gradients are the stale ones). A record exists only for a run that finished, so
every row is a survivor; a run that did not survive has no record, fails its Snakemake job and
is listed under "Lost" from the runs the grid asked for.
"""

from __future__ import annotations

import pandas as pd

from recpar.report.render import to_markdown


def _fault(e: dict) -> str:
    args = ", ".join(f"{k}={_short(v)}" for k, v in sorted(e["args"].items()))
    where = f"{e['applied_s']:+.1f} s" if "applied_s" in e else f"at {e['at_s']:g} s"
    ok = "" if e.get("ok", True) else f" FAILED ({e.get('error', 'no reason')})"
    return f"{e['action']}({args}) {where}{ok}"


def _short(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _windows(rec: dict) -> str:
    ws = rec.get("slow_windows") or []
    return "; ".join(f"{w['from_s']:.1f}-{w['to_s']:.1f} s x{w['slowdown']:.1f} "
                     f"(steps {w['first_step']}-{w['last_step']})" for w in ws) or "none"


def _staleness(rec: dict) -> str:
    m = rec["metrics"]
    per = sorted((k.removeprefix("mean_staleness_rank"), v) for k, v in m.items()
                 if k.startswith("mean_staleness_rank"))
    return ", ".join(f"rank {r}: {v:.2f}" for r, v in per) or "-"


def chaos_report(records: list[dict], expected: list[str] | None = None) -> str:
    """Markdown: the table of the module docstring; `expected`: run ids the grid asked for
    (those without a record are listed as lost)."""
    rows = []
    for rec in sorted(records, key=lambda r: (r["run_id"], r["seed"])):
        faults = rec.get("faults")
        m = rec["metrics"]
        injected = "; ".join(_fault(e) for e in (faults or {}).get("injected", [])) or "none"
        if faults and faults.get("log_error"):
            injected += f" (log unreadable: {faults['log_error']})"
        rows.append([rec["run_id"], str(rec["seed"]), injected, rec["status"],
                     str(m.get("restarts_count", 0)), str(m.get("restart_lost_steps_count", 0)),
                     f"{m.get('restart_lost_s', 0.0):.1f}", _windows(rec),
                     f"{rec['timing'].get('total_train_s', float('nan')):.1f}",
                     _staleness(rec)])
    header = ["run", "seed", "faults applied (s after training began)", "status", "restarts",
              "lost steps", "lost s", "slow windows", "train s", "async mean staleness"]
    have = {r["run_id"] for r in records}
    lost = sorted(set(expected or ()) - have)
    notes = ["Times are seconds after the run's (last) attempt began training; a negative time "
             "means the fault came while the ranks were starting.",
             "Slow window: steps slower than twice the median step (recpar.train.step_timeline).",
             "Lost steps and lost s, per restart: the work done again, and the time from the "
             "checkpoint resumed from to the restarted ranks being ready (recpar.train.restarts).",
             "Lost runs: " + (", ".join(lost) + " (no record)" if lost else
                              "none; every run of the grid finished and wrote its record.")]
    return to_markdown(pd.DataFrame(rows, columns=header),
                       "Chaos grid: faults injected and what the runs survived", notes)
