"""When does gradient compression pay off? Every compressor's data-parallel training step
across link rates, measured on the scale model and set against the cost model.

    recpar perfmodel compression-ablation --scale-model results/cluster/scale_model.json \
        --data results/data/movielens-100k --out paper_tables/ablations/compression   (root)

Two budgeted devices, one per node (`recpar train --scheme dp --dp 2 --nodes 2 --cpu-budget`),
all-reduce their gradients over one inter-node link. The link's rate is the profile's NIC
scaled by the dilation D of `recpar perfmodel scale-model` (recpar.perfmodel.dilation), times
each of `link_factors`; its latency is the scale model's, the same at every rate. For each
rate the cluster is built afresh and calibrated (`recpar cluster calibrate`), then every
compressor trains the same short budget. A row's speedup is the uncompressed run's iteration
time over the compressor's, at the same rate.

Projections (labelled) come from the cost model on the scale model's own profile
(recpar.perfmodel.scale_profile: the device's measured FLOP/s, the links as calibrated), with
each compressor's rank-local work at the rate `recpar.perfmodel.calibrate` measures for it in
CPU seconds on this host, times the device's budget (the quota caps CPU seconds per second).
The crossover is the link rate from which a compressor stops paying off: measured, it lies
between two measured rates; projected, it is searched on a fine grid of rates.

Time to quality is not measured here: the runs train a fixed short budget for their step time
(quality per step does not depend on the link; config/quality_ablation.yaml measures it).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from recpar.perfmodel.ablation_files import run_logged
from recpar.perfmodel.hardware import compress_codec

MODEL_NOTE = ("recpar.perfmodel cost model on the scale model's profile (measured device, "
              "calibrated link) with each compressor's local work at its measured rate; "
              "error_pct = 100 (projected - measured) / measured")


@dataclass(frozen=True)
class CompressorSetting:
    """One compressor as `recpar train` takes it."""

    label: str
    """Name in tables and file names, e.g. `topk0.01`."""
    compressor: str
    """recpar.comm compressor: none | sign | topk | powersgd | fp16 | bf16."""
    topk_ratio: float = 0.01
    """Top-k's kept fraction (topk only)."""
    error_feedback: bool = True
    """Error feedback (sign, topk, powersgd)."""

    def train_options(self) -> list[str]:
        opts = ["--compressor", self.compressor]
        if self.compressor == "topk":
            opts += ["--topk-ratio", repr(self.topk_ratio)]
        if not self.error_feedback:
            opts.append("--no-error-feedback")
        return opts


COMPRESSORS = (CompressorSetting("none", "none"), CompressorSetting("sign", "sign"),
               CompressorSetting("topk0.1", "topk", 0.1),
               CompressorSetting("topk0.01", "topk", 0.01),
               CompressorSetting("topk0.001", "topk", 0.001),
               CompressorSetting("powersgd", "powersgd"), CompressorSetting("fp16", "fp16"))
"""The issue-20 set: none, sign-EF, top-k-EF at three ratios, PowerSGD (rank 1), fp16."""


