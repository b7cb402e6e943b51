"""Where a plan's ranks sit: the rank distance between members of each parallel group, how many
nodes a group spans, and the link one of its streams sees.

Rank placement follows megatron-core's `order` (default "tp-cp-ep-dp-pp": tp fastest-varying);
"tp-pp-dp" keeps each model replica inside a node. Collectives use the slowest link a group
crosses; concurrent cross-node streams share the node's NICs.
"""

from __future__ import annotations

import math

from recpar.perfmodel import collectives as C
from recpar.perfmodel.hardware import HardwareProfile
from recpar.perfmodel.shapes import PlanShape


def rank_strides(plan: PlanShape) -> dict[str, int]:
    """Rank distance between neighbours of each group ("tp", "dp", "pp") under plan.order."""
    tp, dp = plan.tensor_model_parallel_size, plan.data_parallel_size
    pp = plan.pipeline_model_parallel_size
    if plan.order == "tp-dp-pp":
        return {"tp": 1, "dp": tp, "pp": tp * dp}
    return {"tp": 1, "pp": tp, "dp": tp * pp}


def group_span(size: int, stride: int, ranks_per_node: int) -> tuple[int, int]:
    """(nodes spanned, members per node) of a group of `size` ranks `stride` apart.

    Ranks fill nodes in order (rank // ranks_per_node is the node).
    """
    if size == 1:
        return 1, 1
    extent = size * stride
    if extent <= ranks_per_node:
        return 1, size
    if stride >= ranks_per_node:
        return size, 1
    nodes = math.ceil(extent / ranks_per_node)
    return nodes, max(1, size // nodes)


def group_link(hw: HardwareProfile, size: int, stride: int, ranks_per_node: int,
               streams_per_node: int) -> tuple[C.LinkCost, bool]:
    """Slowest link one stream of the group's collectives sees (every stream of a collective
    step runs at once: the links' loaded bandwidth), and whether it crosses nodes."""
    nodes, _ = group_span(size, stride, ranks_per_node)
    intra = hw.intra_link(loaded=True)
    if nodes == 1:
        return intra, False
    inter = hw.inter_link(streams_per_node, loaded=True)
    return C.LinkCost(max(intra.alpha_s, inter.alpha_s),
                      max(intra.beta_s_per_byte, inter.beta_s_per_byte),
                      intra.gamma_s_per_byte), True
