"""Each claim of the paper -> met / missed (by how much) / not run (why), measured and projected.

Which records judge a claim
---------------------------
* Table II speedup, communication share (Fig. 4), quality: rows of the claim's scheme whose
  device count (plan.world_size) equals the paper's (Table II: 1 or 8) and, where the paper
  states degrees (MP 4×2), whose plan matches them. Several matching rows: each is judged and
  the claim is met only if all are. No matching row: not run, and the rows measured at other
  scales are listed so the reader still sees them.
* Absolute throughput and ms/iter are hardware numbers: judged only on records made on the
  paper's accelerator (name contains "A100"). Utilisation: only when the record carries NVML
  GPU utilisation (`gpu_util_pct`); a CPU run's process share is not the same quantity.
* Table III: rows with topology.nodes = N and N × 8 devices.
* Quality vs baseline (parallelism does not change HR@10/NDCG@10): every parallel row, any
  scale, against the baseline of its own sweep, both protocols of the test split. The band
  comes from the seeds' spread where a run has several (recpar.report.quality_band), else
  from paper.yaml; the row shows it, and a second verdict against the paper's own largest
  gap in Table II (0.002), so "met within ±0.01" never reads as "met within 0.002".
* Orderings (hybrid fastest, hybrid lowest communication share) and the abstract's gains:
  any scale, on rows of one sweep and one device count that all compared schemes share (the
  largest such device count).
Projected values come from recpar.perfmodel on the paper's hardware and are judged with the
same tolerance, in their own column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from recpar.report.metrics import PROTOCOLS, QUALITY_METRICS
from recpar.report.paper import Paper, Quantity, Tolerance
from recpar.report.projection import Projection
from recpar.report.quality_band import CONSTANT, SEED_SPREAD, Band, quality_band
from recpar.report.records import PAPER_SCHEMES, RecordSet, Row
from recpar.report.render import fmt

MET, MISSED, NOT_RUN = "met", "missed", "not run"
QUALITY_SPLIT_NOTE = "test split, full and sampled100"
PAPER_ACCELERATOR = "A100"


@dataclass
class ClaimResult:
    """One claim, judged."""

    id: str
    """Stable id, e.g. T2-speedup-dp."""
    claim: str
    """What the paper claims (our wording)."""
    where: str
    """Table/figure/section."""
    paper: str
    """The paper's number with unit."""
    tolerance: str
    """Band and reason."""
    measured: str
    """Measured value(s) ('—' when none)."""
    status: str
    """met / missed / not run."""
    detail: str
    """By how much, on which rows, or why not run."""
    projected: str = "—"
    """perfmodel value on the paper's cluster ('—' when none)."""
    projected_status: str = "—"
    """met / missed / — (projected)."""
    band: str = ""
    """The band the status was judged with, short (the part of `tolerance` before its reason
    when not given)."""
    paper_gap_status: str = "—"
    """Quality claims: a second verdict, against the paper's own largest gap in Table II
    instead of the band (met / missed; — for other claims)."""

    def __post_init__(self) -> None:
        if not self.band:
            self.band = self.tolerance.split(": ", 1)[0]


def _row_label(rs: RecordSet, r: Row) -> str:
    k = r.key
    sync = f" {k.grad_sync}" if k.grad_sync != "-" else ""
    return (f"{k.scheme} {k.plan_label}{sync} on {k.topology_label} (sweep {k.sweep}, "
            f"{len(r.seeds)} seed(s))")


def _lossy_sync(r: Row) -> bool:
    """DP gradients compressed (sign, top-k, PowerSGD, fp16/bf16): lossy by design, so the
    paper's claim that parallelism leaves quality unchanged is not about such a row. A
    compressor the record does not state ('?') is not known to be lossless: left out too."""
    return r.key.grad_sync != "-" and not r.key.grad_sync.endswith("/none")