@dataclass(frozen=True)
class CompressionAblation:
    """What the ablation builds and measures."""

    link_factors: tuple[float, ...] = (0.25, 1.0, 4.0, 16.0, 64.0)
    """Inter-node link rates as multiples of the scale model's scaled NIC (1 = the profile's
    NIC at dilation D)."""
    compressors: tuple[CompressorSetting, ...] = COMPRESSORS
    """The compressors, each trained at every rate; the first must be `none` (the reference)."""
    nodes: int = 2
    """Nodes, one budgeted device each: dp = nodes."""
    model_size: str = "tiny"
    """Named model size (the scale model's device was measured on its own size)."""
    global_batch_size: int = 128
    """Sequences per step over all devices."""
    warmup_steps: int = 3
    """Untimed steps first (PowerSGD compresses from step 2 on)."""
    timed_steps: int = 8
    """Steps in the timing window."""
    seed: int = 0
    """Training seed of every run."""
    repeats: int = 2
    """Runs of every (rate, compressor), the same seed each time: the iteration time is their
    mean, and their spread is the band a speedup must clear to count."""
    calibrate_seconds: float = 2.0
    """Bulk transfer time per link of the calibration."""
    pingpong_count: int = 100
    """Round trips per link of the calibration's latency measurement."""
    prefix: str = "rpz"
    """Namespace prefix of the ablation's clusters (not a user's `rp` cluster)."""

    def __post_init__(self) -> None:
        if not self.link_factors or min(self.link_factors) <= 0:
            raise ValueError(f"compression ablation: link_factors must be > 0, got "
                             f"{self.link_factors}")
        if not self.compressors or self.compressors[0].compressor != "none":
            raise ValueError("compression ablation: the first compressor must be `none` (every "
                             "speedup is against it)")
        labels = [c.label for c in self.compressors]
        if len(set(labels)) != len(labels):
            raise ValueError(f"compression ablation: compressor labels repeat: {labels}")
        if self.nodes < 2:
            raise ValueError(f"compression ablation: needs >= 2 nodes, got {self.nodes}")
        if self.repeats < 1:
            raise ValueError(f"compression ablation: repeats must be >= 1, got {self.repeats}")
        if self.global_batch_size % self.nodes:
            raise ValueError(f"compression ablation: global_batch_size {self.global_batch_size}"
                             f" is not divisible by {self.nodes} devices")


def scale_link(scale: Mapping[str, Any]) -> tuple[float, float, float, float]:
    """(scaled NIC rate bit/s, applied latency s, dilation D, budget cores) of a
    `recpar perfmodel scale-model` output."""
    from recpar.cluster.scale_links import applied_latency_s

    sm = scale["scale_model"]
    inter = sm["inter_node"]
    return (float(inter["rate_bit_per_s"]), applied_latency_s(float(inter["latency_s"])),
            float(sm["dilation"]), float(scale["cpu_budget"]["cores_per_device"]))


def train_command(cfg: CompressionAblation, comp: CompressorSetting, data: str, out: Path,
                  budget: float, state_dir: str) -> list[str]:
    """The `recpar train` command of one run."""
    steps = cfg.warmup_steps + cfg.timed_steps
    sets = {"global_batch_size": cfg.global_batch_size, "max_epochs": 1, "max_steps": steps,
            "warmup_steps": cfg.warmup_steps, "timed_steps": cfg.timed_steps, "patience": 1,
            "eval_every": 1}
    cmd = [sys.executable, "-m", "recpar.cli", "train", "--scheme", "dp", "--dp", str(cfg.nodes),
           "--nodes", str(cfg.nodes), "--topology", "emulated", "--cluster-prefix", cfg.prefix,
           "--cluster-state-dir", str(state_dir), "--cpu-budget", repr(budget), "--data", data,
           "--out", str(out), "--model-size", cfg.model_size, "--seed", str(cfg.seed),
           "--no-progress", "--replace-stale"]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    return cmd + comp.train_options()


