"""The quality ablation (issue 20, items 1 and 5): does a gradient compressor, switching error
feedback off, or asynchrony change where training ends, and how long it takes to get there?

Input: the records of `config/quality_ablation.yaml` (every compressor, error feedback off for
sign and top-k, asynchronous DP with staleness damping on and off; several seeds) and its
reference, uncompressed synchronous DP, all trained to early stopping on validation HR@10.

* **Final quality.** Per run: mean ± std (n − 1) over seeds of test HR@10 and NDCG@10, both
  protocols, and the mean difference to the reference on the seeds both have, judged with
  `recpar.report.quality_band` (95 % pooled two-sample t from the seeds' spread; ±0.01 when
  neither side has two seeds).
* **Paired questions.** Error feedback on minus off (Formulas 10-11), damping on minus off
  (Formula 12), each a difference of seed means judged with the same band rule.
* **Time to quality** (item 1). Per seed the target is the reference's best validation HR@10 of
  that seed minus the reference's seed-to-seed spread of it (max − min, at least
  `TARGET_FLOOR`): a single run counts as arrived once it is as good as re-running the
  reference with another seed could leave it. A run's *steps to quality* is the optimizer step
  of its first validated epoch at or above the target. Its *time to quality* at a link rate is
  those steps × the iteration time measured for the same compressor at that rate by the
  compression ablation (`recpar perfmodel compression-ablation`: the same tiny model and global
  batch of 128, on the scale model). Two measurements combined, labelled so; validation time is
  not counted. Runs the compression ablation did not time (error feedback off, async) get steps
  only.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from recpar.report.metrics import PROTOCOLS, QUALITY_METRICS
from recpar.report.paper import Tolerance
from recpar.report.quality_band import quality_band

CELLS = tuple((p, m) for p in PROTOCOLS for m in QUALITY_METRICS)
"""(protocol, metric) pairs of the final-quality table."""
VALID_METRIC = "valid_hr_at_10"
"""The history key time to quality follows (the grid stops early on validation HR@10)."""
TARGET_FLOOR = 0.01
"""Smallest target band (absolute HR@10), so that seeds that happen to agree do not make the
target the reference's exact best."""
FALLBACK = Tolerance("absolute", 0.01, "one seed on each side: no spread measured")
"""The final-quality band when neither side has two seeds (the quality_delta floor)."""
PAIRS = (("error feedback, sign (Formula 10)", "sign", "sign-noef"),
         ("error feedback, top-k 0.01 (Formula 11)", "topk0.01", "topk0.01-noef"),
         ("staleness damping, async (Formula 12)", "async-damped", "async-undamped"))
"""(question, label with the mechanism, label without it)."""


class QualityAblationError(ValueError):
    """The records cannot answer the ablation (no reference, no validation history, ...)."""


def label(rec: Mapping[str, Any]) -> str:
    """What a run varies, in the compression ablation's words: none, sign, topk0.01, powersgd,
    fp16, ..., with -noef when error feedback is off; async-damped / async-undamped (with
    -dynamic under dynamic work assignment)."""
    cfg = rec.get("config", {})
    if rec.get("scheme") == "async":
        ps = cfg.get("async_ps", {})
        name = "async-damped" if ps.get("staleness_damping", True) else "async-undamped"
        return name + ("-dynamic" if ps.get("work_assignment") == "dynamic" else "")
    gs = cfg.get("grad_sync") or {}
    comp = gs.get("compressor", "none")
    name = f"topk{gs.get('topk_ratio'):g}" if comp == "topk" else comp
    if comp in ("sign", "topk") and gs.get("error_feedback") is False:
        name += "-noef"
    return name


def _by_run(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[int, Mapping[str, Any]]]:
    out: dict[str, dict[int, Mapping[str, Any]]] = defaultdict(dict)
    for rec in records:
        if rec.get("scheme") == "most-popular":
            continue
        seed = int(rec["seed"])
        if seed in out[rec["run_id"]]:
            raise QualityAblationError(f"run {rec['run_id']!r}: two records for seed {seed}")
        out[rec["run_id"]][seed] = rec
    return out


