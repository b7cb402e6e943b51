"""The paper's statements on gradient compression (Formulas 10-11), staleness damping
(Formula 12) and hierarchical All-Reduce (§III.B), judged from the ablations' published results.

Sources, each a `<stem>.json` under the ablations directory (paper_tables/ablations/):

* `compression/compression_link_rate.json` (`recpar perfmodel compression-ablation`): bytes per
  iteration and speed-up over uncompressed per compressor and link rate, each judged beyond the
  larger run-to-run spread of the two points compared;
* `quality/quality_ablation.json` (`recpar report quality-ablation`): final quality against
  sync DP over seeds, error feedback and damping on vs off, steps to quality;
* `allreduce/allreduce_latency.json` (`recpar perfmodel allreduce-ablation`): ring vs
  hierarchical All-Reduce time across latency and message size.

A missing source makes its claims "not run", naming the command that makes it. The paper gives
no number for any of these statements, so each verdict states the comparison it made and the
band it used.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recpar.report.claims import MET, MISSED, NOT_RUN, ClaimResult

SOURCES = {
    "compression": ("compression/compression_link_rate.json",
                    "recpar perfmodel compression-ablation"),
    "quality": ("quality/quality_ablation.json",
                "snakemake --configfile config/quality_ablation.yaml, then recpar report "
                "quality-ablation"),
    "allreduce": ("allreduce/allreduce_latency.json", "recpar perfmodel allreduce-ablation"),
}
"""Source name -> (path under the ablations directory, what makes it)."""
PAPER_RATE_FACTOR = 1.0
"""The compression ablation's link factor that is the paper profile's NIC, dilated."""
MAIN_CELL = "full/hr_at_10"
"""The quality cell the quality claims are judged on (the early-stopping metric, full ranking);
the other three cells are in the quality ablation's table."""


def load_sources(ablations_dir: str | Path) -> dict[str, dict | None]:
    """Each source's JSON, or None where its file does not exist; a file that exists but does
    not parse raises ValueError naming it."""
    out: dict[str, dict | None] = {}
    for name, (rel, _) in SOURCES.items():
        path = Path(ablations_dir) / rel
        if not path.exists():
            out[name] = None
            continue
        try:
            out[name] = json.loads(path.read_text())
        except ValueError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
    return out


def _not_run(id_: str, claim: str, where: str, source: str) -> ClaimResult:
    rel, cmd = SOURCES[source]
    return ClaimResult(id=id_, claim=claim, where=where, paper="— (no number)", tolerance="—",
                       measured="—", status=NOT_RUN, detail=f"no {rel}: run `{cmd}`")


def _rows_at(comp: Mapping[str, Any], factor: float) -> Mapping[str, Any] | None:
    return next((r for r in comp["rows"] if r["link_factor"] == factor), None)


def _bytes_claim(id_: str, claim: str, where: str, labels: tuple[str, ...],
                 compression: Mapping | None) -> ClaimResult:
    if compression is None:
        return _not_run(id_, claim, where, "compression")
    parts, ok = [], True
    for comp in compression["compressors"]:
        lab = comp["compressor"]["label"]
        if lab not in labels:
            continue
        row = comp["rows"][0]  # bytes do not depend on the link rate
        ratio = row["wire_bytes_per_rank_per_iter"] / row["none_wire_bytes_per_rank_per_iter"]
        ok &= ratio < 1
        parts.append(f"{lab} {row['wire_bytes_per_rank_per_iter']:,.0f} B ({ratio:.3g}×)")
    if not parts:
        return _not_run(id_, claim, where, "compression")
    none_b = compression["compressors"][0]["rows"][0]["none_wire_bytes_per_rank_per_iter"]
    return ClaimResult(
        id=id_, claim=claim, where=where, paper="— (no number)",
        tolerance="fewer wire bytes per rank per iteration than uncompressed: a count, no band",
        measured="; ".join(parts), status=MET if ok else MISSED,
        detail=f"uncompressed sends {none_b:,.0f} B per rank per iteration (dp2, tiny model, "
               f"measured by the gradient hook)")


