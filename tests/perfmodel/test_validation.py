"""The validation table (recpar.perfmodel.validation) and its summary
(recpar.perfmodel.validation_summary), on stubbed records and hand-made profiles."""

import pytest

from recpar.perfmodel.cli import _csv
from recpar.perfmodel.hardware import profile_from_mapping
from recpar.perfmodel.predict import scenario_from_record
from recpar.perfmodel.validation import (CALIBRATION, MISSED, NOT_JUDGED, NOT_PREDICTED,
                                         TARGET_PCT, VALIDATED, WITHIN, measured_comm,
                                         validation_rows)
from recpar.perfmodel.validation_summary import (calibration_spread, grids, measure_summary,
                                                 rows_from_csv, summary_markdown)

from .conftest import fig, toy_mapping
from .test_predict import record

SINGLE = {"plan": {"dp": 1, "tp": 1, "pp": 1, "world_size": 1},
          "topology": {"kind": "local", "nodes": 1, "ranks_per_node": 1}}


def baseline(**metrics):
    return record(scheme="baseline", run_id="baseline", **SINGLE,
                  metrics={"iter_ms": 10.0, **metrics})


def predicted(rec, hw):
    """The row of `rec` as the table prints it (to build measurements around it)."""
    return validation_rows([("r", rec)], hw, grid_role="development")[0]


def loaded_profile(spread=None):
    """Toy profile whose shared host has loaded-step lines at record()'s shape for W = 1, 2."""
    m = toy_mapping()
    fps = scenario_from_record(record()).shape.train_flops_per_sequence
    by = {}
    for w, (fixed, per_seq) in {1: (0.002, 0.0005), 2: (0.003, 0.0008)}.items():
        by[w] = {"fixed_s": fig(fixed), "per_sequence_s": fig(per_seq)}
        if spread is not None:
            by[w].update(repeats=fig(3), spread_pct=fig(spread * w))
    m["shared_host"] = {"cores": fig(2),
                        "model_flops_per_s_by_threads": {1: fig(1e9), 2: fig(1.6e9)},
                        "loaded_step": {"flops_per_sequence": fig(fps), "by_ranks": by}}
    return profile_from_mapping(m, "loaded.yaml")


def test_comm_missed_while_iteration_within(toy_hw):
    """Iteration time within the band and communication off by 100 %: comm is `missed`, in its
    own column, whatever the iteration verdict."""
    p = predicted(record(), toy_hw)
    rec = record(metrics={"iter_ms": p["predicted_iter_ms"] * 1.05,
                          "exposed_comm_ms_per_iter": p["predicted_comm_ms_per_iter"] / 2,
                          "comm_ms_per_iter": 99.0})
    row = validation_rows([("r", rec)], toy_hw, grid_role="held-out")[0]
    assert row["iter_verdict"] == WITHIN and row["comm_verdict"] == MISSED
    assert row["iter_error_pct"] == pytest.approx(100 * (1 / 1.05 - 1))
    assert row["comm_error_pct"] == pytest.approx(100.0)
    assert row["target_pct"] == TARGET_PCT == 15.0
    assert row["comm_basis"].startswith("measured: DP exposed")  # exposed, not the hook time
    s = measure_summary([row], "comm")
    assert (s["judged"], s["within"], s["missed"]) == (1, 0, 1)
    assert measure_summary([row], "iter")["within"] == 1
    text = summary_markdown([row])
    assert "| communication time | 1 | 0 | 1 |" in text and "| iteration time | 1 | 1 | 0 |" in text
    assert "within ±15 %" in text


def test_hook_time_when_no_exposed_time_and_a_comm_within(toy_hw):
    p = predicted(record(), toy_hw)
    rec = record(metrics={"iter_ms": p["predicted_iter_ms"] * 2,
                          "comm_ms_per_iter": p["predicted_comm_ms_per_iter"] * 1.1})
    row = validation_rows([("r", rec)], toy_hw, grid_role="development")[0]
    assert row["comm_basis"] == ("measured: DP hook time (incl. what backward hid); predicted: "
                                 "whole DP sync + compression")
    assert row["comm_verdict"] == WITHIN and row["iter_verdict"] == MISSED


