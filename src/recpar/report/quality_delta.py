"""Quality deltas against a reference run: does a scheme end where sync DP ends?

DESIGN.md's quality claim (Table II: parallelism does not change HR@10 / NDCG@10) and the
compression / asynchrony ablations (Formulas 10–12) are checked the same way: every run's
HR@10 and NDCG@10, under both protocols, minus the reference run's (uncompressed synchronous
DP), against a stated tolerance. Runs are paired with the reference by seed (same seed = same
initial weights and batch order), so a delta is the scheme's effect, not seed noise.

Tolerance rule (`seed_spread_tolerance`): per protocol and metric, the larger of a fixed floor
and the reference's own seed-to-seed spread (max − min over its seeds). A scheme whose delta
is within what re-running the reference with another seed changes is "within tolerance"; the
floor keeps one lucky pair of reference seeds from making the bar arbitrarily tight.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from recpar.report.metrics import PROTOCOLS, QUALITY_METRICS

Cell = tuple[str, str]
"""(protocol, metric), e.g. ("full", "hr_at_10")."""
CELLS: tuple[Cell, ...] = tuple((p, m) for p in PROTOCOLS for m in QUALITY_METRICS)


@dataclass
class QualityDelta:
    """One run id compared with the reference run id on the seeds both have."""

    run_id: str
    """The compared run."""
    seeds: tuple[int, ...]
    """Seeds present in both this run and the reference (the pairs averaged)."""
    values: dict[Cell, float]
    """This run's metric, mean over the paired seeds."""
    reference: dict[Cell, float]
    """The reference's metric, mean over the same seeds."""
    delta: dict[Cell, float]
    """values − reference (negative: this run is worse)."""
    tolerance: dict[Cell, float]
    """Largest |delta| counted as "no change"."""
    epochs: float
    """Epochs trained (history length), mean over the paired seeds."""
    train_s: float
    """Training wall time in seconds (timing.total_train_s), mean over the paired seeds."""

    @property
    def within(self) -> dict[Cell, bool]:
        """Per cell: |delta| <= tolerance."""
        return {c: abs(self.delta[c]) <= self.tolerance[c] for c in CELLS}

    @property
    def all_within(self) -> bool:
        return all(self.within.values())

    @property
    def worst_miss(self) -> float:
        """Largest amount by which a |delta| exceeds its tolerance (0 when all are within)."""
        return max(0.0, max(abs(self.delta[c]) - self.tolerance[c] for c in CELLS))


def _cell_value(rec: dict, cell: Cell, split: str) -> float:
    proto, metric = cell
    try:
        return float(rec["quality"][split][proto][metric])
    except KeyError as e:
        raise ValueError(f"run {rec.get('run_id')!r} seed {rec.get('seed')}: no quality "
                         f"{split}/{proto}/{metric} ({e.args[0]!r} missing)") from None


def _by_run_and_seed(records: list[dict]) -> dict[str, dict[int, dict]]:
    out: dict[str, dict[int, dict]] = defaultdict(dict)
    for rec in records:
        run, seed = rec["run_id"], int(rec["seed"])
        if seed in out[run]:
            raise ValueError(f"run {run!r}: two records for seed {seed}")
        out[run][seed] = rec
    return out


def _tolerance_map(tolerance: float | Mapping[Cell, float]) -> dict[Cell, float]:
    if isinstance(tolerance, Mapping):
        missing = [c for c in CELLS if c not in tolerance]
        if missing:
            raise ValueError(f"tolerance: no value for {missing}")
        tol = {c: float(tolerance[c]) for c in CELLS}
    else:
        tol = {c: float(tolerance) for c in CELLS}
    bad = {c: v for c, v in tol.items() if not v >= 0}
    if bad:
        raise ValueError(f"tolerance: must be >= 0, got {bad}")
    return tol


def seed_spread_tolerance(records: list[dict], reference_run_id: str, floor: float = 0.01,
                          split: str = "test") -> dict[Cell, float]:
    """Per cell: max(floor, max − min of the reference over its seeds). With one seed the
    spread is unknown and the floor alone is used."""
    if not floor >= 0:
        raise ValueError(f"floor: must be >= 0, got {floor!r}")
    ref = _by_run_and_seed(records).get(reference_run_id)
    if not ref:
        raise ValueError(f"reference run {reference_run_id!r}: no records")
    out = {}
    for c in CELLS:
        vals = [_cell_value(r, c, split) for r in ref.values()]
        out[c] = max(floor, max(vals) - min(vals))
    return out