def _judge_rows(q: Quantity, rows: list[tuple[Row, float | None]], rs: RecordSet,
                why_none: str) -> tuple[str, str, str]:
    """(measured, status, detail) for the rows' values against quantity q."""
    judged = [(r, v) for r, v in rows if v is not None]
    if not judged:
        return "—", NOT_RUN, why_none
    parts, status = [], MET
    for r, v in judged:
        if q.tolerance.met(v, q.value):
            parts.append(f"{_row_label(rs, r)}: {fmt(v)} within the band")
        else:
            status = MISSED
            parts.append(f"{_row_label(rs, r)}: {fmt(v)}, outside the band by "
                         f"{fmt(q.tolerance.miss(v, q.value))} {q.unit}")
    measured = ", ".join(fmt(v) for _, v in judged)
    return measured, status, "; ".join(parts)


def _projected(q: Quantity, value: float | None) -> tuple[str, str]:
    if value is None:
        return "—", "—"
    return fmt(value), MET if q.tolerance.met(value, q.value) else MISSED


def _tol(t: Tolerance) -> str:
    return f"{t.describe()}: {t.reason}"


def _elsewhere(rs: RecordSet, scheme: str, measure: Callable[[Row], float | None]) -> str:
    other = [f"{r.key.plan_label} on {r.key.topology_label}: {fmt(measure(r))}"
             for r in rs.rows if r.key.scheme == scheme and measure(r) is not None]
    return (" Measured at other scales (see the tables): " + "; ".join(other) + ".") if other \
        else f" No {scheme} record was given."


def _on_paper_hw(r: Row) -> bool:
    return any(PAPER_ACCELERATOR in (a.get("name") or "") for a in r.hardware.get("accelerators", []))


def _table2_rows(rs: RecordSet, paper: Paper, scheme: str) -> tuple[list[Row], str]:
    spec = paper.table2_row(scheme) or {}
    devices, plan = spec.get("devices"), spec.get("plan")
    rows = rs.matching(scheme, world_size=devices, plan=plan)
    scale = f"{devices} device(s)" + (f", plan {plan}" if plan else "")
    return rows, scale


def _table1(rs: RecordSet, paper: Paper) -> list[ClaimResult]:
    t1 = paper.data["table1"]
    src = t1["record_source"]
    recs = [rec for r in rs.rows for rec in r.records if rec["dataset"]["source"] == src]
    out = []
    for key in ("users", "items", "train", "valid", "test"):
        q = paper.q(f"table1.values.{key}")
        vals = sorted({rec["dataset"]["stats"].get(key) for rec in recs} - {None})
        base = dict(id=f"T1-{key}", claim=f"{t1['dataset']}: {key} count", where=q.where,
                    paper=f"{q.value:,.0f} {q.unit}", tolerance=_tol(q.tolerance))
        if not vals:
            out.append(ClaimResult(**base, measured="—", status=NOT_RUN,
                                   detail=f"no record trained on `{src}` (records use: "
                                   f"{', '.join(sorted(rs.sweeps[s]['dataset'] for s in rs.sweeps))}); "
                                   "the data stage's table1.md compares the sources it prepared"))
            continue
        bad = [v for v in vals if not q.tolerance.met(float(v), q.value)]
        out.append(ClaimResult(**base, measured=", ".join(f"{v:,}" for v in vals),
                               status=MISSED if bad else MET,
                               detail=(f"differs by {', '.join(f'{v - q.value:+,.0f}' for v in bad)}"
                                       if bad else "equal")))
    return out


