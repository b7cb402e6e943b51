"""recpar.train.measured_comm: one definition of a record's measured communication."""

from recpar.train.measured_comm import measured_comm
from tests.report.record_factory import make_run


def test_parts_follow_the_plan_and_a_missing_metric_is_never_zero():
    hy = make_run("hybrid", dp=2, tp=2, pp=2, exposed_ms=5, iter_ms=50, metrics={
        "tp_comm_ms_per_iter": 10.0, "pp_idle_ms_per_iter": 7.0,
        "pp_tied_grad_allreduce_ms_per_iter": 2.0, "pp_loss_broadcast_ms_per_iter": 1.0})
    ms, parts, missing = measured_comm(hy)
    assert (ms, [p.kind for p in parts], missing) == (25.0, ["tp", "pp_wait", "dp_exposed"], [])
    ds = make_run("deepspeed", pp=2)  # pipeline waits not timed by that engine
    ms, parts, missing = measured_comm(ds)
    assert ms is None and missing == ["pp_idle_ms_per_iter", "pp_tied_grad_allreduce_ms_per_iter",
                                      "pp_loss_broadcast_ms_per_iter"]
    dp = make_run("dp", dp=2)  # neither exposed nor hook time
    assert measured_comm(dp)[2] == ["exposed_comm_ms_per_iter or comm_ms_per_iter"]


def test_the_report_and_the_cost_model_validation_read_the_same_parts():
    from recpar.perfmodel.validation import measured_comm as validation_comm
    from recpar.report.metrics import comm_share

    rec = make_run("mp", tp=2, pp=2, iter_ms=100, metrics={
        "tp_comm_ms_per_iter": 20.0, "pp_idle_ms_per_iter": 10.0,
        "pp_tied_grad_allreduce_ms_per_iter": 3.0, "pp_loss_broadcast_ms_per_iter": 2.0})
    assert validation_comm(rec)[0] == 35.0 and comm_share(rec)[0] == 35.0
