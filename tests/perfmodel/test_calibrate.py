"""Calibration helpers that need no timing (the timing ones run in `recpar perfmodel calibrate`)."""

import pytest

from recpar.perfmodel.calibrate import (efficiency_from_record, emulated_profile_mapping,
                                        fit_alpha_beta, inter_node_from_calibration)
from recpar.perfmodel.hardware import ProfileError, profile_from_mapping

from .test_predict import record


def test_fit_alpha_beta_recovers_exact_line():
    sizes = [1e3, 1e5, 1e6, 1e7]
    a, b = fit_alpha_beta(sizes, [2e-5 + n * 3e-10 for n in sizes])
    assert a == pytest.approx(2e-5) and b == pytest.approx(3e-10)
    with pytest.raises(ValueError, match="distinct sizes"):
        fit_alpha_beta([1e3, 1e3], [1.0, 1.0])


def test_inter_node_calibration_keys():
    assert inter_node_from_calibration({"inter_node": {"measured_rate_mbit_per_s": 800,
                                                       "delay_ms": 2}}, "c") == (0.002, 1e8)
    assert inter_node_from_calibration({"bandwidth_bytes_per_s": 5e7, "latency_s": 1e-4},
                                       "c") == (1e-4, 5e7)
    with pytest.raises(ProfileError, match="cal.json: missing latency_s"):
        inter_node_from_calibration({"bandwidth_bytes_per_s": 1e8}, "cal.json")


def test_emulated_profile_mapping_validates():
    m = emulated_profile_mapping(ranks_per_node=2, threads_per_rank=1, inter_latency_s=1e-3,
                                 inter_bandwidth_bytes_per_s=1.25e8, inter_source="measured: x",
                                 flops_per_s=3e10, reduce_bytes_per_s=5e9,
                                 loopback={"latency_s": 1e-4, "bandwidth_bytes_per_s": 2e9},
                                 cpu_name="cpu", mem_gib=24.0)
    hw = profile_from_mapping(m, "emulated.yaml")
    assert hw.gpus_per_node == 2 and hw.memory_gib.value == 12.0
    assert hw.gamma_s_per_byte == pytest.approx(1 / 5e9)


def test_efficiency_from_baseline_record():
    base = record(plan={"dp": 1, "tp": 1, "pp": 1, "world_size": 1},
                  topology={"kind": "local", "nodes": 1, "ranks_per_node": 1},
                  metrics={"throughput_samples_per_s": 100.0})
    from recpar.perfmodel.predict import scenario_from_record
    flops = scenario_from_record(base).shape.train_flops_per_sequence
    assert efficiency_from_record(base, flops * 400.0) == pytest.approx(0.25)
    with pytest.raises(ProfileError, match="single-rank"):
        efficiency_from_record(record(), 1e12)
