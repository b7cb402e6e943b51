"""Fixtures: small PreparedDataset objects built in memory (no files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recpar.data.prepared import PreparedDataset


def build_prepared(rows, n_users: int, n_items: int, n_train: int,
                   n_valid: int) -> PreparedDataset:
    """rows: (user, item, ts) triples. Global order = sort by (ts, user, item); the first
    n_train rows are train, the next n_valid valid, the rest test (the contract's rule with
    explicit sizes)."""
    df = pd.DataFrame(rows, columns=["user", "item", "ts"]).astype("int64")
    df = df.sort_values(["ts", "user", "item"], kind="stable").reset_index(drop=True)
    df["order"] = np.arange(len(df), dtype=np.int64)
    train = df.iloc[:n_train].reset_index(drop=True)
    valid = df.iloc[n_train:n_train + n_valid].reset_index(drop=True)
    test = df.iloc[n_train + n_valid:].reset_index(drop=True)
    items = pd.DataFrame({"item": np.arange(1, n_items + 1, dtype=np.int64),
                          "raw_id": [f"i{i}" for i in range(1, n_items + 1)],
                          "title": "", "text": ""})
    stats = {"users": n_users, "items": n_items, "interactions": len(df)}
    return PreparedDataset(Path("in-memory"), items, train, valid, test, stats, n_users, n_items)


@pytest.fixture
def make_prepared():
    return build_prepared
