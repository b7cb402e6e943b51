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


def cmd_quality(args) -> int:
    from recpar.report.quality import quality_table

    text = quality_table(args.records, args.split)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0