def measure(cfg: CompressionAblation, scale: Mapping[str, Any], data: str,
            state_dir: str | os.PathLike, work_dir: str | os.PathLike,
            progress: Callable[[str], None] = print) -> list[dict]:
    """Build, calibrate and train every compressor at every rate; the cluster is always
    removed. Returns one setting per rate: the uncompressed run's calibrated link and each
    compressor's record path.
    A run whose record is complete and was made at the same configured rate is kept (an
    interrupted ablation resumes); a rate whose runs are all kept builds no cluster. Every
    record carries the calibration of the cluster it ran on."""
    from recpar.cluster import emulated
    from recpar.cluster.calibrate import calibrate
    from recpar.cluster.emulated import ClusterState
    from recpar.cluster.shaping import LinkShape

    nic, latency, _, budget = scale_link(scale)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    settings = []
    emulated.down(cfg.prefix, state_dir)
    try:
        for i, factor in enumerate(cfg.link_factors, 1):
            rate = nic * factor
            tag = f"[{i}/{len(cfg.link_factors)}] {rate / 1e6:.3g} Mbit/s"
            runs = {c.label: [run_dir(work, factor, c, k) / "record.json"
                              for k in range(1, cfg.repeats + 1)] for c in cfg.compressors}
            todo = [(c, k, path) for k in range(cfg.repeats) for c in cfg.compressors
                    if not _kept(path := runs[c.label][k], rate)]
            if todo:
                progress(f"{tag}: up, {cfg.nodes} nodes x 1 device, latency "
                         f"{latency * 1e3:.3g} ms")
                emulated.down(cfg.prefix, state_dir)
                emulated.up(cfg.nodes, 1, LinkShape(rate, latency_s=latency), cfg.prefix,
                            state_dir)
                calibrate(ClusterState.load(cfg.prefix, state_dir),
                          seconds=cfg.calibrate_seconds, count=cfg.pingpong_count,
                          state_dir=state_dir)  # the records carry it (topology.inter_node)
            else:
                progress(f"{tag}: every run kept")
            for n, (comp, k, path) in enumerate(todo, 1):
                out = path.parent
                progress(f"{tag}: [{n}/{len(todo)}] {out.name}")
                run_logged(train_command(cfg, comp, data, out, budget, str(state_dir)),
                           out.parent / f"{out.name}.log",
                           f"compression ablation: {out.name} at {rate / 1e6:.3g} Mbit/s")
            cal = record_link(json.loads(runs["none"][0].read_text()))
            settings.append({"link_factor": factor, "rate_bit_per_s": rate,
                             "latency_s": latency, "calibrated_rate_bit_per_s": cal[0],
                             "calibrated_latency_s": cal[1],
                             "records": {k: [str(p) for p in v] for k, v in runs.items()}})
    finally:
        emulated.down(cfg.prefix, state_dir)
    return settings


def run_dir(work: Path, factor: float, comp: CompressorSetting, repeat: int) -> Path:
    """Where one run's record goes: `rate<factor>/<label>` for the first repeat,
    `rate<factor>/<label>-r<k>` for the others."""
    return work / f"rate{factor:g}" / (comp.label if repeat == 1 else f"{comp.label}-r{repeat}")


def record_link(rec: Mapping[str, Any]) -> tuple[float, float]:
    """(rate bit/s, latency s) of the inter-node link as calibrated for the run's cluster."""
    cal = rec["topology"]["inter_node"]["calibrated"]
    return float(cal["rate_bit_per_s"]), float(cal["latency_s"])


def _kept(path: Path, rate: float) -> bool:
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    conf = ((rec.get("topology") or {}).get("inter_node") or {}).get("configured") or {}
    got = conf.get("rate_bit_per_s")
    return (rec.get("status") == "completed" and got is not None
            and abs(got - rate) <= 1e-6 * rate)


# --- projection -------------------------------------------------------------------------------

def compress_rates(cfg: CompressionAblation, record: Mapping[str, Any], budget: float,
                   measure_rate: Callable[..., dict] | None = None) -> dict[str, dict]:
    """Each compressor's local work on one device: elements/s measured in CPU seconds on this
    host (recpar.perfmodel.calibrate), times the budget's cores."""
    from recpar.perfmodel.calibrate import measure_compress_elements_per_s
    from recpar.perfmodel.predict import scenario_from_record

    measure_rate = measure_rate or measure_compress_elements_per_s
    shape = scenario_from_record(record, "compression ablation").shape
    n, shapes = shape.trainable_params, shape.param_shapes()
    out = {}
    for comp in cfg.compressors:
        if comp.compressor == "none":
            continue
        codec = compress_codec(comp.compressor)
        m = measure_rate(n, codec, ratio=comp.topk_ratio, world=cfg.nodes, grad_shapes=shapes)
        out[comp.label] = {
            "value": m["elements_per_s"] * budget,
            "source": (f"measured: recpar.perfmodel.calibrate.measure_compress_elements_per_s "
                       f"({codec}, {n} elements, {m['cpu_s'] * 1e3:.3g} ms CPU) x "
                       f"{budget:g} core budget"),
            "provenance": "host"}
    return out


def _profile(scale: Mapping[str, Any], rate_bit_per_s: float, latency_s: float,
             rate_figure: Mapping[str, Any] | None, codec: str | None):
    """The scale model's profile with one inter-node link (and one device per node)."""
    from recpar.perfmodel.hardware import profile_from_mapping
    from recpar.perfmodel.scale_profile import scale_profile_mapping

    link = {"rate_bit_per_s": rate_bit_per_s, "latency_s": latency_s}
    # one device per node: no intra-node link is used; the profile format needs one
    m = scale_profile_mapping(scale, {**link, "intra_node": dict(link)}, 1,
                              where="compression ablation")
    if rate_figure is not None and codec is not None:
        m["device"][f"{codec}_compress_elements_per_s"] = dict(rate_figure)
    return profile_from_mapping(m, "compression ablation")


