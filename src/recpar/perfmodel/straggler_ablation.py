"""When does asynchronous DP beat synchronous DP? One worker node slowed 1×, 2× and 4×;
synchronous DP against the parameter server with staleness damping on and off (Formula 12),
each trained to early stopping; time to quality, final quality, staleness.

    recpar perfmodel straggler-ablation --data results/data/movielens-100k \
        --out paper_tables/ablations/straggler                                  (root)

Setup: an emulated cluster of 3 nodes × 1 device (`recpar cluster up`, unshaped links), every
device on the same CPU budget (`--cpu-budget`), so a slowed node does not hand its CPU to the
others. Sync DP runs on nodes 0-1 (dp2); the asynchronous runs put the parameter server on node
0 and their two workers on nodes 1-2 (dp3 = server + 2 workers): the same two gradient-computing
devices. The straggler is node 1, a gradient worker in both, slowed from the start of training by
recpar.cluster.fault's SIGSTOP/SIGCONT duty cycle (runs 1/F of each period).

Schemes: `sync` (dp2 ring); `async-static` (each worker computes its own share of every batch,
so a round ends with the slowest worker); `async-dynamic` and `async-dynamic-undamped` (the
server hands out the round's pieces one at a time: a straggler takes fewer;
recpar.comm.async_ps). Every seed (`seeds`) runs the whole grid; within a seed every run has
the same data order and initial weights. With several seeds the table adds each (slowdown,
scheme)'s mean ± std over them, and the answer is read from those.

Time to quality: the training seconds (history `train_s`: validation and checkpoints not
counted) at the first validated epoch whose validation HR@10 reaches the target: the best
validation HR@10 of sync DP without a straggler on the same seed, minus `target_band` (the
quality ablation's seed-to-seed spread where given, else its floor 0.01).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from recpar.perfmodel.ablation_files import run_logged

SCHEMES = {
    "sync": ["--scheme", "dp", "--dp", "2", "--nodes", "2"],
    "async-static": ["--scheme", "async", "--dp", "3", "--nodes", "3"],
    "async-dynamic": ["--scheme", "async", "--dp", "3", "--nodes", "3", "--async-work",
                      "dynamic"],
    "async-dynamic-undamped": ["--scheme", "async", "--dp", "3", "--nodes", "3", "--async-work",
                               "dynamic", "--no-staleness-damping"],
}
"""Scheme label -> its `recpar train` options."""
STRAGGLER_NODE = 1
"""A gradient worker in every scheme (sync rank 1; async worker rank 1)."""
NODES = 3
TARGET_FLOOR = 0.01
"""Target band when no quality ablation gives the seeds' spread (its floor)."""
EARLY_FRACTION = 0.9
"""A second, lower target: this fraction of sync DP's best validation HR@10, so that the
speed of runs that end below the main target is still compared."""


@dataclass(frozen=True)
class StragglerAblation:
    """What the ablation trains."""

    slowdowns: tuple[float, ...] = (1.0, 2.0, 4.0)
    """Slowdown factors F of the straggling node (1 = no straggler)."""
    schemes: tuple[str, ...] = tuple(SCHEMES)
    """Scheme labels (keys of SCHEMES); the first is the reference for time to quality."""
    cpu_budget: float = 0.5
    """CPU cores of every device (3 devices: 1.5 of this machine's 2 cores)."""
    model_size: str = "tiny"
    global_batch_size: int = 128
    max_epochs: int = 30
    """Upper bound of a run (early stopping on validation HR@10 ends most before)."""
    patience: int = 3
    """Epochs without a better validation HR@10 before a run stops."""
    period_s: float = 0.05
    """Duty-cycle period of the straggler (finer than a step)."""
    seeds: tuple[int, ...] = (0,)
    """Seeds; each runs every (slowdown, scheme)."""
    prefix: str = "rps"
    """Namespace prefix of the ablation's cluster."""

    def __post_init__(self) -> None:
        unknown = [s for s in self.schemes if s not in SCHEMES]
        if unknown or not self.schemes:
            raise ValueError(f"straggler ablation: schemes must be among {list(SCHEMES)}, got "
                             f"{list(self.schemes)}")
        if not self.slowdowns or min(self.slowdowns) < 1:
            raise ValueError(f"straggler ablation: slowdowns must be >= 1, got "
                             f"{list(self.slowdowns)}")
        if not 0 < self.cpu_budget <= 1:
            raise ValueError(f"straggler ablation: cpu_budget must be in (0, 1] cores, got "
                             f"{self.cpu_budget}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ValueError(f"straggler ablation: seeds must be distinct integers >= 0, got "
                             f"{list(self.seeds)}")
        if self.global_batch_size % 2:
            raise ValueError(f"straggler ablation: global_batch_size {self.global_batch_size} "
                             f"must split over 2 workers")


