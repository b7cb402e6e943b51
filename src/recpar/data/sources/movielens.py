"""`movielens-100k`: the ML-100k files packaged (atomic-file format) inside the recbole wheel.

Read in place from `<recbole>/dataset_example/ml-100k/` — located with
`importlib.util.find_spec`, without importing recbole (its runtime dependencies are not
installed) and without copying the data anywhere (GroupLens licence: no redistribution).

`ml-100k.inter`: tab-separated, header `user_id:token item_id:token rating:float
timestamp:float`, 100,000 ratings (each rating is one implicit interaction).
`ml-100k.item`: header `item_id:token movie_title:token_seq release_year:token
class:token_seq`; item text = "<title> (<year>). Genres: <g1>, <g2>."
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from recpar.data.errors import DataError
from recpar.data.item_text import clean, truncate_words, MAX_TEXT_CHARS
from recpar.data.sources.base import LineCounts, RawInteractions, Source

INSTALL_HINT = "pip install --no-deps recbole==1.2.1"
INTER_FILE = "ml-100k.inter"
ITEM_FILE = "ml-100k.item"


def movielens_dir() -> Path:
    """The recbole wheel's ml-100k directory (DataError if recbole or the files are missing)."""
    spec = importlib.util.find_spec("recbole")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise DataError(
            "movielens-100k reads the ml-100k files packaged in recbole, which is not "
            f"installed: {INSTALL_HINT}"
        )
    for loc in locations:
        d = Path(loc) / "dataset_example" / "ml-100k"
        if (d / INTER_FILE).is_file() and (d / ITEM_FILE).is_file():
            return d
    raise DataError(
        f"recbole at {locations[0]} has no dataset_example/ml-100k/{INTER_FILE}: "
        f"reinstall it with {INSTALL_HINT}"
    )


def _read_atomic(path: Path, counts: LineCounts, columns: tuple[str, ...]) -> list[list[str]]:
    """Rows of a RecBole atomic file, as strings, for the requested header names."""
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        names = [h.split(":", 1)[0] for h in header]
        missing = [c for c in columns if c not in names]
        if missing:
            raise DataError(f"{path}: header lacks column(s) {', '.join(missing)}")
        idx = [names.index(c) for c in columns]
        rows = []
        for line in f:
            if not line.strip():
                continue
            counts.lines += 1
            fields = line.rstrip("\n").split("\t")
            if len(fields) != len(header):
                counts.malformed += 1
                continue
            rows.append([fields[i] for i in idx])
    return rows


class MovieLens100k(Source):
    """MovieLens-100k read from the installed recbole wheel (no download)."""

    name = "movielens-100k"

    def describe(self) -> str:
        try:
            where = str(movielens_dir())
        except DataError as e:
            return f"{self.name}: {e}"
        return f"{self.name}: nothing to download (reads {where})"

    def interactions(self) -> RawInteractions:
        path = movielens_dir() / INTER_FILE
        counts = self.line_counts.setdefault(INTER_FILE, LineCounts())
        users, items, ts = [], [], []
        for u, i, t in _read_atomic(path, counts, ("user_id", "item_id", "timestamp")):
            try:
                t_int = int(float(t))
            except ValueError:
                counts.malformed += 1
                continue
            if not u or not i:
                counts.malformed += 1
                continue
            users.append(u)
            items.append(i)
            ts.append(t_int)
        self.check_bad_fraction(INTER_FILE)
        return RawInteractions.from_strings(users, items, ts)

    def item_metadata(self, raw_item_ids: Iterable[str]) -> pd.DataFrame:
        path = movielens_dir() / ITEM_FILE
        counts = self.line_counts.setdefault(ITEM_FILE, LineCounts())
        needed = set(raw_item_ids)
        rows = []
        for item_id, title, year, genres in _read_atomic(
            path, counts, ("item_id", "movie_title", "release_year", "class")
        ):
            if item_id not in needed:
                continue
            title = clean(title)
            year = clean(year)
            genre_list = [g for g in clean(genres).split(" ") if g]
            text = title + (f" ({year})" if year else "") + "."
            if genre_list:
                text += f" Genres: {', '.join(genre_list)}."
            rows.append((item_id, title, truncate_words(text, MAX_TEXT_CHARS)))
        self.check_bad_fraction(ITEM_FILE)
        out = pd.DataFrame(rows, columns=["raw_id", "title", "text"])
        return out.drop_duplicates("raw_id", keep="first")
