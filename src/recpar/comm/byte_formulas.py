"""Bytes each rank hands to the collectives, and bytes it puts on the wire, by formula.

Two different quantities, both per rank per bucket (sum over buckets for an iteration):

- **payload bytes**: the size of the tensors this rank passes *into* the collectives
  (dense bucket for all-reduce; packed sign bits + fp32 scale; top-k values + int32 indices;
  for hierarchical the reduce-scatter input plus the two 1/L-sized pieces). This is what
  `recpar.comm.stats.CommStats` measures from the real tensors; tests check it equals the
  formulas below.
- **wire bytes**: what the standard algorithm for that collective sends from one rank:
  ring all-reduce 2(g-1)/g·S, ring all-gather (g-1)·s_in = (g-1)/g·(g·s_in),
  ring reduce-scatter (g-1)/g·S_in (g: group size). These are the textbook bandwidth terms
  (Thakur, Rabenseifner & Gropp 2005; Patarasuk & Yuan 2009), not a measurement: gloo/NCCL
  may pick other schedules (trees, halving-doubling) that send a different amount.
"""

from __future__ import annotations

import math
from typing import Sequence

FP32_BYTES = 4  # float32 gradient element
FP16_BYTES = 2  # float16 / bfloat16 element
SIGN_SCALE_BYTES = 4  # one float32 L1 scale per rank per bucket (Formula 10)
TOPK_VALUE_BYTES = 4  # float32 value
TOPK_INDEX_BYTES = 4  # int32 index (buckets are < 2**31 elements; checked at encode time)


def ring_all_reduce_wire_bytes(size_bytes: float, group_size: int) -> float:
    """Ring all-reduce: each rank sends 2(g-1)/g × S (reduce-scatter + all-gather phases)."""
    _check_group(group_size)
    return 2.0 * (group_size - 1) / group_size * size_bytes


def all_gather_wire_bytes(input_bytes: float, group_size: int) -> float:
    """Ring all-gather: each rank sends (g-1) × its piece = (g-1)/g × the gathered total."""
    _check_group(group_size)
    return float((group_size - 1) * input_bytes)


def reduce_scatter_wire_bytes(input_bytes: float, group_size: int) -> float:
    """Ring reduce-scatter: each rank sends (g-1)/g × its full input."""
    _check_group(group_size)
    return (group_size - 1) / group_size * input_bytes


def sign_payload_bytes(numel: int) -> int:
    """1-bit sign: ceil(n/8) packed bytes + one fp32 scale."""
    _check_numel(numel)
    return math.ceil(numel / 8) + SIGN_SCALE_BYTES


def topk_k(numel: int, ratio: float) -> int:
    """k = ceil(ratio × n), at least 1 for a non-empty bucket, at most n."""
    _check_numel(numel)
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"topk ratio must be in (0, 1], got {ratio!r}")
    # round() guards against ratio*n landing a hair above an integer in binary floating point
    # (0.07 * 100 = 7.000000000000001 would otherwise give k = 8).
    exact = ratio * numel
    k = math.ceil(round(exact, 9))
    return min(numel, max(1, k)) if numel else 0


def topk_payload_bytes(numel: int, ratio: float) -> int:
    """Top-k: k fp32 values + k int32 indices."""
    return topk_k(numel, ratio) * (TOPK_VALUE_BYTES + TOPK_INDEX_BYTES)


def hierarchical_padded_numel(numel: int, ranks_per_node: int) -> int:
    """Bucket length after zero-padding to a multiple of the node size."""
    _check_numel(numel)
    return math.ceil(numel / ranks_per_node) * ranks_per_node


def powersgd_matrix(shape: Sequence[int], rank: int, min_compression_rate: float = 2.0
                    ) -> tuple[int, int, int | None]:
    """(rows, cols, r) of one gradient as torch's powerSGD_hook treats it: viewed as
    (shape[0], rest); compressed to P (rows×r) and Q (cols×r), r = min(rows, cols, rank), when it
    is a matrix and (rows+cols)·r·min_compression_rate < rows·cols, else (r = None) sent whole."""
    rows = int(shape[0]) if len(shape) else 1
    cols = math.prod(int(s) for s in shape[1:]) if len(shape) > 1 else 1
    r = min(rows, cols, rank)
    compress = len(shape) > 1 and (rows + cols) * r * min_compression_rate < rows * cols
    return rows, cols, (r if compress else None)