def run_dir(work: Path, scheme: str, slowdown: float, seed: int = 0) -> Path:
    """Seed 0's runs where a one-seed ablation kept them; other seeds' under seed<k>/."""
    base = work if seed == 0 else work / f"seed{seed}"
    return base / f"slow{slowdown:g}" / scheme


def train_command(cfg: StragglerAblation, scheme: str, slowdown: float, data: str, out: Path,
                  state_dir: str, seed: int = 0) -> list[str]:
    """The `recpar train` command of one run (with its fault schedule file when F > 1)."""
    cmd = [sys.executable, "-m", "recpar.cli", "train", *SCHEMES[scheme],
           "--topology", "emulated", "--cluster-prefix", cfg.prefix, "--cluster-state-dir",
           str(state_dir), "--cpu-budget", repr(cfg.cpu_budget), "--data", data,
           "--out", str(out), "--model-size", cfg.model_size, "--seed", str(seed),
           "--no-progress", "--replace-stale"]
    sets = {"global_batch_size": cfg.global_batch_size, "max_epochs": cfg.max_epochs,
            "patience": cfg.patience, "eval_every": 1, "early_stopping_metric": "hr_at_10"}
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    if slowdown > 1:
        schedule = out.parent / f"{out.name}.faults.yaml"
        schedule.parent.mkdir(parents=True, exist_ok=True)
        # duration: longer than any run; the schedule ends with the launch
        schedule.write_text(json.dumps([{"at_s": 0, "action": "straggler", "args": {
            "node": STRAGGLER_NODE, "slowdown": slowdown, "duration_s": 86400,
            "period_s": cfg.period_s}}]))
        cmd += ["--fault-schedule", str(schedule)]
    return cmd


def _kept(path: Path) -> bool:
    from recpar.train.record import RecordError, read

    try:
        read(path)
        return True
    except (RecordError, OSError):
        return False


def measure(cfg: StragglerAblation, data: str, state_dir: str | os.PathLike,
            work_dir: str | os.PathLike, progress: Callable[[str], None] = print
            ) -> dict[int, dict[str, dict[str, str]]]:
    """Train every (seed, slowdown, scheme) on one cluster (removed at the end, also on
    error); complete records are kept (an interrupted ablation resumes). Returns seed ->
    slowdown -> scheme -> record path."""
    from recpar.cluster import emulated
    from recpar.cluster.shaping import LinkShape

    work = Path(work_dir)
    runs = {seed: {f"{f:g}": {s: str(run_dir(work, s, f, seed) / "record.json")
                              for s in cfg.schemes} for f in cfg.slowdowns}
            for seed in cfg.seeds}
    todo = [(seed, f, s) for seed in cfg.seeds for f in cfg.slowdowns for s in cfg.schemes
            if not _kept(Path(runs[seed][f"{f:g}"][s]))]
    if not todo:
        progress("every run kept")
        return runs
    emulated.down(cfg.prefix, state_dir)
    try:
        progress(f"up: {NODES} nodes x 1 device, unshaped links")
        emulated.up(NODES, 1, LinkShape(), cfg.prefix, state_dir)
        for n, (seed, f, s) in enumerate(todo, 1):
            out = run_dir(work, s, f, seed)
            progress(f"[{n}/{len(todo)}] seed {seed}: {s}, straggler x{f:g}")
            run_logged(train_command(cfg, s, f, data, out, str(state_dir), seed),
                       out.parent / f"{out.name}.log",
                       f"straggler ablation: {s} with a x{f:g} straggler, seed {seed}")
    finally:
        emulated.down(cfg.prefix, state_dir)
    return runs


def time_to_quality(rec: Mapping[str, Any], target: float) -> tuple[int, float] | None:
    """(epochs, training seconds) at the first validated epoch at or above `target`."""
    for h in rec.get("history", []):
        if h.get("valid_hr_at_10", float("-inf")) >= target:
            return int(h["epoch"]) + 1, float(h["train_s"])
    return None


