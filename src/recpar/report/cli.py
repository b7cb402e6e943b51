"""`recpar report ...`: tables built from run records."""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("report", help="tables and figures from run records")
    rs = p.add_subparsers(dest="report_cmd", required=True)
    q = rs.add_parser("quality", help="HR@10/NDCG@10 per run id (mean ± std over seeds)")
    q.add_argument("--records", nargs="+", required=True, type=Path)
    q.add_argument("--split", default="test", choices=["valid", "test"])
    q.add_argument("--out", required=True, type=Path)
    q.set_defaults(func=cmd_quality)
    d = rs.add_parser("quality-delta", help="HR@10/NDCG@10 of each run minus a reference "
                      "run's, on shared seeds, within a tolerance or by how much it misses")
    d.add_argument("--records", nargs="+", required=True, type=Path)
    d.add_argument("--reference", required=True, help="run id of the reference (sync DP)")
    d.add_argument("--floor", type=float, default=0.01,
                   help="smallest tolerance; the reference's seed-to-seed spread if larger")
    d.add_argument("--split", default="test", choices=["valid", "test"])
    d.add_argument("--out", required=True, type=Path)
    d.set_defaults(func=cmd_quality_delta)
    t = rs.add_parser("tables", help="Tables II-III, communication share, claims, audit and "
                      "figures vs the paper's values (paper_tables/paper.yaml)")
    t.add_argument("--records", nargs="+", required=True, type=Path,
                   help="run records (record.json), every sweep with its baseline record")
    t.add_argument("--paper", default=Path("paper_tables/paper.yaml"), type=Path,
                   help="the paper's values and tolerances")
    t.add_argument("--out-dir", required=True, type=Path)
    t.set_defaults(func=cmd_tables)


def cmd_quality(args) -> int:
    from recpar.report.quality import quality_table

    text = quality_table(args.records, args.split)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


def cmd_quality_delta(args) -> int:
    from recpar.atomic_write import write_text
    from recpar.report.quality_delta import (compare_to_reference, delta_table,
                                             seed_spread_tolerance)
    from recpar.report.tables import load_records

    recs = [r for _, r in load_records(args.records) if r["scheme"] != "most-popular"]
    tol = seed_spread_tolerance(recs, args.reference, floor=args.floor, split=args.split)
    deltas = compare_to_reference(recs, args.reference, tol, split=args.split)
    text = (f"# Quality vs {args.reference} ({args.split} split)\n\n"
            + delta_table(deltas, args.reference)
            + f"\nTolerance rule: max({args.floor}, the reference's seed-to-seed spread).\n")
    write_text(args.out, text)
    print(text)
    return 0


TABLE_FILES = ("table2.md", "table2.csv", "table2.tex", "table3.md", "table3.csv", "table3.tex",
               "comm_share.md", "comm_share.csv", "claims.md", "audit.md")
"""The tables `recpar report tables` writes (and the figures of figures.FIGURE_FILES)."""


def cmd_tables(args) -> int:
    from recpar.atomic_write import write_text
    from recpar.report import audit, claims, figures, paper, tables

    pap = paper.load(args.paper)
    rs = tables.group(tables.load_records(args.records))
    proj = tables.project(pap)
    t2, t3 = tables.table2(rs, pap, proj), tables.table3(rs, pap, proj)
    cs = tables.comm_share_table(rs, pap, proj)
    notes = tables.sweep_notes(rs)
    speedup = ("speedup = job throughput / throughput of the same sweep's baseline record "
               "(paper §IV.B); seeds averaged, *_std = their sample standard deviation "
               "(— with one seed)")
    pnote = f"projected_*: {proj.caption or proj.error}"
    texts = {
        "table2.md": tables.to_markdown(t2, "Table II: schemes (measured, paper, projected)",
                                        [speedup, "util_pct: NVML GPU utilisation (gpu) or "
                                         "process CPU share of all logical CPUs, rank 0 (cpu); "
                                         "comm hook = time in gradient-sync hooks, exposed = "
                                         "not hidden by overlap (DP gradient sync); "
                                         "tp_comm = slowest rank's time blocked in megatron's "
                                         "TP collectives; pp_idle = rank 0's pipeline wait "
                                         "(P2P and bubble); model_state = params + grads + "
                                         "optimizer state of the largest rank, MiB; peak_rss "
                                         "= largest rank's process peak (on CPU dominated by "
                                         "the runtime); quality on the test split",
                                         "paper_*: Table II for the same scheme (8 devices; "
                                         "rows at other scales are not the paper's "
                                         "configuration)", pnote] + notes),
        "table2.csv": t2.to_csv(index=False),
        "table2.tex": tables.to_latex(t2, "Table II reproduced (measured, paper, projected)"),
        "table3.md": tables.to_markdown(t3, "Table III: speedup vs nodes",
                                        [speedup, "`not run`: no record for that cell",
                                         "paper: 8 GPUs per node", pnote] + notes),
        "table3.csv": t3.to_csv(index=False),
        "table3.tex": tables.to_latex(t3, "Table III reproduced: speedup vs nodes"),
        "comm_share.md": tables.to_markdown(cs, "Communication share of an iteration (Fig. 4)",
                                            ["basis: how the share was measured (see "
                                             "recpar.report.tables.comm_share)", pnote] + notes),
        "comm_share.csv": cs.to_csv(index=False),
        "audit.md": audit.audit_markdown(audit.audit(pap), pap),
    }
    drawn, not_drawn = figures.draw_all(rs, pap, proj, args.out_dir)
    texts["claims.md"] = claims.claims_markdown(claims.check_claims(rs, pap, proj), proj,
                                                not_drawn, notes)
    for name in TABLE_FILES:
        write_text(args.out_dir / name, texts[name])
    print(f"wrote {', '.join(TABLE_FILES + figures.FIGURE_FILES)} to {args.out_dir}")
    for name, why in not_drawn:
        print(f"not drawn: {name}: {why}")
    return 0