def _table2(rs: RecordSet, paper: Paper, proj: Projection) -> list[ClaimResult]:
    out = []
    for scheme in ("baseline",) + PAPER_SCHEMES:
        rows, scale = _table2_rows(rs, paper, scheme)
        label = paper.table2_row(scheme)["label"]
        p2 = proj.table2.get(scheme, {})
        # throughput: absolute, paper hardware only
        q = paper.table2_value(scheme, "throughput_samples_per_s")
        hw_rows = [r for r in rows if _on_paper_hw(r)]
        m, s, d = _judge_rows(q, [(r, r.mean("throughput_samples_per_s")) for r in hw_rows], rs,
                              f"absolute throughput is judged only on the paper's hardware "
                              f"({PAPER_ACCELERATOR}, {scale}); no such record."
                              + _elsewhere(rs, scheme, lambda r: r.mean("throughput_samples_per_s")))
        pv, ps = _projected(q, p2.get("throughput_samples_per_s"))
        out.append(ClaimResult(f"T2-throughput-{scheme}", f"{label}: throughput", q.where,
                               f"{fmt(q.value)} {q.unit}", _tol(q.tolerance), m, s, d, pv, ps))
        if scheme != "baseline":
            q = paper.table2_value(scheme, "speedup")
            m, s, d = _judge_rows(q, [(r, rs.speedup(r)) for r in rows], rs,
                                  f"no {scheme} record at the paper's scale ({scale})."
                                  + _elsewhere(rs, scheme, rs.speedup))
            pv, ps = _projected(q, p2.get("speedup"))
            out.append(ClaimResult(f"T2-speedup-{scheme}", f"{label}: speedup vs baseline",
                                   q.where, f"{fmt(q.value)} {q.unit}", _tol(q.tolerance),
                                   m, s, d, pv, ps))
        q = paper.table2_value(scheme, "gpu_util_pct")
        gpu_rows = [(r, r.mean("util_pct")) for r in rows if r.basis("util") == "gpu"]
        m, s, d = _judge_rows(q, gpu_rows, rs,
                              f"needs NVML GPU utilisation ({scale}); the records given carry "
                              "process CPU share (cpu_util_pct, in Table II), not comparable")
        out.append(ClaimResult(f"T2-util-{scheme}", f"{label}: GPU utilisation", q.where,
                               f"{fmt(q.value)} {q.unit}", _tol(q.tolerance), m, s, d,
                               "—", "— (perfmodel models no utilisation)"))
        q = paper.table2_value(scheme, "comm_ms_per_iter")
        m, s, d = _judge_rows(q, [(r, r.mean("comm_ms_per_iter")) for r in hw_rows], rs,
                              f"milliseconds are hardware numbers: judged only on "
                              f"{PAPER_ACCELERATOR} records ({scale}); none given."
                              + _elsewhere(rs, scheme, lambda r: r.mean("comm_ms_per_iter")))
        pv, ps = _projected(q, p2.get("comm_ms_per_iter"))
        out.append(ClaimResult(f"T2-comm-{scheme}", f"{label}: communication per iteration",
                               q.where, f"{fmt(q.value)} {q.unit}", _tol(q.tolerance), m, s, d,
                               pv, ps))
        src = paper.data["table1"]["record_source"]
        for metric in ("hr_at_10", "ndcg_at_10"):
            q = paper.table2_value(scheme, metric)
            ok = [(r, r.mean(f"{metric}_sampled100")) for r in rows
                  if all(rec["dataset"]["source"] == src for rec in r.records)]
            m, s, d = _judge_rows(q, ok, rs,
                                  f"absolute quality is compared only on `{src}` under "
                                  f"sampled100 ({scale}); no such record (other datasets' "
                                  "values are in Table II)")
            out.append(ClaimResult(f"T2-{metric}-{scheme}", f"{label}: {metric} (absolute)",
                                   q.where, f"{fmt(q.value)}", _tol(q.tolerance), m, s, d))
    ds = paper.table2_row("deepspeed")
    if ds is not None:
        out.append(ClaimResult("T2-deepspeed", ds["label"], paper.data["table2"]["where"], "—",
                               "—", "—", NOT_RUN, ds.get("note", "the paper gives no numbers")))
    return out


def _gap_tolerance(paper: Paper) -> Tolerance | None:
    gap = paper.quality_gap()
    return None if gap is None else Tolerance(
        "absolute", gap, "the paper's own largest |scheme − baseline| of HR@10 and NDCG@10 in "
        "Table II (printed to 3 decimals)")


@dataclass
class _QualityCell:
    """One (row, protocol, metric) comparison with the baseline."""

    name: str
    value: float
    base: float
    band: Band

    @property
    def delta(self) -> float:
        return self.value - self.base