def _row(rec: Mapping[str, Any], target: float, early: float) -> dict:
    m, hist = rec["metrics"], rec.get("history", [])
    ttq, tte = time_to_quality(rec, target), time_to_quality(rec, early)
    staleness = {int(k.split("_")[1]): v for k, v in m.items()
                 if k.startswith("staleness_") and k.endswith("_updates_count")}
    updates = {r: m.get(f"updates_rank{r}_count") for r in (1, 2)}
    total = sum(v for v in updates.values() if v)
    train_s = [h["train_s"] for h in hist]
    return {
        "run_id": rec["run_id"], "epochs": len(hist),
        "epochs_to_quality": ttq[0] if ttq else None,
        "time_to_quality_s": ttq[1] if ttq else None,
        "time_to_early_target_s": tte[1] if tte else None,
        "s_per_epoch": (train_s[-1] / len(train_s)) if train_s else None,
        "best_valid_hr_at_10": max((h.get("valid_hr_at_10", float("-inf")) for h in hist),
                                   default=None),
        "test_hr_at_10": rec["quality"]["test"]["full"]["hr_at_10"],
        "test_ndcg_at_10": rec["quality"]["test"]["full"]["ndcg_at_10"],
        "mean_staleness": m.get("mean_staleness"),
        "staleness_histogram": dict(sorted(staleness.items())),
        "straggler_update_share": (updates[STRAGGLER_NODE] / total) if total else None,
        "mean_staleness_straggler": m.get(f"mean_staleness_rank{STRAGGLER_NODE}"),
    }


def analyse(cfg: StragglerAblation, runs: Mapping[str, Mapping[str, str]],
            target_band: float) -> dict:
    recs = {f: {s: json.loads(Path(p).read_text()) for s, p in by.items()}
            for f, by in runs.items()}
    first = f"{min(cfg.slowdowns):g}"
    ref = recs[first][cfg.schemes[0]]
    best = max(h["valid_hr_at_10"] for h in ref["history"] if "valid_hr_at_10" in h)
    target, early = best - target_band, EARLY_FRACTION * best
    ref_hr = _row(ref, target, early)["test_hr_at_10"]
    rows = []
    for f in cfg.slowdowns:
        by = recs[f"{f:g}"]
        sync = _row(by[cfg.schemes[0]], target, early)
        for s in cfg.schemes:
            r = {"slowdown": f, "scheme": s, **_row(by[s], target, early)}
            t, t0 = r["time_to_quality_s"], sync["time_to_quality_s"]
            r["speedup_vs_sync"] = (t0 / t) if t and t0 else None
            t, t0 = r["time_to_early_target_s"], sync["time_to_early_target_s"]
            r["early_speedup_vs_sync"] = (t0 / t) if t and t0 else None
            r["test_hr_at_10_delta"] = r["test_hr_at_10"] - ref_hr
            rows.append(r)
    return {"config": asdict(cfg), "target": {"valid_hr_at_10": target, "band": target_band,
                                              "reference_best": best,
                                              "reference": ref["run_id"],
                                              "early_valid_hr_at_10": early,
                                              "early_fraction": EARLY_FRACTION},
            "rows": rows}


SUMMARY_KEYS = ("time_to_quality_s", "speedup_vs_sync", "time_to_early_target_s",
                "early_speedup_vs_sync", "s_per_epoch", "test_hr_at_10", "test_hr_at_10_delta",
                "mean_staleness", "straggler_update_share", "mean_staleness_straggler")
"""Per-run numbers the several-seed summary averages (over the seeds that have one)."""


def analyse_seeds(cfg: StragglerAblation, runs: Mapping[int, Mapping[str, Mapping[str, str]]],
                  target_band: float) -> dict:
    """`analyse` on each seed's runs (each against its own seed's sync DP), every run's row
    with its seed, and with several seeds the mean ± std per (slowdown, scheme)."""
    per = {seed: analyse(cfg, runs[seed], target_band) for seed in cfg.seeds}
    first = per[cfg.seeds[0]]
    res = {"config": asdict(cfg), "target": first["target"],
           "targets_by_seed": {str(seed): r["target"] for seed, r in per.items()},
           "rows": [{"seed": seed, **row} for seed, r in per.items() for row in r["rows"]]}
    if len(cfg.seeds) > 1:
        res["summary"] = summarise(cfg, res["rows"])
    return res


