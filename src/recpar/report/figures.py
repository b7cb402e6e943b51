"""Figures from run records (matplotlib, Agg backend): communication share (cf. the paper's
Fig. 4), speedup vs nodes (Table III) and utilisation/memory (cf. Fig. 5).

A figure is drawn only from measured rows; the paper's values and perfmodel projections are
overlaid in their own, labelled style. A figure with no measured data is not drawn: the
function returns why, the caller writes it into claims.md, and `draw_all` writes a card in the
figure's place that says so (every figure file exists, so the workflow can declare them for
`snakemake --report`).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from recpar.report.paper import Paper  # noqa: E402
from recpar.report.projection import Projection  # noqa: E402
from recpar.report.records import PAPER_SCHEMES, RecordSet  # noqa: E402

Skipped = tuple[str, str]
"""(figure file name, why it was not drawn)."""


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def comm_share_figure(rs: RecordSet, paper: Paper, proj: Projection, out: Path
                      ) -> Path | Skipped:
    """Stacked bars compute | communication (% of an iteration), one bar per measured parallel
    row, then the paper's Fig. 4 values and the projection, each labelled."""
    name = "comm_share.png"
    bars = []  # (label, comm %, kind)
    for r in rs.rows:
        share = r.mean("comm_share_pct")
        if r.key.world_size > 1 and share is not None:
            bars.append((f"{r.key.scheme}\n{r.key.plan_label}\n{r.key.topology_label}", share,
                         "measured"))
    if not bars:
        return name, "no parallel record with a communication share (comm_share_pct, " \
                     "exposed_comm_ms_per_iter or comm_ms_per_iter with iter_ms)"
    for s in PAPER_SCHEMES:
        q = paper.q(f"fig4.comm_share_pct.{s}")
        if q:
            bars.append((f"{s}\npaper Fig. 4", q.value, "paper"))
        p = proj.table2.get(s, {}).get("comm_share_pct")
        if p is not None:
            bars.append((f"{s}\nprojected\n{paper.profile}", p, "projected"))
    style = {"measured": dict(alpha=1.0, hatch=None), "paper": dict(alpha=0.45, hatch="//"),
             "projected": dict(alpha=0.45, hatch="..")}
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(bars)), 4.5))
    x = range(len(bars))
    for i, (label, comm, kind) in enumerate(bars):
        st = style[kind]
        ax.bar(i, 100 - comm, color="tab:blue", alpha=st["alpha"], hatch=st["hatch"],
               label="compute" if i == 0 else None)
        ax.bar(i, comm, bottom=100 - comm, color="tab:orange", alpha=st["alpha"],
               hatch=st["hatch"], label="communication" if i == 0 else None)
        ax.text(i, 101, f"{comm:.0f} %", ha="center", fontsize=7)
    ax.set_xticks(list(x), [b[0].replace("\n", " ", 1) for b in bars], fontsize=7,
                  rotation=35, ha="right")
    ax.set_ylabel("% of iteration time")
    ax.set_ylim(0, 110)
    ax.set_title("Compute vs communication per iteration\n"
                 "(solid: measured; // paper Fig. 4; .. projected)", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, out / name)


