"""An MoE model under data parallelism: every rank holds every expert (megatron-core's expert
parallelism of 1), and the load-balancing loss is that of the global batch.

The Switch loss, coeff E / (k T^2) sum_e (sum_t p_te) c_e, is not a sum over tokens: its
token counts c_e and T belong to the whole batch. Each rank computing it over its own shard
(what megatron-core does per micro-batch) would train another objective than one device with
the same global batch. So every MoE layer all-reduces its [E] token counts and its token
count over the data-parallel group (a few bytes per layer and step), and each rank's loss is
its probabilities' share against the global counts: the shares sum to the global loss. DDP
averages gradients over the dp replicas, so each share is scaled by dp.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from recpar.model.moe import MoEMLP


def apply_moe_dp(model: nn.Module, dp_size: int, group: dist.ProcessGroup | None = None
                 ) -> int:
    """Give every MoE layer of `model` the global-batch load-balancing loss over `group`
    (default: the world); returns the number of MoE layers. Call before DDP wraps the model."""
    def reduce(counts: torch.Tensor, n_tokens: int) -> tuple[torch.Tensor, int, float]:
        packed = torch.cat([counts.to(torch.long), counts.new_tensor([n_tokens],
                                                                      dtype=torch.long)])
        dist.all_reduce(packed, group=group)  # [E + 1]: counts per expert, then tokens
        return packed[:-1].to(counts.dtype), int(packed[-1]), float(dp_size)

    layers = [m for m in model.modules() if isinstance(m, MoEMLP)]
    for layer in layers:
        layer.aux_loss_reduce = reduce
    return len(layers)
