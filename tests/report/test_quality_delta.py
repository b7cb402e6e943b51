import pytest

from recpar.report.quality_delta import (CELLS, compare_to_reference, delta_table,
                                         seed_spread_tolerance)
from recpar.report.records import load_records
from recpar.train import record
from tests.train.test_record import make_record

REF = "dp2-ring-tiny-n1"


def _rec(run_id, seed, hr, ndcg, epochs=3, train_s=12.0):
    rec = make_record(run_id=run_id, seed=seed, hr=hr, ndcg=ndcg)
    rec["history"] = [{"epoch": e} for e in range(epochs)]
    rec["timing"]["total_train_s"] = train_s
    return rec


def test_deltas_are_paired_by_seed_and_judged_per_cell():
    recs = [_rec(REF, 0, 0.20, 0.10), _rec(REF, 1, 0.30, 0.15),
            _rec("sign", 0, 0.195, 0.09),  # seed 0 only: compared with the reference's seed 0
            _rec("async", 0, 0.17, 0.10, epochs=5, train_s=30.0)]
    out = {d.run_id: d for d in compare_to_reference(recs, REF, tolerance=0.02)}
    assert set(out) == {"sign", "async"}
    sign = out["sign"]
    assert sign.seeds == (0,)
    assert sign.delta[("full", "hr_at_10")] == pytest.approx(-0.005)
    assert sign.delta[("sampled100", "ndcg_at_10")] == pytest.approx(-0.01)
    assert sign.all_within and sign.worst_miss == 0.0
    a = out["async"]
    assert a.within[("full", "hr_at_10")] is False and a.within[("full", "ndcg_at_10")] is True
    assert not a.all_within and a.worst_miss == pytest.approx(0.01)
    assert (a.epochs, a.train_s) == (5.0, 30.0)


def test_seed_spread_tolerance_has_a_floor():
    recs = [_rec(REF, 0, 0.20, 0.100), _rec(REF, 1, 0.23, 0.104)]
    tol = seed_spread_tolerance(recs, REF, floor=0.01)
    assert tol[("full", "hr_at_10")] == pytest.approx(0.03)  # spread above the floor
    assert tol[("full", "ndcg_at_10")] == 0.01  # spread 0.004 below it
    assert seed_spread_tolerance(recs[:1], REF, floor=0.01) == {c: 0.01 for c in CELLS}


def test_table_reports_misses(tmp_path):
    paths = [record.write(r, tmp_path / f"{r['run_id']}{r['seed']}" / "record.json")
             for r in [_rec(REF, 0, 0.20, 0.10), _rec("topk", 0, 0.10, 0.05)]]
    recs = [r for _, r in load_records(paths)]
    table = delta_table(compare_to_reference(recs, REF, 0.01), REF)
    row = next(line for line in table.splitlines() if line.startswith("| topk"))
    assert "0.1000 (-0.1000)" in row and "no (misses by 0.0900)" in row
    assert f"| {REF} (reference) | 0 | 0.2000" in table


@pytest.mark.parametrize("recs, ref, tol, match", [
    ([_rec("a", 0, 0.1, 0.1)], REF, 0.01, "reference run 'dp2-ring-tiny-n1': no records"),
    ([_rec(REF, 0, 0.1, 0.1), _rec("a", 1, 0.1, 0.1)], REF, 0.01, "'a' .* shares no seed"),
    ([_rec(REF, 0, 0.1, 0.1), _rec(REF, 0, 0.2, 0.1)], REF, 0.01, "two records for seed 0"),
    ([_rec(REF, 0, 0.1, 0.1)], REF, -0.1, "tolerance: must be >= 0"),
    ([_rec(REF, 0, 0.1, 0.1)], REF, {("full", "hr_at_10"): 0.1}, "tolerance: no value for"),
])
def test_bad_inputs_are_named(recs, ref, tol, match):
    with pytest.raises(ValueError, match=match):
        compare_to_reference(recs, ref, tol)


def test_cli_writes_the_delta_table(tmp_path):
    from recpar.cli import main

    paths = [str(record.write(r, tmp_path / f"{r['run_id']}{r['seed']}" / "record.json"))
             for r in [_rec(REF, 0, 0.20, 0.10), _rec(REF, 1, 0.23, 0.11),
                       _rec("sign", 0, 0.19, 0.10), _rec("sign", 1, 0.10, 0.05)]]
    out = tmp_path / "delta.md"
    assert main(["report", "quality-delta", "--records", *paths, "--reference", REF,
                 "--out", str(out)]) == 0
    text = out.read_text()
    # seed spread of the reference's HR@10 (0.03) is above the floor: it is the tolerance
    assert "HR@10 full 0.0300" in text and "| sign | 0,1 |" in text