def _codec(comp: CompressorSetting) -> str | None:
    return None if comp.compressor == "none" else compress_codec(comp.compressor)


def project(scale: Mapping[str, Any], record: Mapping[str, Any], comp: CompressorSetting,
            rates: Mapping[str, dict], rate_bit_per_s: float, latency_s: float) -> float:
    """Projected iteration time (ms) of `record`'s run at a link of this rate and latency."""
    from recpar.perfmodel.predict import predict_record

    hw = _profile(scale, rate_bit_per_s, latency_s, rates.get(comp.label), _codec(comp))
    return predict_record(record, hw, f"compression ablation: {comp.label}")["iter_ms"]


def projected_crossover(scale, none_rec, rec, comp, rates, latency_s, lo, hi,
                        points: int = 200) -> float | None:
    """Smallest link rate in [lo, hi] (log grid) from which the uncompressed run is projected
    at least as fast as `comp`, when `comp` wins at `lo`; None if it never does."""
    for k in range(points + 1):
        r = lo * (hi / lo) ** (k / points)
        if (project(scale, none_rec, COMPRESSORS[0], rates, r, latency_s)
                <= project(scale, rec, comp, rates, r, latency_s)):
            return None if k == 0 else r
    return None


def measured_crossover(rows: Sequence[dict]) -> dict:
    """Where the compressor stops paying off: between the last rate (from the slowest) at which
    it pays off and the next one, calibrated rates; 'throughout' when it pays off at every rate
    or at none."""
    pays = [r["verdict"] in (PAYS, ONE_RUN_FASTER) for r in rows]
    for k in range(len(rows) - 1):
        if pays[k] and not any(pays[k + 1:]):
            return {"above_bit_per_s": rows[k]["calibrated_rate_bit_per_s"],
                    "at_most_bit_per_s": rows[k + 1]["calibrated_rate_bit_per_s"],
                    "profile_nic_bit_per_s": [rows[k]["rate_bit_per_s"],
                                              rows[k + 1]["rate_bit_per_s"]]}
    return {"above_bit_per_s": None, "at_most_bit_per_s": None,
            "pays_off": ("throughout" if all(pays) else "nowhere" if not any(pays)
                         else "mixed")}


def _metric(rec: Mapping[str, Any], key: str) -> float | None:
    v = (rec.get("metrics") or {}).get(key)
    return None if v is None else float(v)


def analyse(cfg: CompressionAblation, scale: Mapping[str, Any], settings: Sequence[dict],
            records: Mapping[str, Mapping[str, Any]], rates: Mapping[str, dict]) -> list[dict]:
    """One entry per compressor: a row per link rate (measured, projected, speedups) and the
    crossovers. `records` maps record paths to their contents."""
    out = []
    lo = min(s["calibrated_rate_bit_per_s"] for s in settings) / 4
    hi = max(s["calibrated_rate_bit_per_s"] for s in settings) * 16
    for comp in cfg.compressors[1:]:
        rows = []
        for s in settings:
            none_recs = [records[p] for p in s["records"]["none"]]
            recs = [records[p] for p in s["records"][comp.label]]
            none_ms, none_spread = _mean_spread(none_recs)
            ms, spread = _mean_spread(recs)
            # projected from the first repeat's record, on the link calibrated for it
            p_none = project(scale, none_recs[0], cfg.compressors[0], rates,
                             *record_link(none_recs[0]))
            p_ms = project(scale, recs[0], comp, rates, *record_link(recs[0]))
            band = (None if none_spread is None or spread is None
                    else max(none_spread, spread))
            rows.append({
                "link_factor": s["link_factor"], "rate_bit_per_s": s["rate_bit_per_s"],
                "calibrated_rate_bit_per_s": s["calibrated_rate_bit_per_s"],
                "calibrated_latency_s": s["calibrated_latency_s"],
                "none_iter_ms": none_ms, "iter_ms": ms, "speedup": none_ms / ms,
                "none_spread_pct": none_spread, "spread_pct": spread, "band_pct": band,
                "verdict": verdict(none_ms / ms, band),
                "projected_none_iter_ms": p_none, "projected_iter_ms": p_ms,
                "projected_speedup": p_none / p_ms,
                "error_pct": 100 * (p_ms - ms) / ms,
                "none_error_pct": 100 * (p_none - none_ms) / none_ms,
                "wire_bytes_per_rank_per_iter": _metric(recs[0], "wire_bytes_per_rank_per_iter"),
                "none_wire_bytes_per_rank_per_iter":
                    _metric(none_recs[0], "wire_bytes_per_rank_per_iter"),
                "compress_ms_per_iter": _mean(recs, "compress_ms_per_iter"),
                "exposed_comm_ms_per_iter": _mean(recs, "exposed_comm_ms_per_iter"),
                "none_exposed_comm_ms_per_iter": _mean(none_recs, "exposed_comm_ms_per_iter")})
        last = settings[-1]
        out.append({"compressor": asdict(comp), "rows": rows,
                    "measured_crossover": measured_crossover(rows),
                    "projected_crossover_bit_per_s": projected_crossover(
                        scale, records[last["records"]["none"][0]],
                        records[last["records"][comp.label][0]], comp, rates,
                        last["calibrated_latency_s"], lo, hi),
                    "crossover_search_bit_per_s": [lo, hi]})
    return out


