"""tc qdisc trees that shape one end of a node's veth (rate, latency, loss).

Each end of a node's veth pair carries the same tree, so both directions are shaped: the
node-side end (`rp-v<i>`, egress = what node i sends) and the switch-side end (`rp-b<i>`,
egress = what node i receives). Shaping only the sender's side would let k nodes sending to one
node deliver k × rate into it; shaping both models a full-duplex NIC of that rate per node.

Tree on every shaped end (handles are fixed so a live link can be changed in place):

    1:   htb root, default class 1:1
    1:1  htb class, rate = ceil = configured rate        <- all traffic
           10: leaf: netem delay (latency / 2)  or  pfifo when no latency is set
    1:2  htb class, leaf 20: pfifo limit 0               <- the drop class: anything put
                                                            here is discarded
    filter prio 1: classic-BPF program on IPv4 packets that sends a packet to 1:2 with
           probability p (it reads the kernel's per-packet random number, SKF_AD_RANDOM)

Latency and loss apply to a node-to-node path twice (sender's and receiver's end). Values are
path values: with every node configured alike (`up`), each end gets half the one-way latency and
p = 1 - sqrt(1 - loss), so a path's totals equal the configured ones. When one node's link is
changed (`fault link`), its ends get what makes its paths to the unchanged nodes total the new
values (the "partner" end keeps its share of the base configuration; see `end_latency_s`).

Loss is decided per skb. With TSO/GSO one skb can carry up to 64 KiB of TCP segments, so while
loss > 0 the veth end's gso_max_segs is set to 1 (one MTU-sized packet per skb, as on a wire);
it goes back to the kernel default (65535) when loss returns to 0.

Why not netem for loss and rate too: some kernels (like the one this was built on) are compiled
without sch_netem; htb + cls_bpf + pfifo are in every kernel that has traffic control, so rate
and loss work everywhere and only latency needs netem. Where it is missing, `up` builds the
links from vde2 wirefilters instead (`recpar.cluster.vde`), which add latency in user space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from recpar.cluster.netns import ClusterError, run
from recpar.cluster.units import MAX_RATE_BIT_PER_S, format_duration_us, format_rate

# An unshaped end that still needs latency or loss is capped at the top of the faithful range.
UNSHAPED_CAP_BIT_PER_S = MAX_RATE_BIT_PER_S
# htb: quantum must be >= MTU and sch_htb warns above 200000 bytes; 60000 keeps it quiet at
# every rate we allow (there is one busy class, so the value does not change sharing).
HTB_QUANTUM_BYTES = 60000
# pfifo leaf length in packets (skbs): veth's default txqueuelen.
LEAF_LIMIT_PKTS = 1000
# Classic BPF (struct sock_filter: code jt jf k), in tc's "bytecode" text form:
#   ld  [SKF_AD_OFF + SKF_AD_RANDOM]   code 0x20 = BPF_LD|BPF_W|BPF_ABS, k = -4096 + 56
#   jge #T, +1, +0                     code 0x35 = BPF_JMP|BPF_JGE|BPF_K
#   ret #0x10002                       code 0x06: classid 1:2 (drop)   when random < T
#   ret #0                             code 0x06: no match -> default class 1:1
_SKF_AD_RANDOM_K = (1 << 32) - 4096 + 56
_DROP_CLASSID = 0x10002


@dataclass(frozen=True)
class LinkShape:
    """What one node's link does to node-to-node traffic (path values, not per end)."""

    rate_bit_per_s: float | None = None
    """Rate of the node's uplink in each direction, bit/s (None: unshaped)."""
    latency_s: float = 0.0
    """One-way latency added to a node-to-node path, s (half on each end)."""
    loss: float = 0.0
    """Probability a node-to-node packet is dropped (split over the two ends)."""

    def __post_init__(self) -> None:
        if self.rate_bit_per_s is not None and not (self.rate_bit_per_s > 0):
            raise ValueError(f"rate_bit_per_s must be > 0, got {self.rate_bit_per_s!r}")
        if not (self.latency_s >= 0):
            raise ValueError(f"latency_s must be >= 0, got {self.latency_s!r}")
        if not (0 <= self.loss < 1):
            raise ValueError(f"loss must be in [0, 1), got {self.loss!r}")

    @property
    def shaped(self) -> bool:
        return self.rate_bit_per_s is not None or self.latency_s > 0 or self.loss > 0

    def updated(self, rate_bit_per_s: float | None = None, latency_s: float | None = None,
                loss: float | None = None) -> "LinkShape":
        """A copy with the given fields changed (None keeps the current value)."""
        return replace(self,
                       rate_bit_per_s=self.rate_bit_per_s if rate_bit_per_s is None else rate_bit_per_s,
                       latency_s=self.latency_s if latency_s is None else latency_s,
                       loss=self.loss if loss is None else loss)

    def to_dict(self) -> dict:
        return {"rate_bit_per_s": self.rate_bit_per_s, "latency_s": self.latency_s,
                "loss": self.loss}

    @classmethod
    def from_dict(cls, d: dict) -> "LinkShape":
        return cls(d.get("rate_bit_per_s"), float(d.get("latency_s") or 0.0),
                   float(d.get("loss") or 0.0))