def _test(rec: Mapping[str, Any], cell: tuple[str, str]) -> float:
    proto, metric = cell
    try:
        return float(rec["quality"]["test"][proto][metric])
    except KeyError as e:
        raise QualityAblationError(f"run {rec.get('run_id')!r} seed {rec.get('seed')}: no test "
                                   f"{proto}/{metric} quality ({e.args[0]!r} missing)") from None


def _valid_curve(rec: Mapping[str, Any]) -> list[tuple[int, int, float]]:
    """(epoch, step, valid HR@10) of every validated epoch."""
    curve = [(int(h["epoch"]), int(h["step"]), float(h[VALID_METRIC]))
             for h in rec.get("history", []) if VALID_METRIC in h]
    if not curve:
        raise QualityAblationError(
            f"run {rec.get('run_id')!r} seed {rec.get('seed')}: no {VALID_METRIC} in its "
            f"history (train with early_stopping_metric: hr_at_10, as "
            f"config/quality_ablation.yaml does)")
    return curve


def _mean_std(vals: Sequence[float]) -> tuple[float, float | None]:
    mu = sum(vals) / len(vals)
    if len(vals) < 2:
        return mu, None
    return mu, math.sqrt(sum((v - mu) ** 2 for v in vals) / (len(vals) - 1))


def _difference(a: Mapping[int, Mapping], b: Mapping[int, Mapping],
                cell: tuple[str, str]) -> dict:
    """mean(a) − mean(b) over the seeds both have, with its band and verdict."""
    seeds = sorted(set(a) & set(b))
    va, vb = [_test(a[s], cell) for s in seeds], [_test(b[s], cell) for s in seeds]
    delta = sum(va) / len(va) - sum(vb) / len(vb)
    band = quality_band(vb, va, FALLBACK)
    return {"delta": delta, "band": band.width, "band_basis": band.describe(),
            "within": abs(delta) <= band.width, "seeds": seeds}


def targets(reference: Mapping[int, Mapping[str, Any]]) -> tuple[dict[int, float], float]:
    """Per seed: the reference's best valid HR@10 minus the band; and the band."""
    best = {s: max(v for _, _, v in _valid_curve(r)) for s, r in reference.items()}
    band = max(TARGET_FLOOR, max(best.values()) - min(best.values()))
    return {s: b - band for s, b in best.items()}, band


def steps_to_quality(rec: Mapping[str, Any], target: float) -> tuple[int, int] | None:
    """(epoch, step) of the first validated epoch at or above `target`; None if never."""
    for epoch, step, v in _valid_curve(rec):
        if v >= target:
            return epoch, step
    return None


def _run_summary(run_id: str, by_seed: Mapping[int, Mapping[str, Any]],
                 ref: Mapping[int, Mapping[str, Any]], target: Mapping[int, float],
                 is_reference: bool) -> dict:
    seeds = sorted(by_seed)
    reached = {s: steps_to_quality(by_seed[s], target[s]) for s in seeds if s in target}
    out = {
        "run_id": run_id, "label": label(by_seed[seeds[0]]), "seeds": seeds,
        "reference": is_reference,
        "test": {f"{p}/{m}": dict(zip(("mean", "std"), _mean_std([_test(by_seed[s], (p, m))
                                                                 for s in seeds])))
                 for p, m in CELLS},
        "epochs": [len(by_seed[s].get("history", [])) for s in seeds],
        "best_valid_hr_at_10": [max(v for _, _, v in _valid_curve(by_seed[s])) for s in seeds],
        "steps_to_quality": {str(s): (r[1] if r else None) for s, r in reached.items()},
        "epochs_to_quality": {str(s): (r[0] + 1 if r else None) for s, r in reached.items()},
    }
    if not is_reference:
        out["vs_reference"] = {f"{p}/{m}": _difference(by_seed, ref, (p, m)) for p, m in CELLS}
        out["all_within"] = all(d["within"] for d in out["vs_reference"].values())
    return out


def _mean_reached(steps: Mapping[str, int | None]) -> float | None:
    got = [v for v in steps.values() if v is not None]
    return sum(got) / len(got) if got and len(got) == len(steps) else None


