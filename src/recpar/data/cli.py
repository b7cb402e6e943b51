"""`recpar data ...`: download, prepare, embed, table1."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from recpar.atomic_write import write_text
from recpar.data.errors import DataError, PreparedDataError
from recpar.published import expand_inputs, publish

_SHA = re.compile(r"([^=]+)=([0-9a-fA-F]{64})")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `data` command group to the top-level `recpar` parser."""
    from recpar.data.prepare import DEFAULT_K_CORE
    from recpar.data.sources import DEFAULT_MAX_BAD_FRACTION, SOURCES

    data = subparsers.add_parser("data", help="download, prepare and embed datasets")
    sub = data.add_subparsers(dest="data_command", metavar="COMMAND", required=True)
    names = ", ".join(sorted(SOURCES))

    p = sub.add_parser("download", help="fetch and verify a source's raw files")
    p.add_argument("--source", required=True, help=f"one of: {names}")
    p.add_argument("--raw-dir", required=True, type=Path, help="directory for the raw files")
    p.add_argument("--base-url", default=None, help="override the source's download base URL")
    p.add_argument("--sha256", action="append", default=[], metavar="NAME=HEX",
                   help="known sha256 of a raw file (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_download)

    p = sub.add_parser("prepare", help="dedup, k-core, remap, split; write a prepared dir")
    p.add_argument("--source", required=True, help=f"one of: {names}")
    p.add_argument("--out", required=True, type=Path, help="prepared dataset directory")
    p.add_argument("--raw-dir", type=Path, default=None, help="raw files (downloading sources)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="size vs Amazon Electronics 5-core (synthetic-amazon only)")
    p.add_argument("--seed", type=int, default=0, help="RNG seed (synthetic-amazon)")
    p.add_argument("--k-core", type=int, default=DEFAULT_K_CORE,
                   help=f"min interactions per user and item (default {DEFAULT_K_CORE})")
    p.add_argument("--max-bad-fraction", type=float, default=DEFAULT_MAX_BAD_FRACTION,
                   help=f"tolerated malformed-line share per file "
                        f"(default {DEFAULT_MAX_BAD_FRACTION:g})")
    p.add_argument("--base-url", default=None, help="override the download base URL")
    p.add_argument("--sha256", action="append", default=[], metavar="NAME=HEX",
                   help="known sha256 of a raw file (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress output")
    p.set_defaults(func=_prepare)

    p = sub.add_parser("embed", help="compute (or reuse) item text embeddings")
    p.add_argument("--data", required=True, type=Path, help="prepared dataset directory")
    p.add_argument("--encoder", default=None,
                   help="sentence encoder (default: packaged all-MiniLM-L6-v2)")
    p.add_argument("--batch-size", type=int, default=None, help="texts per forward pass")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_embed)

    p = sub.add_parser("table1", help="render Table I from stats.json files")
    p.add_argument("--stats", required=True, nargs="+", type=Path,
                   help="stats.json files, or a folder of published ones")
    p.add_argument("--out", required=True, type=Path, help="markdown file to write")
    p.add_argument("--publish-stats", type=Path, metavar="DIR",
                   help="copy the stats files into DIR (<source>/stats.json, with their order) "
                        "so the table can be re-rendered from them")
    p.set_defaults(func=_table1)


def _fail(e: Exception) -> SystemExit:
    return SystemExit(f"recpar: {e}")


def _parse_sha(values: list[str]) -> dict[str, str]:
    out = {}
    for v in values:
        m = _SHA.fullmatch(v.strip())
        if not m:
            raise DataError(f"--sha256 {v!r}: expected NAME=<64 hex digits>")
        out[m.group(1)] = m.group(2).lower()
    return out


def _download(args: argparse.Namespace) -> int:
    from recpar.data.sources import SourceOptions, get_source

    try:
        cls = get_source(args.source)
        src = cls(SourceOptions(raw_dir=args.raw_dir, base_url=args.base_url,
                                sha256=_parse_sha(args.sha256), progress=not args.no_progress))
        if not src.needs_download:
            print(src.describe())
            return 0
        for path in src.download():
            print(f"{path}  ok (sha256 recorded in {path.name}.sha256)")
    except DataError as e:
        raise _fail(e) from None
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from recpar.data.prepare import prepare

    try:
        prepare(args.source, args.out, raw_dir=args.raw_dir, scale=args.scale, seed=args.seed,
                k_core=args.k_core, max_bad_fraction=args.max_bad_fraction,
                base_url=args.base_url, sha256=_parse_sha(args.sha256),
                progress=not args.no_progress)
    except DataError as e:
        raise _fail(e) from None
    return 0


def _embed(args: argparse.Namespace) -> int:
    from recpar.data.text_embed import (
        DEFAULT_BATCH_SIZE,
        DEFAULT_ENCODER,
        ensure_item_text_embeddings,
    )

    try:
        res = ensure_item_text_embeddings(
            args.data, args.encoder or DEFAULT_ENCODER,
            batch_size=args.batch_size or DEFAULT_BATCH_SIZE, progress=not args.no_progress,
        )
    except (DataError, PreparedDataError) as e:
        raise _fail(e) from None
    state = "computed" if res.recomputed else "cached, unchanged"
    print(f"{res.path}: {res.encoder}, dim {res.dim} ({state})")
    return 0


def _table1(args: argparse.Namespace) -> int:
    from recpar.data.table1 import label_for, render

    stats_by_label: dict[str, dict] = {}
    paths = expand_inputs(args.stats)
    try:
        for path in paths:
            try:
                stats = json.loads(path.read_text())
            except OSError as e:
                raise DataError(f"{path}: cannot read ({e.strerror})") from None
            except ValueError as e:
                raise DataError(f"{path}: not valid JSON ({e})") from None
            if not isinstance(stats, dict) or "source" not in stats:
                raise DataError(f"{path}: not a stats.json (no 'source' key)")
            stats_by_label[label_for(stats, set(stats_by_label))] = stats
        text = render(stats_by_label)
    except DataError as e:
        raise _fail(e) from None
    out: Path = args.out
    write_text(out, text)
    if args.publish_stats:
        publish(paths, args.publish_stats, keep_parts=2)  # <source>/stats.json
    sys.stdout.write(text)
    return 0