def _speed_claim(compression: Mapping | None) -> ClaimResult:
    id_, where = "compression-eases-comm", "§III.B, §V"
    claim = ("Gradient compression eases the communication load (faster iterations where the "
             "link is the bottleneck)")
    if compression is None:
        return _not_run(id_, claim, where, "compression")
    parts, proj, ok, pok = [], [], True, True
    crossings = []
    for comp in compression["compressors"]:
        lab = comp["compressor"]["label"]
        row = _rows_at(comp, PAPER_RATE_FACTOR)
        if row is None:
            continue
        ok &= row["verdict"] == "pays off"
        pok &= row["projected_speedup"] > 1
        parts.append(f"{lab} {row['speedup']:.2f}× ({row['verdict']}, spread "
                     f"±{row['band_pct']:.0f} %)")
        proj.append(f"{lab} {row['projected_speedup']:.2f}×")
        mc = comp["measured_crossover"]
        if mc.get("above_bit_per_s") is not None:
            crossings.append(f"{lab} between {mc['above_bit_per_s'] / 1e6:.3g} and "
                             f"{mc['at_most_bit_per_s'] / 1e6:.3g} Mbit/s")
    if not parts:
        return _not_run(id_, claim, where, "compression")
    rate = _rows_at(compression["compressors"][0], PAPER_RATE_FACTOR)["calibrated_rate_bit_per_s"]
    return ClaimResult(
        id=id_, claim=claim, where=where, paper="— (no number)",
        tolerance="speed-up over uncompressed beyond the larger run-to-run spread of the two "
                  "points (repeats of one configuration), at the paper profile's NIC rate "
                  "scaled to the scale model",
        measured="; ".join(parts), status=MET if ok else MISSED,
        projected="; ".join(proj), projected_status=MET if pok else MISSED,
        detail=f"at {rate / 1e6:.3g} Mbit/s (the paper profile's 100 Gbit/s NIC × the scale "
               f"model's dilation). Where it stops paying off (measured): "
               + ("; ".join(crossings) if crossings else "nowhere in the rates measured")
               + "; the others pay off at every rate measured, with a gain that shrinks as the "
                 "link gets faster (paper_tables/ablations/compression)")


def _quality_runs(quality: Mapping) -> dict[str, Mapping]:
    return {r["label"]: r for r in quality["runs"]}


def _keeps_quality(quality: Mapping | None) -> ClaimResult:
    id_, where = "compression-keeps-quality", "§III.B Formulas 10–11; §V"
    claim = ("Compressing gradients (with the residual of Formula 11) does not degrade HR@10 / "
             "NDCG@10")
    if quality is None:
        return _not_run(id_, claim, where, "quality")
    runs = [r for r in quality["runs"] if not r["reference"] and r["label"] != "none"
            and not r["label"].startswith("async") and not r["label"].endswith("-noef")]
    if not runs:
        return _not_run(id_, claim, where, "quality")
    parts = []
    for r in runs:
        d = r["vs_reference"][MAIN_CELL]
        parts.append(f"{r['label']} {d['delta']:+.4f} (±{d['band']:.4f})"
                     + ("" if r["all_within"] else " outside on some cell"))
    ok = all(r["all_within"] for r in runs)
    seeds = sorted({s for r in runs for s in r["seeds"]})
    return ClaimResult(
        id=id_, claim=claim, where=where, paper="— (no number)",
        tolerance="test HR@10 and NDCG@10 (full and sampled100) of each compressed run minus "
                  "sync DP on the same seeds, within a 95 % pooled two-sample t band from the "
                  "seeds' spread (recpar.report.quality_band)",
        band="95 % t band from the seeds", measured="Δ HR@10 full: " + "; ".join(parts),
        status=MET if ok else MISSED,
        detail=f"seeds {','.join(map(str, seeds))}; error feedback on; all four cells judged "
               f"(paper_tables/ablations/quality/quality_ablation.md)")


def _find_pair(quality: Mapping, question_prefix: str) -> Mapping | None:
    return next((p for p in quality["pairs"] if p["question"].startswith(question_prefix)), None)


