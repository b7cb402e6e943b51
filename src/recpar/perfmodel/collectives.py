"""α–β–γ cost model of the collectives recpar uses.

Each message of n bytes between two ranks costs α + n·β (α: per-message latency in s,
β: s per byte = 1 / bandwidth); reducing n bytes locally costs n·γ. The formulas are the
standard ones for the algorithms MPICH and NCCL implement:

- R. Thakur, R. Rabenseifner, W. Gropp, "Optimization of Collective Communication Operations
  in MPICH", Int. J. High Performance Computing Applications 19(1), 2005 (Thakur2005).
- E. Chan, M. Heimlich, A. Purkayastha, R. van de Geijn, "Collective communication: theory,
  practice, and experience", Concurrency and Computation: Practice and Experience 19(13),
  2007 (Chan2007).

Sizes are in bytes and always mean the *full* vector: for all-reduce the size of the gradient
each rank holds, for all-gather the size of the gathered result (p × the per-rank piece),
for reduce-scatter the size of the input each rank holds. Times are in seconds.

Hierarchical all-reduce and the compressed (sign / top-k) all-gathers are written out here
because they are compositions no library exposes as a cost formula; they mirror how
`recpar.comm` runs them (compressed gradients are aggregated by all-gather of each rank's
payload, then decoded and summed locally).

Two families of formulas, picked by the profile's `collective_library` (see `LIBRARIES`):

- `nccl`: the textbook algorithms above (what NCCL's ring implements; the paper's cluster).
- `gloo`: what torch.distributed's gloo backend does over TCP, recpar's backend on CPU. Its
  ring all-reduce and all-gather are rings too, with two protocol differences read from gloo's
  source (gloo/allreduce.cc, gloo/allgather.cc, gloo/transport/tcp/pair.cc) that double the
  latency term, and its reduce-scatter is an all-reduce (measured: see `gloo_reduce_scatter`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class LinkCost:
    """α–β–γ parameters of one level of the network, as seen by one stream."""

    alpha_s: float
    """Per-message latency α in seconds (software + wire)."""
    beta_s_per_byte: float
    """Transfer time β per byte in seconds (1 / achievable bandwidth of one stream)."""
    gamma_s_per_byte: float = 0.0
    """Local reduction time γ per byte in seconds (summing two buffers of that many bytes)."""

    def __post_init__(self) -> None:
        for name in ("alpha_s", "beta_s_per_byte", "gamma_s_per_byte"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"LinkCost.{name} must be a finite number >= 0, got {v!r}")

    @classmethod
    def from_bandwidth(cls, latency_s: float, bandwidth_bytes_per_s: float,
                       reduce_bytes_per_s: float | None = None) -> "LinkCost":
        """Build from a latency and bandwidths (bytes/s); reduce rate None means γ = 0."""
        if bandwidth_bytes_per_s <= 0:
            raise ValueError(f"bandwidth_bytes_per_s must be > 0, got {bandwidth_bytes_per_s!r}")
        gamma = 0.0 if not reduce_bytes_per_s else 1.0 / reduce_bytes_per_s
        return cls(latency_s, 1.0 / bandwidth_bytes_per_s, gamma)

    def shared_by(self, streams: int) -> "LinkCost":
        """The same link when `streams` concurrent streams share its bandwidth (β × streams)."""
        _check_p(streams, "streams")
        return LinkCost(self.alpha_s, self.beta_s_per_byte * streams, self.gamma_s_per_byte)


def _check_p(p: int, name: str = "p") -> None:
    if not isinstance(p, int) or p < 1:
        raise ValueError(f"{name} must be a positive integer, got {p!r}")


def _check_n(n: float) -> None:
    if not (isinstance(n, (int, float)) and math.isfinite(n) and n >= 0):
        raise ValueError(f"message size must be a finite number of bytes >= 0, got {n!r}")


def _log2_ceil(p: int) -> int:
    return math.ceil(math.log2(p)) if p > 1 else 0


def point_to_point(n: float, link: LinkCost) -> float:
    """One message of n bytes: α + nβ."""
    _check_n(n)
    return link.alpha_s + n * link.beta_s_per_byte


def ring_all_reduce(n: float, p: int, link: LinkCost) -> float:
    """Ring all-reduce (reduce-scatter + all-gather rings; Thakur2005 §4, Chan2007).

    2(p−1)α + 2(p−1)/p·nβ + (p−1)/p·nγ.
    """
    _check_n(n), _check_p(p)
    if p == 1:
        return 0.0
    f = (p - 1) / p
    return 2 * (p - 1) * link.alpha_s + 2 * f * n * link.beta_s_per_byte \
        + f * n * link.gamma_s_per_byte


def ring_reduce_scatter(n: float, p: int, link: LinkCost) -> float:
    """Ring reduce-scatter of an n-byte input: (p−1)α + (p−1)/p·nβ + (p−1)/p·nγ."""
    _check_n(n), _check_p(p)
    if p == 1:
        return 0.0
    f = (p - 1) / p
    return (p - 1) * link.alpha_s + f * n * (link.beta_s_per_byte + link.gamma_s_per_byte)


def ring_all_gather(n: float, p: int, link: LinkCost) -> float:
    """Ring all-gather to an n-byte result (n/p per rank): (p−1)α + (p−1)/p·nβ."""
    _check_n(n), _check_p(p)
    if p == 1:
        return 0.0
    return (p - 1) * link.alpha_s + (p - 1) / p * n * link.beta_s_per_byte


def recursive_doubling_all_reduce(n: float, p: int, link: LinkCost) -> float:
    """Recursive-doubling all-reduce (Thakur2005 §4.4): ⌈log2 p⌉(α + nβ + nγ).

    For p not a power of two MPICH adds a pre/post step; ⌈log2 p⌉ rounds is the usual
    approximation and is what this returns.
    """
    _check_n(n), _check_p(p)
    return _log2_ceil(p) * (link.alpha_s + n * (link.beta_s_per_byte + link.gamma_s_per_byte))


def tree_all_reduce(n: float, p: int, link: LinkCost) -> float:
    """Binomial-tree reduce then binomial-tree broadcast (Thakur2005 §4.4, Chan2007):

    2⌈log2 p⌉(α + nβ) + ⌈log2 p⌉·nγ. Unpipelined: NCCL's pipelined double binary tree is
    faster for large n; this is the textbook latency-optimal tree.
    """
    _check_n(n), _check_p(p)
    k = _log2_ceil(p)
    return 2 * k * (link.alpha_s + n * link.beta_s_per_byte) + k * n * link.gamma_s_per_byte


def rabenseifner_all_reduce(n: float, p: int, link: LinkCost) -> float:
    """Recursive-halving reduce-scatter + recursive-doubling all-gather (Thakur2005 §4.4):

    2⌈log2 p⌉α + 2(p−1)/p·nβ + (p−1)/p·nγ.
    """
    _check_n(n), _check_p(p)
    if p == 1:
        return 0.0
    f = (p - 1) / p
    return 2 * _log2_ceil(p) * link.alpha_s + 2 * f * n * link.beta_s_per_byte \
        + f * n * link.gamma_s_per_byte


GLOO_MAX_SEGMENT_BYTES = 2**20
"""gloo::AllreduceOptions::kMaxSegmentSize (gloo/allreduce.h): the ring all-reduce sends
segments of at most 1 MiB, two in flight."""


def gloo_segments(n: float, p: int) -> int:
    """Segments S gloo's ring all-reduce cuts n bytes into (gloo/allreduce.cc): segment size
    s = min(⌈n / 2p⌉, 1 MiB), S = ⌈n / s⌉ rounded up to a multiple of p, at least 2p."""
    _check_n(n), _check_p(p)
    seg = max(1.0, min(math.ceil(n / (2 * p)), GLOO_MAX_SEGMENT_BYTES))
    s = max(math.ceil(n / seg), 2 * p)
    return p * math.ceil(s / p)


def gloo_ring_all_reduce(n: float, p: int, link: LinkCost) -> float:
    """gloo's ring all-reduce over its TCP transport (gloo/allreduce.cc, transport/tcp/pair.cc).

    A reduce-scatter ring then an all-gather ring, like `ring_all_reduce`, with two differences:

    - a send leaves only once the receiver's recv-ready notice has arrived (Pair::send queues
      it until NOTIFY_RECV_READY unless the receive was posted earlier), so a hop costs a
      notice's latency and the data's: 2α;
    - the vector goes in S segments (`gloo_segments`), two in flight; each iteration waits for
      the segment posted two iterations before, so a phase is ⌈(S−2)/2⌉ lock-step rounds of
      one notice + one data latency.

    2·⌈(S−2)/2⌉·2α + 2(p−1)/p·nβ + (p−1)/p·nγ. For n ≤ 2p MiB (S = 2p): 4(p−1)α + …, twice
    the textbook latency term with the same bandwidth term.
    """
    _check_n(n), _check_p(p)
    if p == 1:
        return 0.0
    rounds = math.ceil((gloo_segments(n, p) - 2) / 2)
    f = (p - 1) / p
    return 2 * rounds * 2 * link.alpha_s + 2 * f * n * link.beta_s_per_byte \
        + f * n * link.gamma_s_per_byte


def gloo_reduce_scatter(n: float, p: int, link: LinkCost) -> float:
    """gloo's reduce-scatter of an n-byte input costs its all-reduce of n bytes.

    gloo has no reduce-scatter algorithm (libtorch_cpu links no gloo reduce-scatter symbol),
    and torch's ProcessGroupGloo moves all-reduce bytes for it: counted on an otherwise idle
    loopback, a 16 MiB `reduce_scatter_tensor` put 32 MiB on the wire at p = 2 and 96 MiB at
    p = 4, exactly what `all_reduce` of the same tensor put there (a ring reduce-scatter would
    send half). tests/cluster/test_gloo_bytes.py keeps checking this.
    """
    return gloo_ring_all_reduce(n, p, link)


def gloo_all_gather(n: float, p: int, link: LinkCost) -> float:
    """gloo's ring all-gather to an n-byte result (gloo/allgather.cc): 2(p−1) half-pieces, two
    in flight, each waiting for the one posted two before: (p−1) rounds of 2α + (n/p)β."""
    _check_n(n), _check_p(p)
    if p == 1:
        return 0.0
    return (p - 1) * (2 * link.alpha_s + n / p * link.beta_s_per_byte)


def all_to_all(n: float, p: int, link: LinkCost) -> float:
    """All-to-all of an n-byte send buffer per rank (n/p to each rank, itself included), every
    exchange posted at once as NCCL's grouped send/recv does: α + (p−1)/p·nβ. The p−1 chunks
    leave over the rank's one link, so they share its bandwidth; their latencies overlap
    (MPICH's pairwise exchange, Thakur2005, pays (p−1)α)."""
    _check_n(n), _check_p(p)
    if p == 1:
        return 0.0
    return link.alpha_s + (p - 1) / p * n * link.beta_s_per_byte


def gloo_all_to_all(n: float, p: int, link: LinkCost) -> float:
    """gloo's all-to-all(v) of an n-byte send buffer per rank (gloo/alltoallv.cc): it posts a
    send to and a receive from every other rank, then waits for all of them. Every receive is
    posted in that same loop, so a send waits once for the receiver's recv-ready notice (as in
    `gloo_ring_all_reduce`): 2α + (p−1)/p·nβ."""
    _check_n(n), _check_p(p)
    if p == 1:
        return 0.0
    return 2 * link.alpha_s + (p - 1) / p * n * link.beta_s_per_byte


@dataclass(frozen=True)
class CollectiveLibrary:
    """The cost formulas of one collective library's algorithms (all sizes as documented at the
    top of this module)."""

    name: str
    """`nccl` (textbook rings) or `gloo` (gloo over TCP)."""
    all_reduce: Callable[[float, int, LinkCost], float]
    """Ring all-reduce of n bytes over p ranks."""
    reduce_scatter: Callable[[float, int, LinkCost], float]
    """Reduce-scatter of an n-byte input over p ranks."""
    all_gather: Callable[[float, int, LinkCost], float]
    """All-gather to an n-byte result over p ranks."""
    all_to_all: Callable[[float, int, LinkCost], float]
    """All-to-all of an n-byte send buffer per rank over p ranks."""


LIBRARIES = {
    "nccl": CollectiveLibrary("nccl", ring_all_reduce, ring_reduce_scatter, ring_all_gather,
                              all_to_all),
    "gloo": CollectiveLibrary("gloo", gloo_ring_all_reduce, gloo_reduce_scatter,
                              gloo_all_gather, gloo_all_to_all),
}
"""Collective libraries by the name a hardware profile's `collective_library` gives."""
TEXTBOOK = LIBRARIES["nccl"]


def hierarchical_all_reduce(n: float, nodes: int, local: int, intra: LinkCost,
                            inter: LinkCost, lib: CollectiveLibrary = TEXTBOOK) -> float:
    """Two-level all-reduce over `nodes` × `local` ranks, with `lib`'s algorithms.

    1. reduce-scatter inside each node (intra link): every rank ends with n/local bytes;
    2. ring all-reduce of those n/local bytes across nodes, `local` such rings at once (the
       caller passes `inter` already shared by the streams that cross one NIC);
    3. all-gather inside each node.

    With one node this is exactly `ring_all_reduce(n, local, intra)` (textbook); with one rank
    per node it is `lib.all_reduce(n, nodes, inter)`.
    """
    _check_n(n), _check_p(nodes, "nodes"), _check_p(local, "local")
    return (lib.reduce_scatter(n, local, intra)
            + lib.all_reduce(n / local, nodes, inter)
            + lib.all_gather(n, local, intra))


ALL_REDUCE_ALGORITHMS = {
    "ring": ring_all_reduce,
    "tree": tree_all_reduce,
    "recursive_doubling": recursive_doubling_all_reduce,
    "rabenseifner": rabenseifner_all_reduce,
}
"""Flat all-reduce algorithms by name (hierarchical needs two levels: see above)."""


def sign_payload_bytes(n_elements: int, scale_bytes: int = 4) -> int:
    """Bytes one rank sends for 1-bit sign compression: ⌈n/8⌉ packed sign bits + one scale."""
    if n_elements < 0:
        raise ValueError(f"n_elements must be >= 0, got {n_elements!r}")
    return math.ceil(n_elements / 8) + scale_bytes


def topk_payload_bytes(k: int, value_bytes: int = 4, index_bytes: int = 8) -> int:
    """Bytes one rank sends for top-k sparsification: k values + k indices.

    Index width default 8 bytes: torch.topk returns int64 indices; pass 4 where they are
    narrowed to int32 before sending.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k!r}")
    return k * (value_bytes + index_bytes)


def compressed_all_gather(payload_bytes: float, p: int, link: LinkCost,
                          decoded_bytes: float = 0.0, lib: CollectiveLibrary = TEXTBOOK
                          ) -> float:
    """Aggregate compressed gradients by all-gather, then decode and sum locally.

    Every rank contributes `payload_bytes`, so the gathered result is p·payload, gathered
    with `lib.all_gather` (textbook: (p−1)α + (p−1)·payload·β), plus the local sum of the p
    decoded gradients (p−1)·decoded·γ where `decoded_bytes` is the dense size of one decoded
    gradient.
    """
    _check_n(payload_bytes), _check_n(decoded_bytes), _check_p(p)
    if p == 1:
        return 0.0
    return lib.all_gather(p * payload_bytes, p, link) + (p - 1) * decoded_bytes \
        * link.gamma_s_per_byte
