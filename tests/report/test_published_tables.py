"""Every committed table under paper_tables/ re-renders, byte for byte, from the inputs published
beside it (recpar.published): a reader can re-derive each number from the records.

Checked: table1.md (from paper_tables/records/table1), baseline_quality.md (from
paper_tables/records/baseline_quality) and each sweep's Markdown/CSV/LaTeX tables and
quality_delta.md (from paper_tables/<sweep>/records). Figures are drawn too but compared only
for existence (PNG bytes depend on the matplotlib build).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from recpar.cli import main
from recpar.report.paper_tables import TABLE_FILES

ROOT = Path(__file__).resolve().parents[2]
PUBLISHED = ROOT / "paper_tables"
PAPER = PUBLISHED / "paper.yaml"


def sweep_dirs() -> list[Path]:
    """paper_tables/<sweep>/ folders that hold rendered sweep tables."""
    return sorted(d for d in PUBLISHED.iterdir() if (d / "table2.md").is_file())


def sweep_config(sweep: str) -> dict:
    """The config/*.yaml whose sweep is `sweep`, merged over config/config.yaml one level deep
    (as Snakemake's --configfile merges it for the keys read here)."""
    base = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    for cfg in sorted((ROOT / "config").glob("*.yaml")):
        data = yaml.safe_load(cfg.read_text()) or {}
        if (data.get("sweep") or {}).get("name") == sweep:
            return {**base, **data, "sweep": {**base["sweep"], **data["sweep"]}}
    raise LookupError(f"no config/*.yaml has sweep.name {sweep!r}")


def sweep_reference(sweep: str) -> str | None:
    """sweep.reference of the sweep's config (None: no reference)."""
    return sweep_config(sweep)["sweep"].get("reference")


def _same(committed: Path, rendered: Path) -> None:
    assert rendered.read_text() == committed.read_text(), (
        f"{committed.relative_to(ROOT)} differs from its re-rendering {rendered}: "
        "commit the table together with the records it was rendered from")


def _run(argv: list[str]) -> None:
    assert main([str(a) for a in argv]) == 0, f"recpar {' '.join(map(str, argv))} failed"


@pytest.mark.parametrize("sweep", [d.name for d in sweep_dirs()])
def test_sweep_tables_rerender_from_their_records(sweep, tmp_path):
    committed = PUBLISHED / sweep
    records = committed / "records"
    assert (records / "index.json").is_file(), f"{committed}: tables without their records"
    _run(["report", "tables", "--records", records, "--paper", PAPER, "--out-dir", tmp_path])
    for name in TABLE_FILES:
        _same(committed / name, tmp_path / name)
    reference = sweep_reference(sweep)
    if (committed / "quality_delta.md").is_file():
        assert reference is not None, f"{sweep}: quality_delta.md but no sweep.reference"
        out = tmp_path / "quality_delta.md"
        _run(["report", "quality-delta", "--records", records, "--reference", reference,
              "--out", out])
        _same(committed / "quality_delta.md", out)


def validated_sweeps() -> list[str]:
    """Sweeps whose cost-model validation is published (paper_tables/<sweep>/perfmodel/)."""
    return sorted(d.name for d in PUBLISHED.iterdir()
                  if (d / "perfmodel" / "validation_summary.md").is_file())


@pytest.mark.parametrize("sweep", validated_sweeps())
def test_cost_model_validation_rerenders_from_its_records_and_profile(sweep, tmp_path):
    committed = PUBLISHED / sweep / "perfmodel"
    role = sweep_config(sweep)["perfmodel_grid_role"]
    # the emulated host's calibrated profile, or a scale model's own (perfmodel scale-profile)
    [profile] = [p for p in (committed / "emulated_profile.yaml", committed / "scale_profile.yaml")
                 if p.is_file()]
    _run(["perfmodel", "validate", "--records", PUBLISHED / sweep / "records",
          "--hardware", profile, "--grid", sweep,
          "--grid-role", role, "--out", tmp_path])
    for name in ("validation_projected_vs_measured.csv", "validation_summary.md"):
        _same(committed / name, tmp_path / name)


def test_table1_rerenders_from_its_stats(tmp_path):
    out = tmp_path / "table1.md"
    _run(["data", "table1", "--stats", PUBLISHED / "records" / "table1", "--out", out])
    _same(PUBLISHED / "table1.md", out)


def test_baseline_quality_rerenders_from_its_records(tmp_path):
    out = tmp_path / "baseline_quality.md"
    _run(["report", "quality", "--records", PUBLISHED / "records" / "baseline_quality",
          "--out", out])
    _same(PUBLISHED / "baseline_quality.md", out)


def test_a_changed_record_is_caught(tmp_path):
    """The comparison can fail: a published record edited after rendering changes a table."""
    import shutil

    sweep = sweep_dirs()[0]
    records = tmp_path / "records"
    shutil.copytree(sweep / "records", records)
    baseline = next(records.glob("baseline-*/seed*/record.json"))
    text = baseline.read_text()
    key = '"throughput_samples_per_s": '
    at = text.index(key) + len(key)
    end = min(text.index(c, at) for c in ",}\n" if c in text[at:])
    baseline.write_text(text[:at] + str(float(text[at:end]) * 2) + text[end:])
    _run(["report", "tables", "--records", records, "--paper", PAPER, "--out-dir", tmp_path])
    assert (tmp_path / "table2.md").read_text() != (sweep / "table2.md").read_text()


def test_a_corrupt_record_stops_the_report_unless_skipped_and_then_is_listed(tmp_path, capsys):
    """A truncated record fails `report tables` naming the file; with --skip-invalid the
    tables are built from the rest and every table's notes name the file left out."""
    import shutil

    sweep = sweep_dirs()[0]
    records = tmp_path / "records"
    shutil.copytree(sweep / "records", records)
    broken = next(p for p in records.glob("*/seed*/record.json")
                  if not p.parent.parent.name.startswith("baseline"))
    broken.write_text(broken.read_text()[:500])  # a partial write
    assert main(["report", "tables", "--records", str(records), "--paper", str(PAPER),
                 "--out-dir", str(tmp_path / "strict")]) != 0
    assert f"recpar: error: {broken}: not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "strict" / "table2.md").exists()
    _run(["report", "tables", "--records", records, "--paper", PAPER, "--out-dir",
          tmp_path / "out", "--skip-invalid", "--publish-records", tmp_path / "pub"])
    for name in ("table2.md", "claims.md"):
        text = (tmp_path / "out" / name).read_text()
        assert "1 record(s) failed validation and were left out (--skip-invalid)" in text
        assert str(broken) in text
    published = list((tmp_path / "pub").glob("*/seed*/record.json"))
    assert published and broken.parent.parent.name not in {p.parent.parent.name
                                                           for p in published}
