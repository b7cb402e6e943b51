"""`recpar perfmodel` sub-commands through argparse, as recpar.cli wires them."""

import argparse
import csv
import json

import pytest

from recpar.perfmodel import cli

from .test_predict import record


def run(argv):
    ap = argparse.ArgumentParser(prog="recpar")
    cli.register(ap.add_subparsers(dest="group", required=True))
    args = ap.parse_args(argv)
    return args.func(args)


def test_project_writes_labelled_tables(tmp_path):
    out = tmp_path / "proj"
    assert run(["perfmodel", "project", "--hardware", "paper-a100", "--model-size", "small",
                "--nodes", "1,2", "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "table2_projected.csv").open()))
    assert [r["scheme"] for r in rows] == ["baseline", "dp", "mp", "hybrid"]
    assert {r["kind"] for r in rows} == {"projected"}
    assert (out / "table3_projected.csv").exists() and (out / "hardware_sources.csv").exists()
    assert json.loads((out / "projection.json").read_text())["assumptions"]["model_size"] == \
        "small"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_predict_prints_json(tmp_path, capsys):
    rp = tmp_path / "run.json"
    rp.write_text(json.dumps(record()))
    assert run(["perfmodel", "predict", "--record", str(rp), "--hardware", "paper-a100"]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "projected"


def test_validate_writes_table(tmp_path):
    rp = tmp_path / "run.json"
    rp.write_text(json.dumps(record()))
    assert run(["perfmodel", "validate", "--records", str(rp), "--hardware", "paper-a100",
                "--grid-role", "held-out", "--grid", "g", "--out", str(tmp_path / "v")]) == 0
    rows = list(csv.DictReader((tmp_path / "v" / "validation_projected_vs_measured.csv").open()))
    assert rows[0]["measured_iter_ms"] == "10.0"
    assert (rows[0]["grid"], rows[0]["grid_role"], rows[0]["target_pct"]) == ("g", "held-out",
                                                                            "15.0")
    assert {"iter_verdict", "comm_verdict", "comm_basis", "record_derived_inputs",
            "calibration_spread_pct", "row_role"} <= set(rows[0])
    summary = (tmp_path / "v" / "validation_summary.md").read_text()
    assert "## Grid `g`: held-out" in summary
    with pytest.raises(SystemExit):  # the role is required: argparse exits
        run(["perfmodel", "validate", "--records", str(rp), "--hardware", "paper-a100",
             "--out", str(tmp_path / "w")])


def test_validate_keeps_the_schemes_asked_for(tmp_path, capsys):
    paths = []
    for name, scheme in (("dp", "dp"), ("mp", "mp")):
        p = tmp_path / f"{name}.json"
        p.write_text(json.dumps(record(scheme=scheme, run_id=name)))
        paths.append(str(p))
    assert run(["perfmodel", "validate", "--records", *paths, "--hardware", "paper-a100",
                "--schemes", "baseline,dp", "--grid-role", "development",
                "--out", str(tmp_path / "v")]) == 0
    rows = list(csv.DictReader((tmp_path / "v" / "validation_projected_vs_measured.csv").open()))
    assert [r["run_id"] for r in rows] == ["dp"]
    assert "left out 1 record(s) of other schemes" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--schemes zero: none of the 2 record"):
        run(["perfmodel", "validate", "--records", *paths, "--hardware", "paper-a100",
             "--schemes", "zero", "--grid-role", "development", "--out", str(tmp_path / "w")])


def test_validate_prints_both_verdicts_with_the_band(tmp_path, capsys):
    rp = tmp_path / "run.json"
    rp.write_text(json.dumps(record()))
    run(["perfmodel", "validate", "--records", str(rp), "--hardware", "paper-a100",
         "--grid-role", "development", "--grid", "emulated", "--out", str(tmp_path / "v")])
    out = capsys.readouterr().out
    assert "grid emulated (development), target ±15 %, 1 record(s):" in out
    assert "  iteration time: 0 of 1 judged within ±15 %" in out
    assert "  communication time: 0 of 1 judged within ±15 %" in out


def test_summarize_keeps_grids_apart(tmp_path):
    rp = tmp_path / "run.json"
    rp.write_text(json.dumps(record()))
    for role, grid in (("held-out", "h"), ("development", "d")):
        run(["perfmodel", "validate", "--records", str(rp), "--hardware", "paper-a100",
             "--grid-role", role, "--grid", grid, "--out", str(tmp_path / grid)])
    out = tmp_path / "all.md"
    assert run(["perfmodel", "summarize", "--tables",
                str(tmp_path / "h" / "validation_projected_vs_measured.csv"),
                str(tmp_path / "d" / "validation_projected_vs_measured.csv"),
                "--out", str(out)]) == 0
    text = out.read_text()
    assert text.index("## Grid `d`: development") < text.index("## Grid `h`: held-out")
    with pytest.raises(SystemExit, match="nope.csv: file not found"):
        run(["perfmodel", "summarize", "--tables", str(tmp_path / "nope.csv"),
             "--out", str(out)])


def test_bad_input_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match=r"^recpar: unknown hardware profile 'x100'"):
        run(["perfmodel", "project", "--hardware", "x100", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"^recpar: .*nope.json: file not found"):
        run(["perfmodel", "predict", "--record", str(tmp_path / "nope.json"),
             "--hardware", "paper-a100"])
    with pytest.raises(SystemExit, match="--set expects KEY=VALUE"):
        run(["perfmodel", "project", "--set", "seq_len", "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())  # nothing written on failure


@pytest.mark.parametrize("ranks, message", [("2,x", "expected comma-separated rank counts"),
                                            ("0,2", "rank counts must be >= 1")])
def test_calibrate_refuses_bad_loaded_ranks_before_measuring(tmp_path, ranks, message):
    """The option is checked first: the inter-node file does not even exist here."""
    with pytest.raises(SystemExit, match=f"--loaded-ranks: {message}"):
        run(["perfmodel", "calibrate", "--inter-node", str(tmp_path / "absent.yaml"),
             "--ranks-per-node", "2", "--loaded-ranks", ranks, "--out", str(tmp_path / "p.yaml")])
    with pytest.raises(SystemExit, match="--loaded-repeats: must be >= 1, got 0"):
        run(["perfmodel", "calibrate", "--inter-node", str(tmp_path / "absent.yaml"),
             "--ranks-per-node", "2", "--loaded-repeats", "0", "--out", str(tmp_path / "p.yaml")])
