"""`recpar report ...`: tables built from run records."""

from __future__ import annotations

from pathlib import Path

from recpar.published import expand_inputs, publish

RECORDS_HELP = "run records (record.json), or folders of published records"
PUBLISH_HELP = ("copy the records the output was rendered from into DIR (with their order), "
                "so the published output can be re-rendered from them")
SKIP_HELP = ("leave out records that fail validation (corrupt, partial, older schema) instead "
             "of stopping; the output lists every one left out, with why")
RECORD_PARTS = 3
"""A record is published under <run>/seed<k>/record.json (the last 3 parts of its path)."""


def register(sub) -> None:
    p = sub.add_parser("report", help="tables and figures from run records")
    rs = p.add_subparsers(dest="report_cmd", required=True)
    q = rs.add_parser("quality", help="HR@10/NDCG@10 per run id (mean ± std over seeds)")
    q.add_argument("--records", nargs="+", required=True, type=Path, help=RECORDS_HELP)
    q.add_argument("--split", default="test", choices=["valid", "test"])
    q.add_argument("--out", required=True, type=Path)
    q.add_argument("--publish-records", type=Path, metavar="DIR", help=PUBLISH_HELP)
    q.set_defaults(func=cmd_quality)
    d = rs.add_parser("quality-delta", help="HR@10/NDCG@10 of each run minus a reference "
                      "run's, on shared seeds, within a tolerance or by how much it misses")
    d.add_argument("--records", nargs="+", required=True, type=Path, help=RECORDS_HELP)
    d.add_argument("--reference", required=True, help="run id of the reference (sync DP)")
    d.add_argument("--floor", type=float, default=0.01,
                   help="smallest tolerance; the reference's seed-to-seed spread if larger")
    d.add_argument("--split", default="test", choices=["valid", "test"])
    d.add_argument("--out", required=True, type=Path)
    d.add_argument("--skip-invalid", action="store_true", help=SKIP_HELP)
    d.set_defaults(func=cmd_quality_delta)
    a = rs.add_parser("quality-ablation", help="the quality ablation (config/quality_ablation."
                      "yaml): every run against sync DP over seeds, error feedback and damping on "
                      "vs off, steps to quality and, with --compression, time to quality across "
                      "link rates")
    a.add_argument("--records", nargs="+", required=True, type=Path, help=RECORDS_HELP)
    a.add_argument("--reference", required=True, help="run id of the reference (sync DP)")
    a.add_argument("--compression", type=Path, metavar="JSON",
                   help="compression_link_rate.json of `recpar perfmodel compression-ablation` "
                        "(its measured iteration times give time to quality per link rate)")
    a.add_argument("--out", required=True, type=Path, help="directory for quality_ablation."
                   "{json,csv,md,png}")
    a.add_argument("--skip-invalid", action="store_true", help=SKIP_HELP)
    a.add_argument("--publish-records", type=Path, metavar="DIR",
                   help="copy the records read into DIR (recpar.published), beside the table")
    a.set_defaults(func=cmd_quality_ablation)
    rr = rs.add_parser("restore-records", help="copy a publication's run records back to where "
                       "a sweep writes them, so that Snakemake (--rerun-triggers mtime) resumes "
                       "the sweep from them instead of training those runs again")
    rr.add_argument("--records", required=True, type=Path,
                    help="a published records folder (with index.json)")
    rr.add_argument("--to", required=True, type=Path,
                    help="the sweep's results folder, e.g. results/movielens-100k/quality-ablation")
    rr.set_defaults(func=cmd_restore_records)
    ac = rs.add_parser("ablation-claims", help="the paper's statements on compression "
                       "(Formulas 10-11), staleness damping (Formula 12) and hierarchical "
                       "All-Reduce, judged from the ablations' published results")
    ac.add_argument("--ablations", type=Path, default=Path("paper_tables/ablations"),
                    help="directory with compression/, quality/ and allreduce/ results")
    ac.add_argument("--out", type=Path, help="markdown file (default: <ablations>/claims.md)")
    ac.set_defaults(func=cmd_ablation_claims)
    mo = rs.add_parser("moe", help="dense vs Mixture-of-Experts runs: quality, throughput, "
                       "active parameters and FLOPs per token, the experts' load with and "
                       "without the load-balancing loss (figure), all-to-all bytes, and the "
                       "paper's MoE statements judged")
    mo.add_argument("--records", nargs="+", required=True, type=Path, help=RECORDS_HELP)
    mo.add_argument("--out", required=True, type=Path,
                    help="directory for moe.md, moe.csv and expert_load.png")
    mo.add_argument("--publish-records", type=Path, metavar="DIR", help=PUBLISH_HELP)
    mo.set_defaults(func=cmd_moe)
    c = rs.add_parser("chaos", help="faults injected into each run (config/chaos.yaml), what "
                      "the runs survived, restarts, lost steps and time, slow windows")
    c.add_argument("--records", nargs="+", required=True, type=Path, help=RECORDS_HELP)
    c.add_argument("--expect", nargs="*", default=[], metavar="RUN_ID",
                   help="run ids the grid asked for (those without a record are listed as lost)")
    c.add_argument("--out", required=True, type=Path)
    c.add_argument("--skip-invalid", action="store_true", help=SKIP_HELP)
    c.set_defaults(func=cmd_chaos)
    t = rs.add_parser("tables", help="Tables II-III, communication share, claims, audit and "
                      "figures vs the paper's values (paper_tables/paper.yaml)")
    t.add_argument("--records", nargs="+", required=True, type=Path,
                   help="run records (record.json), every sweep with its baseline record, "
                        "or a folder of published records (paper_tables/<sweep>/records)")
    t.add_argument("--paper", default=Path("paper_tables/paper.yaml"), type=Path,
                   help="the paper's values and tolerances")
    t.add_argument("--out-dir", required=True, type=Path)
    t.add_argument("--publish-records", type=Path, metavar="DIR", help=PUBLISH_HELP)
    t.add_argument("--skip-invalid", action="store_true", help=SKIP_HELP)
    t.set_defaults(func=cmd_tables)


