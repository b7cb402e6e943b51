"""recpar.report.metrics: what one record says about its communication share."""

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
        "pp_idle_ms_per_iter": 20.0, "dp_grad_sync_ms_per_iter": 7.0})
    assert metrics.comm_share(hook) == (
        pytest.approx(27.0), "PP wait (P2P + bubble) + DP hook time (incl. overlapped)")
    # a part that was not measured: no share rather than a partial one
    assert metrics.comm_share(make_run("mp", tp=2, comm_ms=20)) == (None, None)
    assert metrics.comm_share(make_run("hybrid", dp=2, tp=2, metrics={
        "tp_comm_ms_per_iter": 3.0})) == (None, None)
