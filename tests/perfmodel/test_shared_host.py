"""Shared host (emulated cluster): rate by thread count × time share, top-k rate, profile errors."""

import copy

import pytest
import yaml

from recpar.perfmodel.calibrate import (combine_loaded_repeats, emulated_profile_mapping,
                                        inter_node_from_calibration, loaded_step_mapping,
                                        measure_compress_elements_per_s,
                                        measure_model_step_flops_per_s, shared_host_mapping,
                                        time_loaded_steps)
from recpar.perfmodel.hardware import ProfileError, load_profile, profile_from_mapping
from recpar.perfmodel.iteration import iteration_cost
from recpar.perfmodel.shapes import GradSync, ModelShape, PlanShape

from .conftest import fig, toy_mapping
from .test_costs import TINY
from .test_predict import record


def shared_mapping(cores=2, rates=None, topk=None):
    m = toy_mapping()
    m["shared_host"] = {"cores": fig(cores),
                        "model_flops_per_s_by_threads": {t: fig(v) for t, v in
                                                         (rates or {1: 1e9, 2: 1.6e9}).items()}}
    if topk is not None:
        m["device"]["topk_compress_elements_per_s"] = fig(topk)
    return m


@pytest.fixture
def shared_hw():
    return profile_from_mapping(shared_mapping(topk=1e8), "shared.yaml")


@pytest.mark.parametrize("world, threads, share, rate", [
    (1, 2, 1.0, 1.6e9),        # the whole host: 2 threads
    (2, 1, 1.0, 1.0e9),        # one thread each, one core each
    (3, 1, 2 / 3, 1e9 * 2 / 3),  # 3 ranks time-share 2 cores
    (4, 1, 0.5, 0.5e9),
])
def test_rank_rate_by_threads_and_time_share(shared_hw, world, threads, share, rate):
    sh = shared_hw.shared_host
    assert sh.threads_per_rank(world) == threads
    assert sh.cpu_share(world) == pytest.approx(share)
    assert shared_hw.rank_flops_per_s(world) == pytest.approx(rate)
    assert shared_hw.host_slowdown(world) == pytest.approx(1 / share)


