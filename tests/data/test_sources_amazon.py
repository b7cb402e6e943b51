"""amazon-electronics-2014 on fake files in the public format, served from 127.0.0.1."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from recpar.data.errors import DataError
from recpar.data.item_text import MAX_TEXT_CHARS
from recpar.data.prepare import prepare
from recpar.data.prepared import PreparedDataset
from recpar.data.sources import SourceOptions, get_source

REVIEWS = "reviews_Electronics_5.json.gz"
META = "meta_Electronics.json.gz"


def _prepare(server, tmp_path, **kw):
    return prepare("amazon-electronics-2014", tmp_path / "out", raw_dir=tmp_path / "raw",
                   base_url=server.base_url, progress=False, echo=None, **kw)


def test_download_and_prepare_match_the_hand_designed_shape(http_files, fake_amazon, tmp_path):
    http_files.files.update(fake_amazon.files())
    stats = _prepare(http_files, tmp_path)
    for key, value in fake_amazon.expected.items():
        assert getattr(stats, key) == value, key
    assert stats.items_without_metadata == 1  # I6 has no metadata line
    assert stats.malformed_lines == {REVIEWS: 0, META: 0}
    assert stats.lines_read[REVIEWS] == 82
    assert stats.skipped_lines == {META: 2}  # IZ (filtered out) and UNUSED: not parsed
    assert (tmp_path / "raw" / (REVIEWS + ".sha256")).is_file()

    ds = PreparedDataset.load(tmp_path / "out")
    assert ds.items["raw_id"].tolist() == fake_amazon.core_items  # natural order of raw ids
    i0 = ds.items.iloc[0]
    assert i0["title"] == "Cable & Adapter I0"  # HTML entity decoded
    assert i0["text"].startswith(
        "Cable & Adapter I0. Brand: Acme. "
        "Categories: Electronics > Accessories > Cables; Electronics. Great cable.")
    assert "<b>" not in i0["text"] and len(i0["text"]) <= MAX_TEXT_CHARS + 4
    assert ds.items.iloc[6]["text"] == ""  # no metadata
    # the duplicate (A0, I0) keeps its earliest timestamp
    events = ds.all_interactions()
    users = pd.read_parquet(tmp_path / "out" / "users.parquet")
    a0 = int(users.loc[users.raw_id == "A0", "user"].iloc[0])
    a0_i0 = events[(events.user == a0) & (events.item == 1)]
    assert a0_i0.ts.tolist() == [int(events.ts.min())]  # T0, not the later repeat


def test_tolerated_malformed_lines_are_counted(http_files, fake_amazon, tmp_path):
    http_files.files.update(fake_amazon.files(bad_review_lines=2, bad_meta_lines=1))
    stats = _prepare(http_files, tmp_path, max_bad_fraction=0.2)
    assert stats.malformed_lines == {REVIEWS: 2, META: 1}
    assert stats.lines_read[REVIEWS] == 84
    assert stats.interactions == fake_amazon.expected["interactions"]
    saved = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert saved["malformed_lines"] == {REVIEWS: 2, META: 1}


def test_too_many_malformed_lines_fail_and_leave_nothing(http_files, fake_amazon, tmp_path):
    http_files.files.update(fake_amazon.files(bad_review_lines=4))
    # 4 of 86 lines = 4.7 % > 1 %
    with pytest.raises(DataError, match=r"reviews_Electronics_5.json.gz: 4 of 86 lines "
                                        r"malformed .* max_bad_fraction=0.01"):
        _prepare(http_files, tmp_path, max_bad_fraction=0.01)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]  # no temp dir left either


def test_default_threshold_rejects_one_bad_line_in_a_small_file(http_files, fake_amazon,
                                                                tmp_path):
    http_files.files.update(fake_amazon.files(bad_review_lines=1))
    with pytest.raises(DataError, match="more than max_bad_fraction=0.001"):
        _prepare(http_files, tmp_path)


def test_malformed_metadata_over_threshold_fails(http_files, fake_amazon, tmp_path):
    http_files.files.update(fake_amazon.files(bad_meta_lines=3))  # 3 of 9 parsed lines
    with pytest.raises(DataError, match=r"meta_Electronics.json.gz: 3 of 9 lines"):
        _prepare(http_files, tmp_path, max_bad_fraction=0.2)
    assert not (tmp_path / "out").exists()


def test_corrupt_raw_file_on_disk_is_refetched_before_parsing(http_files, fake_amazon, tmp_path):
    http_files.files.update(fake_amazon.files())
    _prepare(http_files, tmp_path)
    raw = tmp_path / "raw" / REVIEWS
    data = bytearray(raw.read_bytes())
    data[len(data) // 2] ^= 0x55
    raw.write_bytes(bytes(data))
    n_before = len(http_files.requests)
    stats = _prepare(http_files, tmp_path)
    assert stats.interactions == fake_amazon.expected["interactions"]
    assert http_files.requests[n_before:] == [(REVIEWS, None)]


def test_source_options_are_validated():
    cls = get_source("amazon-electronics-2014")
    with pytest.raises(DataError, match="fixed size"):
        cls(SourceOptions(scale=0.5))
    with pytest.raises(DataError, match="unknown file"):
        cls(SourceOptions(sha256={"other.gz": "0" * 64}))
    with pytest.raises(DataError, match="--raw-dir"):
        cls(SourceOptions()).download()
    with pytest.raises(DataError, match=r"max_bad_fraction=1.5"):
        cls(SourceOptions(max_bad_fraction=1.5))


def test_default_base_url_is_the_2014_release():
    src = get_source("amazon-electronics-2014")(SourceOptions())
    urls = [r.url for r in src.remote_files()]
    assert urls == [
        "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/" + REVIEWS,
        "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/" + META,
    ]
    assert all(r.sha256 is None for r in src.remote_files())  # unknown offline: not invented


def test_unknown_source_lists_known_names():
    with pytest.raises(DataError, match="unknown source 'nope'; known sources: "
                                        "amazon-electronics-2014, movielens-100k, "
                                        "synthetic-amazon"):
        get_source("nope")
