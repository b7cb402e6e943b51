import pandas as pd
import pytest

from recpar.report import paper, projection, records, render, tables
from recpar.report.records import BaselineError
from recpar.report.tables import NOT_RUN
from tests.report.record_factory import make_run

PAPER = paper.load("paper_tables/paper.yaml")
NO_PROJ = projection.Projection({}, {}, "none (test)")


def _rs(runs):
    return records.group([(f"r{i}.json", r) for i, r in enumerate(runs)])


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


def test_outputs_render():
    rs = _rs([make_run("baseline"), make_run("dp", dp=2)])
    t2 = tables.table2(rs, PAPER, NO_PROJ)
    md = render.to_markdown(t2, "T", ["a note"])
    assert md.startswith("# T") and "| dp " in md and "- a note" in md
    assert "\\begin{tabular}" in render.to_latex(t2, "cap")
    assert isinstance(pd.read_csv(pd.io.common.StringIO(t2.to_csv(index=False))), pd.DataFrame)


def test_comm_share_table_tells_dp_rows_apart_by_their_gradient_sync():
    ring = make_run("dp", dp=2, nodes=2, comm_ms=30, exposed_ms=10, iter_ms=50)
    topk = make_run("dp", dp=2, nodes=2, comm_ms=3, exposed_ms=2, iter_ms=40)
    topk["config"]["grad_sync"] = {"algorithm": "ring", "compressor": "topk"}
    cs = tables.comm_share_table(_rs([make_run("baseline"), ring, topk]), PAPER, NO_PROJ)
    dp = cs[cs["scheme"] == "dp"].set_index("grad_sync")["comm_share_pct"]
    assert dp.to_dict() == {"ring/none": pytest.approx(20.0), "ring/topk": pytest.approx(5.0)}


def test_table3_says_which_gradient_sync_and_compressor_each_row_ran():
    """Issue 18 item 3: three dp rows on 2 nodes that differ only by compressor."""
    runs = [make_run("baseline", throughput=100), make_run("mp", tp=2, nodes=2, throughput=90)]
    for comp, tput in (("none", 300), ("sign", 310), ("topk", 320)):
        r = make_run("dp", dp=2, nodes=2, throughput=tput)
        r["config"]["grad_sync"] = {"algorithm": "ring", "compressor": comp}
        runs.append(r)
    hier = make_run("dp", dp=2, nodes=2, throughput=330)
    hier["config"]["grad_sync"] = {"algorithm": "hierarchical", "compressor": "none"}
    t3 = tables.table3(_rs(runs + [hier]), PAPER, NO_PROJ)
    cols = list(t3.columns)
    assert cols[cols.index("topology") + 1:cols.index("topology") + 3] == ["grad_sync",
                                                                            "compressor"]
    dp = t3[(t3["nodes"] == 2) & (t3["scheme"] == "dp")]
    assert sorted(zip(dp["grad_sync"], dp["compressor"], dp["throughput_samples_per_s"])) == [
        ("hierarchical", "none", 330), ("ring", "none", 300), ("ring", "sign", 310),
        ("ring", "topk", 320)]
    # no data parallelism: no gradient sync; a cell without records: not run
    mp = t3[(t3["nodes"] == 2) & (t3["scheme"] == "mp")]
    assert (mp["grad_sync"].item(), mp["compressor"].item()) == ("-", "-")
    empty = t3[(t3["nodes"] == 4) & (t3["scheme"] == "dp")]
    assert (empty["grad_sync"].item(), empty["compressor"].item()) == (NOT_RUN, NOT_RUN)
    md = render.to_markdown(t3, "T", [])
    assert "| grad_sync" in md and "| compressor" in md and "| topk" in md


def test_table2_shows_an_absent_global_batch_as_absent_not_zero():
    dp = make_run("dp", dp=2)
    del dp["config"]["train"]["global_batch_size"]
    t2 = tables.table2(_rs([make_run("baseline"), dp]), PAPER, NO_PROJ)
    assert pd.isna(t2[t2["scheme"] == "dp"]["global_batch"].item())
    assert t2[t2["scheme"] == "baseline"]["global_batch"].item() == 64
