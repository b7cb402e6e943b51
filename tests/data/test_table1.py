"""Table I rendering beside the paper's values."""

from __future__ import annotations

import pytest

from recpar.data.errors import DataError
from recpar.data.table1 import label_for, load_paper_table1, render


def _stats(source="synthetic-amazon", scale=1.0, n=(1_351_350, 168_919, 168_919)):
    return {"source": source, "scale": scale, "seed": 0, "users": 192_403, "items": 63_001,
            "train": n[0], "valid": n[1], "test": n[2]}


def test_paper_values_are_table_i():
    p = load_paper_table1()
    assert p["source"] == "Table I"
    assert (p["users"], p["items"], p["train"], p["valid"], p["test"]) == (
        192_403, 63_001, 1_735_654, 216_957, 216_956)


def test_render_has_paper_row_source_rows_and_the_release_note():
    md = render({"synthetic-amazon": _stats(), "movielens-100k": {
        "source": "movielens-100k", "scale": 1.0, "users": 943, "items": 1349,
        "train": 79_430, "valid": 9_929, "test": 9_928}})
    lines = md.splitlines()
    assert lines[0].startswith("| Dataset | # Users | # Items | Train | Valid | Test |")
    assert lines[2] == ("| Amazon Electronics (paper, Table I) | 192,403 | 63,001 | 1,735,654 "
                        "| 216,957 | 216,956 | 2,169,567 |")
    assert lines[3] == ("| synthetic-amazon | 192,403 | 63,001 | 1,351,350 | 168,919 | 168,919 "
                        "| 1,689,188 |")
    assert lines[4].startswith("| movielens-100k | 943 | 1,349 | 79,430 |")
    assert "1,689,188 reviews" in md and "2,169,567" in md and "480,379 (+28.4 %)" in md
    assert "match no known release" in md
    assert "The paper's sizes are exactly round-half-up 80/10/10" in md
    assert "interactions -22.1 % vs the paper" in md
    assert "WARNING" not in md


def test_render_flags_a_split_that_breaks_the_rule():
    md = render({"x": _stats(n=(100, 50, 50))})
    assert "WARNING: split sizes do not follow the 80/10/10 rule" in md


def test_render_rejects_incomplete_stats():
    with pytest.raises(DataError, match="stats for 'x': missing key.*train"):
        render({"x": {"source": "x", "users": 1, "items": 1}})


def test_labels_are_unique():
    taken: set[str] = set()
    a = label_for(_stats(scale=0.1), taken)
    taken.add(a)
    b = label_for(_stats(scale=0.1), taken)
    taken.add(b)
    c = label_for(_stats(scale=0.1), taken)
    assert (a, b) == ("synthetic-amazon (scale 0.1)", "synthetic-amazon (scale 0.1, seed 0)")
    assert c == "synthetic-amazon (scale 0.1, seed 0) #2"
    assert label_for({"source": "movielens-100k", "scale": 1.0}, set()) == "movielens-100k"


def test_bad_paper_file(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("users: 1\nitems: x\n")
    with pytest.raises(DataError, match=r"p.yaml: missing or non-integer key\(s\) items, train"):
        load_paper_table1(f)


def test_release_note_says_whether_this_run_checked_the_published_counts():
    assert "not checked by this run" in render({"synthetic-amazon": _stats()})
    real = {"source": "amazon-electronics-2014", "scale": 1, "users": 192_403, "items": 63_001,
            "train": 1_351_350, "valid": 168_919, "test": 168_919}
    assert "checked by this run: the downloaded file has the same counts" in render(
        {"amazon-electronics-2014": real})
    other = render({"amazon-electronics-2014": {**real, "users": 192_400}})
    assert "the downloaded file DIFFERS, with 192,400 users" in other
