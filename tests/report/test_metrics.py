"""recpar.report.metrics: what one record says about its communication share."""

import pandas as pd
import pytest

from recpar.report import metrics
from tests.report.record_factory import make_run


def test_comm_share_prefers_exposed_time_and_says_its_basis():
    a = make_run("dp", dp=2, comm_ms=30, exposed_ms=10, iter_ms=50)
    b = make_run("zero", dp=2, comm_ms=20, iter_ms=80)
    assert metrics.comm_share(a) == (pytest.approx(20.0), "exposed")
    assert metrics.comm_share(b) == (pytest.approx(25.0), "hook time (incl. overlapped)")
    assert metrics.comm_share(make_run("baseline")) == (0.0, "single device")


def test_model_parallel_comm_share_adds_tp_pp_and_dp_parts():
    """mp/hybrid: TP time blocked + pipeline waits (idle, tied-table all-reduce, loss
    broadcast) + DP exposed (else hook time), over rank 0's iteration."""
    tp = make_run("mp", tp=2, iter_ms=80, metrics={"tp_comm_ms_per_iter": 20.0})
    assert metrics.comm_share(tp) == (pytest.approx(25.0), "TP blocked")
    pp = make_run("mp", pp=2, iter_ms=100, metrics={
        "pp_idle_ms_per_iter": 30.0, "pp_tied_grad_allreduce_ms_per_iter": 4.0,
        "pp_loss_broadcast_ms_per_iter": 1.0})
    assert metrics.comm_share(pp) == (pytest.approx(35.0), "PP wait (P2P + bubble)")
    hy = make_run("hybrid", dp=2, tp=2, comm_ms=12, exposed_ms=5, iter_ms=50,
                  metrics={"tp_comm_ms_per_iter": 10.0, "dp_grad_sync_ms_per_iter": 12.0})
    assert metrics.comm_share(hy) == (pytest.approx(30.0), "TP blocked + DP exposed")
    hook = make_run("hybrid", dp=2, pp=2, comm_ms=7, iter_ms=100, metrics={
        "pp_idle_ms_per_iter": 20.0, "dp_grad_sync_ms_per_iter": 7.0,
        "pp_tied_grad_allreduce_ms_per_iter": 0.0, "pp_loss_broadcast_ms_per_iter": 0.0})
    assert metrics.comm_share(hook) == (
        pytest.approx(27.0), "PP wait (P2P + bubble) + DP hook time (incl. overlapped)")
    # a part that was not measured: no share rather than a partial one, and the basis says
    # what is missing
    assert metrics.comm_share(make_run("mp", tp=2, comm_ms=20)) == (
        None, "not measured: tp_comm_ms_per_iter absent")
    assert metrics.comm_share(make_run("hybrid", dp=2, tp=2, metrics={
        "tp_comm_ms_per_iter": 3.0})) == (
        None, "not measured: exposed_comm_ms_per_iter or dp_grad_sync_ms_per_iter absent")


@pytest.mark.parametrize("absent", ["pp_idle_ms_per_iter", "pp_tied_grad_allreduce_ms_per_iter",
                                    "pp_loss_broadcast_ms_per_iter"])
@pytest.mark.parametrize("scheme, degrees", [("mp", {"pp": 2}), ("mp", {"tp": 2, "pp": 2}),
                                             ("hybrid", {"dp": 2, "pp": 2})])
def test_a_missing_pipeline_part_makes_the_share_not_measured(absent, scheme, degrees):
    """Issue 18 item 6: the tied-table all-reduce and the loss broadcast used to count as 0
    when absent, giving a smaller share than the parts that were measured imply."""
    parts = {"pp_idle_ms_per_iter": 30.0, "pp_tied_grad_allreduce_ms_per_iter": 4.0,
             "pp_loss_broadcast_ms_per_iter": 1.0, "tp_comm_ms_per_iter": 10.0,
             "exposed_comm_ms_per_iter": 5.0}
    full = make_run(scheme, iter_ms=100, metrics=parts, **degrees)
    share, basis = metrics.comm_share(full)
    assert share is not None and not basis.startswith(metrics.NOT_MEASURED)
    del parts[absent]
    rec = make_run(scheme, iter_ms=100, metrics=parts, **degrees)
    assert metrics.comm_share(rec) == (None, f"not measured: {absent} absent")
    assert metrics.MEASURES["comm_share_pct"](rec) is None


def test_every_part_the_plan_implies_is_named_when_absent():
    rec = make_run("hybrid", dp=2, tp=2, pp=2, iter_ms=100, metrics={"pp_idle_ms_per_iter": 3.0})
    assert metrics.comm_share(rec) == (None, (
        "not measured: tp_comm_ms_per_iter and pp_tied_grad_allreduce_ms_per_iter and "
        "pp_loss_broadcast_ms_per_iter and exposed_comm_ms_per_iter or "
        "dp_grad_sync_ms_per_iter absent"))
    no_iter = make_run("dp", dp=2, exposed_ms=5, metrics={"iter_ms": None})
    assert metrics.comm_share(no_iter) == (None, "not measured: iter_ms absent")


def test_a_row_with_an_unmeasured_share_says_so_in_the_basis_column():
    from recpar.report import paper, projection, records, tables
    rec = make_run("mp", pp=2, iter_ms=100, metrics={"pp_idle_ms_per_iter": 30.0,
                                                     "pp_tied_grad_allreduce_ms_per_iter": 4.0})
    rs = records.group([("b.json", make_run("baseline")), ("m.json", rec)])
    cs = tables.comm_share_table(rs, paper.load("paper_tables/paper.yaml"),
                                 projection.Projection({}, {}, "none (test)"))
    mp = cs[cs["scheme"] == "mp"].iloc[0]
    assert pd.isna(mp["comm_share_pct"]) and pd.isna(mp["compute_share_pct"])
    assert mp["basis"] == "not measured: pp_loss_broadcast_ms_per_iter absent"