def cmd_quality(args) -> int:
    from recpar.report.quality import quality_table

    records = expand_inputs(args.records)
    text = quality_table(records, args.split)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    if args.publish_records:
        publish(records, args.publish_records, RECORD_PARTS)
    print(text)
    return 0


def cmd_quality_delta(args) -> int:
    from recpar.atomic_write import write_text
    from recpar.report.quality_delta import reference_report
    from recpar.report.records import load_records, skipped_note

    skipped: list[str] | None = [] if args.skip_invalid else None
    records = [r for _, r in load_records(expand_inputs(args.records), skipped)]
    text = reference_report(records, args.reference, floor=args.floor, split=args.split)
    text += "".join(f"\nNote: {n}\n" for n in skipped_note(skipped or []))
    write_text(args.out, text)
    print(text)
    return 0


def cmd_quality_ablation(args) -> int:
    import json

    from recpar.report.quality_ablation import analyse, write_outputs
    from recpar.report.records import load_records, skipped_note

    skipped: list[str] | None = [] if args.skip_invalid else None
    loaded = load_records(expand_inputs(args.records), skipped)
    records = [r for _, r in loaded]
    compression = None
    if args.compression is not None:
        try:
            compression = json.loads(args.compression.read_text())
        except (OSError, ValueError) as e:
            raise SystemExit(f"--compression {args.compression}: cannot read it ({e})")
    res = analyse(records, args.reference, compression)
    res["skipped"] = skipped_note(skipped or [])
    for path in write_outputs(res, args.out):
        print(f"wrote {path}")
    if args.publish_records:  # only what the table was rendered from
        publish([p for p, _ in loaded], args.publish_records, RECORD_PARTS)
    return 0


def cmd_restore_records(args) -> int:
    from recpar.published import restore

    restored, kept = restore(args.records, args.to)
    print(f"restored {len(restored)} record(s) into {args.to}; {len(kept)} already there, kept")
    return 0


def cmd_ablation_claims(args) -> int:
    from recpar.atomic_write import write_text
    from recpar.report.ablation_claims import check_ablation_claims, load_sources, markdown

    text = markdown(check_ablation_claims(load_sources(args.ablations)))
    out = args.out or args.ablations / "claims.md"
    write_text(out, text)
    print(text)
    return 0


def cmd_moe(args) -> int:
    from recpar.report.moe import moe_report
    from recpar.report.records import load_records

    loaded = load_records(expand_inputs(args.records))
    print(moe_report([r for _, r in loaded], args.out))
    if args.publish_records:
        publish([p for p, _ in loaded], args.publish_records, RECORD_PARTS)
    return 0


def cmd_chaos(args) -> int:
    from recpar.atomic_write import write_text
    from recpar.report.chaos import chaos_report
    from recpar.report.records import load_records, skipped_note

    skipped: list[str] | None = [] if args.skip_invalid else None
    records = [r for _, r in load_records(expand_inputs(args.records), skipped)]
    text = chaos_report(records, args.expect)
    text += "".join(f"\nNote: {n}\n" for n in skipped_note(skipped or []))
    write_text(args.out, text)
    print(text)
    return 0


def cmd_tables(args) -> int:
    from recpar.atomic_write import write_text
    from recpar.report.figures import FIGURE_FILES
    from recpar.report.paper_tables import TABLE_FILES, render
    from recpar.train.record import RecordError, read

    records = expand_inputs(args.records)
    texts, not_drawn = render(records, args.paper, args.out_dir, skip_invalid=args.skip_invalid)
    for name in TABLE_FILES:
        write_text(args.out_dir / name, texts[name])
    if args.publish_records:
        valid = []
        for r in records:  # only what the tables were rendered from
            try:
                read(r)
                valid.append(r)
            except RecordError:
                pass
        publish(valid, args.publish_records, RECORD_PARTS)
    print(f"wrote {', '.join(TABLE_FILES + FIGURE_FILES)} to {args.out_dir}")
    for name, why in not_drawn:
        print(f"not drawn: {name}: {why}")
    return 0