PAYS, COSTS, WITHIN, ONE_RUN_FASTER, ONE_RUN_SLOWER = (
    "pays off", "costs", "within the spread", "faster (one run)", "slower (one run)")


def verdict(speedup: float, band_pct: float | None) -> str:
    """`pays off` / `costs` when the speedup clears the run-to-run spread (band), else `within
    the spread`; with one run per point there is no band and the verdict says so."""
    if band_pct is None:
        return ONE_RUN_FASTER if speedup > 1 else ONE_RUN_SLOWER
    if speedup > 1 + band_pct / 100:
        return PAYS
    if speedup < 1 - band_pct / 100:
        return COSTS
    return WITHIN


def _mean_spread(recs: Sequence[Mapping[str, Any]]) -> tuple[float, float | None]:
    """(mean iteration ms, 100 (max − min) / mean, None for a single run)."""
    ms = [_metric(r, "iter_ms") for r in recs]
    mean = sum(ms) / len(ms)
    return mean, (100 * (max(ms) - min(ms)) / mean if len(ms) > 1 else None)


def _mean(recs: Sequence[Mapping[str, Any]], key: str) -> float | None:
    vals = [_metric(r, key) for r in recs]
    return None if None in vals else sum(vals) / len(vals)


@dataclass
class AblationResult:
    """What `write_outputs` publishes."""

    config: dict
    scale_model: dict
    settings: list[dict]
    compressors: list[dict]
    compress_rates: dict
    model: str = MODEL_NOTE
    summary: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        errs = [abs(r["error_pct"]) for c in self.compressors for r in c["rows"]]
        errs += [abs(c["rows"][0]["none_error_pct"]) for c in self.compressors[:1]]
        # the faster side, judged where the measurement names one beyond the spread
        same = [(r["verdict"] == PAYS) == (r["projected_speedup"] > 1)
                for c in self.compressors for r in c["rows"] if r["verdict"] in (PAYS, COSTS)]
        verdicts = [r["verdict"] for c in self.compressors for r in c["rows"]]
        self.summary = {"judged": len(errs), "within_15_pct": sum(e <= 15 for e in errs),
                        "max_abs_error_pct": max(errs, default=None),
                        "winner_agrees": sum(same), "winner_judged": len(same),
                        "verdicts": {v: verdicts.count(v) for v in dict.fromkeys(verdicts)}}


def _mbit(bits: float | None) -> str:
    if bits is None:
        return "—"
    return f"{bits / 1e9:.3g} Gbit/s" if bits >= 1e9 else f"{bits / 1e6:.3g} Mbit/s"


def _gbit(bits: float) -> str:
    return f"{bits / 1e9:,.0f} Gbit/s"


