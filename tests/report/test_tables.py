import pandas as pd
import pytest

from recpar.report import paper, tables
from recpar.report.tables import NOT_RUN, BaselineError, RecordsError
from tests.report.record_factory import make_run, write_runs

PAPER = paper.load("paper_tables/paper.yaml")
NO_PROJ = tables.Projection({}, {}, "none (test)")


def _rs(runs):
    return tables.group([(f"r{i}.json", r) for i, r in enumerate(runs)])


def test_speedup_uses_the_baseline_of_the_same_sweep_and_averages_seeds():
    runs = [make_run("baseline", throughput=100, seed=0), make_run("baseline", throughput=120, seed=1),
            make_run("dp", dp=2, throughput=330),
            # another sweep: a wider model, its own baseline
            make_run("baseline", throughput=50, d_model=128),
            make_run("dp", dp=2, throughput=90, d_model=128)]
    rs = _rs(runs)
    t2 = tables.table2(rs, PAPER, NO_PROJ)
    assert len(set(t2["sweep"])) == 2
    dp = t2[t2["scheme"] == "dp"].set_index("throughput_samples_per_s")["speedup"]
    assert dp[330] == pytest.approx(330 / 110)  # mean of the two seeds' baselines
    assert dp[90] == pytest.approx(90 / 50)
    base = t2[(t2["scheme"] == "baseline") & (t2["throughput_samples_per_s"] == 110)]
    assert base["seeds"].item() == 2 and base["speedup"].item() == pytest.approx(1.0)
    # the seeds' spread: sample std of 100 and 120 = sqrt(200) ≈ 14.14; one seed has none
    assert base["throughput_samples_per_s_std"].item() == pytest.approx(200 ** 0.5)
    assert t2[t2["scheme"] == "dp"]["throughput_samples_per_s_std"].isna().all()
    t3 = tables.table3(rs, PAPER, NO_PROJ)
    assert (t3[t3["throughput_samples_per_s"] == 110]["throughput_samples_per_s_std"].item()
            == pytest.approx(200 ** 0.5))
    assert dp.index.size == 2 and (t2[t2["scheme"] == "dp"]["paper_speedup"] == 3.4).all()


def test_table3_marks_cells_without_records_not_run():
    rs = _rs([make_run("baseline", throughput=100), make_run("dp", dp=4, nodes=2, throughput=300)])
    t3 = tables.table3(rs, PAPER, NO_PROJ)
    cell = t3[(t3["nodes"] == 2) & (t3["scheme"] == "dp")]
    assert cell["speedup"].item() == pytest.approx(3.0) and cell["paper_speedup"].item() == 3.4
    empty = t3[(t3["nodes"] == 4) & (t3["scheme"] == "hybrid")]
    assert empty["speedup"].item() == NOT_RUN and empty["paper_speedup"].item() == 14.6
    assert set(t3[t3["nodes"] == 3]["throughput_samples_per_s"]) == {NOT_RUN}


def test_a_sweep_without_baseline_is_an_error_naming_table_and_sweep():
    rs = _rs([make_run("baseline", throughput=100), make_run("dp", dp=2, d_model=128)])
    with pytest.raises(BaselineError, match=r"Table III .* sweep [0-9a-f]{8} \(movielens-100k, "
                                            r"model d_model×layers 128×2"):
        tables.table3(rs, PAPER, NO_PROJ)
    with pytest.raises(BaselineError, match="Table II"):
        tables.table2(rs, PAPER, NO_PROJ)


def test_failed_and_most_popular_records_are_left_out_and_listed():
    rs = _rs([make_run("baseline"), make_run("dp", dp=2, status="failed"),
              make_run("most-popular")])
    assert [r.key.scheme for r in rs.rows] == ["baseline"]
    assert len(rs.skipped) == 2 and "status failed" in rs.skipped[0]


def test_comm_share_prefers_exposed_time_and_says_its_basis():
    a = make_run("dp", dp=2, comm_ms=30, exposed_ms=10, iter_ms=50)
    b = make_run("zero", dp=2, comm_ms=20, iter_ms=80)
    assert tables.comm_share(a) == (pytest.approx(20.0), "exposed")
    assert tables.comm_share(b) == (pytest.approx(25.0), "hook time (incl. overlapped)")
    assert tables.comm_share(make_run("baseline")) == (0.0, "single device")


