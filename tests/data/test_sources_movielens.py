"""movielens-100k read in place from the installed recbole wheel."""

from __future__ import annotations

import importlib.util

import pandas as pd
import pytest

from recpar.data.errors import DataError
from recpar.data.prepare import prepare
from recpar.data.prepared import PreparedDataset
from recpar.data.sources import SourceOptions, get_source
from recpar.data.sources import movielens

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("recbole") is None,
    reason="recbole wheel not installed (pip install --no-deps recbole==1.2.1)",
)


def _reference_kcore(df: pd.DataFrame, k: int) -> pd.DataFrame:
    """Independent (pandas, loop until stable) k-core for cross-checking."""
    while True:
        uc = df.groupby("user")["item"].transform("size")
        ic = df.groupby("item")["user"].transform("size")
        kept = df[(uc >= k) & (ic >= k)]
        if len(kept) == len(df):
            return kept
        df = kept


def test_reads_the_packaged_files_without_copying(tmp_path):
    src = get_source("movielens-100k")(SourceOptions(progress=False))
    raw = src.interactions()
    assert len(raw) == 100_000
    assert len(raw.user_ids) == 943 and len(raw.item_ids) == 1682
    assert src.line_counts["ml-100k.inter"].malformed == 0
    assert "site-packages" in str(movielens.movielens_dir()) or "recbole" in str(
        movielens.movielens_dir())


def test_prepare_matches_an_independent_5core(tmp_path):
    stats = prepare("movielens-100k", tmp_path / "ml", progress=False, echo=None)
    src = get_source("movielens-100k")(SourceOptions(progress=False))
    ref = _reference_kcore(src.interactions().to_frame().drop_duplicates(["user", "item"]), 5)
    assert stats.interactions == len(ref)
    assert stats.users == ref["user"].nunique()
    assert stats.items == ref["item"].nunique()
    assert stats.duplicates_dropped == 0
    assert (stats.train, stats.valid, stats.test) == (
        (8 * len(ref) + 5) // 10, (len(ref) + 5) // 10,
        len(ref) - (8 * len(ref) + 5) // 10 - (len(ref) + 5) // 10)
    ds = PreparedDataset.load(tmp_path / "ml")
    toy = ds.items[ds.items.raw_id == "1"].iloc[0]
    assert toy["title"] == "Toy Story"
    assert toy["text"] == "Toy Story (1995). Genres: Animation, Children's, Comedy."
    assert ds.items["raw_id"].astype(int).is_monotonic_increasing  # numeric id order
    order = ds.all_interactions()
    assert order["order"].tolist() == list(range(len(order)))
    keys = list(zip(order.ts, order.user, order.item))
    assert keys == sorted(keys)  # global (ts, user, item) order
    assert not list(tmp_path.glob("ml/*.tmp"))


def test_missing_recbole_gives_install_hint(monkeypatch):
    monkeypatch.setattr(movielens.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"recbole.*not installed: pip install --no-deps recbole"):
        get_source("movielens-100k")(SourceOptions()).interactions()
