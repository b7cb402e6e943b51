import pytest

from recpar.report.quality import quality_table
from recpar.train import record
from recpar.train.record import RecordError
from tests.train.test_record import make_record


def test_seeds_are_aggregated_mean_std(tmp_path):
    paths = [record.write(make_record(seed=s, hr=h), tmp_path / f"s{s}" / "record.json")
             for s, h in [(0, 0.2), (1, 0.4)]]
    paths.append(record.write(make_record(run_id="most-popular", hr=0.05),
                              tmp_path / "pop" / "record.json"))
    table = quality_table(paths)
    rows = [l for l in table.splitlines() if l.startswith("| baseline") or l.startswith("| most")]
    assert rows[0].split(" | ")[1:3] == ["2", "0.3000 ± 0.1414"]  # std with ddof=1
    assert rows[1].split(" | ")[1:3] == ["1", "0.0500"]


def test_bad_record_is_named(tmp_path):
    bad = tmp_path / "record.json"
    bad.write_text("{}")
    with pytest.raises(RecordError, match=str(bad)):
        quality_table([bad])