def summarise(cfg: StragglerAblation, rows: list[dict]) -> list[dict]:
    """Per (slowdown, scheme): seeds run, seeds that reached the target, and for each of
    SUMMARY_KEYS the mean and sample std over the seeds that have the number."""
    import statistics

    out = []
    for f in cfg.slowdowns:
        for s in cfg.schemes:
            group = [r for r in rows if r["slowdown"] == f and r["scheme"] == s]
            row = {"slowdown": f, "scheme": s, "seeds": len(group),
                   "reached": sum(r["time_to_quality_s"] is not None for r in group)}
            for k in SUMMARY_KEYS:
                vals = [r[k] for r in group if r[k] is not None]
                row[f"{k}_mean"] = statistics.fmean(vals) if vals else None
                row[f"{k}_std"] = statistics.stdev(vals) if len(vals) > 1 else None
                row[f"{k}_n"] = len(vals)
            out.append(row)
    return out


def _s(v: float | None, fmt: str = "{:.0f} s") -> str:
    return "—" if v is None else fmt.format(v)


def _ms(r: Mapping[str, Any], key: str, fmt: str) -> str:
    """`mean ± std` of a summary row's key (std left out for one value), or —."""
    m, sd = r[f"{key}_mean"], r[f"{key}_std"]
    if m is None:
        return "—"
    return fmt.format(m) + ("" if sd is None else " ± " + fmt.format(sd))


def summary_answers(res: Mapping[str, Any]) -> list[str]:
    """The answer read from the several-seed summary: per slowdown, the scheme fastest to
    quality on average among those that reached it on every seed."""
    out = []
    n = len(res["config"]["seeds"])
    ref = res["config"]["schemes"][0]
    for f in res["config"]["slowdowns"]:
        rows = [r for r in res["summary"] if r["slowdown"] == f]
        always = [r for r in rows if r["reached"] == n]
        partly = [f"{r['scheme']} ({r['reached']}/{n})" for r in rows if r["reached"] < n]
        if not always:
            out.append(f"straggler ×{f:g}: no scheme reached the target on all {n} seeds"
                       + (f" ({', '.join(partly)})" if partly else "") + ".")
            continue
        win = min(always, key=lambda r: r["time_to_quality_s_mean"])
        vs = (f", {_ms(win, 'speedup_vs_sync', '{:.2f}')}× sync"
              if win["scheme"] != ref and win["speedup_vs_sync_mean"] is not None else "")
        out.append(f"straggler ×{f:g}: fastest to quality on average {win['scheme']} "
                   f"({_ms(win, 'time_to_quality_s', '{:.0f}')} s{vs})"
                   + (f"; not on every seed: {', '.join(partly)}" if partly else "") + ".")
    for f in res["config"]["slowdowns"]:
        rows = [r for r in res["summary"] if r["slowdown"] == f]
        out.append(f"straggler ×{f:g}, test HR@10 minus sync ×1's on the same seed: " + ", ".join(
            f"{r['scheme']} {_ms(r, 'test_hr_at_10_delta', '{:+.4f}')}" for r in rows) + ".")
    return out


def answers(res: Mapping[str, Any]) -> list[str]:
    out = []
    by_f: dict[float, list[dict]] = {}
    for r in res["rows"]:
        by_f.setdefault(r["slowdown"], []).append(r)
    for f, rows in by_f.items():
        reached = [r for r in rows if r["time_to_quality_s"] is not None]
        if not reached:
            out.append(f"×{f:g}: no scheme reached the target.")
            continue
        win = min(reached, key=lambda r: r["time_to_quality_s"])
        missing = [r["scheme"] for r in rows if r["time_to_quality_s"] is None]
        sync = next(r for r in rows if r["scheme"] == res["config"]["schemes"][0])
        out.append(f"straggler ×{f:g}: fastest to quality {win['scheme']} "
                   f"({win['time_to_quality_s']:.0f} s"
                   + (f", {win['speedup_vs_sync']:.2f}× sync" if win["speedup_vs_sync"]
                      and win is not sync else "") + ")"
                   + (f"; never reached it: {', '.join(missing)}" if missing else "") + ".")
    for f, rows in by_f.items():
        reached = [r for r in rows if r["time_to_early_target_s"] is not None]
        if reached:
            win = min(reached, key=lambda r: r["time_to_early_target_s"])
            out.append(f"straggler ×{f:g}, to {res['target']['early_fraction']:.0%} of sync's "
                       f"best: fastest {win['scheme']} ({win['time_to_early_target_s']:.0f} s"
                       + (f", {win['early_speedup_vs_sync']:.2f}× sync"
                          if win["early_speedup_vs_sync"] and win["scheme"] != rows[0]["scheme"]
                          else "") + ").")
    dyn = [r for r in res["rows"] if r["scheme"] == "async-dynamic"]
    if dyn:
        out.append("async-dynamic, the straggler's share of the updates: "
                   + ", ".join(f"×{r['slowdown']:g} {r['straggler_update_share']:.2f}"
                               for r in dyn if r["straggler_update_share"] is not None)
                   + "; its mean staleness: "
                   + ", ".join(f"×{r['slowdown']:g} {r['mean_staleness_straggler']:.2f}"
                               for r in dyn if r["mean_staleness_straggler"] is not None) + ".")
    return out


