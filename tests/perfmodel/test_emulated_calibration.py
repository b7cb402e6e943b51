"""Putting the calibration together (recpar.perfmodel.emulated_calibration), with the timings
stubbed: which measurements are taken, at which shapes, and what the profile then says."""

import pytest

from recpar.perfmodel import calibrate as cal
from recpar.perfmodel.emulated_calibration import (CalibrationError, CalibrationOptions,
                                                   calibrate_emulated_profile, parse_rank_counts)
from recpar.perfmodel.hardware import figure_provenance, profile_from_mapping
from recpar.perfmodel.predict import scenario_from_record

from .test_predict import record

LINK = dict(inter_latency_s=1e-3, inter_bandwidth_bytes_per_s=1.25e8,
            inter_source="measured: cluster calibration in c.yaml")


def baseline(threads=1):
    return record(plan={"dp": 1, "tp": 1, "pp": 1, "world_size": 1},
                  topology={"kind": "local", "nodes": 1, "ranks_per_node": 1},
                  metrics={"throughput_samples_per_s": 100.0},
                  hardware={"torch_threads": threads})


@pytest.fixture
def stubbed(monkeypatch):
    """Fixed measurements; `calls` records what was measured."""
    calls = {"step_threads": [], "loaded": [], "compress": []}
    monkeypatch.setattr(cal, "measure_matmul_flops", lambda threads=None: 3e10)
    monkeypatch.setattr(cal, "measure_reduce_bytes_per_s", lambda: 5e9)
    monkeypatch.setattr(cal, "measure_loopback_link",
                        lambda: {"latency_s": 1e-4, "bandwidth_bytes_per_s": 2e9})
    monkeypatch.setattr(cal, "cpu_model", lambda: "cpu")
    monkeypatch.setattr(cal, "mem_gib", lambda: 24.0)

    def step(rec, threads, where):
        calls["step_threads"].append(threads)
        return {"flops_per_s": 1e9, "cpu_s_per_step": 0.01 * threads, "wall_s_per_step": 0.01,
                "batch": 16, "steps": 4}

    def loaded(rec, ranks, cores, batches, where):
        """The slowest step grows with each repeat of the same W: 0, +1 %, +2 %."""
        calls["loaded"].append((ranks, cores, batches))
        b = sorted(set(batches))
        k = sum(1 for r, _, _ in calls["loaded"] if r == ranks) - 1
        return {"ranks": ranks, "threads": max(1, cores // ranks), "batches": b, "steps": 3,
                "per_rank_s": [], "mean_s": [],
                "slowest_s": [(0.01 * ranks + 0.001 * x) * (1 + 0.01 * k) for x in b]}

    def compress(n, codec, ratio):
        calls["compress"].append((n, codec, ratio))
        return {"elements_per_s": 4e7, "cpu_s": n / 4e7, "world": 2,
                "ratio": ratio if codec == "topk" else None}

    monkeypatch.setattr(cal, "measure_model_step_flops_per_s", step)
    monkeypatch.setattr(cal, "time_loaded_steps", loaded)
    monkeypatch.setattr(cal, "measure_compress_elements_per_s", compress)
    return calls


def test_parse_rank_counts():
    assert parse_rank_counts("4,1,2,2") == [1, 2, 4]
    assert parse_rank_counts("") == parse_rank_counts("  ") == []
    with pytest.raises(ValueError, match="expected comma-separated rank counts, got '2,x'"):
        parse_rank_counts("2,x")
    with pytest.raises(ValueError, match="rank counts must be >= 1, got '0,2'"):
        parse_rank_counts("0,2")
    with pytest.raises(ValueError, match="rank counts must be >= 1"):
        parse_rank_counts(",,")


def test_without_a_baseline_efficiency_is_assumed(stubbed):
    res = calibrate_emulated_profile(**LINK, options=CalibrationOptions(ranks_per_node=2))
    hw = profile_from_mapping(res.profile, "p.yaml")
    assert res.flops_per_s == 3e10 and res.notes == []
    assert hw.shared_host is None and hw.topk_compress_elements_per_s is None
    assert hw.gpus_per_node == 2
    assert stubbed == {"step_threads": [], "loaded": [], "compress": []}


def test_baseline_measures_thread_rates_loaded_steps_and_codecs(stubbed):
    """Everything is timed on the host at the baseline's shape: no figure comes from the
    record's measured throughput (its 1-thread run included), and each says so."""
    base = baseline(threads=1)
    opts = CalibrationOptions(ranks_per_node=2, host_cores=4, loaded_ranks=(1, 2),
                              loaded_repeats=3)
    res = calibrate_emulated_profile(**LINK, options=opts, baseline=base,
                                     baseline_name="base.json")
    sc = scenario_from_record(base)
    # thread counts a rank can get on 4 cores: 4, 2, 1, each timed on the host
    assert stubbed["step_threads"] == [1, 2, 4]
    # 3 repeats, interleaved over W: B // 4, B // 2, B
    assert stubbed["loaded"] == [(1, 4, (4, 8, 16)), (2, 4, (4, 8, 16))] * 3
    n = sc.shape.trainable_params
    assert stubbed["compress"] == [(n, "topk", 0.01), (n, "sign", 0.01)]
    hw = profile_from_mapping(res.profile, "p.yaml")
    assert hw.efficiency.value == pytest.approx(1e9 / 3e10)  # host step rate ÷ matmul peak
    assert hw.efficiency.provenance == "host" and "not the record's" in hw.efficiency.source
    assert hw.shared_host.model_flops_per_s_by_threads[1].value == pytest.approx(1e9)
    assert hw.shared_host.model_flops_per_s_by_threads[2].value == pytest.approx(2e9)
    assert {k: figure_provenance(f) for k, f in hw.figures.items()
            if figure_provenance(f) == "record"} == {}
    step = hw.shared_host.loaded_step(2, sc.shape.train_flops_per_sequence)
    assert step.repeats.value == 3
    assert step.spread_pct.value == pytest.approx(100 * 0.02 / 1.01)  # (max − min) / median
    assert step.seconds(16) == pytest.approx((0.02 + 0.016) * 1.01)  # the medians' line
    assert hw.topk_compress_elements_per_s.value == 4e7
    assert [line.split(":")[0] for line in res.notes] == [
        "model step, 1 thread(s)", "model step, 2 thread(s)", "model step, 4 thread(s)",
        "loaded step, 1 rank(s) × 4 thread(s)", "loaded step, 2 rank(s) × 2 thread(s)",
        "topk hook work", "sign hook work"]
    assert "run-to-run spread 2.0 % over 3 repeats" in res.notes[4]  # 1.98 rounded


def test_one_repeat_records_no_spread(stubbed):
    opts = CalibrationOptions(ranks_per_node=2, host_cores=2, loaded_ranks=(2,),
                              loaded_repeats=1)
    res = calibrate_emulated_profile(**LINK, options=opts, baseline=baseline(),
                                     baseline_name="base.json")
    sc = scenario_from_record(baseline())
    step = profile_from_mapping(res.profile, "p.yaml").shared_host.loaded_step(
        2, sc.shape.train_flops_per_sequence)
    assert step.repeats.value == 1 and step.spread_pct is None
    with pytest.raises(CalibrationError, match="loaded_repeats must be >= 1"):
        calibrate_emulated_profile(**LINK, options=CalibrationOptions(ranks_per_node=2,
                                                                      loaded_repeats=0))


def test_no_shared_host_and_no_loaded_steps(stubbed):
    res = calibrate_emulated_profile(
        **LINK, options=CalibrationOptions(ranks_per_node=2, shared_host=False),
        baseline=baseline(), baseline_name="base.json")
    assert profile_from_mapping(res.profile, "p.yaml").shared_host is None
    # only the rank's own thread count, for the efficiency
    assert stubbed["step_threads"] == [1] and stubbed["loaded"] == []
    assert len(stubbed["compress"]) == 2
    res = calibrate_emulated_profile(**LINK, options=CalibrationOptions(ranks_per_node=2,
                                                                        host_cores=2),
                                     baseline=baseline(), baseline_name="base.json")
    assert stubbed["loaded"] == []
    assert profile_from_mapping(res.profile, "p.yaml").shared_host.loaded_step(1, 1.0) is None


def test_a_multi_rank_baseline_is_one_calibration_error(stubbed):
    with pytest.raises(CalibrationError, match="r.json: the calibration needs a single-rank"):
        calibrate_emulated_profile(**LINK, options=CalibrationOptions(ranks_per_node=2),
                                   baseline=record(), baseline_name="r.json")