def per_end_loss(path_loss: float) -> float:
    """Loss each of the two ends applies so that the path loses `path_loss`."""
    return 1.0 - math.sqrt(1.0 - path_loss)


def drop_bytecode(p: float) -> str:
    """tc `bpf bytecode` text of the random-drop program for per-packet probability p."""
    threshold = min(int(round(p * 2**32)), 2**32 - 1)
    prog = [(0x20, 0, 0, _SKF_AD_RANDOM_K), (0x35, 1, 0, threshold),
            (0x06, 0, 0, _DROP_CLASSID), (0x06, 0, 0, 0)]
    return f"{len(prog)}," + ",".join(f"{c} {jt} {jf} {k}" for c, jt, jf, k in prog)


def netem_available(ns: str) -> bool:
    """Whether this kernel has sch_netem (tried on `ns`'s loopback, then removed)."""
    probe = run(["tc", "-n", ns, "qdisc", "add", "dev", "lo", "root", "handle", "9:", "netem",
                 "delay", "1ms"], check=False)
    if probe.returncode != 0:
        return False
    run(["tc", "-n", ns, "qdisc", "del", "dev", "lo", "root"], check=False)
    return True


def end_latency_s(shape: LinkShape, partner: LinkShape | None = None) -> float:
    """Delay one end of a link with path latency `shape` adds, when the far end of its paths
    belongs to a node configured as `partner` (default: alike) and adds its half of that."""
    partner = shape if partner is None else partner
    return max(0.0, shape.latency_s - partner.latency_s / 2)


def end_loss(shape: LinkShape, partner: LinkShape | None = None) -> float:
    """Drop probability of one end so that (1 - this)(1 - partner's end) = 1 - shape.loss."""
    partner = shape if partner is None else partner
    return max(0.0, 1.0 - (1.0 - shape.loss) / (1.0 - per_end_loss(partner.loss)))


def _leaf_argv(shape: LinkShape, partner: LinkShape | None) -> list[str]:
    delay = end_latency_s(shape, partner)
    if delay > 0:
        return ["netem", "delay", format_duration_us(delay),
                "limit", str(LEAF_LIMIT_PKTS * 10)]
    return ["pfifo", "limit", str(LEAF_LIMIT_PKTS)]


def _rate_text(shape: LinkShape) -> str:
    return format_rate(shape.rate_bit_per_s if shape.rate_bit_per_s is not None
                       else UNSHAPED_CAP_BIT_PER_S)


def _filter_argv(tc: list[str], verb: str, dev: str, shape: LinkShape,
                 partner: LinkShape | None) -> list[str]:
    return [*tc, "filter", verb, "dev", dev, "parent", "1:", "protocol", "ip", "prio", "1", "handle", "1",
            "bpf", "bytecode", drop_bytecode(end_loss(shape, partner)), "classid", "1:2"]


GSO_MAX_SEGS_DEFAULT = 65535  # the kernel's GSO_MAX_SEGS