def _time_to_quality(runs: Sequence[dict], compression: Mapping[str, Any]) -> list[dict]:
    """Per compressor the compression ablation timed: steps to quality (mean over seeds, only
    when every seed got there) × its measured iteration time at each link rate."""
    by_label = {r["label"]: r for r in runs}
    out = []
    for comp in compression.get("compressors", []):
        lab = comp["compressor"]["label"]
        run = by_label.get(lab)
        none_run = by_label.get("none")
        if run is None or none_run is None:
            continue
        steps, none_steps = (_mean_reached(run["steps_to_quality"]),
                             _mean_reached(none_run["steps_to_quality"]))
        rows = []
        for row in comp["rows"]:
            t = None if steps is None else steps * row["iter_ms"] / 1e3
            t0 = None if none_steps is None else none_steps * row["none_iter_ms"] / 1e3
            rows.append({"link_factor": row["link_factor"],
                         "calibrated_rate_bit_per_s": row["calibrated_rate_bit_per_s"],
                         "iter_ms": row["iter_ms"], "none_iter_ms": row["none_iter_ms"],
                         "time_to_quality_s": t, "none_time_to_quality_s": t0,
                         "speedup": (t0 / t) if t and t0 else None})
        out.append({"label": lab, "run_id": run["run_id"], "steps": steps,
                    "none_steps": none_steps, "rows": rows})
    return out


def analyse(records: Sequence[Mapping[str, Any]], reference: str,
            compression: Mapping[str, Any] | None = None) -> dict:
    """The whole ablation, JSON-ready (module docstring)."""
    runs_by_id = _by_run(records)
    if reference not in runs_by_id:
        raise QualityAblationError(f"reference run {reference!r}: no records (runs: "
                                   f"{', '.join(sorted(runs_by_id)) or 'none'})")
    ref = runs_by_id[reference]
    target, band = targets(ref)
    runs = [_run_summary(rid, by_seed, ref, target, rid == reference)
            for rid, by_seed in runs_by_id.items()]
    runs.sort(key=lambda r: (not r["reference"], r["run_id"]))
    by_label = {}
    for r in runs:
        if r["label"] in by_label:
            raise QualityAblationError(f"runs {by_label[r['label']]['run_id']!r} and "
                                       f"{r['run_id']!r} both vary {r['label']!r}")
        by_label[r["label"]] = r
    pairs = []
    for question, on, off in PAIRS:
        if on in by_label and off in by_label:
            a, b = runs_by_id[by_label[on]["run_id"]], runs_by_id[by_label[off]["run_id"]]
            pairs.append({"question": question, "on": by_label[on]["run_id"],
                          "off": by_label[off]["run_id"],
                          "difference": {f"{p}/{m}": _difference(a, b, (p, m))
                                         for p, m in CELLS}})
    return {
        "reference": reference, "split": "test",
        "target": {"metric": VALID_METRIC, "band": band, "floor": TARGET_FLOOR,
                   "per_seed": {str(s): t for s, t in sorted(target.items())}},
        "runs": runs, "pairs": pairs,
        "time_to_quality": _time_to_quality(runs, compression) if compression else [],
        "compression_source": (compression or {}).get("model"),
    }


def _fmt(mean: float, std: float | None) -> str:
    return f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else "")


def _steps_text(steps: Mapping[str, int | None]) -> str:
    got = [v for v in steps.values() if v is not None]
    if not got:
        return f"not reached (0/{len(steps)})"
    mean = sum(got) / len(got)
    return f"{mean:.0f}" + ("" if len(got) == len(steps) else f" ({len(got)}/{len(steps)} seeds)")


def _mbit(bits: float) -> str:
    return f"{bits / 1e6:.3g} Mbit/s"