@pytest.mark.parametrize("dp, rate", [(1, 1.6e9), (2, 1e9), (3, 1e9 * 2 / 3), (4, 0.5e9)])
def test_iteration_compute_on_shared_host_by_hand(shared_hw, dp, rate):
    s = ModelShape.from_mapping(TINY)
    gbs = 12  # divisible by 1..4
    c = iteration_cost(s, PlanShape(data_parallel_size=dp), gbs, shared_hw)
    want_s = s.train_flops_per_sequence * (gbs // dp) / rate
    assert c.compute_ms == pytest.approx(1e3 * want_s)
    assert c.detail["sustained_flops_per_s"] == pytest.approx(rate)
    assert c.detail["shared_host_threads_per_rank"] == max(1, 2 // dp)


def test_topk_compress_uses_measured_rate_and_time_share(shared_hw, toy_hw):
    s = ModelShape.from_mapping({**TINY, "d_model": 64, "d_ff": 256, "vocab_size": 1000})
    sync = GradSync(compression="topk", topk_ratio=0.01, overlap=False, bucket_size_mb=1024)
    elems = s.trainable_params
    c2 = iteration_cost(s, PlanShape(data_parallel_size=2), 8, shared_hw, sync=sync)
    assert c2.compress_ms == pytest.approx(1e3 * elems / 1e8)
    c4 = iteration_cost(s, PlanShape(data_parallel_size=4), 8, shared_hw, sync=sync)
    assert c4.compress_ms == pytest.approx(1e3 * elems / 1e8 * 2)  # 4 ranks on 2 cores
    # without the measured rate: two memory passes at gamma, unchanged
    plain = iteration_cost(s, PlanShape(data_parallel_size=2), 8, toy_hw, sync=sync)
    assert plain.compress_ms == pytest.approx(1e3 * 2 * elems * 4 * toy_hw.gamma_s_per_byte)


def test_profiles_without_shared_host_are_unchanged(toy_hw):
    assert toy_hw.shared_host is None
    assert toy_hw.rank_flops_per_s(64) == toy_hw.sustained_flops_per_s == 0.5e12
    assert toy_hw.host_slowdown(64) == 1.0
    a100 = load_profile("paper-a100")
    assert a100.shared_host is None and a100.topk_compress_elements_per_s is None


def test_missing_thread_count_is_named_at_cost_time():
    hw = profile_from_mapping(shared_mapping(cores=4, rates={1: 1e9, 4: 3e9}), "s.yaml")
    assert hw.rank_flops_per_s(1) == 3e9 and hw.rank_flops_per_s(8) == pytest.approx(0.5e9)
    with pytest.raises(ProfileError, match=r"shared_host.model_flops_per_s_by_threads.2: "
                                           r"missing \(a run of 2 rank\(s\) on 4 cores"):
        hw.rank_flops_per_s(2)


def test_yaml_round_trip_and_string_keys(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(shared_mapping(topk=5e7)))
    hw = load_profile(str(p))
    assert sorted(hw.shared_host.model_flops_per_s_by_threads) == [1, 2]
    assert hw.topk_compress_elements_per_s.value == 5e7
    m = shared_mapping()
    m["shared_host"]["model_flops_per_s_by_threads"] = {"1": fig(1e9), "2": fig(2e9)}
    hw2 = profile_from_mapping(m, "j.json")
    assert hw2.rank_flops_per_s(2) == 1e9
    keys = {r["key"] for r in hw2.sources()}
    assert {"shared_host.cores", "shared_host.model_flops_per_s_by_threads.1"} <= keys


def _broken(edit):
    m = copy.deepcopy(shared_mapping())
    edit(m)
    return m


SH = "shared_host"
RATES = "shared_host.model_flops_per_s_by_threads"
LOADED = "shared_host.loaded_step"
LOADED_2 = {"fixed_s": fig(0.01), "per_sequence_s": fig(0.002)}


@pytest.mark.parametrize("edit, message", [
    (lambda m: m[SH].pop("cores"), "s.yaml: shared_host.cores: missing"),
    (lambda m: m[SH]["cores"].update(value=2.5), "shared_host.cores.value: must be an integer"),
    (lambda m: m[SH]["cores"].update(value=0), "shared_host.cores.value: must be > 0"),
    (lambda m: m[SH].pop("model_flops_per_s_by_threads"), f"{RATES}: missing"),
    (lambda m: m[SH].update(model_flops_per_s_by_threads=[1, 2]),
     f"{RATES}: expected a mapping"),
    (lambda m: m[SH]["model_flops_per_s_by_threads"].pop(1), f"{RATES}.1: missing"),
    (lambda m: m[SH]["model_flops_per_s_by_threads"].pop(2), f"{RATES}.2: missing"),
    (lambda m: m[SH]["model_flops_per_s_by_threads"].update({3: fig(1e9)}),
     f"{RATES}.3: thread count exceeds shared_host.cores 2"),
    (lambda m: m[SH]["model_flops_per_s_by_threads"].update({0: fig(1e9)}),
     f"{RATES}.0: thread count must be a positive integer"),
    (lambda m: m[SH]["model_flops_per_s_by_threads"].update({"two": fig(1e9)}),
     f"{RATES}.two: thread count must be a positive integer"),
    (lambda m: m[SH]["model_flops_per_s_by_threads"][1].update(value=-1.0),
     f"{RATES}.1.value: must be > 0"),
    (lambda m: m[SH]["model_flops_per_s_by_threads"][2].update(value="fast"),
     f"{RATES}.2.value: expected a finite number"),
    (lambda m: m[SH]["model_flops_per_s_by_threads"][1].pop("source"),
     f"{RATES}.1.source: missing"),
    (lambda m: m[SH].update(hosts=fig(1)), "shared_host.hosts: unknown key"),
    (lambda m: m["device"].update(topk_compress_elements_per_s=fig(0)),
     "device.topk_compress_elements_per_s.value: must be > 0"),
    (lambda m: m["device"].update(topk_compress_elements_per_s={"value": 1e8}),
     "device.topk_compress_elements_per_s.source: missing"),
    (lambda m: m["device"].update(sign_compress_elements_per_s=fig(-1)),
     "device.sign_compress_elements_per_s.value: must be > 0"),
    (lambda m: m[SH].update(loaded_step={"by_ranks": {2: LOADED_2}}),
     f"{LOADED}.flops_per_sequence: missing"),
    (lambda m: m[SH].update(loaded_step={"flops_per_sequence": fig(1e6)}),
     f"{LOADED}.by_ranks: missing"),
    (lambda m: m[SH].update(loaded_step={"flops_per_sequence": fig(1e6), "by_ranks": {}}),
     f"{LOADED}.by_ranks: empty"),
    (lambda m: m[SH].update(loaded_step={"flops_per_sequence": fig(1e6),
                                         "by_ranks": {0: LOADED_2}}),
     f"{LOADED}.by_ranks.0: rank count must be a positive integer"),
    (lambda m: m[SH].update(loaded_step={"flops_per_sequence": fig(1e6),
                                         "by_ranks": {2: {"fixed_s": fig(0.0)}}}),
     f"{LOADED}.by_ranks.2.per_sequence_s: missing"),
    (lambda m: m[SH].update(loaded_step={"flops_per_sequence": fig(1e6),
                                         "by_ranks": {2: {**LOADED_2, "fixed_s": fig(-0.1)}}}),
     f"{LOADED}.by_ranks.2.fixed_s.value: must be >= 0"),
    (lambda m: m[SH].update(loaded_step={"flops_per_sequence": fig(1e6), "ranks": {}}),
     f"{LOADED}.ranks: unknown key"),
    (lambda m: m[SH].update(loaded_step={"flops_per_sequence": fig(1e6),
                                         "by_ranks": {2: {**LOADED_2, "repeats": fig(0)}}}),
     f"{LOADED}.by_ranks.2.repeats.value: must be >= 1"),
    (lambda m: m[SH].update(loaded_step={"flops_per_sequence": fig(1e6),
                                         "by_ranks": {2: {**LOADED_2, "spread_pct": fig(-1)}}}),
     f"{LOADED}.by_ranks.2.spread_pct.value: must be >= 0"),
    (lambda m: m[SH].update(loaded_step={"flops_per_sequence": fig(1e6),
                                         "by_ranks": {2: {**LOADED_2, "spread": fig(1)}}}),
     f"{LOADED}.by_ranks.2.spread: unknown key; known: fixed_s, per_sequence_s, repeats, "
     "spread_pct"),
])
def test_shared_host_validation_errors_name_the_field(edit, message):
    with pytest.raises(ProfileError) as e:
        profile_from_mapping(_broken(edit), "s.yaml")
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_inter_node_link_from_a_run_record():
    rec = record(topology={"kind": "emulated", "nodes": 2, "ranks_per_node": 1, "inter_node": {
        "configured": {"rate_bit_per_s": 1e8, "latency_s": 0.0},
        "calibrated": {"rate_bit_per_s": 8e7, "latency_s": 2.5e-5}}})
    assert inter_node_from_calibration(rec, "r.json") == (2.5e-5, 1e7)
    assert inter_node_from_calibration({"rate_bit_per_s": 8e6, "latency_s": 1e-3},
                                       "c") == (1e-3, 1e6)


def test_emulated_profile_mapping_with_shared_host():
    m = emulated_profile_mapping(
        ranks_per_node=2, threads_per_rank=1, inter_latency_s=1e-3,
        inter_bandwidth_bytes_per_s=1.25e8, inter_source="measured: x", flops_per_s=3e10,
        reduce_bytes_per_s=5e9, loopback={"latency_s": 1e-4, "bandwidth_bytes_per_s": 2e9},
        cpu_name="cpu", mem_gib=24.0,
        shared_host=shared_host_mapping(2, {1: (1e10, "measured: a"), 2: (1.5e10, "measured: b")}),
        topk_compress={"value": 4e7, "source": "measured: c"})
    hw = profile_from_mapping(m, "emulated.yaml")
    assert hw.rank_flops_per_s(3) == pytest.approx(1e10 * 2 / 3)
    assert hw.topk_compress_elements_per_s.value == 4e7


def test_measurements_run_and_are_positive():
    """Smoke test on small sizes (milliseconds): the numbers themselves come from calibrate."""
    r = measure_compress_elements_per_s(4096, "topk", repeats=2)
    assert r["elements_per_s"] > 0 and r["threads"] == 1
    step = measure_model_step_flops_per_s(record(), threads=1, steps=1)
    assert step["flops_per_s"] > 0 and step["batch"] == 16


def loaded_hw(shape, by_ranks):
    """shared_mapping plus a loaded-step table measured at `shape`."""
    m = shared_mapping()
    m["shared_host"]["loaded_step"] = {
        "flops_per_sequence": fig(shape.train_flops_per_sequence),
        "by_ranks": {w: {"fixed_s": fig(f), "per_sequence_s": fig(p)}
                     for w, (f, p) in by_ranks.items()}}
    return profile_from_mapping(m, "loaded.yaml")


@pytest.mark.parametrize("dp, fixed, per_seq", [(1, 0.004, 0.002), (2, 0.010, 0.003),
                                                (4, 0.020, 0.006)])
def test_loaded_step_prices_a_dp_rank_by_hand(dp, fixed, per_seq):
    """Where the profile has a loaded-step line for W ranks, a DP rank of b = 12 / dp sequences
    computes for fixed + per_sequence × b, whatever the thread rates say."""
    s = ModelShape.from_mapping(TINY)
    hw = loaded_hw(s, {1: (0.004, 0.002), 2: (0.010, 0.003), 4: (0.020, 0.006)})
    c = iteration_cost(s, PlanShape(data_parallel_size=dp), 12, hw)
    b = 12 // dp
    assert c.compute_ms == pytest.approx(1e3 * (fixed + per_seq * b))
    assert c.detail["compute_basis"] == "loaded_step"
    assert hw.rank_flops_per_s(dp, b, s.train_flops_per_sequence) == pytest.approx(
        s.train_flops_per_sequence * b / (fixed + per_seq * b))


def test_loaded_step_falls_back_to_thread_rates():
    """A rank count the table lacks, or another model shape, is priced by the thread rule."""
    s = ModelShape.from_mapping(TINY)
    hw = loaded_hw(s, {2: (0.010, 0.003)})
    c3 = iteration_cost(s, PlanShape(data_parallel_size=3), 12, hw)
    assert c3.detail["compute_basis"] == "thread_rate"
    assert c3.compute_ms == pytest.approx(1e3 * s.train_flops_per_sequence * 4 / (1e9 * 2 / 3))
    other = ModelShape.from_mapping({**TINY, "d_model": 2 * TINY["d_model"]})
    c2 = iteration_cost(other, PlanShape(data_parallel_size=2), 12, hw)
    assert c2.detail["compute_basis"] == "thread_rate"
    assert c2.compute_ms == pytest.approx(1e3 * other.train_flops_per_sequence * 6 / 1e9)
    assert profile_from_mapping(toy_mapping(), "t").compute_basis(2) == "device"


def test_sign_compress_uses_measured_rate():
    s = ModelShape.from_mapping({**TINY, "d_model": 64, "d_ff": 256, "vocab_size": 1000})
    sync = GradSync(compression="sign", overlap=False, bucket_size_mb=1024)
    m = shared_mapping()
    m["device"]["sign_compress_elements_per_s"] = fig(2e7)
    hw = profile_from_mapping(m, "s.yaml")
    c2 = iteration_cost(s, PlanShape(data_parallel_size=2), 8, hw, sync=sync)
    assert c2.compress_ms == pytest.approx(1e3 * s.trainable_params / 2e7)
    c4 = iteration_cost(s, PlanShape(data_parallel_size=4), 8, hw, sync=sync)
    assert c4.compress_ms == pytest.approx(2 * c2.compress_ms)  # 4 ranks time-share 2 cores


def test_loaded_step_mapping_round_trips_through_the_profile():
    measured = [{"ranks": 2, "threads": 1, "batches": [2, 4], "steps": 3,
                 "slowest_s": [0.02, 0.03], "fixed_s": 0.01, "per_sequence_s": 0.005}]
    sec = loaded_step_mapping(1e6, measured, "base.json")
    m = shared_mapping()
    m["shared_host"] = shared_host_mapping(2, {1: (1e9, "measured: a"), 2: (2e9, "measured: b")},
                                           sec)
    hw = profile_from_mapping(m, "p.yaml")
    step = hw.shared_host.loaded_step(2, 1e6)
    assert step.seconds(6) == pytest.approx(0.04)
    assert "2 concurrent recpar training steps" in step.fixed_s.source
    assert hw.shared_host.loaded_step(2, 2e6) is None and hw.shared_host.loaded_step(3, 1e6) is None


def test_loaded_steps_time_concurrent_processes():
    """world size 2 (spawned processes): two concurrent steps at batches 2 and 256 (far apart,
    so the step time grows with the batch despite timing noise); the line is a least-squares
    fit through the slowest process's times (one repeat)."""
    m = time_loaded_steps(record(), ranks=2, cores=2, batches=(256, 2), steps=3)
    assert m["batches"] == [2, 256] and m["threads"] == 1
    assert len(m["per_rank_s"]) == 2 and all(len(pr) == 2 for pr in m["per_rank_s"])
    for i in range(2):
        assert m["slowest_s"][i] == max(pr[i] for pr in m["per_rank_s"]) >= m["mean_s"][i]
    line = combine_loaded_repeats([m])
    assert line["per_sequence_s"] > 0 and line["fixed_s"] >= 0
    with pytest.raises(ValueError, match="two or more batch sizes"):
        time_loaded_steps(record(), ranks=2, cores=2, batches=(4, 4))


def test_sign_compress_measurement_and_bad_codec():
    r = measure_compress_elements_per_s(4096, "sign", repeats=2)
    assert r["elements_per_s"] > 0 and r["codec"] == "sign" and r["ratio"] is None
    with pytest.raises(ValueError,
                       match="codec must be 'topk', 'sign', 'fp16' or 'powersgd', got 'zip'"):
        measure_compress_elements_per_s(4096, "zip")
