"""Everything `recpar report tables` produces for one sweep: Tables II-III and the
communication share (Markdown, CSV, LaTeX), the claims check and the audit of the paper's own
numbers (Markdown), and the figures (drawn into the output folder by recpar.report.figures).
"""

from __future__ import annotations

from pathlib import Path

from recpar.report import audit, claims, figures, paper
from recpar.report.projection import Projection, project
from recpar.report.records import RecordSet, group, load_records, skipped_note, sweep_notes
from recpar.report.render import to_latex, to_markdown
from recpar.report.tables import comm_share_table, table2, table3

TABLE_FILES = ("table2.md", "table2.csv", "table2.tex", "table3.md", "table3.csv", "table3.tex",
               "comm_share.md", "comm_share.csv", "claims.md", "audit.md")
"""The tables `recpar report tables` writes (and the figures of figures.FIGURE_FILES)."""

SPEEDUP_NOTE = ("speedup = job throughput / throughput of the same sweep's baseline record "
                "(paper §IV.B); seeds averaged, *_std = their sample standard deviation "
                "(— with one seed)")
TABLE2_COLUMNS_NOTE = ("model_tflops_per_s: model FLOPs (ModelConfig.model_flops: 6N + 12LdT "
                       "per token, PaLM's convention) per second over the timing window; "
                       "mfu_pct: that over the device's measured fp32 GEMM peak (runs with "
                       "train.measure_mfu; — without), not the paper's GPU utilisation, which "
                       "is the share of time a kernel runs; "
                       "util_pct: NVML GPU utilisation (gpu) or process CPU share of all "
                       "logical CPUs, rank 0 (cpu); comm hook = time in gradient-sync hooks, "
                       "exposed = not hidden by overlap (DP gradient sync); tp_comm = slowest "
                       "rank's time blocked in megatron's TP collectives; pp_idle = rank 0's "
                       "pipeline wait (P2P and bubble); model_state = params + grads + "
                       "optimizer state of the largest rank, MiB; peak_rss = largest rank's "
                       "process peak (on CPU dominated by the runtime); quality on the test "
                       "split")
TABLE2_PAPER_NOTE = ("paper_*: Table II for the same scheme (8 devices; rows at other scales "
                     "are not the paper's configuration)")
COMM_SHARE_BASIS_NOTE = ("basis: how the share was measured (see "
                         "recpar.report.metrics.comm_share)")


def table_texts(rs: RecordSet, pap: paper.Paper, proj: Projection,
                notes: list[str]) -> dict[str, str]:
    """Tables II-III and the communication share, each as .md/.csv (and .tex for II-III);
    BaselineError when a sweep has no baseline record."""
    t2, t3 = table2(rs, pap, proj), table3(rs, pap, proj)
    cs = comm_share_table(rs, pap, proj)
    pnote = f"projected_*: {proj.caption or proj.error}"
    return {
        "table2.md": to_markdown(t2, "Table II: schemes (measured, paper, projected)",
                                 [SPEEDUP_NOTE, TABLE2_COLUMNS_NOTE, TABLE2_PAPER_NOTE, pnote]
                                 + notes),
        "table2.csv": t2.to_csv(index=False),
        "table2.tex": to_latex(t2, "Table II reproduced (measured, paper, projected)"),
        "table3.md": to_markdown(t3, "Table III: speedup vs nodes",
                                 [SPEEDUP_NOTE, "`not run`: no record for that cell",
                                  "paper: 8 GPUs per node", pnote] + notes),
        "table3.csv": t3.to_csv(index=False),
        "table3.tex": to_latex(t3, "Table III reproduced: speedup vs nodes"),
        "comm_share.md": to_markdown(cs, "Communication share of an iteration (Fig. 4)",
                                     [COMM_SHARE_BASIS_NOTE, pnote] + notes),
        "comm_share.csv": cs.to_csv(index=False),
    }


def render(records: list[Path], paper_path: Path, out_dir: Path, skip_invalid: bool = False
           ) -> tuple[dict[str, str], list[figures.Skipped]]:
    """(text of each of TABLE_FILES, figures not drawn with why). Draws the figures into
    out_dir, but only once every table has been built (a missing baseline writes nothing).
    skip_invalid: leave out records that fail validation, listed in every table's notes."""
    pap = paper.load(paper_path)
    skipped: list[str] | None = [] if skip_invalid else None
    rs = group(load_records(records, skipped))
    proj = project(pap)
    notes = skipped_note(skipped or []) + sweep_notes(rs)
    texts = table_texts(rs, pap, proj, notes)
    texts["audit.md"] = audit.audit_markdown(audit.audit(pap), pap)
    _, not_drawn = figures.draw_all(rs, pap, proj, out_dir)
    texts["claims.md"] = claims.claims_markdown(claims.check_claims(rs, pap, proj), proj,
                                                not_drawn, notes)
    return texts, not_drawn
