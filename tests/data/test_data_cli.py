"""`recpar data ...` sub-commands through `register(subparsers)`."""

from __future__ import annotations

import argparse
import json

import pytest

from recpar.data import cli


def _parser():
    parser = argparse.ArgumentParser(prog="recpar")
    sub = parser.add_subparsers(dest="group", required=True)
    cli.register(sub)
    return parser


def _run(*argv):
    args = _parser().parse_args(list(argv))
    return args.func(args)


def test_prepare_then_table1(tmp_path, capsys):
    d = tmp_path / "syn"
    assert _run("data", "prepare", "--source", "synthetic-amazon", "--out", str(d),
                "--scale", "0.002", "--seed", "1", "--no-progress") == 0
    assert "users             385" in capsys.readouterr().out
    out = tmp_path / "paper_tables" / "table1.md"
    assert _run("data", "table1", "--stats", str(d / "stats.json"), "--out", str(out)) == 0
    text = out.read_text()
    assert "| synthetic-amazon (scale 0.002) | 385 | 126 |" in text
    assert text == capsys.readouterr().out


def test_download_is_a_noop_for_local_sources(tmp_path, capsys):
    assert _run("data", "download", "--source", "synthetic-amazon", "--raw-dir",
                str(tmp_path)) == 0
    assert "nothing to download" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_download_amazon_from_local_server(http_files, fake_amazon, tmp_path, capsys):
    http_files.files.update(fake_amazon.files())
    assert _run("data", "download", "--source", "amazon-electronics-2014", "--raw-dir",
                str(tmp_path), "--base-url", http_files.base_url, "--no-progress") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "meta_Electronics.json.gz", "meta_Electronics.json.gz.sha256",
        "reviews_Electronics_5.json.gz", "reviews_Electronics_5.json.gz.sha256"]


@pytest.mark.parametrize("argv, message", [
    (["prepare", "--source", "nope", "--out", "X"], "recpar: unknown source 'nope'; known"),
    (["prepare", "--source", "synthetic-amazon", "--out", "X", "--scale", "-1"],
     "recpar: scale=-1: must be a finite number > 0"),
    (["prepare", "--source", "amazon-electronics-2014", "--out", "X", "--raw-dir", "R",
      "--sha256", "reviews_Electronics_5.json.gz=123"], "recpar: --sha256 "),
    (["prepare", "--source", "movielens-100k", "--out", "X", "--max-bad-fraction", "2"],
     "recpar: max_bad_fraction=2: must lie in [0, 1]"),
    (["embed", "--data", "MISSING"], "recpar: MISSING/items.parquet: missing"),
    (["table1", "--stats", "MISSING.json", "--out", "t.md"], "recpar: MISSING.json: cannot read"),
])
def test_bad_input_is_one_line_system_exit(tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        _run("data", *argv)
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)
    assert not (tmp_path / "X").exists() and not (tmp_path / "t.md").exists()


def test_table1_rejects_non_stats_json(tmp_path):
    f = tmp_path / "s.json"
    f.write_text(json.dumps([1, 2]))
    with pytest.raises(SystemExit, match="not a stats.json"):
        _run("data", "table1", "--stats", str(f), "--out", str(tmp_path / "t.md"))