def markdown(res: Mapping[str, Any]) -> str:
    cfg, t = res["config"], res["target"]
    lines = [
        "# Sync vs async data parallelism under a straggler",
        "",
        "**Question.** When one worker is slowed 1×, 2× or 4×, does asynchronous DP (a "
        "parameter server, Formula 12's damping on and off) reach sync DP's quality sooner, "
        "and where does it end?",
        "",
        f"3 nodes × 1 device on {cfg['cpu_budget']:g} core each, unshaped links; sync dp2 on "
        f"nodes 0-1, async = server on node 0 + workers on nodes 1-2; node {STRAGGLER_NODE} (a "
        f"worker in both) slowed by SIGSTOP/SIGCONT duty cycling ({cfg['period_s']:g} s "
        f"period) from the start. Tiny model, global batch {cfg['global_batch_size']}, early "
        f"stopping on validation HR@10 (patience {cfg['patience']}), "
        + (f"seed {cfg['seeds'][0]}, one run each. " if len(cfg["seeds"]) == 1 else
           f"seeds {', '.join(map(str, cfg['seeds']))}, one run each per seed. ")
        + f"Target: validation HR@10 {t['valid_hr_at_10']:.4f} = the best of "
        f"`{t['reference']}` ({t['reference_best']:.4f}) − {t['band']:.4f}; a second, lower "
        f"target at {t['early_fraction']:.0%} of that best ({t['early_valid_hr_at_10']:.4f})"
        + (". " if len(cfg["seeds"]) == 1 else
           f" (seed {cfg['seeds'][0]}'s; every seed is judged against its own sync DP: "
           + "; ".join(f"seed {k}: {v['valid_hr_at_10']:.4f}"
                       for k, v in res["targets_by_seed"].items()) + "). ")
        + "Time to quality: training seconds to the first validated epoch at the target "
        "(validation not counted).",
        "",
    ]
    if "summary" in res:
        n = len(cfg["seeds"])
        lines += [
            f"Mean ± std over the {n} seeds (of the seeds that have the number):", "",
            "| straggler | scheme | reached | time to quality | vs sync | "
            f"time to {t['early_fraction']:.0%} of sync's best | s / epoch | "
            "test HR@10 | Δ vs sync ×1 | mean staleness | straggler's updates |",
            "|" + "---|" * 11]
        for r in res["summary"]:
            lines.append("| " + " | ".join([
                f"×{r['slowdown']:g}", r["scheme"], f"{r['reached']}/{r['seeds']}",
                _ms(r, "time_to_quality_s", "{:.0f}"), _ms(r, "speedup_vs_sync", "{:.2f}"),
                _ms(r, "time_to_early_target_s", "{:.0f}"), _ms(r, "s_per_epoch", "{:.1f}"),
                _ms(r, "test_hr_at_10", "{:.4f}"), _ms(r, "test_hr_at_10_delta", "{:+.4f}"),
                _ms(r, "mean_staleness", "{:.2f}"),
                _ms(r, "straggler_update_share", "{:.2f}")]) + " |")
        lines += ["", "Every run:", ""]
    lines += [
        "| straggler | scheme | seed | epochs | to quality: epochs | time to quality | vs sync | "
        f"time to {t['early_fraction']:.0%} of sync's best | vs sync | "
        "s / epoch | test HR@10 (Δ vs sync ×1) | mean staleness | straggler's updates | "
        "straggler's staleness |",
        "|" + "---|" * 14,
    ]
    for r in res["rows"]:
        lines.append("| " + " | ".join([
            f"×{r['slowdown']:g}", r["scheme"], str(r.get("seed", cfg["seeds"][0])),
            str(r["epochs"]),
            _s(r["epochs_to_quality"], "{}") if r["epochs_to_quality"] else "not reached",
            _s(r["time_to_quality_s"]), _s(r["speedup_vs_sync"], "{:.2f}×"),
            _s(r["time_to_early_target_s"]), _s(r["early_speedup_vs_sync"], "{:.2f}×"),
            _s(r["s_per_epoch"], "{:.1f}"),
            f"{r['test_hr_at_10']:.4f} ({r['test_hr_at_10_delta']:+.4f})",
            _s(r["mean_staleness"], "{:.2f}"), _s(r["straggler_update_share"], "{:.0%}"),
            _s(r["mean_staleness_straggler"], "{:.2f}")]) + " |")
    lines += ["", "Staleness histograms (τ: updates) of the asynchronous runs:", ""]
    for r in res["rows"]:
        if r["staleness_histogram"]:
            lines.append(f"- ×{r['slowdown']:g} {r['scheme']}"
                         + (f", seed {r['seed']}" if "seed" in r else "") + ": " + ", ".join(
                             f"{k}: {v}" for k, v in r["staleness_histogram"].items()))
    if "summary" in res:
        lines += ["", f"**Answer (measured, {len(cfg['seeds'])} seeds).**", ""]
        lines += [f"- {a}" for a in summary_answers(res)]
    else:
        lines += ["", "**Answer (measured, one seed).**", ""]
        lines += [f"- {a}" for a in answers(res)]
    return "\n".join(lines) + "\n"


