"""Shared fixtures: a small hardware profile with round numbers for hand-computed cases."""

import pytest

from recpar.perfmodel.hardware import profile_from_mapping


def fig(v, src="assumed: test"):
    return {"value": v, "source": src}


def toy_mapping():
    return {
        "name": "toy",
        "description": "round numbers for hand-computed cases",
        "devices_per_node": fig(4),
        "device": {
            "name": "toy device",
            "compute_dtype": "fp32",
            "peak_flops_per_s": {"fp32": fig(1e12)},
            "efficiency": fig(0.5),
            "memory_gib": fig(16),
        },
        "links": {
            "intra_node": {"latency_s": fig(1e-6), "bandwidth_bytes_per_s": fig(1e10)},
            "inter_node": {"latency_s": fig(1e-5), "bandwidth_bytes_per_s": fig(1e9),
                           "nics_per_node": fig(1)},
        },
    }


@pytest.fixture
def toy_hw():
    return profile_from_mapping(toy_mapping(), "toy.yaml")