def _quality_cells(r: Row, base: Row, tol: dict[str, Tolerance]
                   ) -> tuple[list[_QualityCell], list[str]]:
    """(comparisons, names of the cells not measured on the row or on the baseline)."""
    cells, missing = [], []
    for proto in PROTOCOLS:
        for metric, t in tol.items():
            name = f"{metric}_{proto}"
            v, b = r.values(name), base.values(name)
            if not v or not b:
                missing.append(name)
                continue
            cells.append(_QualityCell(name, sum(v) / len(v), sum(b) / len(b),
                                      quality_band(b, v, t)))
    return cells, missing


def _band_summary(cells: list[_QualityCell]) -> str:
    """The bands used, grouped by basis: a range for the seed-spread ones."""
    out = []
    seed = [c.band for c in cells if c.band.basis == SEED_SPREAD]
    if seed:
        lo, hi = min(b.width for b in seed), max(b.width for b in seed)
        span = f"±{lo:.4f}" if round(lo, 4) == round(hi, 4) else f"±{lo:.4f}–{hi:.4f}"
        out.append(f"{span}; 95 % pooled t from {SEED_SPREAD} ({len(seed)} of {len(cells)} "
                   "comparisons)")
    const = [c.band for c in cells if c.band.basis == CONSTANT]
    if const:
        widths = "/".join(sorted({b.tolerance.describe() for b in const}))
        out.append(f"{widths}; {CONSTANT}, one seed per run ({len(const)} of {len(cells)} "
                   "comparisons)")
    return "; ".join(out) or "—"


def _quality_row_detail(rs: RecordSet, r: Row, cells: list[_QualityCell],
                        gap: Tolerance | None) -> tuple[bool, bool, str]:
    """(within the band everywhere, within the paper's gap everywhere, one-line detail)."""
    worst = max(cells, key=lambda c: abs(c.delta))
    beyond = [c for c in cells if not c.band.tolerance.met(c.value, c.base)]
    gap_ok = gap is None or all(gap.met(c.value, c.base) for c in cells)
    bands = sorted({c.band.describe() for c in cells})
    text = (f"{_row_label(rs, r)}: largest |Δ| {abs(worst.delta):.4f} ({worst.name}: "
            f"{fmt(worst.value)} vs baseline {fmt(worst.base)}); band "
            + (bands[0] if len(bands) == 1 else "per cell " + ", ".join(bands)))
    if beyond:
        text += " → beyond the band: " + ", ".join(
            f"{c.name} Δ {c.delta:+.4f} ({c.band.tolerance.miss(c.value, c.base):.4f} beyond "
            f"±{c.band.width:.4f})" for c in beyond)
    else:
        text += " → within the band"
    if gap is not None:
        text += (f"; against the paper's {gap.value:g}: " + ("within" if gap_ok else
                 f"beyond by {abs(worst.delta) - gap.value:.4f}"))
    return not beyond, gap_ok, text


QUALITY_BAND_RULE = ("band per comparison (row × protocol × metric): 95 % two-sample t bound "
                     "(pooled variance) from the seed spread where either run has ≥ 2 seeds "
                     "(recpar.report.quality_band), else paper.yaml's constant")


