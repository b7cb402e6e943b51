"""`recpar cluster up --scale-model`: the links read from a `recpar perfmodel scale-model`
output (no root: nothing is built)."""

import json

import pytest

from recpar.cluster import scale_links

MEASURED = {
    "scale_model": {
        "profile": "paper-a100", "device_flops_per_s": 6.1e9, "profile_flops_per_s": 1.248e14,
        "dilation": 6.1e9 / 1.248e14,
        "intra_node": {"profile_rate_bit_per_s": 2.4e12, "profile_latency_s": 1e-6,
                       "rate_bit_per_s": 1.173e8, "latency_s": 0.020459},
        "inter_node": {"profile_rate_bit_per_s": 1e11, "profile_latency_s": 1e-6,
                       "rate_bit_per_s": 4.888e6, "latency_s": 0.020459}},
    "cpu_budget": {"cores_per_device": 0.2, "period_us": 10000},
    "device_measurement": {"model_size": "tiny", "n_items": 1682, "batch": 32},
}


def test_links_come_from_the_measurement_with_latency_in_whole_ms(tmp_path):
    f = tmp_path / "sm.json"
    f.write_text(json.dumps(MEASURED))
    links = scale_links.load_or_measure(str(f), None, "rpu", tmp_path)
    assert links.inter == (4.888e6, 0.020) and links.intra == (1.173e8, 0.020)
    rec = links.record
    assert rec["profile"] == "paper-a100" and rec["dilation"] == pytest.approx(4.888e-5, rel=1e-3)
    assert rec["inter_node"]["latency_s"] == 0.020459  # exact next to applied
    assert rec["inter_node"]["applied_latency_s"] == 0.020
    assert rec["cpu_budget_cores_per_device"] == 0.2
    assert rec["measured_with"] == {"model_size": "tiny", "n_items": 1682, "batch": 32}


def test_bad_scale_model_input_names_the_file_and_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        scale_links.load_or_measure(str(tmp_path / "missing.json"), None, "rpu", tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"scale_model": {"profile": "x"}}))
    with pytest.raises(ValueError, match="bad.json: not a `recpar perfmodel scale-model` output"):
        scale_links.load_or_measure(str(bad), None, "rpu", tmp_path)
    with pytest.raises(ValueError, match="needs --cpu-budget"):
        scale_links.load_or_measure("paper-a100", None, "rpu", tmp_path)
