"""What every source yields, and the interface each source class implements."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from recpar.data.errors import DataError

# Default tolerated share of malformed lines per input file (0.1 %). The public files parse
# without a single bad line, so anything near this level means a damaged or wrong file.
DEFAULT_MAX_BAD_FRACTION = 0.001

ITEM_COLUMNS = ("raw_id", "title", "text")


@dataclass
class RawInteractions:
    """Raw interactions in factorised form (one row per event; ids still the source's own).

    Equivalent to a table of (raw user id str, raw item id str, ts int seconds), stored as codes
    into the unique-id arrays so that millions of rows do not each hold a Python string.
    """

    user_codes: np.ndarray  # [n] int64, index into user_ids
    item_codes: np.ndarray  # [n] int64, index into item_ids
    ts: np.ndarray  # [n] int64, seconds since the Unix epoch (UTC)
    user_ids: np.ndarray  # [n_raw_users] object array of str, the source's user ids
    item_ids: np.ndarray  # [n_raw_items] object array of str, the source's item ids

    def __post_init__(self) -> None:
        n = len(self.ts)
        if len(self.user_codes) != n or len(self.item_codes) != n:
            raise ValueError("RawInteractions: user_codes, item_codes and ts differ in length")

    @classmethod
    def from_strings(
        cls, users: Sequence[str] | np.ndarray, items: Sequence[str] | np.ndarray,
        ts: Sequence[int] | np.ndarray,
    ) -> "RawInteractions":
        """Factorise parallel sequences of raw user ids, raw item ids and timestamps."""
        ucodes, uids = pd.factorize(pd.Series(users, dtype=object), sort=False)
        icodes, iids = pd.factorize(pd.Series(items, dtype=object), sort=False)
        return cls(
            user_codes=ucodes.astype(np.int64),
            item_codes=icodes.astype(np.int64),
            ts=np.asarray(ts, dtype=np.int64),
            user_ids=np.asarray(uids, dtype=object),
            item_ids=np.asarray(iids, dtype=object),
        )

    def __len__(self) -> int:
        return len(self.ts)

    def to_frame(self) -> pd.DataFrame:
        """Columns user (raw id str), item (raw id str), ts (int64); for inspection and tests."""
        return pd.DataFrame({
            "user": self.user_ids[self.user_codes],
            "item": self.item_ids[self.item_codes],
            "ts": self.ts,
        })


@dataclass
class LineCounts:
    """Lines read and lines rejected for one input file."""

    lines: int = 0  # non-blank lines seen
    malformed: int = 0  # lines that could not be parsed or lacked a required field
    skipped: int = 0  # lines not parsed because their item is not needed (metadata only)


@dataclass
class SourceOptions:
    """Knobs shared by all sources; each source uses the ones that apply to it."""

    raw_dir: Path | None = None  # where downloaded/raw files live (sources that download)
    scale: float = 1.0  # dataset size relative to Amazon Electronics 5-core (synthetic only)
    seed: int = 0  # RNG seed (synthetic only; recorded for every source)
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION  # tolerated malformed-line share per file
    base_url: str | None = None  # download base URL (downloading sources); None = default
    sha256: dict[str, str] = field(default_factory=dict)  # file name -> known sha256 hex
    progress: bool = True  # show tqdm progress bars


class Source(ABC):
    """A raw-data source: interactions plus item metadata, before any filtering."""

    name: ClassVar[str]  # registry name, e.g. "movielens-100k"
    needs_download: ClassVar[bool] = False  # True if `download()` fetches files
    scalable: ClassVar[bool] = False  # True if `scale` may differ from 1.0

    def __init__(self, options: SourceOptions | None = None) -> None:
        self.options = options or SourceOptions()
        if not (self.options.scale > 0 and math.isfinite(self.options.scale)):
            raise DataError(f"scale={self.options.scale:g}: must be a finite number > 0")
        if not 0.0 <= self.options.max_bad_fraction <= 1.0:
            raise DataError(
                f"max_bad_fraction={self.options.max_bad_fraction:g}: must lie in [0, 1]"
            )
        if self.options.scale != 1.0 and not self.scalable:
            raise DataError(
                f"scale={self.options.scale:g}: source {self.name!r} has a fixed size "
                "(only synthetic-amazon takes a scale)"
            )
        # file name -> counts, filled while reading; ends up in stats.json
        self.line_counts: dict[str, LineCounts] = {}

    def download(self) -> list[Path]:
        """Fetch and verify the raw files; returns their paths (empty if nothing to fetch)."""
        return []

    @abstractmethod
    def interactions(self) -> RawInteractions:
        """All raw interactions (duplicates included; filtering happens downstream)."""

    @abstractmethod
    def item_metadata(self, raw_item_ids: Iterable[str]) -> pd.DataFrame:
        """Columns raw_id, title, text for the given raw item ids (missing ones may be absent)."""

    def describe(self) -> str:
        """One line shown by `recpar data download` for sources without a download."""
        return f"{self.name}: nothing to download"

    def check_bad_fraction(self, file_name: str) -> None:
        """Raise if the share of malformed lines in `file_name` exceeds max_bad_fraction."""
        c = self.line_counts.get(file_name, LineCounts())
        limit = self.options.max_bad_fraction
        if c.lines == 0:
            raise DataError(f"{file_name}: no data lines")
        frac = c.malformed / c.lines
        if frac > limit or c.malformed == c.lines:
            raise DataError(
                f"{file_name}: {c.malformed} of {c.lines} lines malformed ({frac:.3%}), "
                f"more than max_bad_fraction={limit:g}"
            )
