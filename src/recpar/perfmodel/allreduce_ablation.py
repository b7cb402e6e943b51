"""When does hierarchical All-Reduce beat the flat ring? Ring vs hierarchical across link
latency and message size, measured on the emulated cluster and set against the α–β model.

    recpar perfmodel allreduce-ablation --out paper_tables/ablations/allreduce   (root, vde2)

For each latency setting the cluster is built afresh (`recpar.cluster.emulated.up`: every rank
in its own device namespace, shaped intra-node links, shaped uplinks; VDE wirefilters carry
the latency), calibrated (`recpar.cluster.calibrate`), and both algorithms all-reduce every
message size (`python -m recpar.cluster.allreduce_probe` through `recpar.cluster.launch`, the
slowest rank's mean over the timed calls). Each time stands next to two projections on the
calibrated links: gloo's own algorithms (what ran; `collectives.LIBRARIES["gloo"]`) and the
textbook rings (`LIBRARIES["nccl"]`). The crossover is the message size from which the flat
ring is at least as fast as hierarchical: measured, it lies between two measured sizes;
projected, it is searched on a fine grid of sizes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from recpar.perfmodel.collectives import LIBRARIES, LinkCost, hierarchical_all_reduce

MODEL_NOTE = ("recpar.perfmodel.collectives, alpha-beta with the calibrated links: projected_* "
              "with gloo's own algorithms (what ran), textbook_* with the textbook rings; "
              "error_pct = 100 (projected - measured) / measured")


@dataclass(frozen=True)
class LatencySetting:
    """One-way latencies of one setting, seconds."""

    intra_latency_s: float
    """Device to device inside a node (each device's wirefilter)."""
    inter_latency_s: float
    """Node to node (each node's uplink)."""


@dataclass(frozen=True)
class AllreduceAblation:
    """What the ablation builds and measures."""

    nodes: int = 4
    """Emulated nodes."""
    ranks_per_node: int = 2
    """Devices (ranks) per node; hierarchical all-reduces inside each node first."""
    intra_rate_bit_per_s: float = 1e8
    """Rate of every device's intra-node link."""
    inter_rate_bit_per_s: float = 2e7
    """Rate of every node's uplink."""
    latencies: tuple[LatencySetting, ...] = (LatencySetting(0.005, 0.010),
                                             LatencySetting(0.020, 0.040))
    """The settings, each measured on a cluster of its own."""
    sizes_bytes: tuple[int, ...] = (65536, 262144, 2**20, 4 * 2**20)
    """Message sizes (fp32 bytes) every algorithm all-reduces at every setting."""
    iters: int = 3
    """Timed calls per size (their mean, the slowest rank's, is the time)."""
    warmup: int = 1
    """Untimed calls before them."""
    calibrate_seconds: float = 2.0
    """Bulk transfer time per link of the calibration."""
    pingpong_count: int = 200
    """Round trips per link of the calibration's latency measurement."""
    prefix: str = "rpa"
    """Namespace prefix of the ablation's clusters (not a user's `rp` cluster)."""

    def __post_init__(self) -> None:
        if self.nodes < 2 or self.ranks_per_node < 2:
            raise ValueError(f"allreduce ablation: hierarchical needs >= 2 nodes of >= 2 ranks, "
                             f"got nodes={self.nodes} ranks_per_node={self.ranks_per_node}")
        if not self.latencies or not self.sizes_bytes:
            raise ValueError("allreduce ablation: give at least one latency setting and size")
        if min(self.sizes_bytes) < 4 * self.ranks_per_node:
            raise ValueError(f"allreduce ablation: sizes must hold one float per local rank, "
                             f"got {min(self.sizes_bytes)} bytes")


def compare_size(flat: dict, hier: dict, nodes: int, local: int, intra: LinkCost,
                 inter: LinkCost) -> dict:
    """One message size: measured flat and hierarchical times next to both projections."""
    n = flat["bytes"]
    row: dict[str, Any] = {
        "bytes": n, "flat_time_ms": flat["time_ms"], "hierarchical_time_ms": hier["time_ms"],
        "flat_busbw_bit_per_s": flat["busbw_bytes_per_s"] * 8,
        "hierarchical_busbw_bit_per_s": hier["busbw_bytes_per_s"] * 8,
        "hierarchical_phase_ms": hier.get("phase_ms")}
    for label, lib in (("projected", LIBRARIES["gloo"]), ("textbook", LIBRARIES["nccl"])):
        flat_ms, hier_ms = (1e3 * t for t in _times(n, nodes, local, intra, inter, lib))
        row[f"{label}_flat_time_ms"] = flat_ms
        row[f"{label}_hierarchical_time_ms"] = hier_ms
        row[f"{label}_flat_error_pct"] = 100 * (flat_ms - flat["time_ms"]) / flat["time_ms"]
        row[f"{label}_hierarchical_error_pct"] = \
            100 * (hier_ms - hier["time_ms"]) / hier["time_ms"]
    row["measured_winner"] = "hierarchical" if hier["time_ms"] < flat["time_ms"] else "flat"
    row["projected_winner"] = ("hierarchical" if row["projected_hierarchical_time_ms"]
                               < row["projected_flat_time_ms"] else "flat")
    return row


def _times(n: float, nodes: int, local: int, intra: LinkCost, inter: LinkCost,
           lib) -> tuple[float, float]:
    """(flat, hierarchical) seconds: the flat ring over all ranks waits for an inter-node hop
    every round, one stream per NIC; hierarchical runs `local` inter-node rings at once, which
    share each NIC."""
    return (lib.all_reduce(n, nodes * local, inter),
            hierarchical_all_reduce(n, nodes, local, intra, inter.shared_by(local), lib))


def projected_crossover_bytes(nodes: int, local: int, intra: LinkCost, inter: LinkCost,
                              lo: float, hi: float, lib=LIBRARIES["gloo"],
                              points: int = 400) -> float | None:
    """Smallest size in [lo, hi] (log grid of `points`) from which the flat ring is projected
    at least as fast as hierarchical, when hierarchical wins at `lo`; None if it never does."""
    for k in range(points + 1):
        n = lo * (hi / lo) ** (k / points)
        flat, hier = _times(n, nodes, local, intra, inter, lib)
        if flat <= hier:
            return None if k == 0 else n
    return None


def measured_crossover(rows: Sequence[dict]) -> dict:
    """Where the measured winner turns from hierarchical to flat, between two measured sizes."""
    for prev, cur in zip(rows, rows[1:]):
        if prev["measured_winner"] == "hierarchical" and cur["measured_winner"] == "flat":
            return {"above_bytes": prev["bytes"], "at_most_bytes": cur["bytes"]}
    winners = {r["measured_winner"] for r in rows}
    return {"above_bytes": None, "at_most_bytes": None,
            "winner_throughout": winners.pop() if len(winners) == 1 else "mixed"}


def measure(cfg: AllreduceAblation, state_dir: str | os.PathLike, work_dir: str | os.PathLike,
            progress: Callable[[str], None] = print) -> list[dict]:
    """Build, calibrate and measure every latency setting; the cluster is always removed."""
    from recpar.cluster import emulated
    from recpar.cluster.calibrate import calibrate
    from recpar.cluster.emulated import ClusterState
    from recpar.cluster.shaping import LinkShape

    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    sizes = ",".join(str(s) for s in cfg.sizes_bytes)
    out = []
    emulated.down(cfg.prefix, state_dir)
    try:
        for i, lat in enumerate(cfg.latencies, 1):
            progress(f"[{i}/{len(cfg.latencies)}] up: {cfg.nodes} x {cfg.ranks_per_node}, "
                     f"latency {lat.intra_latency_s * 1e3:g} / {lat.inter_latency_s * 1e3:g} ms")
            emulated.down(cfg.prefix, state_dir)
            emulated.up(cfg.nodes, cfg.ranks_per_node,
                        LinkShape(cfg.inter_rate_bit_per_s, latency_s=lat.inter_latency_s),
                        cfg.prefix, state_dir,
                        intra_shape=LinkShape(cfg.intra_rate_bit_per_s,
                                              latency_s=lat.intra_latency_s))
            st = ClusterState.load(cfg.prefix, state_dir)
            # one stream per link: the α–β projections here price with it
            cal = calibrate(st, seconds=cfg.calibrate_seconds, count=cfg.pingpong_count,
                            concurrent_repeats=0,
                            state_dir=state_dir)
            st = ClusterState.load(cfg.prefix, state_dir)
            measured = {}
            for algo in ("flat", "hierarchical"):
                progress(f"[{i}/{len(cfg.latencies)}] {algo}: sizes {sizes}")
                measured[algo] = _probe(st, cfg, algo, sizes, state_dir,
                                        work / f"setting{i}-{algo}")
            intra = LinkCost(cal["intra_node"]["latency_s"],
                             8 / cal["intra_node"]["rate_bit_per_s"])
            inter = LinkCost(cal["latency_s"], 8 / cal["rate_bit_per_s"])
            rows = [compare_size(f, h, cfg.nodes, cfg.ranks_per_node, intra, inter)
                    for f, h in zip(measured["flat"]["sizes"], measured["hierarchical"]["sizes"])]
            lo, hi = min(cfg.sizes_bytes) / 4, max(cfg.sizes_bytes) * 4
            out.append({
                **asdict(lat),
                "calibrated_intra_latency_s": cal["intra_node"]["latency_s"],
                "calibrated_intra_rate_bit_per_s": cal["intra_node"]["rate_bit_per_s"],
                "calibrated_inter_latency_s": cal["latency_s"],
                "calibrated_inter_rate_bit_per_s": cal["rate_bit_per_s"],
                "sizes": rows,
                "measured_crossover": measured_crossover(rows),
                "projected_crossover_bytes": projected_crossover_bytes(
                    cfg.nodes, cfg.ranks_per_node, intra, inter, lo, hi),
                "textbook_crossover_bytes": projected_crossover_bytes(
                    cfg.nodes, cfg.ranks_per_node, intra, inter, lo, hi, LIBRARIES["nccl"]),
                "crossover_search_bytes": [lo, hi]})
    finally:
        emulated.down(cfg.prefix, state_dir)
    return out


def _probe(st, cfg: AllreduceAblation, algo: str, sizes: str, state_dir, work: Path) -> dict:
    from recpar.cluster.launch import launch

    out = work.with_suffix(".json")
    rc = launch(st.topology(), ["-m", "recpar.cluster.allreduce_probe", "--sizes", sizes,
                                "--algo", algo, "--iters", str(cfg.iters),
                                "--warmup", str(cfg.warmup), "--out", str(out)],
                prefix=cfg.prefix, state_dir=state_dir, timeout_s=900, log_dir=work)
    if rc != 0:
        raise RuntimeError(f"allreduce ablation: the {algo} probe exited with {rc} "
                           f"(logs: {work})")
    res = json.loads(out.read_text())
    if not all(r["correct"] for r in res["sizes"]):
        raise RuntimeError(f"allreduce ablation: the {algo} probe summed wrongly: {out}")
    return res


@dataclass
class AblationResult:
    """What `write_outputs` publishes."""

    config: dict
    settings: list[dict]
    model: str = MODEL_NOTE
    summary: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        errs = {label: [abs(r[f"{label}_{a}_error_pct"]) for s in self.settings
                        for r in s["sizes"] for a in ("flat", "hierarchical")]
                for label in ("projected", "textbook")}
        self.summary = {f"{label}_within_15_pct": sum(e <= 15 for e in v)
                        for label, v in errs.items()}
        self.summary["judged"] = len(errs["projected"])
        self.summary["projected_max_abs_error_pct"] = max(errs["projected"], default=None)
        self.summary["textbook_max_abs_error_pct"] = max(errs["textbook"], default=None)


def _size(n: float | None) -> str:
    if n is None:
        return "—"
    return f"{n / 2**20:.3g} MiB" if n >= 2**20 else f"{n / 2**10:.3g} KiB"


def _crossover_text(s: dict) -> str:
    m = s["measured_crossover"]
    if m.get("at_most_bytes") is not None:
        return (f"the flat ring catches up between {_size(m['above_bytes'])} and "
                f"{_size(m['at_most_bytes'])}")
    return f"no crossover measured ({m.get('winner_throughout')} faster at every size)"


def markdown(res: AblationResult) -> str:
    c = res.config
    lines = [
        "# Ring vs hierarchical All-Reduce across latency and message size",
        "",
        "**Question.** When does hierarchical All-Reduce (paper §III.B) beat the flat ring, "
        "and does the α–β model say so before it is measured?",
        "",
        f"{c['nodes']} nodes × {c['ranks_per_node']} devices, every device in its own "
        f"namespace; intra-node links {c['intra_rate_bit_per_s'] / 1e6:g} Mbit/s, uplinks "
        f"{c['inter_rate_bit_per_s'] / 1e6:g} Mbit/s; gloo; {c['iters']} timed calls after "
        f"{c['warmup']} warm-up, the slowest rank's mean. Projections (labelled) use the "
        "calibrated links: *gloo* = gloo's own algorithms (what ran), *textbook* = the "
        "textbook rings. Error = 100 × (projected − measured) / measured; band ±15 %.",
        "",
        "| latency intra / inter, calibrated (ms) | size | flat ring (ms) | gloo model | "
        "textbook | hierarchical (ms) | gloo model | textbook | faster |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in res.settings:
        lat = (f"{s['calibrated_intra_latency_s'] * 1e3:.1f} / "
               f"{s['calibrated_inter_latency_s'] * 1e3:.1f}")
        for k, r in enumerate(s["sizes"]):
            lines.append(
                f"| {lat if k == 0 else ''} | {_size(r['bytes'])} | {r['flat_time_ms']:,.0f} | "
                f"{r['projected_flat_time_ms']:,.0f} ({r['projected_flat_error_pct']:+.0f} %) | "
                f"{r['textbook_flat_time_ms']:,.0f} ({r['textbook_flat_error_pct']:+.0f} %) | "
                f"{r['hierarchical_time_ms']:,.0f} | {r['projected_hierarchical_time_ms']:,.0f} "
                f"({r['projected_hierarchical_error_pct']:+.0f} %) | "
                f"{r['textbook_hierarchical_time_ms']:,.0f} "
                f"({r['textbook_hierarchical_error_pct']:+.0f} %) | {r['measured_winner']} |")
    sm = res.summary
    lines += ["", "**Answer (measured).**", ""]
    for s in res.settings:
        lines.append(
            f"- Latency {s['calibrated_intra_latency_s'] * 1e3:.1f} / "
            f"{s['calibrated_inter_latency_s'] * 1e3:.1f} ms: {_crossover_text(s)}; "
            f"the flat ring projected as fast (gloo) from "
            f"{_size(s['projected_crossover_bytes'])}, textbook from "
            f"{_size(s['textbook_crossover_bytes'])} (searched over "
            f"{_size(s['crossover_search_bytes'][0])}–{_size(s['crossover_search_bytes'][1])}; "
            "— = hierarchical projected faster throughout).")
    lines += [f"- The gloo model is within ±15 % for {sm['projected_within_15_pct']} of "
              f"{sm['judged']} times (largest error {sm['projected_max_abs_error_pct']:.0f} %), "
              f"the textbook one for {sm['textbook_within_15_pct']} (largest "
              f"{sm['textbook_max_abs_error_pct']:.0f} %).", ""]
    return "\n".join(lines)


def figure(res: AblationResult, path: Path) -> None:
    """Time against message size, one panel per latency setting: measured points, projected
    lines (gloo model), the measured and projected crossovers marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(res.settings), figsize=(5 * len(res.settings), 4),
                             squeeze=False)
    for ax, s in zip(axes[0], res.settings):
        n = [r["bytes"] for r in s["sizes"]]
        for algo, colour in (("flat", "tab:blue"), ("hierarchical", "tab:orange")):
            ax.plot(n, [r[f"{algo}_time_ms"] for r in s["sizes"]], "o", color=colour,
                    label=f"{algo}, measured")
            ax.plot(n, [r[f"projected_{algo}_time_ms"] for r in s["sizes"]], "-", color=colour,
                    alpha=0.6, label=f"{algo}, projected (gloo)")
        m = s["measured_crossover"]
        if m.get("at_most_bytes") is not None:
            ax.axvspan(m["above_bytes"], m["at_most_bytes"], color="grey", alpha=0.15,
                       label="crossover, measured")
        if s["projected_crossover_bytes"] is not None:
            ax.axvline(s["projected_crossover_bytes"], color="grey", ls="--",
                       label="crossover, projected")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("message size (bytes)")
        ax.set_ylabel("all-reduce time (ms)")
        ax.set_title(f"latency {s['calibrated_intra_latency_s'] * 1e3:.0f} / "
                     f"{s['calibrated_inter_latency_s'] * 1e3:.0f} ms (intra / inter)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(res: AblationResult, out_dir: str | os.PathLike) -> list[Path]:
    """allreduce_latency.{json,csv,md,png} in `out_dir`."""
    from recpar.perfmodel.ablation_files import write_ablation_files

    keys = ["bytes", "flat_time_ms", "projected_flat_time_ms", "textbook_flat_time_ms",
            "hierarchical_time_ms", "projected_hierarchical_time_ms",
            "textbook_hierarchical_time_ms", "measured_winner", "projected_winner"]
    rows = ["intra_latency_s,inter_latency_s,calibrated_intra_latency_s,"
            "calibrated_inter_latency_s," + ",".join(keys)]
    for s in res.settings:
        head = [s["intra_latency_s"], s["inter_latency_s"], s["calibrated_intra_latency_s"],
                s["calibrated_inter_latency_s"]]
        rows += [",".join(str(v) for v in head + [r[k] for k in keys]) for r in s["sizes"]]
    return write_ablation_files(out_dir, "allreduce_latency", asdict(res), rows, markdown(res),
                                lambda path: figure(res, path))