def _quality(rs: RecordSet, paper: Paper) -> list[ClaimResult]:
    """Q-<scheme>: every row of the scheme (compressed DP left out) against its sweep's
    baseline, both protocols of the test split. Two verdicts: `status` within the band
    (seed spread, else paper.yaml's constant: quality_band), `paper_gap_status` within the
    paper's own largest gap (Table II). A row or a cell that cannot be compared is named in
    the detail, never passed over."""
    out = []
    tol = {m: paper.quality_tolerance(m) for m in QUALITY_METRICS}
    gap = _gap_tolerance(paper)
    paper_text = (f"|Δ| ≤ {gap.value:g} (largest gap in Table II)" if gap
                  else "parallelism does not change quality (no Table II gap)")
    for scheme in sorted({r.key.scheme for r in rs.rows} - {"baseline"}) or list(PAPER_SCHEMES):
        rows = [r for r in rs.rows if r.key.scheme == scheme and not _lossy_sync(r)]
        lossy = sum(1 for r in rs.rows if r.key.scheme == scheme and _lossy_sync(r))
        parts, unjudged, all_cells = [], [], []
        band_ok = gap_ok = True
        for r in rows:
            base = rs.baseline(r.key.sweep)
            if base is None:
                unjudged.append(f"{_row_label(rs, r)}: no baseline in its sweep")
                continue
            cells, missing = _quality_cells(r, base, tol)
            if missing:
                unjudged.append(f"{_row_label(rs, r)}: {', '.join(missing)} not measured "
                                "(row or baseline)")
            if not cells:
                continue
            all_cells += cells
            ok, gok, text = _quality_row_detail(rs, r, cells, gap)
            band_ok, gap_ok = band_ok and ok, gap_ok and gok
            parts.append(text)
        base = dict(id=f"Q-{scheme}", claim=f"{scheme}: HR@10 and NDCG@10 equal the baseline's",
                    where="Table II + §IV.B", paper=paper_text,
                    tolerance=f"{QUALITY_BAND_RULE}; constants: " + " / ".join(
                        f"{m}: {_tol(t)}" for m, t in tol.items())
                    + (f"; second verdict: {_tol(gap)}" if gap else ""))
        note = "".join(f"; not compared: {u}" for u in unjudged)
        note += (f"; {lossy} row(s) with compressed gradient sync left out (lossy by design: "
                 "see quality_delta.md; an unstated compressor counts as compressed)"
                 if lossy else "")
        if not all_cells:
            out.append(ClaimResult(**base, measured="—", status=NOT_RUN,
                                   detail=f"no {scheme} record with quality and a baseline"
                                   + note, band="—"))
            continue
        worst = max(all_cells, key=lambda c: abs(c.delta))
        out.append(ClaimResult(
            **base, measured=f"largest |Δ| {abs(worst.delta):.4f}",
            status=MET if band_ok else MISSED,
            detail=f"{len(parts)} row(s) compared ({QUALITY_SPLIT_NOTE}): " + "; ".join(parts)
            + note,
            band=_band_summary(all_cells),
            paper_gap_status="—" if gap is None else (MET if gap_ok else MISSED)))
    return out


def _table3(rs: RecordSet, paper: Paper, proj: Projection) -> list[ClaimResult]:
    out = []
    gpn = paper.devices_per_node
    for n in paper.table3_nodes():
        for scheme in PAPER_SCHEMES:
            pq = paper.table3(n, scheme)
            if pq is None:
                continue
            q = pq["speedup"]
            rows = rs.matching(scheme, world_size=n * gpn, nodes=n)
            m, s, d = _judge_rows(q, [(r, rs.speedup(r)) for r in rows], rs,
                                  f"no {scheme} record on {n} nodes × {gpn} devices."
                                  + _elsewhere(rs, scheme, rs.speedup))
            pv, ps = _projected(q, proj.table3.get((n, scheme), {}).get("speedup"))
            out.append(ClaimResult(f"T3-speedup-{scheme}-{n}n",
                                   f"{scheme}: speedup on {n} nodes", q.where,
                                   f"{fmt(q.value)} {q.unit}", _tol(q.tolerance), m, s, d, pv, ps))
    return out


def _common_groups(rs: RecordSet, schemes: tuple[str, ...], need: int
                   ) -> list[tuple[tuple[str, int, int], dict[str, Row]]]:
    """(sweep, nodes, devices) groups holding >= `need` of `schemes` (best row per scheme by
    throughput), largest device count first. A row without a throughput cannot be ranked and
    is no candidate (it is not counted as 0 samples/s)."""
    groups: dict[tuple[str, int, int], dict[str, Row]] = {}
    for r in rs.rows:
        t = r.mean("throughput_samples_per_s")
        if r.key.scheme not in schemes or t is None:
            continue
        g = groups.setdefault((r.key.sweep, r.key.nodes, r.key.world_size), {})
        best = g.get(r.key.scheme)
        if best is None or t > best.mean("throughput_samples_per_s"):
            g[r.key.scheme] = r
    ok = [(k, g) for k, g in groups.items() if len(g) >= need]
    return sorted(ok, key=lambda kg: (-kg[0][2], -kg[0][1], kg[0][0]))


