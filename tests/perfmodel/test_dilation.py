"""recpar.perfmodel.dilation: the scale model's link arithmetic against hand-computed values.

paper-a100: sustained = 312e12 FLOP/s (bf16 peak) × 0.40 (efficiency) = 1.248e14 FLOP/s.
A device measured at 5e9 FLOP/s: D = 5e9 / 1.248e14 = 4.00641e-5.
- inter-node: 12.5e9 B/s = 1e11 bit/s → × D = 4.00641e6 bit/s; 1 µs / D = 24.96 ms.
- intra-node: 300e9 B/s = 2.4e12 bit/s → × D = 9.61538e7 bit/s; 1 µs / D = 24.96 ms.
"""

from __future__ import annotations

import json

import pytest

from recpar.cli import main as recpar_main
from recpar.cluster.cpu_budget import unavailable_reason
from recpar.perfmodel.dilation import scale_model
from recpar.perfmodel.hardware import load_profile


@pytest.fixture(scope="module")
def a100():
    return load_profile("paper-a100")


def test_paper_a100_scaled_to_a_5_gflops_device(a100):
    sm = scale_model(a100, 5e9)
    assert sm.profile_flops_per_s == pytest.approx(1.248e14)
    assert sm.dilation == pytest.approx(4.00641e-5, rel=1e-5)
    assert sm.inter_node.rate_bit_per_s == pytest.approx(4.00641e6, rel=1e-5)
    assert sm.inter_node.latency_s == pytest.approx(0.02496, rel=1e-5)
    assert sm.intra_node.rate_bit_per_s == pytest.approx(9.61538e7, rel=1e-5)
    assert sm.intra_node.latency_s == pytest.approx(0.02496, rel=1e-5)
    assert sm.inter_node.profile_rate_bit_per_s == pytest.approx(1e11)
    # 2.496 s measured on the scale model is 100 µs on the profile's cluster.
    assert sm.profile_seconds(2.496) == pytest.approx(1.0e-4, rel=1e-5)
    rec = sm.to_record()
    assert rec["profile"] == "paper-a100" and rec["dilation"] == sm.dilation


def test_the_ratio_of_compute_to_communication_is_the_profiles(a100):
    """Bytes that take x of a FLOP budget on the profile take the same share when scaled."""
    sm = scale_model(a100, 2e9)
    flops, nbytes = 1e12, 1e8
    profile_ratio = (flops / sm.profile_flops_per_s) / (8 * nbytes / 1e11)
    scaled_ratio = (flops / sm.device_flops_per_s) / (8 * nbytes / sm.inter_node.rate_bit_per_s)
    assert scaled_ratio == pytest.approx(profile_ratio, rel=1e-12)


@pytest.mark.parametrize("flops, message", [
    (0.0, "device_flops_per_s = 0.0 must be > 0"),
    (2e14, "is not slower than paper-a100's"),
    (1e3, "the intra-node link scales to"),
])
def test_a_dilation_that_cannot_be_emulated_fails_with_its_numbers(a100, flops, message):
    with pytest.raises(ValueError) as e:
        scale_model(a100, flops)
    assert message in str(e.value)


def test_scale_model_command_rejects_a_budget_before_measuring(capsys):
    with pytest.raises(SystemExit) as e:
        recpar_main(["perfmodel", "scale-model", "--cpu-budget", "0"])
    assert "cores = 0.0 must be in (0, " in str(e.value)


@pytest.mark.skipif(unavailable_reason() is not None,
                    reason=f"CPU budgets: {unavailable_reason()}")
def test_scale_model_command_measures_a_budgeted_device(tmp_path, a100):
    out = tmp_path / "scale.json"
    assert recpar_main(["perfmodel", "scale-model", "--hardware", "paper-a100",
                        "--cpu-budget", "0.5", "--steps", "3", "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    sm, dev = rec["scale_model"], rec["device_measurement"]
    assert dev["devices"] == 1 and dev["steps_per_s_sum"] > 0
    assert sm["device_flops_per_s"] == pytest.approx(dev["steps_per_s_sum"] * dev["step_flops"])
    assert sm["dilation"] == pytest.approx(sm["device_flops_per_s"] / a100.sustained_flops_per_s)
    assert sm["inter_node"]["rate_bit_per_s"] == pytest.approx(1e11 * sm["dilation"])
    assert rec["cpu_budget"]["quota_us"] == 5000
    assert dev["model_size"] == "tiny" and dev["model_overrides"] == {}


def test_scale_model_command_measures_the_grids_own_model_and_refuses_a_bad_override(
        monkeypatch, tmp_path):
    """The measured step is the runs' model, overrides included (its FLOP/s per core depends on
    its shape); an unknown field fails before any device process starts."""
    from recpar.perfmodel import device_step

    seen = {}

    def fake_run_devices(n, budget, steps, shape, overrides):
        seen.update(shape=shape, overrides=overrides)
        flops = device_step.step_flops(*shape, overrides)
        return {"device_flops_per_s_mean": 2.0 * flops, "model_size": shape[0],
                "model_overrides": overrides, "step_flops": flops}

    monkeypatch.setattr(device_step, "run_devices", fake_run_devices)
    monkeypatch.setattr("recpar.cluster.cpu_budget.unavailable_reason", lambda: None)
    monkeypatch.setattr("recpar.cluster.cpu_budget.find_controller",
                        lambda make_top: type("C", (), {"mechanism": "test"})())
    out = tmp_path / "scale.json"
    assert recpar_main(["perfmodel", "scale-model", "--cpu-budget", "0.25", "--model-override",
                        "d_model=128", "--model-override", "d_ff=512", "--out", str(out)]) == 0
    assert seen["overrides"] == {"d_model": 128, "d_ff": 512}
    dev = json.loads(out.read_text())["device_measurement"]
    # 128 wide: more FLOPs per step than the named tiny's 64
    assert dev["step_flops"] > device_step.step_flops("tiny", 1682, 32)
    with pytest.raises(SystemExit, match="--model-override"):
        recpar_main(["perfmodel", "scale-model", "--cpu-budget", "0.25",
                     "--model-override", "d_modle=128"])
