"""Calibration helpers that need no timing (the timing ones run in `recpar perfmodel calibrate`)."""

import pytest

from recpar.perfmodel.calibrate import (combine_loaded_repeats, emulated_profile_mapping,
                                        fit_alpha_beta, fit_loaded_line,
                                        inter_node_from_calibration, loaded_step_mapping)
from recpar.perfmodel.hardware import (PROVENANCE, ProfileError, figure_provenance,
                                       profile_from_mapping)

from .test_shared_host import shared_mapping


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


def _mapping() -> dict:
    return emulated_profile_mapping(ranks_per_node=2, threads_per_rank=1, inter_latency_s=1e-3,
                                    inter_bandwidth_bytes_per_s=1.25e8,
                                    inter_source="measured: x", flops_per_s=3e10,
                                    reduce_bytes_per_s=5e9,
                                    loopback={"latency_s": 1e-4, "bandwidth_bytes_per_s": 2e9},
                                    cpu_name="cpu", mem_gib=24.0)


def test_emulated_profile_mapping_validates():
    m = _mapping()
    hw = profile_from_mapping(m, "emulated.yaml")
    assert hw.gpus_per_node == 2 and hw.memory_gib.value == 12.0
    assert hw.collective_library == "gloo"
    assert hw.gamma_s_per_byte == pytest.approx(1 / 5e9)


def test_every_figure_of_the_calibrated_profile_says_its_provenance():
    m = _mapping()
    hw = profile_from_mapping(m, "emulated.yaml")
    prov = {k: f.provenance for k, f in hw.figures.items()}
    assert None not in prov.values() and set(prov.values()) <= set(PROVENANCE)
    assert prov["links.inter_node.bandwidth_bytes_per_s"] == "cluster"
    assert prov["device.peak_flops_per_s.fp32"] == "host"
    assert prov["device.efficiency"] == "assumed"  # no baseline: 1.0
    assert {r["key"]: r["provenance"] for r in hw.sources()} == prov


def timing(ranks, slowest):
    return {"ranks": ranks, "threads": 1, "batches": [4, 8, 16], "steps": 8,
            "per_rank_s": [slowest], "slowest_s": slowest, "mean_s": slowest}


def test_repeated_loaded_steps_give_a_median_line_and_their_spread():
    """Three repeats: the line goes through the per-batch medians; the spread is (max − min) /
    median at the batch where it is largest (here b = 4: (0.012 − 0.008) / 0.010 = 40 %)."""
    reps = [timing(2, [0.010, 0.014, 0.022]), timing(2, [0.012, 0.015, 0.023]),
            timing(2, [0.008, 0.014, 0.021])]
    m = combine_loaded_repeats(reps)
    assert m["slowest_s"] == [0.010, 0.014, 0.022] and m["repeats"] == 3
    assert (m["fixed_s"], m["per_sequence_s"]) == pytest.approx(
        fit_loaded_line([4, 8, 16], [0.010, 0.014, 0.022]))
    assert m["spread_pct"] == pytest.approx(40.0)
    assert m["repeat_ranges"][0] == {"batch": 4, "min_s": 0.008, "median_s": 0.010,
                                     "max_s": 0.012}
    assert combine_loaded_repeats(reps[:1])["spread_pct"] is None
    with pytest.raises(ValueError, match="repeats of different rank counts"):
        combine_loaded_repeats([timing(2, [0.01, 0.02, 0.03]), timing(4, [0.01, 0.02, 0.03])])
    with pytest.raises(ValueError, match="step time did not grow with the batch"):
        fit_loaded_line([4, 8, 16], [0.03, 0.02, 0.01])


def test_loaded_step_spread_round_trips_through_the_profile():
    reps = [timing(2, [0.010, 0.014, 0.022]), timing(2, [0.011, 0.015, 0.024])]
    sec = loaded_step_mapping(1e6, [combine_loaded_repeats(reps)], "base.json")
    m = shared_mapping()
    m["shared_host"]["loaded_step"] = sec
    step = profile_from_mapping(m, "p.yaml").shared_host.loaded_step(2, 1e6)
    assert step.repeats.value == 2 and step.spread_pct.value == pytest.approx(100 * 0.001 / 0.0105)
    assert "b=16: 22.0 / 23.0 / 24.0 ms" in step.spread_pct.source
    assert step.fixed_s.provenance == step.spread_pct.provenance == "host"
    assert step.repeats.provenance == "config"


def test_figure_provenance_reads_old_profiles():
    """Profiles written before figures had a provenance: calibrate's record-derived figures
    began their source with 'measured: baseline run'."""
    m = shared_mapping()
    m["device"]["efficiency"] = {"value": 0.7, "source": "measured: baseline run r/record.json"}
    m["shared_host"]["model_flops_per_s_by_threads"][2]["provenance"] = "record"
    hw = profile_from_mapping(m, "old.yaml")
    assert figure_provenance(hw.efficiency) == "record"
    assert figure_provenance(hw.shared_host.model_flops_per_s_by_threads[2]) == "record"
    assert figure_provenance(hw.shared_host.model_flops_per_s_by_threads[1]) is None
    m["device"]["efficiency"]["provenance"] = "guessed"
    with pytest.raises(ProfileError, match="device.efficiency.provenance: must be one of host"):
        profile_from_mapping(m, "old.yaml")