def _orderings(rs: RecordSet, paper: Paper, proj: Projection) -> list[ClaimResult]:
    out = []
    last = max(paper.table3_nodes())
    groups = _common_groups(rs, PAPER_SCHEMES, 3)
    base = dict(id="T3-order", claim="hybrid has the highest speedup of dp, mp, hybrid",
                where=f"Table III ({last} nodes), §IV.C",
                paper=" > ".join(f"{s} {fmt(paper.table3(last, s)['speedup'].value)}×"
                                 for s in ("hybrid", "dp", "mp")),
                tolerance="ordering, no band: hybrid's throughput ≥ dp's and mp's")
    proj_t = {s: proj.table3.get((last, s), {}).get("throughput_samples_per_s")
              for s in PAPER_SCHEMES}
    p_ok = (None if None in proj_t.values() else
            proj_t["hybrid"] >= max(proj_t["dp"], proj_t["mp"]))
    pv = "—" if p_ok is None else ", ".join(f"{s} {fmt(v)}" for s, v in proj_t.items())
    ps = "—" if p_ok is None else (MET if p_ok else MISSED)
    if not groups:
        out.append(ClaimResult(**base, measured="—", status=NOT_RUN,
                               detail="needs dp, mp and hybrid records of one sweep on the same "
                               "number of devices and nodes", projected=pv, projected_status=ps))
    else:
        (sweep, nodes, world), g = groups[0]
        t = {s: g[s].mean("throughput_samples_per_s") for s in PAPER_SCHEMES}
        ok = t["hybrid"] >= max(t["dp"], t["mp"])
        out.append(ClaimResult(**base, measured=", ".join(f"{s} {fmt(v)} samples/s" for s, v in t.items()),
                               status=MET if ok else MISSED,
                               detail=f"sweep {sweep}, {nodes} node(s), {world} devices"
                               + ("" if ok else f"; hybrid is {fmt(100 * (1 - t['hybrid'] / max(t['dp'], t['mp'])))} % "
                                  "below the faster single-mode scheme"),
                               projected=pv, projected_status=ps))
    # Fig. 4 ordering: hybrid lowest share, mp highest.
    shares_p = {s: paper.q(f"fig4.comm_share_pct.{s}").value for s in PAPER_SCHEMES}
    base = dict(id="F4-order", claim="communication share: hybrid lowest, mp highest",
                where="Fig. 4, §IV.C",
                paper=", ".join(f"{s} {v:g} %" for s, v in shares_p.items()),
                tolerance="ordering, no band")
    pj = {s: proj.table2.get(s, {}).get("comm_share_pct") for s in PAPER_SCHEMES}
    if None in pj.values():
        ppv, pps = "—", "—"
    else:
        ppv = ", ".join(f"{s} {fmt(v)} %" for s, v in pj.items())
        pps = MET if pj["hybrid"] <= pj["dp"] <= pj["mp"] else MISSED
    found = None
    for k, g in groups:
        sh = {s: g[s].mean("comm_share_pct") for s in PAPER_SCHEMES}
        if None not in sh.values():
            found = (k, sh)
            break
    if found is None:
        out.append(ClaimResult(**base, measured="—", status=NOT_RUN,
                               detail="needs dp, mp and hybrid records with a communication "
                               "share, of one sweep on the same number of devices",
                               projected=ppv, projected_status=pps))
    else:
        (sweep, nodes, world), sh = found
        ok = sh["hybrid"] <= sh["dp"] <= sh["mp"]
        out.append(ClaimResult(**base, measured=", ".join(f"{s} {fmt(v)} %" for s, v in sh.items()),
                               status=MET if ok else MISSED,
                               detail=f"sweep {sweep}, {nodes} node(s), {world} devices",
                               projected=ppv, projected_status=pps))
    return out