def speedup_figure(rs: RecordSet, paper: Paper, proj: Projection, out: Path) -> Path | Skipped:
    """Speedup vs nodes, one measured line per (scheme, devices per node); paper dashed,
    projected dotted."""
    name = "speedup_vs_nodes.png"
    series: dict[tuple[str, int], list[tuple[int, float]]] = {}
    for r in rs.rows:
        sp = rs.speedup(r)
        if r.key.scheme == "baseline" or sp is None:
            continue
        series.setdefault((r.key.scheme, r.key.ranks_per_node), []).append((r.key.nodes, sp))
    if not series:
        return name, "no parallel record with a throughput and a same-sweep baseline"
    colors = {"dp": "tab:blue", "mp": "tab:red", "hybrid": "tab:green", "zero": "tab:purple",
              "deepspeed": "tab:brown"}
    markers = "osD^vP*"
    rpns = sorted({rpn for _, rpn in series})
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for (scheme, rpn), pts in sorted(series.items()):
        pts = sorted(pts)
        ax.plot([p[0] for p in pts], [p[1] for p in pts],
                marker=markers[rpns.index(rpn) % len(markers)], color=colors.get(scheme, "black"),
                label=f"{scheme} measured ({rpn} ranks/node)")
    for s in PAPER_SCHEMES:
        pp = [(n, paper.table3(n, s)["speedup"].value) for n in paper.table3_nodes()
              if paper.table3(n, s)]
        if pp:
            ax.plot(*zip(*pp), linestyle="--", marker="x", color=colors[s], alpha=0.6,
                    label=f"{s} paper Table III")
        pj = sorted((n, r["speedup"]) for (n, sc), r in proj.table3.items() if sc == s)
        if pj:
            ax.plot(*zip(*pj), linestyle=":", color=colors[s], alpha=0.6,
                    label=f"{s} projected ({paper.profile})")
    ax.set_xlabel("nodes")
    ax.set_ylabel("speedup vs 1-device baseline")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}×"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks(sorted({n for pts in series.values() for n, _ in pts}
                         | set(paper.table3_nodes())))
    ax.legend(fontsize=7)
    ax.set_title("Speedup vs nodes (measured, paper, projected)", fontsize=9)
    return _save(fig, out / name)


def utilisation_figure(rs: RecordSet, paper: Paper, out: Path) -> Path | Skipped:
    """GPU utilisation and device memory per scheme at the paper's Fig. 5 node count."""
    name = "utilisation_memory.png"
    n = paper.data["fig5"]["nodes"]
    rows = [r for r in rs.rows if r.key.nodes == n and r.key.scheme in PAPER_SCHEMES
            and (r.basis("util") == "gpu" or r.mean("device_mem_pct") is not None)]
    if not rows:
        return name, (f"no dp/mp/hybrid record on {n} nodes with NVML GPU utilisation or device "
                      "memory (CPU runs have neither)")
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    labels = [f"{r.key.scheme}\n{r.key.plan_label}" for r in rows]
    # A value not measured (CPU utilisation is no GPU utilisation) is no bar, marked so, never
    # a zero-height bar that would read as measured.
    util = [r.mean("util_pct") if r.basis("util") == "gpu" else None for r in rows]
    mem = [r.mean("device_mem_pct") for r in rows]
    xs = range(len(rows))
    for offset, values, label in ((-0.2, util, "GPU utilisation %"),
                                  (0.2, mem, "device memory %")):
        ax.bar([x + offset for x in xs], [math.nan if v is None else v for v in values],
               width=0.4, label=label)
        for x, v in zip(xs, values):
            if v is None:
                ax.text(x + offset, 2, "not measured", rotation=90, ha="center", va="bottom",
                        fontsize=6)
    ax.set_xticks(list(xs), labels, fontsize=7)
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.set_title(f"Utilisation and memory on {n} nodes (measured)", fontsize=9)
    return _save(fig, out / name)


FIGURE_FILES = ("comm_share.png", "speedup_vs_nodes.png", "utilisation_memory.png")
"""Every file `draw_all` writes (a figure, or a card saying why it was not drawn)."""


def not_drawn_card(name: str, why: str, out: Path) -> Path:
    """A figure-sized card in place of figure `name`: 'not drawn' and the reason, no data."""
    import textwrap

    fig, ax = plt.subplots(figsize=(6.5, 2.0))
    ax.axis("off")
    ax.text(0.5, 0.5, f"{name}: not drawn\n" + textwrap.fill(why, 80), ha="center",
            va="center", fontsize=9, wrap=True)
    return _save(fig, out / name)


def draw_all(rs: RecordSet, paper: Paper, proj: Projection, out: Path
             ) -> tuple[list[Path], list[Skipped]]:
    """Draw every figure; for one without data, write its not-drawn card and return why."""
    drawn, skipped = [], []
    for res in (comm_share_figure(rs, paper, proj, out), speedup_figure(rs, paper, proj, out),
                utilisation_figure(rs, paper, out)):
        if isinstance(res, Path):
            drawn.append(res)
        else:
            skipped.append(res)
            not_drawn_card(*res, out)
    return drawn, skipped