def test_model_parallel_comm_share_adds_tp_pp_and_dp_parts():
    """mp/hybrid: TP time blocked + pipeline waits (idle, tied-table all-reduce, loss
    broadcast) + DP exposed (else hook time), over rank 0's iteration."""
    tp = make_run("mp", tp=2, iter_ms=80, metrics={"tp_comm_ms_per_iter": 20.0})
    assert tables.comm_share(tp) == (pytest.approx(25.0), "TP blocked")
    pp = make_run("mp", pp=2, iter_ms=100, metrics={
        "pp_idle_ms_per_iter": 30.0, "pp_tied_grad_allreduce_ms_per_iter": 4.0,
        "pp_loss_broadcast_ms_per_iter": 1.0})
    assert tables.comm_share(pp) == (pytest.approx(35.0), "PP wait (P2P + bubble)")
    hy = make_run("hybrid", dp=2, tp=2, comm_ms=12, exposed_ms=5, iter_ms=50,
                  metrics={"tp_comm_ms_per_iter": 10.0, "dp_grad_sync_ms_per_iter": 12.0})
    assert tables.comm_share(hy) == (pytest.approx(30.0), "TP blocked + DP exposed")
    hook = make_run("hybrid", dp=2, pp=2, comm_ms=7, iter_ms=100, metrics={
        "pp_idle_ms_per_iter": 20.0, "dp_grad_sync_ms_per_iter": 7.0})
    assert tables.comm_share(hook) == (
        pytest.approx(27.0), "PP wait (P2P + bubble) + DP hook time (incl. overlapped)")
    # a part that was not measured: no share rather than a partial one
    assert tables.comm_share(make_run("mp", tp=2, comm_ms=20)) == (None, None)
    assert tables.comm_share(make_run("hybrid", dp=2, tp=2, metrics={
        "tp_comm_ms_per_iter": 3.0})) == (None, None)


def test_invalid_record_is_named(tmp_path):
    good = write_runs(tmp_path, [make_run("baseline")])
    bad = tmp_path / "bad" / "record.json"
    bad.parent.mkdir()
    bad.write_text('{"schema_version": 1}')
    with pytest.raises(RecordsError, match=f"{bad}: invalid run record"):
        tables.load_records(good + [bad])
    with pytest.raises(RecordsError, match="missing.json: run record not found"):
        tables.load_records([tmp_path / "missing.json"])


def test_outputs_render():
    rs = _rs([make_run("baseline"), make_run("dp", dp=2)])
    t2 = tables.table2(rs, PAPER, NO_PROJ)
    md = tables.to_markdown(t2, "T", ["a note"])
    assert md.startswith("# T") and "| dp " in md and "- a note" in md
    assert "\\begin{tabular}" in tables.to_latex(t2, "cap")
    assert isinstance(pd.read_csv(pd.io.common.StringIO(t2.to_csv(index=False))), pd.DataFrame)


def test_sweep_notes_state_the_commit_and_topology_of_the_records():
    dirty = make_run("dp", dp=4, nodes=2, throughput=300)
    dirty["git"] = {"commit": "b" * 40, "dirty": True}
    notes = tables.sweep_notes(_rs([make_run("baseline", throughput=100), dirty]))
    assert len(notes) == 1
    assert "git aaaaaaaaaaaa, bbbbbbbbbbbb+dirty" in notes[0]
    assert "topology emulated, local" in notes[0]


def test_comm_share_table_tells_dp_rows_apart_by_their_gradient_sync():
    ring = make_run("dp", dp=2, nodes=2, comm_ms=30, exposed_ms=10, iter_ms=50)
    topk = make_run("dp", dp=2, nodes=2, comm_ms=3, exposed_ms=2, iter_ms=40)
    topk["config"]["grad_sync"] = {"algorithm": "ring", "compressor": "topk"}
    cs = tables.comm_share_table(_rs([make_run("baseline"), ring, topk]), PAPER, NO_PROJ)
    dp = cs[cs["scheme"] == "dp"].set_index("grad_sync")["comm_share_pct"]
    assert dp.to_dict() == {"ring/none": pytest.approx(20.0), "ring/topk": pytest.approx(5.0)}