def figure(res: Mapping[str, Any], path: Path) -> None:
    """Time to quality (left) and to the lower target (right) against the straggler's
    slowdown, one line per scheme."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, title in ((axes[0], "time_to_quality_s", "to sync's best − band"),
                           (axes[1], "time_to_early_target_s",
                            f"to {res['target']['early_fraction']:.0%} of sync's best")):
        for s in res["config"]["schemes"]:
            if "summary" in res:  # mean ± std over the seeds that reached it
                pts = [(r["slowdown"], r[f"{key}_mean"], r[f"{key}_std"] or 0.0)
                       for r in res["summary"] if r["scheme"] == s and r[f"{key}_mean"]]
                if pts:
                    x, y, e = zip(*pts)
                    ax.errorbar(x, y, yerr=e, fmt="o-", capsize=3, label=s)
                continue
            pts = [(r["slowdown"], r[key]) for r in res["rows"]
                   if r["scheme"] == s and r[key] is not None]
            if pts:
                ax.plot(*zip(*pts), "o-", label=s)
        ax.set_xlabel("straggler slowdown (×)")
        ax.set_ylabel("training s (validation not counted)")
        ax.set_title(title, fontsize=9)
        ax.set_xticks(res["config"]["slowdowns"])
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(res: Mapping[str, Any], out_dir: str | os.PathLike) -> list[Path]:
    """straggler_sync_async.{json,csv,md,png} in `out_dir`."""
    from recpar.perfmodel.ablation_files import write_ablation_files

    keys = ["slowdown", "scheme", "seed", "run_id", "epochs", "epochs_to_quality",
            "time_to_quality_s", "speedup_vs_sync", "time_to_early_target_s",
            "early_speedup_vs_sync", "s_per_epoch", "test_hr_at_10", "test_hr_at_10_delta",
            "test_ndcg_at_10", "mean_staleness", "straggler_update_share",
            "mean_staleness_straggler"]
    rows = [",".join(keys)] + [",".join("" if r.get(k) is None else str(r[k]) for k in keys)
                               for r in res["rows"]]
    return write_ablation_files(out_dir, "straggler_sync_async", dict(res), rows, markdown(res),
                                lambda path: figure(res, path))


def target_band(quality_json: str | os.PathLike | None) -> float:
    """The quality ablation's target band (its reference's seed spread), else TARGET_FLOOR."""
    if quality_json is None:
        return TARGET_FLOOR
    try:
        return float(json.loads(Path(quality_json).read_text())["target"]["band"])
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"--quality {quality_json}: no target band ({e})") from None


def run(cfg: StragglerAblation, data: str, work_dir: str | os.PathLike,
        out_dir: str | os.PathLike, band: float, progress: Callable[[str], None] = print,
        state_dir: str | os.PathLike | None = None) -> list[Path]:
    state = Path(state_dir) if state_dir else Path(work_dir) / "state"
    runs = measure(cfg, data, state, work_dir, progress)
    return write_outputs(analyse_seeds(cfg, runs, band), out_dir)