def _fig4(rs: RecordSet, paper: Paper, proj: Projection) -> list[ClaimResult]:
    out = []
    for scheme in PAPER_SCHEMES:
        q = paper.q(f"fig4.comm_share_pct.{scheme}")
        rows, scale = _table2_rows(rs, paper, scheme)
        m, s, d = _judge_rows(q, [(r, r.mean("comm_share_pct")) for r in rows], rs,
                              f"no {scheme} record at Table II's scale ({scale})."
                              + _elsewhere(rs, scheme, lambda r: r.mean("comm_share_pct")))
        pv, ps = _projected(q, proj.table2.get(scheme, {}).get("comm_share_pct"))
        out.append(ClaimResult(f"F4-share-{scheme}", f"{scheme}: communication share of an "
                               "iteration", q.where, f"{fmt(q.value)} {q.unit}",
                               _tol(q.tolerance), m, s, d, pv, ps))
    return out


def _fig5(rs: RecordSet, paper: Paper, proj: Projection) -> list[ClaimResult]:
    n = paper.data["fig5"]["nodes"]
    gpn = paper.devices_per_node
    specs = [("hybrid_mem_pct", "hybrid", "device_mem_pct", "mem_share_pct",
              "hybrid: device memory use", "needs peak device memory of a CUDA run"),
             ("hybrid_compute_pct", "hybrid", "util_pct", None,
              "hybrid: compute utilisation", "needs NVML GPU utilisation"),
             ("mp_min_card_util_pct", "mp", "gpu_util_min_over_ranks_pct", None,
              "mp: utilisation of the least-used cards",
              "needs per-rank NVML GPU utilisation (gpu_util_pct_min_over_ranks)")]
    out = []
    for key, scheme, measure, pkey, text, need in specs:
        q = paper.q(f"fig5.values.{key}")
        rows = [r for r in rs.matching(scheme, nodes=n, world_size=n * gpn)
                if measure != "util_pct" or r.basis("util") == "gpu"]
        m, s, d = _judge_rows(q, [(r, r.mean(measure)) for r in rows], rs,
                              f"{need} on {n} nodes × {gpn} devices; none given")
        pv, ps = ("—", "—")
        if pkey:
            pv, ps = _projected(q, proj.table3.get((n, scheme), {}).get(pkey))
        out.append(ClaimResult(f"F5-{key}", text, q.where, f"{fmt(q.value)} {q.unit}",
                               _tol(q.tolerance), m, s, d, pv, ps))
    return out


def _abstract(rs: RecordSet, paper: Paper, proj: Projection) -> list[ClaimResult]:
    out = []
    groups = [(k, g) for k, g in _common_groups(rs, PAPER_SCHEMES, 2) if "hybrid" in g]
    for key, measure, what in (("hybrid_throughput_gain_pct", "throughput_samples_per_s",
                                "throughput"), ("hybrid_util_gain_pct", "util_pct",
                                                "utilisation")):
        q = paper.q(f"abstract.{key}")
        base = dict(id=f"A-{key}", claim=f"hybrid {what} gain over single-mode parallelism",
                    where=q.where, paper=f"{fmt(q.value)} {q.unit}", tolerance=_tol(q.tolerance))
        pv, ps = "—", "—"
        if measure == "throughput_samples_per_s":
            pt = {s: proj.table2.get(s, {}).get("throughput_samples_per_s") for s in PAPER_SCHEMES}
            if None not in pt.values():
                pv, ps = _projected(q, 100.0 * (pt["hybrid"] / max(pt["dp"], pt["mp"]) - 1))
        found = None
        for k, g in groups:
            vals = {s: g[s].mean(measure) for s in g}
            bases = {g[s].basis("util") for s in g} if measure == "util_pct" else {"-"}
            if None not in vals.values() and len(bases) == 1:
                found = (k, g, vals)
                break
        if found is None:
            out.append(ClaimResult(**base, measured="—", status=NOT_RUN,
                                   detail="needs hybrid and dp and/or mp records of one sweep on "
                                   f"the same number of devices, each with {what}",
                                   projected=pv, projected_status=ps))
            continue
        (sweep, nodes, world), g, vals = found
        single = {s: v for s, v in vals.items() if s != "hybrid"}
        best = max(single, key=single.get)
        gain = 100.0 * (vals["hybrid"] / single[best] - 1) if single[best] else None
        if gain is None:
            out.append(ClaimResult(**base, measured="—", status=NOT_RUN,
                                   detail=f"{best} {what} is 0", projected=pv, projected_status=ps))
            continue
        ok = q.tolerance.met(gain, q.value)
        basis = f", {g['hybrid'].basis('util')} basis" if measure == "util_pct" else ""
        out.append(ClaimResult(
            **base, measured=f"{gain:+.1f} %", status=MET if ok else MISSED,
            detail=(f"hybrid {fmt(vals['hybrid'])} vs {best} {fmt(single[best])} "
                    f"(sweep {sweep}, {nodes} node(s), {world} devices{basis}"
                    + ("" if len(single) == 2 else f"; only {best} measured as single-mode")
                    + ")" + ("" if ok else f"; {fmt(q.tolerance.miss(gain, q.value))} "
                             "points outside the band")),
            projected=pv, projected_status=ps))
    return out