def _mechanism_claim(quality: Mapping | None, id_: str, where: str, claim: str,
                     question_prefix: str, mechanism: str, extra: str = "") -> ClaimResult:
    """A claim that a mechanism buys quality: test HR@10 (full) with it minus without, on the
    same seeds (a pair of the quality ablation), met only beyond the seeds' band."""
    p = None if quality is None else _find_pair(quality, question_prefix)
    if p is None:
        return _not_run(id_, claim, where, "quality")
    d = p["difference"][MAIN_CELL]
    better = not d["within"] and d["delta"] > 0
    return ClaimResult(
        id=id_, claim=claim, where=where, paper="— (no number)",
        tolerance=f"test HR@10 (full) with {mechanism} minus without, on the same seeds, "
                  "beyond a 95 % pooled two-sample t band from the seeds' spread",
        band="95 % t band from the seeds",
        measured=f"{p['on']} − {p['off']}: {d['delta']:+.4f} (±{d['band']:.4f})",
        status=MET if better else MISSED,
        detail=(f"{mechanism} buys quality beyond the seeds' spread" if better else
                f"no gain from {mechanism} beyond the seeds' spread" if d["within"] else
                f"worse with {mechanism}") + extra)


def _residual_claim(quality: Mapping | None) -> ClaimResult:
    sign = None if quality is None else _find_pair(quality, "error feedback, sign")
    extra = ""
    if sign is not None:
        s = sign["difference"][MAIN_CELL]
        extra = (f"; for sign (Formula 10 with error feedback, which the paper does not "
                 f"name), {s['delta']:+.4f} (±{s['band']:.4f})")
    return _mechanism_claim(
        quality, "F11-residual", "§III.B Formula 11",
        "Top-k keeps what it does not send as a residual (Formula 11); the residual is what "
        "lets a sparsified gradient train as well", "error feedback, top-k", "the residual",
        extra)


def _staleness_claim(quality: Mapping | None) -> ClaimResult:
    id_, where = "F12-staleness-hurts", "§III.B"
    claim = "Stale gradients (asynchronous DP) slow convergence and degrade final accuracy"
    if quality is None:
        return _not_run(id_, claim, where, "quality")
    runs = _quality_runs(quality)
    ref = next(r for r in quality["runs"] if r["reference"])
    und = runs.get("async-undamped")
    if und is None:
        return _not_run(id_, claim, where, "quality")
    d = und["vs_reference"][MAIN_CELL]
    epochs = _mean(und["epochs_to_quality"])
    ref_epochs = _mean(ref["epochs_to_quality"])
    degrades = not d["within"] and d["delta"] < 0
    slower = epochs is None or (ref_epochs is not None and epochs > ref_epochs)
    slow_text = ("never reached the target on every seed" if epochs is None else
                 f"{epochs:.1f} epochs to the target against sync DP's {ref_epochs:.1f}")
    return ClaimResult(
        id=id_, claim=claim, where=where, paper="— (no number)",
        tolerance="final: test HR@10 (full) below sync DP's beyond a 95 % pooled t band from "
                  "the seeds; convergence: more epochs to the target (the reference's best "
                  "validation HR@10 minus its seed spread)",
        band="95 % t band from the seeds",
        measured=f"undamped async Δ HR@10 full {d['delta']:+.4f} (±{d['band']:.4f}); "
                 f"{slow_text}",
        status=MET if degrades and slower else MISSED,
        detail=f"{und['run_id']} (no damping) against {ref['run_id']}: final accuracy "
               + ("degraded" if degrades else "not degraded beyond the band")
               + ", convergence " + ("slower" if slower else "not slower"))


def _mean(per_seed: Mapping[str, int | None]) -> float | None:
    vals = list(per_seed.values())
    if not vals or any(v is None for v in vals):
        return None
    return sum(vals) / len(vals)


def _damping_claim(quality: Mapping | None) -> ClaimResult:
    return _mechanism_claim(
        quality, "F12-damping-helps", "§III.B Formula 12",
        "Dividing a stale gradient by 1 + τ (Formula 12) compensates for its staleness",
        "staleness damping", "damping",
        " (AdamW on the server: the damping scales the gradient before AdamW, which is not "
        "exactly Formula 12's SGD step; recpar.comm.async_ps)")