def test_model_parallel_comm_parts_and_what_is_not_measured(toy_hw):
    tp2 = {"plan": {"dp": 1, "tp": 2, "pp": 1, "world_size": 2},
           "topology": {"kind": "emulated", "nodes": 1, "ranks_per_node": 2}}
    row = predicted(record(scheme="mp", **tp2, metrics={"iter_ms": 5.0,
                                                        "tp_comm_ms_per_iter": 1.0}), toy_hw)
    assert row["comm_basis"] == "measured: TP blocked; predicted: TP all-reduces"
    assert row["measured_comm_ms_per_iter"] == 1.0 and row["comm_verdict"] in (WITHIN, MISSED)
    pp2 = {"plan": {"dp": 1, "tp": 1, "pp": 2, "world_size": 2, "num_microbatches": 4},
           "topology": {"kind": "emulated", "nodes": 2, "ranks_per_node": 1}}
    mp = record(scheme="mp", **pp2, metrics={"iter_ms": 5.0, "pp_idle_ms_per_iter": 2.0})
    ms, why = measured_comm(mp)
    assert ms is None and why == ("not measured: pp_tied_grad_allreduce_ms_per_iter, "
                                  "pp_loss_broadcast_ms_per_iter absent from the record")
    ds = predicted(record(scheme="deepspeed", run_id="ds", **pp2, metrics={"iter_ms": 5.0}),
                   toy_hw)
    assert ds["row_role"] == VALIDATED and ds["iter_verdict"] in (WITHIN, MISSED)
    assert ds["comm_verdict"] == NOT_JUDGED and ds["measured_comm_ms_per_iter"] is None
    assert "DeepSpeed engine does not time its communication" in ds["note"]
    assert measure_summary([ds], "comm")["not_judged"] == [("ds", ds["note"])]


def test_a_scheme_the_model_cannot_price_keeps_its_row_with_the_reason(toy_hw):
    pp4 = {"plan": {"dp": 1, "tp": 1, "pp": 4, "world_size": 4, "num_microbatches": 8},
           "topology": {"kind": "emulated", "nodes": 4, "ranks_per_node": 1}}
    recs = [("a.json", record(scheme="async", run_id="async3")),
            ("p.json", record(scheme="mp", run_id="pp4", **pp4)),
            ("d.json", record())]
    rows = validation_rows(recs, toy_hw, grid_role="development", grid="g")
    assert [r["run_id"] for r in rows] == ["async3", "pp4", "dp2-ring"]  # none dropped
    a, p, d = rows
    assert a["row_role"] == p["row_role"] == NOT_PREDICTED
    assert a["note"].startswith("not predicted: scheme async: the cost model has no model")
    assert p["note"] == ("not predicted: plan.pipeline_model_parallel_size 4 exceeds "
                         "model.n_layers 2")
    for r in (a, p):
        assert r["iter_verdict"] == r["comm_verdict"] == NOT_JUDGED
        assert r["predicted_iter_ms"] is None and r["measured_iter_ms"] == 10.0
    assert p["pp"] == 4 and p["nodes"] == 4  # read from the record itself
    assert measure_summary(rows, "iter")["judged"] == 1
    text = summary_markdown(rows)
    assert "- `async3`: not predicted: scheme async" in text
    assert "- `pp4`: not predicted:" in text


def test_baseline_row_is_the_calibration_and_left_out_of_the_summary():
    hw = loaded_profile(spread=4.0)
    rows = validation_rows([("b.json", baseline()), ("d.json", record())], hw,
                           grid_role="held-out", grid="g")
    b, d = rows
    assert b["row_role"] == CALIBRATION and b["compute_basis"] == "loaded_step"
    assert b["iter_verdict"] == b["comm_verdict"] == NOT_JUDGED
    assert b["iter_error_pct"] is not None  # the number is shown, not judged
    assert b["note"].startswith("calibration workload: the prediction is the calibration's "
                                "own timing of this single-rank step")
    assert d["row_role"] == VALIDATED and d["compute_basis"] == "loaded_step"
    s = measure_summary(rows, "iter")
    assert s["judged"] == 1 and "baseline" not in [run for run, _ in s["not_judged"]]
    text = summary_markdown(rows)
    assert "| iteration time | 1 |" in text
    assert "- `baseline`: calibration workload:" in text


