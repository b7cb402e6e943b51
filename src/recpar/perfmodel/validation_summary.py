"""The markdown summary of cost-model validation rows (recpar.perfmodel.validation), one
section per grid, development and held-out grids apart.

Per grid: its role and what that role means, the target band, iteration time and
communication time each summarised over the rows that were judged (`row_role` validated), per
scheme, the calibration's own run-to-run spread next to the target, the rows left out and why,
and every row. Rows may come straight from validation_rows or back from the CSV
(rows_from_csv).
"""

from __future__ import annotations

import csv
import io
import statistics
from typing import Any, Iterable, Mapping

from recpar.perfmodel.validation import GRID_ROLES, MISSED, NOT_JUDGED, VALIDATED, WITHIN

MEASURES = {"iter": "iteration time", "comm": "communication time"}
"""Prefix of a row's error/verdict columns -> what it measures."""

_FLOATS = ("target_pct", "predicted_iter_ms", "measured_iter_ms", "iter_error_pct",
           "predicted_comm_ms_per_iter", "measured_comm_ms_per_iter", "comm_error_pct",
           "calibration_spread_pct")
_INTS = ("dp", "tp", "pp", "nodes", "ranks_per_node", "global_batch_size", "calibration_repeats")


def rows_from_csv(text: str) -> list[dict[str, Any]]:
    """Rows of validation_projected_vs_measured.csv with numbers as numbers ('' -> None)."""
    rows = []
    for r in csv.DictReader(io.StringIO(text)):
        row: dict[str, Any] = dict(r)
        for k in _FLOATS:
            if k in row:
                row[k] = float(row[k]) if row[k] not in ("", None) else None
        for k in _INTS:
            if k in row:
                row[k] = int(float(row[k])) if row[k] not in ("", None) else None
        rows.append(row)
    return rows


def measure_summary(rows: Iterable[Mapping[str, Any]], measure: str) -> dict[str, Any]:
    """Counts and |error| statistics of one measure ('iter' or 'comm') over the `validated`
    rows among `rows`; rows it could not judge are listed with their note."""
    rows = [r for r in rows if r["row_role"] == VALIDATED]
    judged = [r for r in rows if r[f"{measure}_verdict"] in (WITHIN, MISSED)]
    errs = [abs(r[f"{measure}_error_pct"]) for r in judged]
    return {
        "judged": len(judged),
        "within": sum(r[f"{measure}_verdict"] == WITHIN for r in judged),
        "missed": sum(r[f"{measure}_verdict"] == MISSED for r in judged),
        "max_abs_error_pct": max(errs) if errs else None,
        "median_abs_error_pct": statistics.median(errs) if errs else None,
        "not_judged": [(r["run_id"], r.get("note") or "") for r in rows
                       if r[f"{measure}_verdict"] == NOT_JUDGED],
    }


def calibration_spread(rows: Iterable[Mapping[str, Any]]) -> dict[int, tuple[int, float | None]]:
    """World size W -> (repeats, spread %) of the loaded-step line the rows' predictions read."""
    out: dict[int, tuple[int, float | None]] = {}
    for r in rows:
        if r.get("compute_basis") == "loaded_step" and r.get("calibration_repeats"):
            w = int(r["dp"]) * int(r["tp"]) * int(r["pp"])
            out[w] = (int(r["calibration_repeats"]), r.get("calibration_spread_pct"))
    return dict(sorted(out.items()))