def markdown(res: Mapping[str, Any]) -> str:
    ref = res["reference"]
    cells = [f"{p}/{m}" for p, m in CELLS]
    heads = [f"{m.replace('_at_', '@').upper()} {p}" for p, m in CELLS]
    lines = [
        "# Quality: compression, error feedback and asynchrony against sync DP",
        "",
        "**Question.** Do the gradient compressors (Formulas 10–11, PowerSGD, fp16), error "
        "feedback switched off, and asynchronous DP with and without staleness damping "
        f"(Formula 12) end where uncompressed synchronous DP (`{ref}`) ends, and how many steps "
        "do they need to get there?",
        "",
        "Every run trains to early stopping on validation HR@10; test split; mean ± std over "
        "seeds. Δ = run − reference on the same seeds; band: 95 % pooled two-sample t from the "
        "seeds' spread (recpar.report.quality_band). Steps to quality: the first validated "
        f"epoch whose validation HR@10 reaches the reference's best minus "
        f"{res['target']['band']:.4f} (the reference's seed-to-seed spread, at least "
        f"{res['target']['floor']}), per seed; the mean over seeds.",
        "",
        "| run | seeds | " + " | ".join(heads) + " | within band | epochs | steps to quality |",
        "|" + "---|" * (len(heads) + 5),
    ]
    for r in res["runs"]:
        vals = []
        for c in cells:
            v = _fmt(r["test"][c]["mean"], r["test"][c]["std"])
            if not r["reference"]:
                d = r["vs_reference"][c]
                v += f" (Δ {d['delta']:+.4f} / ±{d['band']:.4f})"
            vals.append(v)
        within = "—" if r["reference"] else ("yes" if r["all_within"] else "no")
        name = f"{r['run_id']} (reference)" if r["reference"] else r["run_id"]
        lines.append("| " + " | ".join([name, ",".join(map(str, r["seeds"])), *vals, within,
                                        "/".join(map(str, r["epochs"])),
                                        _steps_text(r["steps_to_quality"])]) + " |")
    if res["pairs"]:
        lines += ["", "## With and without the mechanism", "",
                  "| question | with | without | " + " | ".join(f"Δ {h}" for h in heads) + " |",
                  "|" + "---|" * (len(heads) + 3)]
        for p in res["pairs"]:
            lines.append("| " + " | ".join(
                [p["question"], p["on"], p["off"]]
                + [f"{p['difference'][c]['delta']:+.4f} (±{p['difference'][c]['band']:.4f})"
                   for c in cells]) + " |")
    if res["time_to_quality"]:
        rates = [row["calibrated_rate_bit_per_s"] for row in res["time_to_quality"][0]["rows"]]
        lines += ["", "## Time to quality across link rates (scale model, combined)", "",
                  "Steps to quality (above, mean over seeds) × the iteration time the "
                  "compression ablation measured for the same compressor at each link rate "
                  "(paper_tables/ablations/compression): seconds of training on the scale "
                  "model, validation not counted; in brackets the speed-up over uncompressed.",
                  "",
                  "| compressor | steps | " + " | ".join(_mbit(x) for x in rates) + " |",
                  "|" + "---|" * (len(rates) + 2)]
        none_row = res["time_to_quality"][0]
        lines.append("| none | " + (f"{none_row['none_steps']:.0f}" if none_row["none_steps"]
                                    is not None else "not reached") + " | " + " | ".join(
            f"{row['none_time_to_quality_s']:.0f} s" if row["none_time_to_quality_s"] else "—"
            for row in none_row["rows"]) + " |")
        for t in res["time_to_quality"]:
            cells_t = [(f"{row['time_to_quality_s']:.0f} s ({row['speedup']:.2f}×)"
                        if row["speedup"] else "—") for row in t["rows"]]
            steps = f"{t['steps']:.0f}" if t["steps"] is not None else "not reached"
            lines.append(f"| {t['label']} | {steps} | " + " | ".join(cells_t) + " |")
    lines += ["", "**Answer (measured).**", ""] + [f"- {a}" for a in answers(res)]
    return "\n".join(lines) + "\n"