def _set_gso(ns: str, dev: str, loss: float) -> None:
    segs = "1" if loss > 0 else str(GSO_MAX_SEGS_DEFAULT)
    run(["ip", "-n", ns, "link", "set", "dev", dev, "gso_max_segs", segs])


def apply_shape(ns: str, dev: str, shape: LinkShape, netem_ok: bool,
                partner: LinkShape | None = None) -> None:
    """Replace whatever root qdisc `dev` in `ns` has with the tree for `shape` (path values;
    `partner`: how the nodes at the other end of its paths are configured, default alike)."""
    if shape.latency_s > 0 and not netem_ok:
        raise ClusterError("latency needs the kernel's netem qdisc (CONFIG_NET_SCH_NETEM), "
                           "which this kernel lacks; use latency 0")
    tc = ["tc", "-n", ns]
    run([*tc, "qdisc", "del", "dev", dev, "root"], check=False)  # none yet: not an error
    _set_gso(ns, dev, end_loss(shape, partner))
    if not shape.shaped:
        return
    rate = _rate_text(shape)
    q = str(HTB_QUANTUM_BYTES)
    run([*tc, "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "1"])
    run([*tc, "class", "add", "dev", dev, "parent", "1:", "classid", "1:1", "htb",
         "rate", rate, "ceil", rate, "quantum", q])
    run([*tc, "qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", *_leaf_argv(shape, partner)])
    run([*tc, "class", "add", "dev", dev, "parent", "1:", "classid", "1:2", "htb",
         "rate", rate, "ceil", rate, "quantum", q])
    run([*tc, "qdisc", "add", "dev", dev, "parent", "1:2", "handle", "20:", "pfifo", "limit", "0"])
    run(_filter_argv(tc, "add", dev, shape, partner))


def change_shape(ns: str, dev: str, old: LinkShape, new: LinkShape, netem_ok: bool,
                 partner: LinkShape | None = None) -> None:
    """Change a live link in place (class/filter/leaf changes; queued packets are kept
    unless the leaf switches between pfifo and netem)."""
    if new.latency_s > 0 and not netem_ok:
        raise ClusterError("latency needs the kernel's netem qdisc (CONFIG_NET_SCH_NETEM), "
                           "which this kernel lacks; use latency 0")
    if not old.shaped or not new.shaped:
        apply_shape(ns, dev, new, netem_ok, partner)
        return
    tc = ["tc", "-n", ns]
    rate = _rate_text(new)
    q = str(HTB_QUANTUM_BYTES)
    if new.rate_bit_per_s != old.rate_bit_per_s:
        for cid in ("1:1", "1:2"):
            run([*tc, "class", "change", "dev", dev, "parent", "1:", "classid", cid, "htb",
                 "rate", rate, "ceil", rate, "quantum", q])
    old_delay, new_delay = end_latency_s(old, partner), end_latency_s(new, partner)
    if new_delay != old_delay:
        verb = "change" if (old_delay > 0 and new_delay > 0) else "replace"
        run([*tc, "qdisc", verb, "dev", dev, "parent", "1:1", "handle", "10:",
             *_leaf_argv(new, partner)])
    if end_loss(new, partner) != end_loss(old, partner):
        _set_gso(ns, dev, end_loss(new, partner))
        run(_filter_argv(tc, "replace", dev, new, partner))


def qdisc_stats(ns: str, dev: str) -> dict:
    """Bytes/packets the root qdisc sent and dropped on `dev` (tc -s -j)."""
    import json

    out = run(["tc", "-n", ns, "-s", "-j", "qdisc", "show", "dev", dev]).stdout
    stats = {"sent_bytes": 0, "sent_packets": 0, "dropped_packets": 0, "kinds": []}
    for q in json.loads(out or "[]"):
        stats["kinds"].append(q.get("kind"))
        if q.get("root"):
            stats["sent_bytes"] = int(q.get("bytes", 0))
            stats["sent_packets"] = int(q.get("packets", 0))
        stats["dropped_packets"] += int(q.get("drops", 0))
    return stats