def compare_to_reference(records: list[dict], reference_run_id: str,
                         tolerance: float | Mapping[Cell, float],
                         split: str = "test") -> list[QualityDelta]:
    """One QualityDelta per run id other than the reference (in first-seen order), each on
    the seeds it shares with the reference. `tolerance`: one absolute value for every cell,
    or a (protocol, metric) -> value mapping (e.g. `seed_spread_tolerance`)."""
    tol = _tolerance_map(tolerance)
    runs = _by_run_and_seed(records)
    if reference_run_id not in runs:
        raise ValueError(f"reference run {reference_run_id!r}: no records "
                         f"(runs: {', '.join(runs) or 'none'})")
    ref = runs[reference_run_id]
    out = []
    for run_id, by_seed in runs.items():
        if run_id == reference_run_id:
            continue
        seeds = tuple(sorted(set(by_seed) & set(ref)))
        if not seeds:
            raise ValueError(f"run {run_id!r} (seeds {sorted(by_seed)}) shares no seed with "
                             f"reference {reference_run_id!r} (seeds {sorted(ref)})")
        values = {c: float(np.mean([_cell_value(by_seed[s], c, split) for s in seeds]))
                  for c in CELLS}
        refv = {c: float(np.mean([_cell_value(ref[s], c, split) for s in seeds])) for c in CELLS}
        out.append(QualityDelta(
            run_id=run_id, seeds=seeds, values=values, reference=refv,
            delta={c: values[c] - refv[c] for c in CELLS}, tolerance=dict(tol),
            epochs=float(np.mean([len(by_seed[s].get("history", [])) for s in seeds])),
            train_s=float(np.mean([by_seed[s]["timing"].get("total_train_s", float("nan"))
                                   for s in seeds]))))
    return out


def delta_table(deltas: list[QualityDelta], reference_run_id: str) -> str:
    """Markdown: per run, each cell as `value (Δ ±x.xxxx)`, whether all cells are within
    tolerance (else by how much the worst misses), epochs and training seconds."""
    head = ["run", "seeds"] + [f"{m.replace('_at_', '@').upper()} {p}" for p, m in CELLS] \
        + ["within tolerance", "epochs", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if deltas:
        d0 = deltas[0]
        lines.append("| " + " | ".join(
            [f"{reference_run_id} (reference)", ",".join(map(str, d0.seeds))]
            + [f"{d0.reference[c]:.4f}" for c in CELLS] + ["—", "", ""]) + " |")
    for d in deltas:
        verdict = "yes" if d.all_within else f"no (misses by {d.worst_miss:.4f})"
        lines.append("| " + " | ".join(
            [d.run_id, ",".join(map(str, d.seeds))]
            + [f"{d.values[c]:.4f} ({d.delta[c]:+.4f})" for c in CELLS]
            + [verdict, f"{d.epochs:g}", f"{d.train_s:.0f}"]) + " |")
    if deltas:
        tol = deltas[0].tolerance
        lines += ["", "Tolerance (absolute): " + ", ".join(
            f"{m.replace('_at_', '@').upper()} {p} {tol[c]:.4f}" for c in CELLS for p, m in [c])
            + f". Δ = run − {reference_run_id} on the same seed(s)."]
    return "\n".join(lines) + "\n"


def reference_report(records: list[dict], reference_run_id: str, floor: float = 0.01,
                     split: str = "test") -> str:
    """Markdown: every run against the reference under the seed-spread tolerance rule, with
    the rule stated; the non-learned `most-popular` reference is left out."""
    recs = [r for r in records if r["scheme"] != "most-popular"]
    tol = seed_spread_tolerance(recs, reference_run_id, floor=floor, split=split)
    deltas = compare_to_reference(recs, reference_run_id, tol, split=split)
    return (f"# Quality vs {reference_run_id} ({split} split)\n\n"
            + delta_table(deltas, reference_run_id)
            + f"\nTolerance rule: max({floor}, the reference's seed-to-seed spread).\n")
