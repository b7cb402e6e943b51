"""A run's links priced at the rates its own calibration measured under a collective's load.

`recpar cluster calibrate` measures every link twice: one TCP stream alone, and every stream of
a collective step at once, the same bytes each, until the last is done (`concurrent`: the nodes'
uplinks as in a ring over k nodes, and the devices' links inside each of k nodes at once;
recpar.cluster.calibrate). A collective moves its bytes under the second condition. On the
emulated cluster the two differ much: with both directions of a link busy, TCP splits a slow
link unevenly and the user-space emulator runs out of cores on a fast one.

A profile with `links_under_load: run_record` (the scale model's, which describes the very
cluster its runs used) prices each run's intra- and inter-node bandwidth at the rates that run's
record carries for its own node count (`topology.<link>.calibrated.concurrent_rate_bit_per_s`,
as `LinkProfile.loaded_bandwidth_bytes_per_s`), where it has them. Collectives (TP, DP, the
tied-table all-reduce) are priced with them; a pipeline's point-to-point send, one stream, keeps
the one-stream rate, and latencies stay the ping-pong ones. Those rates are measured by
`calibrate` before any run starts: inputs of the run, not its outcome.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

from recpar.perfmodel.hardware import Figure, HardwareProfile

LINKS = ("intra_node", "inter_node")


def links_for_record(hw: HardwareProfile, record: Mapping[str, Any]
                     ) -> tuple[HardwareProfile, str]:
    """(the profile `record`'s run is priced on, which link rates it uses: `profile`, `one
    stream` or `under load: <links>`)."""
    if hw.links_under_load != "run_record":
        return hw, "profile"
    topo = record.get("topology") or {}
    changes: dict[str, Any] = {}
    figures = dict(hw.figures)
    for key in LINKS:
        rate = (((topo.get(key) or {}).get("calibrated") or {})
                .get("concurrent_rate_bit_per_s"))
        if not rate:
            continue
        fig = Figure(float(rate) / 8,
                     f"measured: the run record's topology.{key}.calibrated."
                     f"concurrent_rate_bit_per_s (`recpar cluster calibrate`: every stream of a "
                     f"collective step at once, the run's {topo.get('nodes')} node(s))",
                     "cluster")
        changes[key] = replace(getattr(hw, key), loaded_bandwidth_bytes_per_s=fig)
        figures[f"links.{key}.loaded_bandwidth_bytes_per_s"] = fig
    if not changes:
        return hw, "one stream (the record has no rate under load)"
    return (replace(hw, **changes, figures=figures),
            "under load: " + ", ".join(k for k in LINKS if k in changes))
