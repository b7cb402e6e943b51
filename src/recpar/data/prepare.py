"""`prepare`: source -> dedup -> k-core -> id remap -> chronological split -> files.

The files and their columns are those of `recpar.data.prepared` (the contract). They are
written into a temporary directory beside `out_dir` and renamed into place only when all are
complete, so a failure at any step leaves `out_dir` as it was (absent, or the previous
prepared dataset).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recpar.constants import PAD_ITEM
from recpar.data.errors import DataError
from recpar.data.filtering import first_occurrences, kcore
from recpar.data.id_map import dense_ids
from recpar.data.prepared import REQUIRED_FILES, SPLITS
from recpar.data.sources import DEFAULT_MAX_BAD_FRACTION, Source, SourceOptions, get_source
from recpar.data.split import chronological_order, split_sizes
from recpar.data.stats import DatasetStats, format_stats

DEFAULT_K_CORE = 5  # the Amazon "5-core" convention


@dataclass
class PreparedFrames:
    """The prepared dataset in memory, before it is written."""

    interactions: pd.DataFrame  # user, item, ts (int64), in global chronological order
    items: pd.DataFrame  # item (1..n_items), raw_id, title, text
    users: pd.DataFrame  # user (0..n_users-1), raw_id
    splits: dict[str, pd.DataFrame]  # "train"/"valid"/"test" -> user, item, ts, order
    stats: DatasetStats  # Table I statistics


def _text_or_empty(value: object) -> str:
    """Metadata cell -> str ('' for None/NaN)."""
    return value if isinstance(value, str) else ""


@contextmanager
def _step(what: str, progress: bool) -> Iterator[None]:
    """Announce a pipeline step on stderr and report its wall time."""
    t0 = time.perf_counter()
    if progress:
        print(f"[prepare] {what} ...", file=sys.stderr, flush=True)
    yield
    if progress:
        print(f"[prepare] {what}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)


def build(source: Source, k_core: int = DEFAULT_K_CORE) -> PreparedFrames:
    """Run the whole pipeline in memory for an already configured source."""
    progress = source.options.progress
    with _step(f"reading {source.name} interactions", progress):
        raw = source.interactions()
    if len(raw) == 0:
        raise DataError(f"{source.name}: the source has no interactions")

    with _step("dropping duplicate user-item pairs", progress):
        kept = first_occurrences(raw.user_codes, raw.item_codes, raw.ts)
    u, i, ts = raw.user_codes[kept], raw.item_codes[kept], raw.ts[kept]

    with _step(f"{k_core}-core filter", progress):
        core = kcore(u, i, k_core)
    u, i, ts = u[core.keep], i[core.keep], ts[core.keep]
    if len(ts) == 0:
        raise DataError(f"{source.name}: nothing survives the {k_core}-core filter")

    with _step("remapping ids and sorting chronologically", progress):
        user, user_raw = dense_ids(u, raw.user_ids, start=0)
        item, item_raw = dense_ids(i, raw.item_ids, start=PAD_ITEM + 1)
        order = chronological_order(ts, user, item)
        user, item, ts = user[order], item[order], ts[order]

    with _step(f"reading {source.name} item metadata", progress):
        meta = source.item_metadata(item_raw.tolist())
    # raw id -> (title, text), first row wins; plain dict lookups (pandas' isin/reindex on
    # arrow strings is slow for 10^5 ids)
    by_raw: dict[str, tuple[str, str]] = {}
    for r, t, x in zip(meta["raw_id"].tolist(), meta["title"].tolist(), meta["text"].tolist()):
        by_raw.setdefault(str(r), (_text_or_empty(t), _text_or_empty(x)))
    raw_list = [str(r) for r in item_raw.tolist()]
    found = [by_raw.get(r) for r in raw_list]
    items = pd.DataFrame({
        "item": np.arange(PAD_ITEM + 1, PAD_ITEM + 1 + len(item_raw), dtype=np.int64),
        "raw_id": pd.array(raw_list, dtype="str"),
        "title": pd.array([f[0] if f else "" for f in found], dtype="str"),
        "text": pd.array([f[1] if f else "" for f in found], dtype="str"),
    })
    users = pd.DataFrame({
        "user": np.arange(len(user_raw), dtype=np.int64),
        "raw_id": pd.array(user_raw.tolist(), dtype="str"),
    })

    n = len(ts)
    n_train, n_valid, n_test = split_sizes(n)
    interactions = pd.DataFrame({"user": user, "item": item, "ts": ts})
    bounds = {"train": (0, n_train), "valid": (n_train, n_train + n_valid),
              "test": (n_train + n_valid, n)}
    splits = {}
    for name in SPLITS:
        lo, hi = bounds[name]
        part = interactions.iloc[lo:hi].reset_index(drop=True)
        part["order"] = np.arange(lo, hi, dtype=np.int64)
        splits[name] = part

    n_users, n_items = len(user_raw), len(item_raw)
    stats = DatasetStats(
        source=source.name,
        scale=float(source.options.scale),
        seed=int(source.options.seed),
        k_core=k_core,
        users=n_users,
        items=n_items,
        interactions=n,
        train=n_train,
        valid=n_valid,
        test=n_test,
        density=n / (n_users * n_items),
        interactions_per_user=n / n_users,
        interactions_per_item=n / n_items,
        raw_interactions=len(raw),
        raw_users=len(raw.user_ids),
        raw_items=len(raw.item_ids),
        duplicates_dropped=len(raw) - len(kept),
        kcore_dropped=core.dropped,
        kcore_passes=core.passes,
        ts_min=int(ts.min()),
        ts_max=int(ts.max()),
        split_ts_valid_start=int(ts[n_train]) if n_valid else -1,
        split_ts_test_start=int(ts[n_train + n_valid]) if n_test else -1,
        items_without_metadata=sum(f is None for f in found),
        items_without_text=int((items["text"].str.len() == 0).sum()),
        lines_read={k: c.lines for k, c in source.line_counts.items()},
        malformed_lines={k: c.malformed for k, c in source.line_counts.items()},
        skipped_lines={k: c.skipped for k, c in source.line_counts.items() if c.skipped},
    )
    return PreparedFrames(interactions, items, users, splits, stats)


def write_atomically(frames: PreparedFrames, out_dir: str | Path) -> Path:
    """Write every contract file into a temp dir beside `out_dir`, then rename it into place.

    An existing `out_dir` is replaced only if it is empty or a previous prepared dataset
    (has stats.json); any other existing path is left alone and DataError is raised.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        if not out_dir.is_dir():
            raise DataError(f"{out_dir}: exists and is not a directory")
        if any(out_dir.iterdir()) and not (out_dir / "stats.json").is_file():
            raise DataError(
                f"{out_dir}: exists, is not empty and is not a prepared dataset; "
                "refusing to overwrite it"
            )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the result is an ordinary directory
        frames.interactions.to_parquet(tmp / "interactions.parquet", index=False)
        frames.items.to_parquet(tmp / "items.parquet", index=False)
        frames.users.to_parquet(tmp / "users.parquet", index=False)
        for name in SPLITS:
            frames.splits[name].to_parquet(tmp / f"{name}.parquet", index=False)
        (tmp / "stats.json").write_text(frames.stats.to_json())
        missing = [f for f in REQUIRED_FILES if not (tmp / f).is_file()]
        if missing:  # the contract grew a file this writer does not know
            raise DataError(f"prepare wrote no {', '.join(missing)} (contract mismatch)")
        _swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _swap_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename `tmp` to `out_dir`, moving a previous `out_dir` aside first (restored on error)."""
    if not out_dir.exists():
        os.rename(tmp, out_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
    os.rmdir(old)
    os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        os.rename(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


def prepare(
    source: str,
    out_dir: str | Path,
    raw_dir: str | Path | None = None,
    scale: float = 1.0,
    seed: int = 0,
    *,
    k_core: int = DEFAULT_K_CORE,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    base_url: str | None = None,
    sha256: dict[str, str] | None = None,
    progress: bool = True,
    echo: Callable[[str], None] | None = print,
) -> DatasetStats:
    """Prepare dataset `source` into `out_dir` (files of `recpar.data.prepared`).

    Downloads first if the source needs it (verified, resumable; reuses verified files in
    `raw_dir`). Prints the statistics with `echo` (None: silent). Returns them.
    """
    if k_core < 1:
        raise DataError(f"k_core={k_core}: must be >= 1")
    cls = get_source(source)
    src = cls(SourceOptions(
        raw_dir=Path(raw_dir) if raw_dir is not None else None, scale=scale, seed=seed,
        max_bad_fraction=max_bad_fraction, base_url=base_url, sha256=dict(sha256 or {}),
        progress=progress,
    ))
    if src.needs_download:
        with _step(f"checking/downloading {source} raw files", progress):
            src.download()
    frames = build(src, k_core=k_core)
    with _step(f"writing {out_dir}", progress):
        write_atomically(frames, out_dir)
    if echo is not None:
        echo(format_stats(frames.stats))
    return frames.stats
