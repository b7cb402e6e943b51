"""`recpar report tables`: writes every file; errors name the record or the missing baseline."""

import pytest

from recpar.cli import main
from recpar.report.paper_tables import TABLE_FILES
from tests.report.record_factory import make_run, write_runs


def test_writes_all_files(tmp_path, capsys):
    paths = write_runs(tmp_path / "runs", [
        make_run("baseline", throughput=100), make_run("dp", dp=2, throughput=170, comm_ms=5),
        make_run("mp", tp=2, throughput=120, comm_ms=9), make_run("hybrid", dp=2, tp=2,
                                                                 throughput=260, comm_ms=7),
        make_run("dp", dp=4, nodes=2, throughput=300, comm_ms=12)])
    out = tmp_path / "out"
    assert main(["report", "tables", "--records", *map(str, paths),
                 "--paper", "paper_tables/paper.yaml", "--out-dir", str(out)]) == 0
    for name in TABLE_FILES + ("comm_share.png", "speedup_vs_nodes.png"):
        assert (out / name).stat().st_size > 0, name
    assert "utilisation_memory.png" in (out / "claims.md").read_text()  # why it is missing
    t3 = (out / "table3.md").read_text()
    assert "not run" in t3 and "3.00" in t3  # dp on 2 nodes: 300 / 100
    assert "projected" in (out / "table2.md").read_text()
    assert "inconsistent" in (out / "audit.md").read_text()


def test_invalid_record_is_named(tmp_path, capsys):
    paths = write_runs(tmp_path, [make_run("baseline")])
    bad = tmp_path / "broken.json"
    bad.write_text("{")
    assert main(["report", "tables", "--records", str(paths[0]), str(bad),
                 "--out-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: not valid JSON" in err


def test_records_without_baseline_say_which_table_needs_it(tmp_path, capsys):
    paths = write_runs(tmp_path, [make_run("dp", dp=2)])
    assert main(["report", "tables", "--records", *map(str, paths),
                 "--out-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "Table II (speedup column) needs a baseline record" in err
    assert not (tmp_path / "o").exists()  # nothing half-written


@pytest.mark.parametrize("bad_paper", ["missing.yaml"])
def test_missing_paper_file_is_named(tmp_path, capsys, bad_paper):
    paths = write_runs(tmp_path, [make_run("baseline")])
    assert main(["report", "tables", "--records", *map(str, paths), "--paper",
                 str(tmp_path / bad_paper), "--out-dir", str(tmp_path / "o")]) == 2
    assert f"{tmp_path / bad_paper}: paper values file not found" in capsys.readouterr().err
