"""The emulated cluster's state file: what `up` built, what `calibrate` measured and what
`fault` changed, so that `down`, `status`, `launch` and `fault` find everything
(`<state_dir>/<prefix>.json`, default /run/recpar; written atomically)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from recpar.atomic_write import write_text
from recpar.cluster import netns
from recpar.cluster.netns import ClusterError, Names
from recpar.cluster.shaping import LinkShape
from recpar.cluster.topology import Topology

DEFAULT_STATE_DIR = "/run/recpar"
STATE_DIR_ENV = "RECPAR_CLUSTER_STATE_DIR"


def state_path(prefix: str = netns.DEFAULT_PREFIX, state_dir: str | os.PathLike | None = None) -> Path:
    """Where the state of the cluster with `prefix` lives."""
    base = state_dir or os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR
    return Path(base) / f"{Names(prefix).prefix}.json"


@dataclass
class ClusterState:
    """What `up` built (and `calibrate` / `fault` later measured or changed)."""

    prefix: str
    """Name prefix of every object of this cluster."""
    nodes: int
    """Number of node namespaces."""
    ranks_per_node: int
    """Ranks each node's torchrun agent starts."""
    base_shape: dict
    """Configured link of every node (LinkShape.to_dict()): what `up` was asked for."""
    node_shapes: list[dict]
    """Current link of each node (differs from base_shape after a `fault link`)."""
    netem: bool
    """Whether the kernel has sch_netem (latency emulation possible)."""
    created_unix_s: float
    """When `up` finished (time.time())."""
    calibration: dict | None = None
    """Result of `calibrate` (see recpar.cluster.calibrate), None until run."""
    stragglers: dict = field(default_factory=dict)
    """node index (str) -> pid of a running straggler duty-cycler (see recpar.cluster.fault)."""
    data_path: str = "tc"
    """What carries node-to-node frames: 'tc' (veth pairs to a bridge, htb/BPF shaping, netem
    where the kernel has it) or 'vde' (taps, wirefilters and vde_switches; recpar.cluster.vde)."""
    vde: dict | None = None
    """On the 'vde' data path: its run directory and the pids `up` started (vde.start)."""
    intra_shape: dict | None = None
    """Configured intra-node link of every device (LinkShape.to_dict()); None: the ranks of a
    node share its namespace and talk over its loopback (recpar.cluster.device_links)."""
    device_links: dict | None = None
    """With intra_shape: the VDE pids and settings of the device links (device_links.build)."""
    scale_model: dict | None = None
    """The scale model the links were derived from (`recpar perfmodel scale-model` output:
    profile, measured device FLOP/s, dilation, CPU budget), None when set by hand."""

    @property
    def names(self) -> Names:
        return Names(self.prefix)

    def namespaces_of_node(self, i: int) -> list[str]:
        """Node i's namespace and, with intra-node links, its devices' namespaces."""
        devices = self.ranks_per_node if self.intra_shape is not None else 0
        return [self.names.node_ns(i), *(self.names.device_ns(i, j) for j in range(devices))]

    def topology(self, nodes: int | None = None) -> Topology:
        """The cluster as a Topology; `nodes`: a run on its first `nodes` nodes (default all),
        which picks the concurrent-streams rates calibrated for that many."""
        nodes = self.nodes if nodes is None else nodes
        base = LinkShape.from_dict(self.base_shape)
        intra = LinkShape.from_dict(self.intra_shape) if self.intra_shape is not None else None
        cal = self.calibration or {}
        intra_cal = cal.get("intra_node") or {}

        def at(entries: list | None) -> float | None:
            return next((c.get("rate_bit_per_s") for c in entries or []
                         if c.get("nodes") == nodes), None)
        return Topology(kind="emulated", nodes=self.nodes, ranks_per_node=self.ranks_per_node,
                        inter_rate_bit_per_s=base.rate_bit_per_s,
                        inter_latency_s=base.latency_s, inter_loss=base.loss,
                        calibrated_rate_bit_per_s=cal.get("rate_bit_per_s"),
                        calibrated_latency_s=cal.get("latency_s"),
                        calibrated_concurrent_rate_bit_per_s=at(cal.get("concurrent")),
                        intra_rate_bit_per_s=intra.rate_bit_per_s if intra else None,
                        intra_latency_s=intra.latency_s if intra else None,
                        calibrated_intra_rate_bit_per_s=intra_cal.get("rate_bit_per_s"),
                        calibrated_intra_latency_s=intra_cal.get("latency_s"),
                        calibrated_intra_concurrent_rate_bit_per_s=at(
                            intra_cal.get("concurrent")),
                        scale_model=self.scale_model)

    def save(self, state_dir: str | os.PathLike | None = None) -> Path:
        """Write atomically (temp file + rename)."""
        path = state_path(self.prefix, state_dir)
        write_text(path, json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, prefix: str = netns.DEFAULT_PREFIX,
             state_dir: str | os.PathLike | None = None) -> "ClusterState":
        path = state_path(prefix, state_dir)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ClusterError(f"no emulated cluster with prefix {prefix!r} is up "
                               f"(no state file {path}); run `recpar cluster up` first") from None
        except json.JSONDecodeError as e:
            raise ClusterError(f"{path}: not valid JSON ({e.msg}); run `recpar cluster down`") from None
        try:
            return cls(**data)
        except TypeError as e:
            raise ClusterError(f"{path}: unexpected content ({e}); run `recpar cluster down`") from None