def check_claims(rs: RecordSet, paper: Paper, proj: Projection) -> list[ClaimResult]:
    """Every claim, in the paper's order (Table I, II, quality, III, Fig. 4, Fig. 5, abstract)."""
    return (_table1(rs, paper) + _table2(rs, paper, proj) + _quality(rs, paper)
            + _table3(rs, paper, proj) + _orderings(rs, paper, proj) + _fig4(rs, paper, proj)
            + _fig5(rs, paper, proj) + _abstract(rs, paper, proj))


def _cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _status_cell(r: ClaimResult) -> str:
    cell = f"**{r.status}**"
    if r.paper_gap_status != "—":
        cell += f"; vs paper's gap: **{r.paper_gap_status}**"
    return cell


def claims_markdown(results: list[ClaimResult], proj: Projection,
                    figures_not_drawn: list[tuple[str, str]], sweep_notes: list[str]) -> str:
    counts = {s: sum(r.status == s for r in results) for s in (MET, MISSED, NOT_RUN)}
    pcounts = {s: sum(r.projected_status == s for r in results) for s in (MET, MISSED)}
    gaps = {s: sum(r.paper_gap_status == s for r in results) for s in (MET, MISSED)}
    lines = [
        "# Claims of arXiv:2506.17551 checked against run records",
        "",
        f"Measured: **{counts[MET]} met, {counts[MISSED]} missed, {counts[NOT_RUN]} not run** "
        f"of {len(results)}. Projected (recpar.perfmodel, not measured): {pcounts[MET]} met, "
        f"{pcounts[MISSED]} missed.",
        "",
    ]
    if sum(gaps.values()):
        lines += [f"Quality claims judged instead against the paper's own largest gap "
                  f"(Table II; second verdict in the status column): {gaps[MET]} met, "
                  f"{gaps[MISSED]} missed.", ""]
    lines += [
        f"Projection: {proj.caption or proj.error or '—'}.",
        "",
        "`band used`: what the status was judged with (the paper's number ± band unless it "
        "says otherwise).",
        "",
        "| id | claim | where | paper | band used | measured | status | projected | "
        "projected status |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append("| " + " | ".join(_cell(x) for x in (
            r.id, r.claim, r.where, r.paper, r.band, r.measured)) + f" | {_status_cell(r)} | "
            + " | ".join(_cell(x) for x in (r.projected, r.projected_status)) + " |")
    lines += ["", "## Details", ""]
    for r in results:
        detail = r.detail.rstrip()
        if not detail.endswith("."):
            detail += "."
        verdict = r.status + ("" if r.paper_gap_status == "—"
                              else f" within the band; {r.paper_gap_status} against the "
                              "paper's gap")
        lines.append(f"- **{r.id}** ({verdict}): {detail} Tolerance: {r.tolerance}.")
    lines += ["", "## Figures not drawn", ""]
    lines += [f"- {name}: {why}" for name, why in figures_not_drawn] or ["- none"]
    lines += ["", "## Records", ""] + [f"- {n}" for n in sweep_notes]
    return "\n".join(lines) + "\n"
