"""The on-disk contract between the data stage and everything that trains or evaluates.

`recpar data prepare` writes one directory per dataset; every source produces the same files:

    interactions.parquet   user:int64, item:int64, ts:int64   all kept interactions (after dedup
                           and k-core), ids already remapped: users 0..n_users-1, items
                           1..n_items (0 is the padding id), sorted by the global order below
    items.parquet          item:int64 (1..n_items), raw_id:str, title:str, text:str
    users.parquet          user:int64 (0..n_users-1), raw_id:str
    train.parquet          same columns as interactions.parquet, plus split-free `order`:int64,
    valid.parquet            the row's position in the global chronological order (0-based)
    test.parquet
    stats.json             Table I statistics (see `recpar.data.stats`)

Global chronological order: sort by (ts, user, item), stable; the first round(0.8 n) rows are
train, the next round(0.1 n) valid, the rest test. Item text embeddings are written separately
(`item_text_emb.npy`, see `recpar.data.text_embed`) because they depend on the encoder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recpar.data.errors import PreparedDataError  # noqa: F401 - raised here, named by callers

SPLITS = ("train", "valid", "test")
REQUIRED_FILES = (
    "interactions.parquet",
    "items.parquet",
    "users.parquet",
    "train.parquet",
    "valid.parquet",
    "test.parquet",
    "stats.json",
)




@dataclass
class PreparedDataset:
    """A prepared dataset loaded in memory (all frames small enough for one host)."""

    root: Path
    items: pd.DataFrame  # item, raw_id, title, text; one row per item id 1..n_items
    train: pd.DataFrame  # user, item, ts, order
    valid: pd.DataFrame
    test: pd.DataFrame
    stats: dict
    n_users: int
    n_items: int  # real items; embedding tables have n_items + 1 rows (row 0 = padding)

    @classmethod
    def load(cls, root: str | Path) -> "PreparedDataset":
        root = Path(root)
        missing = [f for f in REQUIRED_FILES if not (root / f).is_file()]
        if missing:
            raise PreparedDataError(
                f"{root}: not a prepared dataset, missing {', '.join(missing)} "
                "(run `recpar data prepare` first)"
            )
        stats = json.loads((root / "stats.json").read_text())
        items = pd.read_parquet(root / "items.parquet")
        frames = {s: pd.read_parquet(root / f"{s}.parquet") for s in SPLITS}
        n_users = int(stats["users"])
        n_items = int(stats["items"])
        if len(items) != n_items or not np.array_equal(
            items["item"].to_numpy(), np.arange(1, n_items + 1)
        ):
            raise PreparedDataError(
                f"{root / 'items.parquet'}: expected items 1..{n_items} in order, "
                f"got {len(items)} rows"
            )
        for s, df in frames.items():
            for col in ("user", "item", "ts", "order"):
                if col not in df.columns:
                    raise PreparedDataError(f"{root / (s + '.parquet')}: missing column {col!r}")
        return cls(root, items, frames["train"], frames["valid"], frames["test"], stats,
                   n_users, n_items)

    def all_interactions(self) -> pd.DataFrame:
        """train + valid + test in global chronological order (columns user, item, ts, order)."""
        return pd.concat([self.train, self.valid, self.test], ignore_index=True)

    def item_text_embeddings(self, name: str = "item_text_emb.npy") -> np.ndarray | None:
        """[n_items + 1, d] float32 (row 0 zeros) if the embed step ran, else None."""
        path = self.root / name
        if not path.is_file():
            return None
        emb = np.load(path)
        if emb.shape[0] != self.n_items + 1:
            raise PreparedDataError(
                f"{path}: {emb.shape[0]} rows, expected n_items + 1 = {self.n_items + 1}"
            )
        return emb
