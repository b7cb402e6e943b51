"""`amazon-electronics-2014`: the 5-core Electronics reviews of the McAuley et al. 2014 release.

Files (from the base URL, default in `amazon_electronics_2014.json`):

- `reviews_Electronics_5.json.gz`: one JSON object per line with reviewerID, asin,
  unixReviewTime (day-granular seconds), overall, reviewText, ... Every review is one
  implicit-feedback interaction (the rating is not used).
- `meta_Electronics.json.gz`: one *Python literal* dict per line (single quotes; the 2014 dump
  is not JSON), with asin, title, description, categories (list of category paths), brand,
  price, related, ... Parsed with `ast.literal_eval` (never `eval`), falling back to JSON.

Published shape of the 5-core file: 192,403 users, 63,001 items, 1,689,188 reviews (cannot be
checked offline; `recpar data prepare` prints what it finds).
"""

from __future__ import annotations

import ast
import gzip
import json
import re
import sys
import zlib
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from recpar.data.download import RemoteFile, ensure_file
from recpar.data.errors import DataError
from recpar.data.item_text import category_paths, clean, compose_item_text
from recpar.data.sources.base import LineCounts, RawInteractions, Source

# the meta line's own asin, when (as in the 2014 dump) it is the first key: lets lines of
# items that the k-core filter removed be skipped without a full literal_eval
_LEADING_ASIN = re.compile(rb"""\s*\{\s*['"]asin['"]\s*:\s*['"]([^'"]+)['"]""")


def load_manifest() -> dict:
    """The packaged manifest (base URL, file names, known checksums: null when unknown)."""
    text = resources.files("recpar.data.sources").joinpath(
        "amazon_electronics_2014.json").read_text()
    return json.loads(text)


def iter_gzip_lines(path: Path, desc: str, progress: bool) -> Iterator[bytes]:
    """Lines of a gzip file as bytes, with a progress bar over the compressed bytes read."""
    try:
        with open(path, "rb") as raw, tqdm.wrapattr(
            raw, "read", total=path.stat().st_size, desc=desc, disable=not progress,
            file=sys.stderr,
        ) as wrapped, gzip.GzipFile(fileobj=wrapped) as gz:
            yield from gz
    except (EOFError, OSError, zlib.error) as e:
        raise DataError(f"{path}: unreadable gzip data ({e}); delete it and download again") from e


class AmazonElectronics2014(Source):
    """Downloaded Amazon Electronics 5-core reviews + metadata (2014 release)."""

    name = "amazon-electronics-2014"
    needs_download = True

    def __init__(self, options=None) -> None:
        super().__init__(options)
        manifest = load_manifest()
        self.base_url = self.options.base_url or manifest["base_url"]
        if not self.base_url.endswith("/"):
            self.base_url += "/"
        self.reviews_name = manifest["files"]["reviews"]["name"]
        self.meta_name = manifest["files"]["meta"]["name"]
        self._manifest_files = manifest["files"]
        unknown = set(self.options.sha256) - {self.reviews_name, self.meta_name}
        if unknown:
            raise DataError(
                f"sha256 given for unknown file(s) {', '.join(sorted(unknown))}; "
                f"known: {self.reviews_name}, {self.meta_name}"
            )

    def _raw_dir(self) -> Path:
        if self.options.raw_dir is None:
            raise DataError(f"{self.name}: a raw directory is needed (--raw-dir)")
        return Path(self.options.raw_dir)

    def remote_files(self) -> list[RemoteFile]:
        """The two files with the checksums known for them (user-given beats manifest)."""
        out = []
        for entry in self._manifest_files.values():
            out.append(RemoteFile(
                name=entry["name"],
                url=self.base_url + entry["name"],
                sha256=self.options.sha256.get(entry["name"]) or entry.get("sha256"),
                size_bytes=entry.get("size_bytes"),
            ))
        return out

    def download(self) -> list[Path]:
        raw_dir = self._raw_dir()
        return [ensure_file(r, raw_dir, progress=self.options.progress)
                for r in self.remote_files()]

    def describe(self) -> str:
        return f"{self.name}: {self.reviews_name}, {self.meta_name} from {self.base_url}"

    def _path(self, name: str) -> Path:
        path = self._raw_dir() / name
        if not path.is_file():
            raise DataError(f"{path}: missing; run `recpar data download --source {self.name}`")
        return path

    def interactions(self) -> RawInteractions:
        path = self._path(self.reviews_name)
        counts = self.line_counts.setdefault(self.reviews_name, LineCounts())
        users: list[str] = []
        items: list[str] = []
        ts: list[int] = []
        for line in iter_gzip_lines(path, f"reading {path.name}", self.options.progress):
            if not line.strip():
                continue
            counts.lines += 1
            try:
                rec = json.loads(line)
                u, a, t = rec["reviewerID"], rec["asin"], int(rec["unixReviewTime"])
                if not (isinstance(u, str) and isinstance(a, str) and u and a):
                    raise TypeError("ids must be non-empty strings")
            except (ValueError, KeyError, TypeError):  # UnicodeDecodeError is a ValueError
                counts.malformed += 1
                continue
            users.append(u)
            items.append(a)
            ts.append(t)
        self.check_bad_fraction(self.reviews_name)
        return RawInteractions.from_strings(users, items, np.asarray(ts, dtype=np.int64))

    def item_metadata(self, raw_item_ids: Iterable[str]) -> pd.DataFrame:
        path = self._path(self.meta_name)
        needed = set(raw_item_ids)
        counts = self.line_counts.setdefault(self.meta_name, LineCounts())
        rows: dict[str, tuple[str, str]] = {}
        for line in iter_gzip_lines(path, f"reading {path.name}", self.options.progress):
            if not line.strip():
                continue
            m = _LEADING_ASIN.match(line)
            if m is not None and m.group(1).decode("utf-8", "replace") not in needed:
                counts.skipped += 1
                continue
            counts.lines += 1
            rec = _parse_meta_line(line)
            if rec is None:
                counts.malformed += 1
                continue
            asin = rec["asin"]
            if asin in needed and asin not in rows:
                title = clean(rec.get("title"))
                text = compose_item_text(
                    title, rec.get("brand"), category_paths(rec.get("categories")),
                    rec.get("description"),
                )
                rows[asin] = (title, text)
        if counts.lines:
            self.check_bad_fraction(self.meta_name)
        return pd.DataFrame(
            [(k, t, x) for k, (t, x) in rows.items()], columns=["raw_id", "title", "text"]
        )


def _parse_meta_line(line: bytes) -> dict | None:
    """One metadata line -> dict with a str 'asin', or None if malformed."""
    try:
        s = line.decode("utf-8")
    except UnicodeDecodeError:
        return None
    rec = None
    try:
        rec = ast.literal_eval(s)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        try:
            rec = json.loads(s)
        except ValueError:
            return None
    if not isinstance(rec, dict) or not isinstance(rec.get("asin"), str) or not rec["asin"]:
        return None
    return rec