def powersgd_split_elements(grad_shapes: Sequence[Sequence[int]], rank: int,
                            min_compression_rate: float = 2.0) -> tuple[int, int, int]:
    """(uncompressed, P, Q) elements torch's powerSGD_hook all-reduces for one bucket once
    compression is active: three all-reduces, one after the other (`powersgd_matrix`)."""
    dense = p = q = 0
    for shape in grad_shapes:
        rows, cols, r = powersgd_matrix(shape, rank, min_compression_rate)
        if r is None:
            dense += rows * cols
        else:
            p, q = p + rows * r, q + cols * r
    return dense, p, q


def powersgd_payload_elements(grad_shapes: Sequence[Sequence[int]], rank: int,
                              min_compression_rate: float = 2.0) -> int:
    """Elements torch's powerSGD_hook all-reduces for one bucket once compression is active
    (the three all-reduces of `powersgd_split_elements` together)."""
    return sum(powersgd_split_elements(grad_shapes, rank, min_compression_rate))


def expected_payload_bytes(compressor: str, numel: int, world_size: int, ratio: float = 0.01, *,
                           algorithm: str = "ring", ranks_per_node: int = 1,
                           element_size: int = FP32_BYTES, powersgd_rank: int = 1,
                           grad_shapes: Sequence[Sequence[int]] | None = None) -> int:
    """Payload bytes one rank hands to the collectives for one bucket of `numel` elements.

    world_size does not change the payload of any scheme (every rank sends its own piece);
    it is an argument so that callers state the setting the number belongs to.
    powersgd needs the bucket's per-parameter `grad_shapes` (compressed phase only).
    """
    _check_numel(numel)
    _check_group(world_size)
    if compressor == "none":
        if algorithm == "ring":
            return numel * element_size
        if algorithm == "hierarchical":
            padded = hierarchical_padded_numel(numel, ranks_per_node)
            piece = padded // ranks_per_node
            # reduce-scatter input + inter-node all-reduce input + intra-node all-gather input
            return (padded + 2 * piece) * element_size
        raise ValueError(f"unknown algorithm {algorithm!r}")
    if compressor == "sign":
        return sign_payload_bytes(numel)
    if compressor == "topk":
        return topk_payload_bytes(numel, ratio)
    if compressor in ("fp16", "bf16"):
        return numel * FP16_BYTES
    if compressor == "powersgd":
        if grad_shapes is None:
            raise ValueError("powersgd payload needs grad_shapes (the bucket's parameter shapes)")
        if sum(math.prod(s) for s in grad_shapes) != numel:
            raise ValueError(f"grad_shapes {list(grad_shapes)} do not add up to numel={numel}")
        return powersgd_payload_elements(grad_shapes, powersgd_rank) * element_size
    raise ValueError(f"unknown compressor {compressor!r}")


def expected_wire_bytes(compressor: str, numel: int, world_size: int, ratio: float = 0.01, *,
                        algorithm: str = "ring", ranks_per_node: int = 1,
                        element_size: int = FP32_BYTES, powersgd_rank: int = 1,
                        grad_shapes: Sequence[Sequence[int]] | None = None) -> float:
    """Standard-algorithm wire bytes one rank sends for one bucket (see module docstring)."""
    payload = expected_payload_bytes(compressor, numel, world_size, ratio, algorithm=algorithm,
                                     ranks_per_node=ranks_per_node, element_size=element_size,
                                     powersgd_rank=powersgd_rank, grad_shapes=grad_shapes)
    if compressor in ("sign", "topk"):
        return all_gather_wire_bytes(payload, world_size)
    if compressor == "none" and algorithm == "hierarchical":
        local = ranks_per_node
        nodes = world_size // ranks_per_node
        padded = hierarchical_padded_numel(numel, local) * element_size
        piece = padded / local
        return (reduce_scatter_wire_bytes(padded, local) + ring_all_reduce_wire_bytes(piece, nodes)
                + all_gather_wire_bytes(piece, local))
    # ring, fp16, bf16, powersgd: every collective is an all-reduce over the world group
    return ring_all_reduce_wire_bytes(payload, world_size)


def _check_group(group_size: int) -> None:
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group size must be an int >= 1, got {group_size!r}")


def _check_numel(numel: int) -> None:
    if not isinstance(numel, int) or numel < 0:
        raise ValueError(f"numel must be an int >= 0, got {numel!r}")