def answers(res: Mapping[str, Any]) -> list[str]:
    """One sentence per finding, from the numbers."""
    out = []
    main = "full/hr_at_10"
    others = [r for r in res["runs"] if not r["reference"]]
    same = [r["run_id"] for r in others if r["all_within"]]
    differ = [r for r in others if not r["all_within"]]
    if same:
        out.append(f"Within the band of sync DP on all four metrics: {', '.join(same)}.")
    for r in differ:
        d = r["vs_reference"][main]
        worst = max(r["vs_reference"].items(), key=lambda kv: abs(kv[1]["delta"])
                    - kv[1]["band"])
        out.append(f"{r['run_id']} differs: HR@10 full {d['delta']:+.4f} (band "
                   f"±{d['band']:.4f}); furthest outside on {worst[0]} "
                   f"({worst[1]['delta']:+.4f}, band ±{worst[1]['band']:.4f}).")
    for p in res["pairs"]:
        d = p["difference"][main]
        verdict = ("no difference beyond the band" if d["within"] else
                   ("better with it" if d["delta"] > 0 else "worse with it"))
        out.append(f"{p['question']}: HR@10 full {d['delta']:+.4f} with it "
                   f"(band ±{d['band']:.4f}): {verdict}.")
    ref = next(r for r in res["runs"] if r["reference"])
    ref_steps = _mean_reached(ref["steps_to_quality"])
    for r in others:
        s = _mean_reached(r["steps_to_quality"])
        if s is None:
            out.append(f"{r['run_id']}: did not reach the target on every seed "
                       f"({_steps_text(r['steps_to_quality'])}).")
        elif ref_steps and abs(s / ref_steps - 1) > 0.25:
            out.append(f"{r['run_id']} needs {s / ref_steps:.2f}× the steps of sync DP to "
                       f"reach the target ({s:.0f} against {ref_steps:.0f}).")
    for t in res["time_to_quality"]:
        ups = [(row["calibrated_rate_bit_per_s"], row["speedup"]) for row in t["rows"]
               if row["speedup"]]
        if ups:
            wins = [x for x, s in ups if s > 1]
            out.append(f"{t['label']}: time to quality {min(s for _, s in ups):.2f}–"
                       f"{max(s for _, s in ups):.2f}× that of uncompressed; faster at "
                       f"{len(wins)} of {len(ups)} link rates"
                       + (f" (up to {_mbit(max(wins))})." if wins else "."))
    return out


def figure(res: Mapping[str, Any], path: Path) -> None:
    """Left: test HR@10 (full) per run, mean ± std, the reference's mean dashed. Right: time
    to quality against link rate, one line per compressor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.5))
    runs = res["runs"]
    y = [r["test"]["full/hr_at_10"]["mean"] for r in runs]
    err = [r["test"]["full/hr_at_10"]["std"] or 0.0 for r in runs]
    ax.barh(range(len(runs)), y, xerr=err, color="tab:blue", alpha=0.7)
    ax.set_yticks(range(len(runs)), [r["label"] for r in runs], fontsize=7)
    ax.axvline(y[0], color="grey", ls="--", lw=0.8)
    ax.set_xlim(min(y) * 0.9, max(y) * 1.05)
    ax.set_xlabel("test HR@10 (full ranking), mean ± std over seeds")
    for t in res["time_to_quality"]:
        rows = [row for row in t["rows"] if row["time_to_quality_s"]]
        if rows:
            bx.plot([row["calibrated_rate_bit_per_s"] for row in rows],
                    [row["time_to_quality_s"] for row in rows], "o-", label=t["label"])
    if res["time_to_quality"]:
        rows = [row for row in res["time_to_quality"][0]["rows"] if row["none_time_to_quality_s"]]
        bx.plot([row["calibrated_rate_bit_per_s"] for row in rows],
                [row["none_time_to_quality_s"] for row in rows], "k--", label="none")
        bx.set_xscale("log")
        bx.set_yscale("log")
        bx.legend(fontsize=7)
    bx.set_xlabel("inter-node link rate, calibrated (bit/s, scale model)")
    bx.set_ylabel("time to quality (s, scale model)\nsteps × measured iteration time")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(res: Mapping[str, Any], out_dir: str | os.PathLike) -> list[Path]:
    """quality_ablation.{json,csv,md,png} in `out_dir`."""
    from recpar.perfmodel.ablation_files import write_ablation_files

    cells = [f"{p}/{m}" for p, m in CELLS]
    rows = ["run_id,label,seeds," + ",".join(f"{c}_mean,{c}_std,{c}_delta,{c}_band"
                                               for c in cells) + ",steps_to_quality_mean"]
    for r in res["runs"]:
        vals = []
        for c in cells:
            d = r.get("vs_reference", {}).get(c, {})
            vals += [r["test"][c]["mean"], r["test"][c]["std"], d.get("delta"), d.get("band")]
        rows.append(",".join([r["run_id"], r["label"], "/".join(map(str, r["seeds"]))]
                             + ["" if v is None else str(v) for v in vals]
                             + [str(_mean_reached(r["steps_to_quality"]) or "")]))
    return write_ablation_files(out_dir, "quality_ablation", dict(res), rows, markdown(res),
                                lambda path: figure(res, path))