def _crossover_text(c: dict, dilation: float) -> str:
    m = c["measured_crossover"]
    if m.get("at_most_bit_per_s") is not None:
        nic = m["profile_nic_bit_per_s"]
        return (f"pays off up to {_mbit(m['above_bit_per_s'])}, not from "
                f"{_mbit(m['at_most_bit_per_s'])} on (a NIC of {_gbit(nic[0] / dilation)} and "
                f"{_gbit(nic[1] / dilation)} on the profile)")
    return {"throughout": "pays off at every measured rate",
            "nowhere": "pays off at no measured rate"}.get(
        m.get("pays_off"), "pays off at the fastest rate but not at every slower one")


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v:.0f} %"


def markdown(res: AblationResult) -> str:
    c, sm = res.config, res.scale_model
    d = sm["dilation"]
    lines = [
        "# Gradient compression across link rates",
        "",
        "**Question.** At which link rate does each gradient compressor (Formulas 10–11, "
        "PowerSGD, fp16) stop paying off end to end, and does the cost model say so before "
        "it is measured?",
        "",
        f"Data-parallel training of the `{c['model_size']}` model on {c['nodes']} nodes × 1 "
        f"device, global batch {c['global_batch_size']}, {c['timed_steps']} timed steps after "
        f"{c['warmup_steps']} warm-up, seed {c['seed']}. Scale model of `{sm['profile']}`: "
        f"every device on a {sm['cpu_budget_cores_per_device']:g}-core budget "
        f"({sm['device_flops_per_s'] / 1e9:.3g} GFLOP/s measured), dilation D = {d:.3g}; "
        f"the link is the profile's NIC "
        f"({sm['inter_node']['profile_rate_bit_per_s'] / 1e9:g} Gbit/s) × D × a factor, with "
        f"the scale model's latency ({res.settings[0]['latency_s'] * 1e3:.3g} ms) at "
        "every rate; each rate calibrated. Every point ran "
        f"{c['repeats']} time(s) (same seed); iteration = their mean, spread = 100 × (max − "
        "min) / mean. Speedup = uncompressed iteration time ÷ the compressor's, at the same "
        "rate; it *pays off* (or *costs*) only beyond the larger spread of the two. "
        "Projections (labelled) are the cost model's on the calibrated link; error = 100 × "
        "(projected − measured) / measured; band ±15 %.",
        "",
        "| link (calibrated) | NIC on the profile | compressor | iteration (ms) | spread | "
        "projected | speedup | verdict | projected | bytes/iter per rank | compress (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    first = res.compressors[0]["rows"] if res.compressors else []
    for k, s in enumerate(res.settings):
        link = (f"{_mbit(s['calibrated_rate_bit_per_s'])} + "
                f"{s['calibrated_latency_s'] * 1e3:.3g} ms")
        nic = _gbit(s["rate_bit_per_s"] / d)
        if first:
            r0 = first[k]
            lines.append(f"| {link} | {nic} | none | {r0['none_iter_ms']:,.0f} | "
                         f"{_pct(r0['none_spread_pct'])} | "
                         f"{r0['projected_none_iter_ms']:,.0f} ({r0['none_error_pct']:+.0f} %) "
                         f"| 1 | | 1 | {r0['none_wire_bytes_per_rank_per_iter'] or 0:,.0f} "
                         "| 0 |")
        for comp in res.compressors:
            r = comp["rows"][k]
            lines.append(
                f"| | | {comp['compressor']['label']} | {r['iter_ms']:,.0f} | "
                f"{_pct(r['spread_pct'])} | "
                f"{r['projected_iter_ms']:,.0f} ({r['error_pct']:+.0f} %) | "
                f"{r['speedup']:.2f} | {r['verdict']} | {r['projected_speedup']:.2f} | "
                f"{r['wire_bytes_per_rank_per_iter'] or 0:,.0f} | "
                f"{r['compress_ms_per_iter'] or 0:.1f} |")
    sm_ = res.summary
    lines += ["", "**Answer (measured).**", ""]
    for comp in res.compressors:
        p = comp["projected_crossover_bit_per_s"]
        lo, hi = comp["crossover_search_bit_per_s"]
        proj = (f"projected to stop paying off from {_mbit(p)} (a NIC of "
                f"{_gbit(p / d)})" if p is not None else
                f"projected to pay off throughout {_mbit(lo)}–{_mbit(hi)}"
                if comp["rows"][0]["projected_speedup"] > 1 else
                "projected never to pay off there")
        lines.append(f"- **{comp['compressor']['label']}**: "
                     f"{_crossover_text(comp, d)}; {proj}.")
    lines += [f"- The cost model is within ±15 % for {sm_['within_15_pct']} of {sm_['judged']} "
              f"iteration times (largest error {sm_['max_abs_error_pct']:.0f} %); where the "
              f"measurement names the faster side beyond its spread ({sm_['winner_judged']} "
              f"(compressor, rate) pairs), the projection names the same side for "
              f"{sm_['winner_agrees']}.",
              "- Time to quality is not part of this grid: every run trains the same short "
              "budget for its step time.", ""]
    return "\n".join(lines)


def figure(res: AblationResult, path: Path) -> None:
    """Speedup over uncompressed against link rate, one line per compressor: measured points
    and lines, projected dashed, the crossovers marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, comp in enumerate(res.compressors):
        colour = colours[k % len(colours)]
        x = [r["calibrated_rate_bit_per_s"] for r in comp["rows"]]
        ax.plot(x, [r["speedup"] for r in comp["rows"]], "o-", color=colour,
                label=comp["compressor"]["label"])
        ax.plot(x, [r["projected_speedup"] for r in comp["rows"]], "--", color=colour,
                alpha=0.6)
        p = comp["projected_crossover_bit_per_s"]
        if p is not None and min(x) / 2 <= p <= max(x) * 2:
            ax.plot([p], [1.0], "x", color=colour, ms=9)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("inter-node link rate, calibrated (bit/s, scale model)")
    ax.set_ylabel("speedup over uncompressed")
    ax.set_title("measured (solid), projected (dashed); x = projected crossover", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(res: AblationResult, out_dir: str | os.PathLike) -> list[Path]:
    """compression_link_rate.{json,csv,md,png} in `out_dir`."""
    from recpar.perfmodel.ablation_files import write_ablation_files

    keys = ["link_factor", "rate_bit_per_s", "calibrated_rate_bit_per_s",
            "calibrated_latency_s", "none_iter_ms", "iter_ms", "speedup", "none_spread_pct",
            "spread_pct", "verdict",
            "projected_none_iter_ms", "projected_iter_ms", "projected_speedup", "error_pct",
            "wire_bytes_per_rank_per_iter", "compress_ms_per_iter"]
    rows = ["compressor," + ",".join(keys)]
    for comp in res.compressors:
        rows += [",".join([comp["compressor"]["label"]] + [str(r[k]) for k in keys])
                 for r in comp["rows"]]
    return write_ablation_files(out_dir, "compression_link_rate", asdict(res), rows,
                                markdown(res), lambda path: figure(res, path))


def run(cfg: CompressionAblation, scale: Mapping[str, Any], data: str,
        state_dir: str | os.PathLike, work_dir: str | os.PathLike, out_dir: str | os.PathLike,
        progress: Callable[[str], None] = print) -> AblationResult:
    """Measure, project and publish."""
    settings = measure(cfg, scale, data, state_dir, work_dir, progress)
    records = {p: json.loads(Path(p).read_text())
               for s in settings for paths in s["records"].values() for p in paths}
    _, _, _, budget = scale_link(scale)
    progress("measuring each compressor's local work (CPU seconds, one thread)")
    rates = compress_rates(cfg, records[settings[0]["records"]["none"][0]], budget)
    res = AblationResult(config=asdict(cfg), scale_model=_scale_summary(scale),
                         settings=settings,
                         compressors=analyse(cfg, scale, settings, records, rates),
                         compress_rates=rates)
    write_outputs(res, out_dir)
    return res


def _scale_summary(scale: Mapping[str, Any]) -> dict:
    sm = scale["scale_model"]
    return {"profile": sm["profile"], "dilation": sm["dilation"],
            "device_flops_per_s": sm["device_flops_per_s"],
            "cpu_budget_cores_per_device": scale["cpu_budget"]["cores_per_device"],
            "inter_node": dict(sm["inter_node"])}
