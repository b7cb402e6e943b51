"""One step's DP gradient synchronisation for one rank's gradients: DDP buckets, dense
All-Reduce (flat or hierarchical), a compressed all-gather (sign, top-k), a 16-bit All-Reduce
(fp16, bf16), PowerSGD's three All-Reduces, and ZeRO-3's parameter all-gathers. Time and bytes
on the wire; overlap with backward is the caller's."""

from __future__ import annotations

import math
from typing import Callable, Sequence

from recpar.comm.byte_formulas import FP16_BYTES, powersgd_split_elements
from recpar.perfmodel import collectives as C
from recpar.perfmodel.hardware import HardwareProfile
from recpar.perfmodel.placement import group_link, group_span
from recpar.perfmodel.shapes import GradSync, Precision, Topology

MiB = 2**20


def _bucketed(total: float, bucket: float, cost: Callable[[float], float]
              ) -> tuple[float, float, int]:
    """(sum of bucket costs, cost of the last bucket, bucket count) for `total` bytes."""
    if total <= 0:
        return 0.0, 0.0, 0
    full = int(total // bucket)
    rem = total - full * bucket
    s = full * cost(bucket) + (cost(rem) if rem > 0 else 0.0)
    last = cost(rem) if rem > 0 else cost(bucket)
    return s, last, full + (1 if rem > 0 else 0)


def dp_sync_cost(grad_bytes: float, dp: int, sync: GradSync, hw: HardwareProfile,
                 topo: Topology, stride: int, groups_per_node: int,
                 precision: Precision, grad_shapes: Sequence[Sequence[int]] | None = None
                 ) -> dict[str, float]:
    """Time and bytes of one step's DP gradient synchronisation for one rank's gradients.

    `stride` is the rank distance between DP peers, `groups_per_node` how many DP groups have
    ranks on one node (their cross-node streams share the NICs). PowerSGD needs the gradients'
    `grad_shapes` (they add up to grad_bytes).
    """
    if dp == 1 or grad_bytes <= 0:
        return {"total_s": 0.0, "last_bucket_s": 0.0, "buckets": 0, "bytes_sent": 0.0,
                "compress_s": 0.0, "crosses_nodes": False}
    if sync.compression in ("fp16", "bf16", "powersgd"):
        return _all_reduced_sync_cost(grad_bytes, dp, sync, hw, topo.ranks_per_node, stride,
                                      groups_per_node, precision, grad_shapes)
    if sync.compression != "none":
        return _compressed_sync_cost(grad_bytes, dp, sync, hw, topo.ranks_per_node, stride,
                                     groups_per_node, precision)
    return _dense_sync_cost(grad_bytes, dp, sync, hw, topo.ranks_per_node, stride,
                            groups_per_node, precision)


def _compressed_sync_cost(grad_bytes: float, dp: int, sync: GradSync, hw: HardwareProfile,
                          ranks_per_node: int, stride: int, groups_per_node: int,
                          precision: Precision) -> dict[str, float]:
    """Each bucket's compressed payload all-gathered and decoded, plus the rank-local encode /
    error-feedback / decode work."""
    bucket = sync.bucket_size_mb * MiB
    link, crosses = group_link(hw, dp, stride, ranks_per_node, groups_per_node)

    def payload(nbytes: float) -> float:
        elems = math.ceil(nbytes / precision.grad_bytes)
        if sync.compression == "sign":
            return C.sign_payload_bytes(elems)
        k = math.ceil(sync.topk_ratio * elems)
        return C.topk_payload_bytes(k, precision.grad_bytes, sync.index_bytes)

    total, last, buckets = _bucketed(grad_bytes, bucket, lambda n: C.compressed_all_gather(
        payload(n), dp, link, decoded_bytes=n, lib=hw.collectives))
    full = int(grad_bytes // bucket)
    rem = grad_bytes - full * bucket
    sent = (dp - 1) * (full * payload(bucket) + (payload(rem) if rem > 0 else 0))
    return {"total_s": total, "last_bucket_s": last, "buckets": buckets, "bytes_sent": sent,
            "compress_s": _compress_s(grad_bytes, sync, hw, precision), "crosses_nodes": crosses}


def _all_reduced_sync_cost(grad_bytes: float, dp: int, sync: GradSync, hw: HardwareProfile,
                           ranks_per_node: int, stride: int, groups_per_node: int,
                           precision: Precision, grad_shapes: Sequence[Sequence[int]] | None
                           ) -> dict[str, float]:
    """torch's fp16/bf16 hooks (one All-Reduce of the bucket cast to 16 bits) and PowerSGD
    (torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook: per bucket, one All-Reduce of
    the tensors it leaves uncompressed, then of every P, then of every Q, one after the other)
    over the whole DP group with the library's ring."""
    link, crosses = group_link(hw, dp, stride, ranks_per_node, groups_per_node)

    def all_reduce(n: float) -> float:
        return hw.collectives.all_reduce(n, dp, link) if n > 0 else 0.0

    bucket = sync.bucket_size_mb * MiB
    if sync.compression in ("fp16", "bf16"):
        half = FP16_BYTES / precision.grad_bytes
        total, last, buckets = _bucketed(grad_bytes, bucket, lambda n: all_reduce(n * half))
        sent = 2 * (dp - 1) / dp * grad_bytes * half
    else:
        if grad_shapes is None:
            raise ValueError("the PowerSGD cost needs the gradients' shapes")
        costs, sent = [], 0.0
        for shapes in _ddp_buckets(grad_shapes, bucket / precision.grad_bytes):
            dense, p_elems, q_elems = powersgd_split_elements(shapes, sync.powersgd_rank)
            costs.append(sum(all_reduce(e * precision.grad_bytes)
                             for e in (dense, p_elems, q_elems)))
            sent += 2 * (dp - 1) / dp * (dense + p_elems + q_elems) * precision.grad_bytes
        total, last, buckets = sum(costs), costs[-1], len(costs)
    return {"total_s": total, "last_bucket_s": last, "buckets": buckets, "bytes_sent": sent,
            "compress_s": _compress_s(grad_bytes, sync, hw, precision), "crosses_nodes": crosses}


def _ddp_buckets(grad_shapes: Sequence[Sequence[int]], cap_elements: float
                 ) -> list[list[Sequence[int]]]:
    """DDP's buckets: parameters in reverse order, a bucket closed once it holds at least the
    cap (as DDP's bucket_cap_mb; its smaller first bucket is not modelled, as in `_bucketed`)."""
    buckets: list[list[Sequence[int]]] = [[]]
    size = 0
    for shape in reversed(list(grad_shapes)):
        buckets[-1].append(shape)
        size += math.prod(shape)
        if size >= cap_elements:
            buckets.append([])
            size = 0
    return [b for b in buckets if b]


_PASSES = {"sign": 1, "topk": 2, "fp16": 2, "bf16": 2, "powersgd": 4}
"""Memory passes over the gradient a compressor's local work is priced at when the profile has
no measured rate: sign encodes in one; top-k selects and updates the residual (r += g − ĝ);
the casts go down and back; PowerSGD adds the residual, reads M for M·Q and for Mᵀ·P, and
writes the new residual M − P·Qᵀ."""


def _compress_s(grad_bytes: float, sync: GradSync, hw: HardwareProfile,
                precision: Precision) -> float:
    """Rank-local compression work for `grad_bytes` of gradients: at the profile's measured
    rate where it has one, else as memory passes at the profile's γ."""
    rate = hw.compress_elements_per_s(sync.compression)
    if rate is not None:
        # measured rate of the compressor's own encode + error feedback + decode (calibrate)
        return grad_bytes / precision.grad_bytes / rate
    return _PASSES[sync.compression] * grad_bytes * hw.gamma_s_per_byte


def _dense_sync_cost(grad_bytes: float, dp: int, sync: GradSync, hw: HardwareProfile,
                     ranks_per_node: int, stride: int, groups_per_node: int,
                     precision: Precision) -> dict[str, float]:
    """Bucketed All-Reduce of the gradients; ZeRO-3 adds two parameter all-gathers."""
    bucket = sync.bucket_size_mb * MiB
    cost, sent, crosses = _all_reduce(grad_bytes, dp, sync, hw, ranks_per_node, stride,
                                      groups_per_node)
    total, last, buckets = _bucketed(grad_bytes, bucket, cost)
    if sync.zero_stage == 3:
        # parameters are all-gathered once in forward and once in backward (ZeRO §5)
        link, _ = group_link(hw, dp, stride, ranks_per_node, groups_per_node)
        params = grad_bytes / precision.grad_bytes * precision.param_bytes
        extra = 2 * hw.collectives.all_gather(params, dp, link)
        total += extra
        sent += 2 * (dp - 1) / dp * grad_bytes / precision.grad_bytes * precision.param_bytes
    return {"total_s": total, "last_bucket_s": last, "buckets": buckets, "bytes_sent": sent,
            "compress_s": 0.0, "crosses_nodes": crosses}


def _all_reduce(grad_bytes: float, dp: int, sync: GradSync, hw: HardwareProfile,
                ranks_per_node: int, stride: int, groups_per_node: int
                ) -> tuple[Callable[[float], float], float, bool]:
    """(seconds for an All-Reduce of n bytes, bytes each rank sends for all `grad_bytes`,
    whether the group crosses nodes) for sync.algorithm; hierarchical is the flat ring on one
    node."""
    nodes, local = group_span(dp, stride, ranks_per_node)
    if sync.algorithm == "hierarchical" and nodes > 1:
        intra = hw.intra_link(loaded=True)
        # every DP rank of a node runs its own inter-node ring at once
        inter = hw.inter_link(groups_per_node * local, loaded=True)

        def hierarchical(n: float) -> float:
            return C.hierarchical_all_reduce(n, nodes, local, intra, inter, hw.collectives)

        # reduce-scatter + all-gather in the node (gloo's reduce-scatter is an all-reduce: twice
        # the bytes), then the ring all-reduce of one n/local piece across nodes
        rs = 2 if hw.collective_library == "gloo" else 1
        sent = (rs + 1) * (local - 1) / local * grad_bytes \
            + 2 * (nodes - 1) / nodes * grad_bytes / local
        return hierarchical, sent, True
    algo = "ring" if sync.algorithm == "hierarchical" else sync.algorithm
    link, crosses = group_link(hw, dp, stride, ranks_per_node, groups_per_node)
    # the ring is the profile's library's own; the other algorithms are priced as textbook
    all_reduce = hw.collectives.all_reduce if algo == "ring" else C.ALL_REDUCE_ALGORITHMS[algo]

    def flat(n: float) -> float:
        return all_reduce(n, dp, link)

    steps = math.ceil(math.log2(dp))
    sent = (steps * grad_bytes if algo == "recursive_doubling"
            else 2 * (dp - 1) / dp * grad_bytes)
    return flat, sent, crosses