def _hierarchical_claim(allreduce: Mapping | None) -> ClaimResult:
    id_, where = "hierarchical-allreduce", "§III.B, §IV"
    claim = ("Hierarchical All-Reduce (within nodes first, then across) cuts the cost of the "
             "gradient All-Reduce against the flat ring")
    if allreduce is None:
        return _not_run(id_, claim, where, "allreduce")
    points, wins, proj_wins, where_flat = 0, 0, 0, []
    crossings = []
    for s in allreduce["settings"]:
        lat = (f"{s['calibrated_intra_latency_s'] * 1e3:.3g}/"
               f"{s['calibrated_inter_latency_s'] * 1e3:.3g} ms")
        for z in s["sizes"]:
            points += 1
            wins += z["measured_winner"] == "hierarchical"
            proj_wins += z["projected_winner"] == "hierarchical"
            if z["measured_winner"] != "hierarchical":
                where_flat.append(f"{z['bytes'] / 2**20:.3g} MiB at {lat}")
        mc = s["measured_crossover"]
        crossings.append(
            f"{lat}: " + (f"flat catches up between {mc['above_bytes'] / 2**20:.3g} and "
                          f"{mc['at_most_bytes'] / 2**20:.3g} MiB"
                          if mc.get("above_bytes") is not None else
                          f"{mc.get('winner_throughout', '—')} faster at every size"))
    cfg = allreduce["config"]
    return ClaimResult(
        id=id_, claim=claim, where=where, paper="— (no number)",
        tolerance="hierarchical faster than the flat ring (slowest rank's mean) at every "
                  "measured latency and message size; the paper states no condition",
        band="faster at every point", measured=f"hierarchical faster at {wins} of {points}",
        status=MET if wins == points else MISSED,
        projected=f"hierarchical faster at {proj_wins} of {points} (gloo α–β model)",
        projected_status=MET if proj_wins == points else MISSED,
        detail=f"{cfg['nodes']} nodes × {cfg['ranks_per_node']} devices, uplinks "
               f"{cfg['inter_rate_bit_per_s'] / 1e6:.3g} Mbit/s. " + "; ".join(crossings)
               + (f". Flat faster at {', '.join(where_flat)}" if where_flat else "")
               + ": hierarchical wins while latency dominates, the flat ring once bandwidth does")


def check_ablation_claims(sources: Mapping[str, Mapping | None]) -> list[ClaimResult]:
    """Every ablation claim, in the paper's order of §III.B."""
    comp, quality, allreduce = (sources.get(k) for k in ("compression", "quality", "allreduce"))
    return [
        _bytes_claim("F10-bytes", "1-bit quantization (sign, Formula 10) reduces the bandwidth "
                     "a gradient sync uses", "§III.B Formula 10", ("sign",), comp),
        _bytes_claim("F11-bytes", "Top-k sparsification (Formula 11) reduces the bandwidth a "
                     "gradient sync uses", "§III.B Formula 11",
                     ("topk0.1", "topk0.01", "topk0.001"), comp),
        _speed_claim(comp),
        _keeps_quality(quality),
        _residual_claim(quality),
        _staleness_claim(quality),
        _damping_claim(quality),
        _hierarchical_claim(allreduce),
    ]


def markdown(results: list[ClaimResult]) -> str:
    from recpar.report.claims import _cell

    counts = {s: sum(r.status == s for r in results) for s in (MET, MISSED, NOT_RUN)}
    lines = ["# The paper's statements on compression, staleness and hierarchical All-Reduce, "
             "judged from the ablations", "",
             f"Measured: **{counts[MET]} met, {counts[MISSED]} missed, {counts[NOT_RUN]} not "
             f"run** of {len(results)}. The paper gives no number for these statements: each "
             "row states the comparison and the band it was judged with.", "",
             "| id | claim | where | band used | measured | status | projected | "
             "projected status |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append("| " + " | ".join(_cell(x) for x in (
            r.id, r.claim, r.where, r.band, r.measured, f"**{r.status}**", r.projected,
            r.projected_status)) + " |")
    lines += ["", "## Details", ""]
    for r in results:
        lines.append(f"- **{r.id}** ({r.status}): {r.detail.rstrip('.')}. "
                     f"Tolerance: {r.tolerance}.")
    return "\n".join(lines) + "\n"
