"""Internal consistency of the paper's own numbers (paper_tables/paper.yaml), reported as found.

Every check computes from the values in paper.yaml, so a changed value changes the finding.
Statuses: `consistent`, `inconsistent` (two statements of the paper cannot both hold) and
`questionable` (no contradiction, but the numbers imply something implausible or unstated).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from recpar.report.paper import Paper

CONSISTENT, INCONSISTENT, QUESTIONABLE = "consistent", "inconsistent", "questionable"
RATIO_RTOL = 0.005
"""Relative slack for 'throughput / baseline = speedup' (the paper rounds to 2-3 digits)."""
AMAZON_5CORE_REVIEWS = 1_689_188
"""Reviews in the SNAP Amazon 2014 'Electronics 5-core' file, whose users (192,403) and items
(63,001) Table I repeats (McAuley et al.; see recpar.data.sources.amazon). Not from the paper."""


@dataclass
class Finding:
    """One audit check and what it found."""

    id: str
    """Stable id."""
    check: str
    """What is compared."""
    status: str
    """consistent / inconsistent / questionable."""
    detail: str
    """The numbers."""


def _ratio_checks(paper: Paper) -> list[Finding]:
    bad, n = [], 0
    b2 = paper.table2_number("baseline", "throughput_samples_per_s")
    for s, row in paper.data["table2"]["rows"].items():
        t = paper.table2_number(s, "throughput_samples_per_s")
        sp = paper.table2_number(s, "speedup")
        if None in (t, sp, b2):
            continue
        n += 1
        if abs(t / b2 - sp) > RATIO_RTOL * sp:
            bad.append(f"Table II {s}: {t:,.0f}/{b2:,.0f} = {t / b2:.3f}× but speedup {sp:g}×")
    b3 = paper.table3(1, "baseline")
    for r in paper.data["table3"]["rows"]:
        if b3 is None:
            break
        t, sp = r["throughput_samples_per_s"]["value"], r["speedup"]["value"]
        n += 1
        base = b3["throughput_samples_per_s"].value
        if abs(t / base - sp) > RATIO_RTOL * sp:
            bad.append(f"Table III {r['scheme']} {r['nodes']} nodes: {t:,.0f}/{base:,.0f} = "
                       f"{t / base:.3f}× but speedup {sp:g}×")
    return [Finding("A1", "speedup = throughput / baseline throughput, every row of Tables II-III",
                    INCONSISTENT if bad else CONSISTENT,
                    "; ".join(bad) if bad else f"all {n} rows agree within {RATIO_RTOL:.1%}")]


def _table2_vs_table3(paper: Paper) -> list[Finding]:
    gpn = paper.devices_per_node
    nodes = [n for n in paper.table3_nodes() if n > 1]
    if not nodes:
        return []
    first = min(nodes)
    equal, differ = [], []
    for s in ("dp", "mp", "hybrid"):
        t2, d2 = paper.table2_number(s, "speedup"), (paper.table2_row(s) or {}).get("devices")
        p3 = paper.table3(first, s)
        if t2 is None or p3 is None:
            continue
        t3 = p3["speedup"].value
        txt = f"{s}: Table II {t2:g}× on {d2} devices, Table III {t3:g}× on {first}×{gpn} = {first * gpn}"
        (equal if abs(t2 - t3) <= RATIO_RTOL * t3 else differ).append(
            txt if abs(t2 - t3) <= RATIO_RTOL * t3 else f"{txt} ({100 * (t2 / t3 - 1):+.1f} %)")
    one_node = [s for s in ("dp", "mp", "hybrid") if paper.table3(1, s) is None]
    out = []
    if equal and differ:
        out.append(Finding(
            "A2", f"Table II (one 8-device configuration) vs Table III's first parallel row "
            f"({first} nodes)", INCONSISTENT,
            f"equal for {'; '.join(equal)} — so Table II would be the {first}-node case — but "
            f"different for {'; '.join(differ)}. Under either reading one scheme contradicts the "
            "other table (§IV.C also starts the MP series at Table II's 2.8×)."))
    elif equal:
        out.append(Finding("A2", "Table II vs Table III first parallel row", QUESTIONABLE,
                           "all equal: Table II matches Table III's " f"{first}-node row, i.e. "
                           f"{first * gpn} devices, not the 8 cards §IV.B names. " + "; ".join(equal)))
    else:
        out.append(Finding("A2", "Table II vs Table III first parallel row", CONSISTENT,
                           "all differ, as different device counts should: " + "; ".join(differ)))
    if one_node:
        out.append(Finding("A3", "Table III at 1 node (8 devices)", QUESTIONABLE,
                           f"Table III gives no 1-node value for {', '.join(one_node)} although "
                           "Table II reports these schemes on 8 devices (one node)"))
    return out


def _gain(h: float, single: dict[str, float], unit: str) -> str:
    return ", ".join(f"vs {s} {100 * (h / v - 1):+.1f} % ({h - v:+,.4g} {unit})"
                     for s, v in single.items())


def _abstract(paper: Paper) -> list[Finding]:
    out = []
    q = paper.q("abstract.hybrid_throughput_gain_pct")
    t = {s: paper.table2_number(s, "throughput_samples_per_s") for s in ("dp", "mp", "hybrid")}
    last = max(paper.table3_nodes())
    t3 = {s: (paper.table3(last, s) or {}).get("throughput_samples_per_s") for s in ("dp", "mp", "hybrid")}
    gains = {"Table II": 100 * (t["hybrid"] / max(t["dp"], t["mp"]) - 1)}
    if None not in t3.values():
        t3v = {s: v.value for s, v in t3.items()}
        gains[f"Table III {last} nodes"] = 100 * (t3v["hybrid"] / max(t3v["dp"], t3v["mp"]) - 1)
    ok = all(q.tolerance.met(g, q.value) for g in gains.values())
    out.append(Finding(
        "A4", f"abstract: hybrid throughput > +{q.value:g} % over single-mode parallelism",
        CONSISTENT if ok else INCONSISTENT,
        "; ".join(f"{k}: +{g:.1f} % over the faster single-mode scheme" for k, g in gains.items())
        + f". Table II per scheme: {_gain(t['hybrid'], {s: t[s] for s in ('dp', 'mp')}, 'samples/s')}"
        + ("" if ok else f". Only the comparison with model parallelism exceeds {q.value:g} %.")))
    q = paper.q("abstract.hybrid_util_gain_pct")
    u = {s: paper.table2_number(s, "gpu_util_pct") for s in ("baseline", "dp", "mp", "hybrid")}
    best = max(u["dp"], u["mp"])
    rel_best = 100 * (u["hybrid"] / best - 1)
    readings = {"relative vs best single-mode": rel_best,
                "points vs best single-mode": u["hybrid"] - best,
                "relative vs mean of dp, mp": 100 * (u["hybrid"] / ((u["dp"] + u["mp"]) / 2) - 1),
                "relative vs baseline (1 card)": 100 * (u["hybrid"] / u["baseline"] - 1),
                "points vs baseline (1 card)": u["hybrid"] - u["baseline"]}
    met = [k for k, v in readings.items() if q.tolerance.met(v, q.value)]
    single_met = [k for k in met if "baseline" not in k]
    out.append(Finding(
        "A5", f"abstract: ≈{q.value:g} % better resource utilisation than single-mode parallelism",
        CONSISTENT if single_met else INCONSISTENT,
        "Table II GPU util " + ", ".join(f"{s} {v:g} %" for s, v in u.items()) + ". Readings: "
        + "; ".join(f"{k} {v:+.1f}" for k, v in readings.items())
        + (f". Within {q.tolerance.describe()} of {q.value:g} only: {', '.join(met) or 'none'}"
           + ("" if single_met else " — i.e. only against the single-card baseline, which is "
              "not a parallel scheme") + ".")))
    return out


def _fig4(paper: Paper) -> list[Finding]:
    f4 = paper.data["fig4"]
    bad, n = [], 0
    for key, alt in (f4.get("also_stated") or {}).items():
        scheme = key.split("_")[0]
        main = f4["comm_share_pct"].get(scheme)
        if main is None:
            continue
        n += 1
        if alt["value"] != main["value"]:
            bad.append(f"{scheme}: {main['value']:g} % ({main['where']}) vs {alt['value']:g} % "
                       f"({alt['where']})")
    out = [Finding("A6", "Fig. 4 communication shares where the text states them twice",
                   INCONSISTENT if bad else CONSISTENT,
                   "; ".join(bad) if bad else f"{n} repeated value(s) agree")]
    # What Fig. 4 and Table II imply together (same schemes, presumably the same runs).
    parts = []
    for s in ("dp", "mp", "hybrid"):
        share = f4["comm_share_pct"].get(s)
        ms = paper.table2_number(s, "comm_ms_per_iter")
        tput = paper.table2_number(s, "throughput_samples_per_s")
        dev = (paper.table2_row(s) or {}).get("devices")
        if share is None or ms is None or tput is None or not share["value"]:
            continue
        it = ms / (share["value"] / 100)
        per_iter = tput * it / 1000
        parts.append(f"{s}: {ms:g} ms / {share['value']:g} % = {it:.2f} ms per iteration, "
                     f"× {tput:,.0f} samples/s = {per_iter:.1f} samples per iteration"
                     + (f" ({per_iter / dev:.1f} per device)" if dev else ""))
    if parts:
        out.append(Finding("A7", "iteration time and batch implied by Fig. 4 shares and Table II "
                           "ms/iter", QUESTIONABLE,
                           "; ".join(parts) + ". A couple of samples per GPU per iteration is "
                           "implausibly small for an LLM recommender on A100s, unless the shares "
                           "and the ms/iter measure different things (the paper does not say)."))
    return out


def _baseline_comm(paper: Paper) -> list[Finding]:
    ms = paper.table2_number("baseline", "comm_ms_per_iter")
    if ms is None or (paper.table2_row("baseline") or {}).get("devices") != 1:
        return []
    others = {s: paper.table2_number(s, "comm_ms_per_iter") for s in ("dp", "mp", "hybrid")}
    return [Finding("A8", "communication overhead of the single-card baseline", QUESTIONABLE,
                    f"{ms:g} ms/iter on one card, more than any parallel scheme "
                    f"({', '.join(f'{s} {v:g}' for s, v in others.items() if v is not None)}); "
                    "§IV.B defines the overhead as gradient/activation aggregation time, of "
                    "which one card has none")]


def _scaling(paper: Paper) -> list[Finding]:
    gpn = paper.devices_per_node
    parts, superlinear = [], []
    for s in ("dp", "mp", "hybrid"):
        pts = [(n, paper.table3(n, s)["speedup"].value) for n in paper.table3_nodes()
               if paper.table3(n, s)]
        if not pts:
            continue
        parts.append(f"{s} " + ", ".join(f"{n} nodes {sp:g}×/{n * gpn} = {100 * sp / (n * gpn):.0f} %"
                                         for n, sp in pts))
        for (n0, s0), (n1, s1) in zip(pts, pts[1:]):
            if s1 / s0 > n1 / n0 * (1 + RATIO_RTOL):
                superlinear.append(f"{s} {n0}→{n1} nodes: ×{s1 / s0:.2f} speedup for ×{n1 / n0:.2f} devices")
    status = INCONSISTENT if superlinear else CONSISTENT
    return [Finding("A9", "Table III per-device efficiency (speedup / devices) and 'nearly "
                    "linear' data-parallel scaling (§IV.C)", status,
                    "efficiency: " + "; ".join(parts)
                    + (". Superlinear steps (speedup grows faster than devices): "
                       + "; ".join(superlinear)
                       + ". Efficiency far below 100 % and rising with scale is neither linear "
                       "nor what communication-bound scaling produces" if superlinear else ""))]


def _table1(paper: Paper) -> list[Finding]:
    v = {k: q["value"] for k, q in paper.data["table1"]["values"].items()}
    total = v["train"] + v["valid"] + v["test"]
    shares = ", ".join(f"{k} {100 * v[k] / total:.2f} %" for k in ("train", "valid", "test"))
    out = [Finding("A10", "Table I split sizes vs the stated 80/10/10 split",
                   CONSISTENT if abs(v["train"] / total - 0.8) < 0.005 else INCONSISTENT,
                   f"total {total:,}: {shares}")]
    out.append(Finding(
        "A11", "Table I total vs the Amazon Electronics 5-core release its user/item counts match",
        INCONSISTENT if total != AMAZON_5CORE_REVIEWS else CONSISTENT,
        f"{v['users']:,} users and {v['items']:,} items are the 2014 5-core file's, which has "
        f"{AMAZON_5CORE_REVIEWS:,} reviews (external figure, not in the paper); Table I's splits "
        f"add up to {total:,} ({total - AMAZON_5CORE_REVIEWS:+,})"))
    return out


def _schemes(paper: Paper) -> list[Finding]:
    rows = paper.data["table2"]["rows"]
    empty = [s for s, r in rows.items() if not r["values"]]
    if not empty:
        return []
    return [Finding("A12", "schemes compared (§IV.B) vs rows of Table II", INCONSISTENT,
                    f"§IV.B announces 'four schemes' and lists five; Table II has "
                    f"{len(rows) - len(empty)} rows and none for {', '.join(empty)}")]


def audit(paper: Paper) -> list[Finding]:
    return (_ratio_checks(paper) + _table2_vs_table3(paper) + _abstract(paper) + _fig4(paper)
            + _baseline_comm(paper) + _scaling(paper) + _table1(paper) + _schemes(paper))


def audit_markdown(findings: list[Finding], paper: Paper) -> str:
    counts = {s: sum(f.status == s for f in findings)
              for s in (INCONSISTENT, QUESTIONABLE, CONSISTENT)}
    lines = [f"# Internal consistency of {paper.data['paper']['id']}", "",
             f"{counts[INCONSISTENT]} inconsistent, {counts[QUESTIONABLE]} questionable, "
             f"{counts[CONSISTENT]} consistent. Computed from `{Path(paper.path).name}` (the paper's own "
             "numbers; no run record involved).", "",
             "| id | check | status | detail |", "|---|---|---|---|"]
    for f in findings:
        lines.append(f"| {f.id} | {f.check} | **{f.status}** | {f.detail.replace('|', '/')} |")
    return "\n".join(lines) + "\n"