def test_calibration_spread_is_shown_next_to_the_target():
    hw = loaded_profile(spread=4.0)
    rows = validation_rows([("b.json", baseline()), ("d.json", record())], hw,
                           grid_role="development")
    assert [(r["calibration_repeats"], r["calibration_spread_pct"]) for r in rows] == \
        [(3, 4.0), (3, 8.0)]
    assert calibration_spread(rows) == {1: (3, 4.0), 2: (3, 8.0)}
    text = summary_markdown(rows)
    assert "spread next to the 15 % target" in text
    assert "- W = 1: 4.0 % over 3 repeats" in text and "- W = 2: 8.0 % over 3 repeats" in text
    once = validation_rows([("d.json", record())], loaded_profile(), grid_role="development")
    assert once[0]["calibration_repeats"] == 1 and once[0]["calibration_spread_pct"] is None
    assert "- W = 2: not measured (1 repeat)" in summary_markdown(once)


def test_held_out_and_development_grids_are_summarised_apart(toy_hw):
    p = predicted(record(), toy_hw)
    good = record(metrics={"iter_ms": p["predicted_iter_ms"]})
    bad = record(metrics={"iter_ms": p["predicted_iter_ms"] * 3})
    held = validation_rows([("h.json", bad)], toy_hw, grid_role="held-out", grid="emulated-heldout")
    dev = validation_rows([("d1.json", good), ("d2.json", good)], toy_hw,
                          grid_role="development", grid="emulated")
    sections = grids(held + dev)
    assert [(g, role, len(rs)) for g, role, rs in sections] == \
        [("emulated", "development", 2), ("emulated-heldout", "held-out", 1)]
    text = summary_markdown(held + dev)
    dev_at = text.index("## Grid `emulated`: development")
    held_at = text.index("## Grid `emulated-heldout`: held-out")
    assert dev_at < held_at
    assert "| iteration time | 2 | 2 | 0 |" in text[dev_at:held_at]
    assert "| iteration time | 1 | 0 | 1 |" in text[held_at:]
    assert "never used while changing the cost model" in text[held_at:]
    with pytest.raises(ValueError, match="grid role must be one of development, held-out"):
        validation_rows([("h.json", bad)], toy_hw, grid_role="test")


def _thread_rate_profile(provenance=None, legacy=False):
    m = toy_mapping()
    src = ("measured: baseline run r/record.json (2 thread(s)): FLOPs × throughput" if legacy
           else "measured: recpar training step")
    rate1 = {"value": 1e9, "source": src}
    if provenance:
        rate1["provenance"] = provenance
    m["shared_host"] = {"cores": fig(2),
                        "model_flops_per_s_by_threads": {1: rate1, 2: fig(1.6e9)}}
    return profile_from_mapping(m, "t.yaml")


@pytest.mark.parametrize("provenance, legacy", [("record", False), (None, True)])
def test_record_derived_profile_entries_are_marked(provenance, legacy):
    """A dp2 run on 2 cores computes at the 1-thread rate: when that figure came from a run
    record's measured outcome (said by its provenance, or by the source old calibrations wrote),
    the row and the summary name it."""
    hw = _thread_rate_profile(provenance, legacy)
    row = validation_rows([("d.json", record())], hw, grid_role="development")[0]
    key = "shared_host.model_flops_per_s_by_threads.1"
    assert row["compute_basis"] == "thread_rate"
    assert row["record_derived_inputs"] == key
    assert f"taken from a run record's measured outcome ({key})" in row["note"]
    assert f"- `dp2-ring`: {key}" in summary_markdown([row])
    clean = validation_rows([("d.json", record())], _thread_rate_profile("host"),
                            grid_role="development")[0]
    assert clean["record_derived_inputs"] == "none"


def test_rows_survive_the_csv(toy_hw):
    hw = loaded_profile(spread=2.5)
    rows = validation_rows([("b.json", baseline()), ("d.json", record()),
                            ("a.json", record(scheme="async", run_id="async3"))], hw,
                           grid_role="held-out", grid="g")
    back = rows_from_csv(_csv(rows))
    assert summary_markdown(back) == summary_markdown(rows)
    assert back[1]["calibration_spread_pct"] == 5.0 and back[1]["dp"] == 2
