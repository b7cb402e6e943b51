import pytest

from recpar.report import claims, paper, projection, records
from recpar.report.claims import MET, MISSED, NOT_RUN
from tests.report.record_factory import HARDWARE_A100, make_run

PAPER = paper.load("paper_tables/paper.yaml")
NO_PROJ = projection.Projection({}, {}, "none (test)")


def _claims(runs, proj=NO_PROJ) -> dict[str, claims.ClaimResult]:
    rs = records.group([(f"r{i}.json", r) for i, r in enumerate(runs)])
    return {c.id: c for c in claims.check_claims(rs, PAPER, proj)}


@pytest.mark.parametrize("dp_throughput, status", [(306.0, MET), (305.9, MISSED),
                                                   (374.0, MET), (374.1, MISSED)])
def test_speedup_claim_flips_at_the_tolerance_edge(dp_throughput, status):
    # paper: dp on 8 devices 3.4x, ±10 % relative -> [3.06, 3.74]
    c = _claims([make_run("baseline", throughput=100), make_run("dp", dp=8, throughput=dp_throughput)])
    assert c["T2-speedup-dp"].status == status
    if status == MISSED:
        assert "outside the band by 0.001" in c["T2-speedup-dp"].detail


def test_speedup_at_another_scale_is_not_run_and_shows_what_was_measured():
    c = _claims([make_run("baseline", throughput=100), make_run("dp", dp=2, throughput=180)])
    assert c["T2-speedup-dp"].status == NOT_RUN
    assert "8 device(s)" in c["T2-speedup-dp"].detail and "dp2·tp1·pp1" in c["T2-speedup-dp"].detail
    assert c["T3-speedup-hybrid-4n"].status == NOT_RUN
    assert c["T2-throughput-dp"].status == NOT_RUN  # CPU: absolute numbers are not judged


@pytest.mark.parametrize("delta, status", [(0.01, MET), (-0.01, MET), (0.0102, MISSED)])
def test_quality_claim_flips_at_the_tolerance_edge(delta, status):
    c = _claims([make_run("baseline", hr=0.25), make_run("dp", dp=2, hr=0.25 + delta)])
    assert c["Q-dp"].status == status


def test_quality_claims_without_parallel_records_are_not_run():
    c = _claims([make_run("baseline")])
    assert all(c[f"Q-{s}"].status == NOT_RUN for s in ("dp", "mp", "hybrid"))


@pytest.mark.parametrize("hybrid, status", [(130.0, MET), (129.9, MISSED)])
def test_abstract_throughput_gain_is_judged_against_the_faster_single_mode_scheme(hybrid, status):
    runs = [make_run("baseline", throughput=50), make_run("dp", dp=4, throughput=100),
            make_run("mp", tp=2, pp=2, throughput=80), make_run("hybrid", dp=2, tp=2, throughput=hybrid)]
    c = _claims(runs)
    assert c["A-hybrid_throughput_gain_pct"].status == status
    assert "vs dp 100" in c["A-hybrid_throughput_gain_pct"].detail
    assert c["T3-order"].status == MET


def test_absolute_numbers_are_judged_on_the_paper_hardware_and_gpu_utilisation():
    runs = [make_run("baseline", throughput=1000, hardware=HARDWARE_A100, gpu_util=75),
            make_run("dp", dp=8, throughput=3400, hardware=HARDWARE_A100, gpu_util=70,
                     comm_ms=1.8)]
    c = _claims(runs)
    assert c["T2-throughput-baseline"].status == MET
    assert c["T2-throughput-dp"].status == MET and c["T2-comm-dp"].status == MET
    assert c["T2-util-baseline"].status == MET  # 75 vs 72 ± 5
    assert c["T2-util-dp"].status == MISSED and "by 10.0" in c["T2-util-dp"].detail


def test_table1_counts_from_amazon_records():
    stats = {"users": 192403, "items": 63001, "train": 1735654, "valid": 216957, "test": 216950}
    c = _claims([make_run("baseline", dataset="amazon-electronics-2014", stats=stats)])
    assert c["T1-users"].status == MET and c["T1-test"].status == MISSED
    assert "-6" in c["T1-test"].detail


def test_projected_values_are_judged_in_their_own_column():
    proj = projection.Projection(
        table2={"dp": {"speedup": 3.5, "throughput_samples_per_s": 9000.0}},
        table3={}, caption="test projection")
    c = _claims([make_run("baseline")], proj)
    assert c["T2-speedup-dp"].status == NOT_RUN
    assert (c["T2-speedup-dp"].projected, c["T2-speedup-dp"].projected_status) == ("3.50", MET)
    assert c["T2-throughput-dp"].projected_status == MISSED


def test_markdown_counts_and_lists_figures_not_drawn():
    rs = records.group([("r.json", make_run("baseline"))])
    res = claims.check_claims(rs, PAPER, NO_PROJ)
    md = claims.claims_markdown(res, NO_PROJ, [("comm_share.png", "no parallel record")], [])
    assert f"{sum(r.status == NOT_RUN for r in res)} not run" in md
    assert "- comm_share.png: no parallel record" in md


@pytest.mark.parametrize("hybrid_tp_ms, status", [(10.0, MET), (30.0, MISSED)])
def test_fig4_ordering_uses_the_model_parallel_shares(hybrid_tp_ms, status):
    """4 devices each: dp 20 % exposed; mp tp2×pp2 40 % (TP 25 + PP wait 15); hybrid dp2×tp2
    TP + 5 exposed DP: 15 % (met: hybrid lowest, mp highest) or 35 % (missed)."""
    runs = [make_run("baseline"),
            make_run("dp", dp=4, comm_ms=30, exposed_ms=20, iter_ms=100),
            make_run("mp", tp=2, pp=2, iter_ms=100, metrics={
                "tp_comm_ms_per_iter": 25.0, "pp_idle_ms_per_iter": 15.0}),
            make_run("hybrid", dp=2, tp=2, comm_ms=9, exposed_ms=5, iter_ms=100, metrics={
                "tp_comm_ms_per_iter": hybrid_tp_ms, "dp_grad_sync_ms_per_iter": 9.0})]
    c = _claims(runs)["F4-order"]
    assert c.status == status
    assert c.measured == f"dp 20.0 %, mp 40.0 %, hybrid {hybrid_tp_ms + 5:.1f} %"


def test_quality_claim_leaves_compressed_dp_rows_out_and_says_so():
    """The paper's DP row is uncompressed ring all-reduce; a lossy top-k row far off the
    baseline does not fail Q-dp, and the detail counts it."""
    topk = make_run("dp", dp=2, hr=0.10)
    topk["config"]["grad_sync"] = {"algorithm": "ring", "compressor": "topk"}
    c = _claims([make_run("baseline", hr=0.25), make_run("dp", dp=2, hr=0.251), topk])["Q-dp"]
    assert c.status == MET
    assert "1 row(s) with compressed gradient sync left out" in c.detail
    only = _claims([make_run("baseline", hr=0.25), topk])["Q-dp"]
    assert only.status == NOT_RUN and "left out" in only.detail
