"""The hardware profile of a scale-model cluster: measured device, calibrated links."""

import copy

import pytest

from recpar.perfmodel.calibrate import profile_from_mapping
from recpar.perfmodel.scale_profile import scale_profile_mapping

SCALE = {
    "scale_model": {"profile": "paper-a100", "device_flops_per_s": 5.5e9,
                    "profile_flops_per_s": 1.248e14, "dilation": 5.5e9 / 1.248e14},
    "cpu_budget": {"cores_per_device": 0.2},
    "device_measurement": {"model_size": "tiny", "n_items": 1349, "batch": 32},
}
CALIBRATION = {"rate_bit_per_s": 3.3e6, "latency_s": 0.0295,
               "intra_node": {"rate_bit_per_s": 8.0e7, "latency_s": 0.0294}}


def test_profile_reads_the_measured_device_and_the_calibrated_links():
    m = scale_profile_mapping(SCALE, CALIBRATION, devices_per_node=2)
    hw = profile_from_mapping(m, "<test>")
    assert hw.name == "scale-paper-a100"
    assert hw.collective_library == "gloo"  # the scale model's ranks talk through gloo
    assert hw.sustained_flops_per_s == pytest.approx(5.5e9)  # efficiency 1: already achieved
    assert hw.intra_node.bandwidth_bytes_per_s.value == pytest.approx(1.0e7)  # 80 Mbit/s
    assert hw.intra_node.latency_s.value == pytest.approx(0.0294)
    assert hw.inter_node.bandwidth_bytes_per_s.value == pytest.approx(3.3e6 / 8)
    assert hw.inter_node.latency_s.value == pytest.approx(0.0295)
    assert m["devices_per_node"]["value"] == 2 and "shared_host" not in m
    assert f"D = {5.5e9 / 1.248e14:.4g}," in m["description"]
    # a device measured again after the runs: the description keeps the D the cluster that
    # ran was scaled by (the records'), the device figure is the new measurement
    again = scale_profile_mapping(SCALE, {**CALIBRATION, "dilation": 3.1e-5}, 2)
    assert "D = 3.1e-05," in again["description"]
    assert m["links"]["inter_node"]["latency_s"]["provenance"] == "cluster"


def test_a_cluster_without_intra_node_calibration_is_refused_naming_what_lacks():
    cal = copy.deepcopy(CALIBRATION)
    del cal["intra_node"]
    with pytest.raises(ValueError, match="lacks intra-node link"):
        scale_profile_mapping(SCALE, cal, 2, where="sm.json")


def test_calibration_comes_from_the_first_calibrated_multi_node_scale_model_record():
    from recpar.perfmodel.scale_profile import calibration_from_records

    one_node = {"topology": {"nodes": 1, "ranks_per_node": 2, "scale_model": {"x": 1}}}
    calibrated = {"topology": {
        "nodes": 2, "ranks_per_node": 2, "scale_model": {"x": 1},
        "inter_node": {"calibrated": {"rate_bit_per_s": 3.3e6, "latency_s": 0.0295}},
        "intra_node": {"calibrated": {"rate_bit_per_s": 8e7, "latency_s": 0.0294}}}}
    cal, devices, src = calibration_from_records([("a", one_node), ("b", calibrated)])
    assert src == "b" and devices == 2 and cal["intra_node"]["latency_s"] == 0.0294
    assert cal["rate_bit_per_s"] == 3.3e6
    with pytest.raises(ValueError, match="none of the 1 record"):
        calibration_from_records([("a", one_node)])
