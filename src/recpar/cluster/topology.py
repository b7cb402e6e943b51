"""Which machines (real or emulated) a run used, in the form run records keep.

A `Topology` travels from the launcher to every rank in the environment variable
`RECPAR_TOPOLOGY` (JSON of `to_record()`), so the training loop can write the topology
actually used into its run record without knowing how the ranks were started.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

KINDS = ("local", "emulated", "slurm")
ENV_VAR = "RECPAR_TOPOLOGY"


@dataclass(frozen=True)
class Topology:
    """Nodes, ranks per node and the inter-node link, configured and as measured."""

    kind: str = "local"
    """'local' (loopback of one machine), 'emulated' (network namespaces + tc), 'slurm'."""
    nodes: int = 1
    """Number of nodes (one torchrun agent each)."""
    ranks_per_node: int = 1
    """Ranks (processes) per node; torchrun's --nproc-per-node."""
    inter_rate_bit_per_s: float | None = None
    """Configured inter-node rate of each node's uplink, bit/s (None: not shaped / unknown)."""
    inter_latency_s: float | None = None
    """Configured one-way node-to-node latency added by the emulator, s (None: not set)."""
    inter_loss: float | None = None
    """Configured node-to-node packet loss probability (None: not set)."""
    calibrated_rate_bit_per_s: float | None = None
    """Measured TCP goodput node 0 -> node 1, bit/s (None until `recpar cluster calibrate`)."""
    calibrated_latency_s: float | None = None
    """Measured one-way latency node 0 <-> node 1 (half a TCP ping-pong round trip), s."""
    calibrated_concurrent_rate_bit_per_s: float | None = None
    """Measured rate per stream, bit/s, when each of the run's nodes sends the same bytes to the
    next at once (every link busy both ways, as in a ring or all-to-all step; bytes over the time
    until the last stream is done; recpar.cluster.calibrate.measure_streams). None until
    calibrated, or one node."""
    intra_rate_bit_per_s: float | None = None
    """Configured rate of each device's intra-node link, bit/s (None: the ranks of a node talk
    over its loopback, unshaped; recpar.cluster.device_links)."""
    intra_latency_s: float | None = None
    """Configured one-way device-to-device latency inside a node, s (None: loopback)."""
    calibrated_intra_rate_bit_per_s: float | None = None
    """Measured TCP goodput node 0 device 0 -> device 1, bit/s (`recpar cluster calibrate`)."""
    calibrated_intra_latency_s: float | None = None
    """Measured one-way latency node 0 device 0 <-> device 1, s."""
    calibrated_intra_concurrent_rate_bit_per_s: float | None = None
    """Measured rate per stream, bit/s, when inside each of the run's nodes every device sends
    the same bytes to the next at once (every intra-node link busy both ways, as a
    tensor-parallel all-reduce in every node makes them; recpar.cluster.calibrate)."""
    scale_model: dict | None = None
    """The scale model the links were scaled from (profile, measured device FLOP/s, dilation
    D, profile and scaled links; recpar.perfmodel.dilation), None when not a scale model."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"topology.kind: {self.kind!r} is not one of {', '.join(KINDS)}")
        for name in ("nodes", "ranks_per_node"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"topology.{name}: must be an integer >= 1, got {v!r}")
        if self.kind == "local" and self.nodes != 1:
            raise ValueError(f"topology.nodes: a 'local' topology has 1 node, got {self.nodes}")
        for name in ("inter_rate_bit_per_s", "inter_latency_s", "inter_loss",
                     "calibrated_rate_bit_per_s", "calibrated_latency_s",
                     "calibrated_concurrent_rate_bit_per_s", "intra_rate_bit_per_s",
                     "intra_latency_s",
                     "calibrated_intra_rate_bit_per_s", "calibrated_intra_latency_s",
                     "calibrated_intra_concurrent_rate_bit_per_s"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                                  or not math.isfinite(v) or v < 0):
                raise ValueError(f"topology.{name}: must be a finite number >= 0 or null, got {v!r}")
        if self.inter_loss is not None and self.inter_loss >= 1:
            raise ValueError(f"topology.inter_loss: must be < 1, got {self.inter_loss!r}")

    @property
    def world_size(self) -> int:
        return self.nodes * self.ranks_per_node

    def to_record(self) -> dict:
        """The run-record form: no hostnames, no addresses; configured next to measured."""
        return {
            "kind": self.kind,
            "nodes": self.nodes,
            "ranks_per_node": self.ranks_per_node,
            "world_size": self.world_size,
            "inter_node": {
                "configured": {"rate_bit_per_s": self.inter_rate_bit_per_s,
                               "latency_s": self.inter_latency_s,
                               "loss": self.inter_loss},
                "calibrated": {"rate_bit_per_s": self.calibrated_rate_bit_per_s,
                               "latency_s": self.calibrated_latency_s,
                               **({} if self.calibrated_concurrent_rate_bit_per_s is None else
                                  {"concurrent_rate_bit_per_s":
                                   self.calibrated_concurrent_rate_bit_per_s})},
            },
            **({} if self.intra_rate_bit_per_s is None and self.intra_latency_s is None else
               {"intra_node": {
                   "configured": {"rate_bit_per_s": self.intra_rate_bit_per_s,
                                  "latency_s": self.intra_latency_s},
                   "calibrated": {"rate_bit_per_s": self.calibrated_intra_rate_bit_per_s,
                                  "latency_s": self.calibrated_intra_latency_s,
                                  **({} if self.calibrated_intra_concurrent_rate_bit_per_s
                                     is None else {"concurrent_rate_bit_per_s":
                                     self.calibrated_intra_concurrent_rate_bit_per_s})}}}),
            **({} if self.scale_model is None else {"scale_model": self.scale_model}),
        }

    @classmethod
    def from_record(cls, rec: dict) -> "Topology":
        """Inverse of `to_record` (tolerates records with only kind/nodes/ranks_per_node)."""
        if not isinstance(rec, dict):
            raise ValueError(f"topology: expected an object, got {type(rec).__name__}")
        missing = [k for k in ("kind", "nodes", "ranks_per_node") if k not in rec]
        if missing:
            raise ValueError(f"topology: missing key(s) {', '.join(missing)}")
        inter = rec.get("inter_node") or {}
        conf = inter.get("configured") or {}
        cal = inter.get("calibrated") or {}
        intra = (rec.get("intra_node") or {}).get("configured") or {}
        intra_cal = (rec.get("intra_node") or {}).get("calibrated") or {}
        return cls(kind=rec["kind"], nodes=rec["nodes"], ranks_per_node=rec["ranks_per_node"],
                   inter_rate_bit_per_s=conf.get("rate_bit_per_s"),
                   inter_latency_s=conf.get("latency_s"), inter_loss=conf.get("loss"),
                   calibrated_rate_bit_per_s=cal.get("rate_bit_per_s"),
                   calibrated_latency_s=cal.get("latency_s"),
                   calibrated_concurrent_rate_bit_per_s=cal.get("concurrent_rate_bit_per_s"),
                   intra_rate_bit_per_s=intra.get("rate_bit_per_s"),
                   intra_latency_s=intra.get("latency_s"),
                   calibrated_intra_rate_bit_per_s=intra_cal.get("rate_bit_per_s"),
                   calibrated_intra_latency_s=intra_cal.get("latency_s"),
                   calibrated_intra_concurrent_rate_bit_per_s=intra_cal.get(
                       "concurrent_rate_bit_per_s"),
                   scale_model=rec.get("scale_model"))

    def to_env(self) -> dict[str, str]:
        """Environment entries that hand this topology to the ranks."""
        return {ENV_VAR: json.dumps(self.to_record(), sort_keys=True)}

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Topology | None":
        """The topology the launcher exported, or None when not started by `launch`."""
        env = os.environ if environ is None else environ
        text = env.get(ENV_VAR)
        if not text:
            return None
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{ENV_VAR}: not valid JSON ({e.msg} at char {e.pos})") from None
        return cls.from_record(rec)
