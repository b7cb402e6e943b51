"""prepare(): contract files, statistics, and atomic output on failure."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from recpar.data import prepare as prepare_mod
from recpar.data.errors import DataError
from recpar.data.prepare import prepare
from recpar.data.prepared import REQUIRED_FILES, PreparedDataset

SCALE = 0.005  # 962 users, 315 items, 8,446 interactions


def _run(out, **kw):
    return prepare("synthetic-amazon", out, scale=SCALE, seed=3, progress=False, echo=None, **kw)


def test_writes_the_contract(tmp_path):
    stats = _run(tmp_path / "d")
    ds = PreparedDataset.load(tmp_path / "d")
    assert ds.n_users == stats.users == 962 and ds.n_items == stats.items == 315
    inter = pd.read_parquet(tmp_path / "d" / "interactions.parquet")
    assert list(inter.columns) == ["user", "item", "ts"]
    assert all(str(t) == "int64" for t in inter.dtypes)
    assert inter.item.min() == 1 and inter.item.max() == 315  # 0 is padding
    assert sorted(inter.user.unique()) == list(range(962))
    assert len(ds.train) == stats.train and len(ds.valid) == stats.valid
    assert len(ds.test) == stats.test
    both = ds.all_interactions()
    assert both["order"].tolist() == list(range(len(both)))
    assert np.array_equal(both[["user", "item", "ts"]].to_numpy(), inter.to_numpy())
    assert ds.valid.ts.iloc[0] == stats.split_ts_valid_start
    assert ds.train.ts.max() <= ds.valid.ts.min() <= ds.valid.ts.max() <= ds.test.ts.min()
    users = pd.read_parquet(tmp_path / "d" / "users.parquet")
    assert users.raw_id.iloc[0] == "SU000"
    saved = json.loads((tmp_path / "d" / "stats.json").read_text())
    for key in ("users", "items", "interactions", "train", "valid", "test", "source", "scale",
                "seed", "k_core", "duplicates_dropped", "kcore_dropped", "malformed_lines",
                "density"):
        assert key in saved, key
    assert saved["density"] == pytest.approx(8446 / (962 * 315))
    assert saved["source"] == "synthetic-amazon" and saved["seed"] == 3


def test_prints_the_statistics(tmp_path):
    lines = []
    _ = prepare("synthetic-amazon", tmp_path / "d", scale=SCALE, progress=False,
                echo=lines.append)
    assert "users             962" in lines[0] and "6,757 / 845 / 844" in lines[0]


def _fail_on_nth_parquet(monkeypatch, n):
    real = pd.DataFrame.to_parquet
    calls = {"n": 0}

    def flaky(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == n:
            raise OSError("disk full (simulated)")
        return real(self, *a, **kw)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", flaky)


def test_failure_mid_write_leaves_nothing(tmp_path, monkeypatch):
    _fail_on_nth_parquet(monkeypatch, 4)
    with pytest.raises(OSError, match="simulated"):
        _run(tmp_path / "d")
    assert list(tmp_path.iterdir()) == []


def test_failure_keeps_the_previous_dataset_intact(tmp_path, monkeypatch):
    _run(tmp_path / "d")
    before = {f: (tmp_path / "d" / f).read_bytes() for f in REQUIRED_FILES}
    _fail_on_nth_parquet(monkeypatch, 2)
    with pytest.raises(OSError):
        prepare("synthetic-amazon", tmp_path / "d", scale=0.004, progress=False, echo=None)
    assert {f: (tmp_path / "d" / f).read_bytes() for f in REQUIRED_FILES} == before
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


def test_rerun_replaces_a_previous_dataset(tmp_path):
    _run(tmp_path / "d")
    (tmp_path / "d" / "item_text_emb.npy").write_bytes(b"stale")
    prepare("synthetic-amazon", tmp_path / "d", scale=0.004, progress=False, echo=None)
    assert json.loads((tmp_path / "d" / "stats.json").read_text())["scale"] == 0.004
    assert not (tmp_path / "d" / "item_text_emb.npy").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


def test_refuses_to_overwrite_an_unrelated_directory(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not a prepared dataset; refusing"):
        _run(tmp_path / "d")
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["notes.txt"]


def test_empty_existing_directory_is_fine(tmp_path):
    (tmp_path / "d").mkdir()
    _run(tmp_path / "d")
    assert (tmp_path / "d" / "stats.json").is_file()


def test_k_core_larger_than_the_data_fails_cleanly(tmp_path):
    with pytest.raises(DataError, match="nothing survives the 10000-core filter"):
        _run(tmp_path / "d", k_core=10_000)
    assert not (tmp_path / "d").exists()


def test_bad_arguments(tmp_path):
    with pytest.raises(DataError, match="k_core=0"):
        _run(tmp_path / "d", k_core=0)
    with pytest.raises(DataError, match="unknown source"):
        prepare("amazon", tmp_path / "d", progress=False, echo=None)
    with pytest.raises(DataError, match="fixed size"):
        prepare("movielens-100k", tmp_path / "d", scale=2.0, progress=False, echo=None)


def test_step_messages_go_to_stderr(tmp_path, capsys):
    prepare_mod.prepare("synthetic-amazon", tmp_path / "d", scale=SCALE, progress=True)
    cap = capsys.readouterr()
    assert "[prepare] 5-core filter" in cap.err and "users             962" in cap.out
