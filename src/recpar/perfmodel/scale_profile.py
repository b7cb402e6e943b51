"""The hardware profile of a scale model, for the cost model to predict its runs.

A scale-model cluster (`recpar cluster up --scale-model`) is a small, slow copy of a GPU
cluster: each device computes at the FLOP/s measured for it on its CPU budget, and the links
are the profile's scaled by the dilation D. The profile written here describes that copy in the
form `recpar.perfmodel.hardware` reads, every figure from a measurement of it:

- the device's peak = the FLOP/s of recpar's own training step on the budget (`recpar perfmodel
  scale-model`), efficiency 1 (that figure is already the achieved rate, not a datasheet peak);
- the intra-node and inter-node links = `recpar cluster calibrate` of the cluster that ran,
  TCP goodput and half the ping-pong round trip, not the configured values;
- no `shared_host` section: every device has its own budget, so ranks do not time-share;
- `links_under_load: run_record`: a run's links are priced at the rates its own record's
  calibration measured with every stream of a collective step running at once, where the record
  has them (recpar.perfmodel.loaded_links); the links above are one stream's.

Predictions against this profile are then in the emulation's seconds; a ratio (speedup,
communication share) is the same in the profile's seconds (recpar.perfmodel.dilation).
"""

from __future__ import annotations

from typing import Any, Mapping

from recpar.perfmodel.calibrate import profile_from_mapping
from recpar.perfmodel.hardware import GLOO_LIBRARY

MEMORY_GIB = 1.0
"""Memory per emulated device is not a limit the cost model's time prediction reads; a nominal
figure (the tiny and small models need far less), marked `assumed`."""


def calibration_from_records(records: list[tuple[str, Mapping[str, Any]]]
                             ) -> tuple[dict, int, str]:
    """(calibration, devices per node, which record) from the first record of a multi-node
    scale-model run that carries both links' calibration (`topology.inter_node.calibrated`,
    `topology.intra_node.calibrated`): what the cluster that ran measured."""
    for path, rec in records:
        topo = rec.get("topology") or {}
        inter = (topo.get("inter_node") or {}).get("calibrated") or {}
        intra = (topo.get("intra_node") or {}).get("calibrated") or {}
        if (topo.get("scale_model") and topo.get("nodes", 1) >= 2
                and None not in (inter.get("rate_bit_per_s"), inter.get("latency_s"),
                                 intra.get("rate_bit_per_s"), intra.get("latency_s"))):
            return ({"rate_bit_per_s": inter["rate_bit_per_s"], "latency_s": inter["latency_s"],
                     "intra_node": dict(intra),
                     # the dilation the links of the cluster that ran were scaled by
                     "dilation": (topo["scale_model"] or {}).get("dilation")},
                    int(topo["ranks_per_node"]), path)
    raise ValueError(f"none of the {len(records)} record(s) is a multi-node scale-model run "
                     f"with calibrated inter- and intra-node links")


def _fig(value: float, source: str, provenance: str) -> dict:
    return {"value": value, "source": source, "provenance": provenance}


def scale_profile_mapping(scale: Mapping[str, Any], calibration: Mapping[str, Any],
                          devices_per_node: int, where: str = "<scale model>") -> dict[str, Any]:
    """The profile mapping of a scale model: `scale` is `recpar perfmodel scale-model`'s output,
    `calibration` the cluster's `recpar cluster calibrate` result (with `intra_node`)."""
    sm, meas = scale["scale_model"], scale["device_measurement"]
    intra = calibration.get("intra_node")
    missing = [k for k, v in (("inter-node rate", calibration.get("rate_bit_per_s")),
                              ("inter-node latency", calibration.get("latency_s")),
                              ("intra-node link", intra)) if v is None]
    if missing:
        raise ValueError(f"{where}: the cluster calibration lacks {', '.join(missing)} "
                         f"(run `recpar cluster calibrate` on a cluster with intra-node links)")
    budget = scale["cpu_budget"]["cores_per_device"]
    shape = meas["model_size"] + "".join(f", {k} {v}" for k, v in
                                         (meas.get("model_overrides") or {}).items())
    step = (f"measured: recpar's training step ({shape}, {meas['n_items']} items, "
            f"batch {meas['batch']}) on a CPU budget of {budget:g} core(s), "
            f"`recpar perfmodel scale-model`")
    cal = "measured: `recpar cluster calibrate` (TCP goodput; half the ping-pong round trip)"
    m = {
        "name": f"scale-{sm['profile']}",
        "description": (f"scale model of {sm['profile']}: devices on {budget:g}-core budgets, "
                        f"links scaled by D = {calibration.get('dilation') or sm['dilation']:.4g}"
                        f", as calibrated"),
        "devices_per_node": _fig(devices_per_node, "the scale model's topology", "config"),
        "device": {
            "name": f"CPU budget of {budget:g} core(s)",
            "compute_dtype": "fp32",
            "peak_flops_per_s": {"fp32": _fig(float(sm["device_flops_per_s"]), step, "host")},
            "efficiency": _fig(1.0, "the peak above is already the training step's achieved "
                                    "rate", "model"),
            "memory_gib": _fig(MEMORY_GIB, "assumed: nominal, not a limit the prediction reads",
                               "assumed"),
        },
        "links": {
            "intra_node": {
                "latency_s": _fig(float(intra["latency_s"]), cal + ", device 0 -> 1 of node 0",
                                  "cluster"),
                "bandwidth_bytes_per_s": _fig(float(intra["rate_bit_per_s"]) / 8,
                                              cal + ", device 0 -> 1 of node 0", "cluster"),
            },
            "inter_node": {
                "latency_s": _fig(float(calibration["latency_s"]), cal + ", the largest of "
                                  "the node links", "cluster"),
                "bandwidth_bytes_per_s": _fig(float(calibration["rate_bit_per_s"]) / 8,
                                              cal + ", the slowest node link", "cluster"),
                "nics_per_node": _fig(1, "the scale model: one uplink per node", "config"),
            },
        },
        "collective_library": dict(GLOO_LIBRARY),
        "links_under_load": {
            "value": "run_record",
            "source": "the scale model's runs used the cluster calibrated here; each record "
                      "carries that calibration's rates under a collective step's load for "
                      "its own node count (recpar.perfmodel.loaded_links)"},
    }
    profile_from_mapping(m, where)
    return m