def grids(rows: Iterable[Mapping[str, Any]]) -> list[tuple[str, str, list[Mapping[str, Any]]]]:
    """(grid, role, rows) per grid, development grids first, then held-out, in row order."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r.get("grid") or "", r["grid_role"]), []).append(r)
    order = list(GRID_ROLES)
    return [(g, role, rs) for (g, role), rs in
            sorted(groups.items(), key=lambda kv: order.index(kv[0][1]))]


def _pct(v: float | None, signed: bool = True) -> str:
    if v is None:
        return "—"
    return f"{v:+.1f} %" if signed else f"{v:.1f} %"


def _ms(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f}"


def _range(errs: list[float]) -> str:
    return f"{_pct(min(errs))} to {_pct(max(errs))}" if errs else "—"


def _grid_section(grid: str, role: str, rows: list[Mapping[str, Any]]) -> list[str]:
    target = rows[0]["target_pct"]
    band = f"±{target:g} %"
    name = f"`{grid}`" if grid else "(unnamed)"
    out = [f"## Grid {name}: {role}", "",
           f"Role **{role}**: {GRID_ROLES[role]}.", "",
           f"Target: |predicted − measured| / measured ≤ {target:g} %, judged separately for "
           "iteration time (`iter_verdict`) and communication time (`comm_verdict`). Only rows "
           "whose `row_role` is `validated` count below.", "",
           f"| measure | judged | within {band} | missed {band} | largest abs. error | "
           "median abs. error |", "|---|---|---|---|---|---|"]
    for key, label in MEASURES.items():
        s = measure_summary(rows, key)
        out.append(f"| {label} | {s['judged']} | {s['within']} | {s['missed']} | "
                   f"{_pct(s['max_abs_error_pct'], False)} | "
                   f"{_pct(s['median_abs_error_pct'], False)} |")
    out += ["", "By scheme (validated rows; signed errors, smallest to largest):", "",
            "| scheme | rows | iteration within | iteration errors | communication within | "
            "communication errors |", "|---|---|---|---|---|---|"]
    validated = [r for r in rows if r["row_role"] == VALIDATED]
    for scheme in dict.fromkeys(r["scheme"] for r in validated):
        rs = [r for r in validated if r["scheme"] == scheme]
        cells = []
        for key in MEASURES:
            s = measure_summary(rs, key)
            errs = [r[f"{key}_error_pct"] for r in rs if r[f"{key}_verdict"] != NOT_JUDGED]
            cells += [f"{s['within']} of {s['judged']}", _range(errs)]
        out.append(f"| {scheme} | {len(rs)} | " + " | ".join(cells) + " |")
    out += ["", f"Calibration run-to-run spread next to the {target:g} % target: 100 × (max − "
            "min) / median of the slowest rank's loaded step over the calibration's repeats, "
            "the largest over its batch sizes, for each rank count W a prediction read:", ""]
    spread = calibration_spread(rows)
    if not spread:
        out.append("- no prediction read a loaded-step line")
    for w, (k, pct) in spread.items():
        out.append(f"- W = {w}: " + (f"{pct:.1f} % over {k} repeats" if pct is not None
                                     else f"not measured ({k} repeat)"))
    left = [r for r in rows if r["row_role"] != VALIDATED]
    out += ["", "Left out of the summary:", ""]
    out += [f"- `{r['run_id']}`: {r.get('note') or r['row_role']}" for r in left] or ["- none"]
    out += ["", "Communication not judged (validated rows):", ""]
    out += [f"- `{run}`: {note}" for run, note in measure_summary(rows, "comm")["not_judged"]] \
        or ["- none"]
    derived = [r for r in rows if r.get("record_derived_inputs") not in (None, "", "none")]
    out += ["", "Predictions that read a profile entry taken from a run record's measured "
            "outcome (`record_derived_inputs`):", ""]
    out += [f"- `{r['run_id']}`: {r['record_derived_inputs']}" for r in derived] or ["- none"]
    rates: dict[str, list[str]] = {}
    for r in rows:
        if r.get("link_rates"):
            rates.setdefault(r["link_rates"], []).append(r["run_id"])
    out += ["", "Link rates that priced the communication (`link_rates`): the profile's, or the "
            "rates the run's own record measured with every stream of a collective step at "
            "once (recpar.perfmodel.loaded_links):", ""]
    out += [f"- {basis}: " + ", ".join(f"`{run}`" for run in runs)
            for basis, runs in rates.items()] or ["- not recorded"]
    out += ["", "| run | scheme | row role | iteration predicted / measured (ms) | error | "
            "verdict | communication predicted / measured (ms) | error | verdict |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| `{r['run_id']}` | {r['scheme']} | {r['row_role']} | "
                   f"{_ms(r['predicted_iter_ms'])} / {_ms(r['measured_iter_ms'])} | "
                   f"{_pct(r['iter_error_pct'])} | {r['iter_verdict']} | "
                   f"{_ms(r['predicted_comm_ms_per_iter'])} / "
                   f"{_ms(r['measured_comm_ms_per_iter'])} | {_pct(r['comm_error_pct'])} | "
                   f"{r['comm_verdict']} |")
    return out + [""]


def summary_markdown(rows: Iterable[Mapping[str, Any]]) -> str:
    """The summary of every grid among `rows` (sections in grids() order)."""
    sections = grids(rows)
    out = ["# Cost-model validation (projected vs measured)", "",
           "Every prediction is labelled `projected`. Error = 100 × (predicted − measured) / "
           "measured. Development and held-out grids are summarised apart: only a held-out "
           "grid's errors test prediction.", ""]
    if not sections:
        return "\n".join(out + ["No rows.", ""])
    for grid, role, rs in sections:
        out += _grid_section(grid, role, rs)
    return "\n".join(out)

