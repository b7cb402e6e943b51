"""Expert parallelism (paper §III.A.c, Fig. 3 right): an MoE model's experts sharded over
groups of data-parallel ranks, tokens sent to their experts' ranks by all-to-all.

megatron-core's rule: expert-parallel (EP) groups are carved from the data-parallel ranks.
With dp ranks and degree ep (ep | dp), dp ranks [i ep, (i + 1) ep) form an EP group; each of
its ranks holds E / ep experts, the ep_rank-th contiguous block; the dp / ep ranks holding the
same block form its expert-data-parallel (EDP) group. Under dp x tp every TP rank's dp group
is carved alike: the TP ranks of a replica hold the same experts, whole (an MoE block is not
tensor-parallel, recpar.parallel.tensor_parallel), and exchange tokens with the same TP rank
of the other replicas. Non-expert weights stay replicated and
DDP averages their gradients over all dp ranks; expert weights are left out of DDP.

Forward of one MoE layer on one rank (recpar.model.moe routes, this module dispatches):

    permuted tokens, grouped by global expert        [sum_e c_e, d]
    all-to-all within the EP group                   each block to the rank holding it
    received, (source rank, local expert) order  ->  local-expert order (sort_chunks_by_idxs)
    each local expert on its contiguous chunk
    back to (source rank, local expert) order, reverse all-to-all, unpermute with the probs

The all-to-all is torch.distributed.nn.functional.all_to_all_single (differentiable: its
backward is the reverse exchange). megatron-core's own `tensor_parallel.all_to_all` is not
used: it allocates its output on `torch.cuda.current_device()` for unequal splits, which is
every MoE step. The chunk reordering is megatron-core's `sort_chunks_by_idxs`.

Gradients: every rank's loss is its share of the global mean scaled by dp (TrainStep) and DDP
averages over dp; an expert's gradient arrives through the all-to-all from every rank of its
EP group, so `reduce_expert_grads` sums it over the EDP group and divides by dp: the same
average. `clip_grad_norm_` takes the norm over every expert of the model, as one device
does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from recpar.model.moe import MoEMLP


@dataclass
class ExpertGroups:
    """This rank's place in the expert-parallel layout (see the module docstring)."""

    dp: int
    """Data-parallel ranks (the world, for scheme dp)."""
    ep: int
    """Expert-parallel degree: ranks per EP group; divides dp."""
    ep_rank: int
    """This rank's index in its EP group: it holds the ep_rank-th block of experts."""
    ep_group: dist.ProcessGroup
    """The ranks this rank exchanges tokens with."""
    edp_group: dist.ProcessGroup | None
    """The ranks holding the same experts (None when dp == ep: no other copy)."""


def expert_groups(dp_groups: int | list[list[int]], ep: int) -> ExpertGroups:
    """Make the EP and EDP groups (a collective: every rank calls it, in the same order).

    `dp_groups`: every data-parallel group's global ranks in dp-rank order, the same list on
    every rank (dp x tp: one group per TP rank, megatron's dp groups); an int dp means the one
    group 0..dp-1 (scheme dp). Each dp group is carved alike (module docstring)."""
    groups = [list(range(dp_groups))] if isinstance(dp_groups, int) else dp_groups
    dp = len(groups[0])
    if ep < 1 or dp % ep:
        raise ValueError(f"expert parallelism: ep = {ep} must divide dp = {dp}")
    rank = dist.get_rank()
    ep_group = edp_group = None
    ep_rank = -1
    for members in groups:
        for i in range(dp // ep):  # EP groups: consecutive blocks of ep dp ranks
            ranks = members[i * ep:(i + 1) * ep]
            g = dist.new_group(ranks)
            if rank in ranks:
                ep_group, ep_rank = g, ranks.index(rank)
    if dp > ep:
        for members in groups:
            for j in range(ep):  # EDP groups: the dp ranks with the same ep_rank
                ranks = members[j::ep]
                g = dist.new_group(ranks)
                if rank in ranks:
                    edp_group = g
    if ep_group is None:
        raise ValueError(f"expert parallelism: rank {rank} is in none of the dp groups "
                         f"{groups}")
    return ExpertGroups(dp=dp, ep=ep, ep_rank=ep_rank, ep_group=ep_group, edp_group=edp_group)


class AllToAllDispatch:
    """Runs an MoE layer's permuted tokens through the experts of its EP group's ranks."""

    def __init__(self, groups: ExpertGroups, local_experts: int):
        self.groups = groups
        self.local = local_experts  # E / ep

    def __call__(self, permuted: torch.Tensor, counts: list[int], experts: nn.ModuleDict,
                 stats=None) -> torch.Tensor:
        """permuted [sum(counts), d] in global expert order, counts [E] -> the experts'
        outputs in the same order. `stats` (the layer's MoEStats, training forwards): the
        token bytes sent to other ranks and the time the exchanges took are added to it."""
        from megatron.core.transformer.moe.moe_utils import sort_chunks_by_idxs
        from torch.distributed.nn.functional import all_to_all_single

        ep, el, group = self.groups.ep, self.local, self.groups.ep_group
        t0 = time.perf_counter()
        send = torch.tensor(counts, dtype=torch.long).view(ep, el)  # [dst rank, its expert]
        recv = torch.empty_like(send)  # [src rank, my expert]
        dist.all_to_all_single(recv, send, group=group)  # the token counts first
        counts_s = time.perf_counter() - t0
        in_splits, out_splits = send.sum(1).tolist(), recv.sum(1).tolist()
        d = permuted.shape[-1]
        received = all_to_all_single(permuted.new_empty(sum(out_splits), d), permuted,
                                     out_splits, in_splits, group=group)
        exchange_s = time.perf_counter() - t0
        # (source, expert) chunk order -> (expert, source), so each expert's tokens touch
        src_major = recv.flatten()  # chunk sizes, [ep * el]
        to_expert_major = torch.tensor([s * el + e for e in range(el) for s in range(ep)])
        by_expert, _ = sort_chunks_by_idxs(received, src_major, to_expert_major)
        per_expert = recv.sum(0).tolist()  # [el]
        out = torch.cat([expert(chunk) for expert, chunk
                         in zip(experts.values(), by_expert.split(per_expert))])
        expert_major = recv.t().flatten()  # chunk sizes in (expert, source) order
        to_src_major = torch.tensor([e * ep + s for s in range(ep) for e in range(el)])
        back, _ = sort_chunks_by_idxs(out, expert_major, to_src_major)
        t1 = time.perf_counter()
        combined = all_to_all_single(permuted.new_empty(sum(in_splits), d), back, in_splits,
                                     out_splits, group=group)
        if stats is not None:
            me = self.groups.ep_rank
            rows = sum(in_splits) - in_splits[me] + sum(out_splits) - out_splits[me]
            stats.all_to_all_bytes += rows * d * permuted.element_size()
            stats.all_to_all_s += exchange_s + time.perf_counter() - t1
            stats.all_to_all_counts_s += counts_s
            stats.all_to_all_element_bytes = permuted.element_size()
        return combined


def apply_ep(model: nn.Module, groups: ExpertGroups) -> list[nn.Parameter]:
    """Keep this rank's block of experts in every MoE layer of `model` (their names stay the
    single-device ones, `...experts.<global index>...`) and route through the EP group; the
    expert parameters kept (to leave out of DDP). Call before DDP wraps the model."""
    kept: list[nn.Parameter] = []
    for layer in model.modules():
        if not isinstance(layer, MoEMLP):
            continue
        n = layer.num_experts
        if n % groups.ep:
            raise ValueError(f"expert parallelism: ep = {groups.ep} must divide "
                             f"num_moe_experts = {n}")
        local = n // groups.ep
        first = groups.ep_rank * local
        layer.experts = nn.ModuleDict({str(e): layer.experts[e]
                                       for e in range(first, first + local)})
        layer.dispatch = AllToAllDispatch(groups, local)
        layer.ep = layer.stats.ep = groups.ep
        kept += list(layer.experts.parameters())
    return kept


def reduce_expert_grads(params: list[nn.Parameter], groups: ExpertGroups) -> None:
    """After backward: sum each expert gradient over its EDP group and divide by dp (see the
    module docstring). An expert no token reached has a zero gradient, not None."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        if groups.edp_group is not None:
            dist.all_reduce(p.grad, group=groups.edp_group)
        p.grad.div_(groups.dp)


def clip_grad_norm_(model: nn.Module, expert_params: list[nn.Parameter], max_norm: float,
                    groups: ExpertGroups) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ (2-norm) over the whole model's gradient, experts held
    by the other ranks of the EP group included; returns that norm."""
    expert_ids = {id(p) for p in expert_params}
    with_grad = [p for p in model.parameters() if p.grad is not None]
    dense_sq = sum((p.grad.pow(2).sum() for p in with_grad if id(p) not in expert_ids),
                   torch.zeros(()))
    expert_sq = sum((p.grad.pow(2).sum() for p in expert_params), torch.zeros(()))
    dist.all_reduce(expert_sq, group=groups.ep_group)  # every block of experts once
    total = (dense_sq + expert_sq).sqrt()
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)  # torch's clip coefficient
    for p in with_grad:
        p.grad.mul_(coef)
    return total


def gather_full_state_dict(model: nn.Module, groups: ExpertGroups) -> dict | None:
    """The single-device state dict on EP rank 0 of each EP group (every expert gathered from
    its EP group), None elsewhere; a collective over the EP group."""
    local = {k: v.detach().cpu() for k, v in model.state_dict().items()
             if isinstance(v, torch.Tensor)}  # not megatron TP layers' `_extra_state`
    experts = {k: v for k, v in local.items() if ".experts." in k}
    gathered: list[dict] = [None] * groups.ep  # type: ignore[list-item]
    dist.all_gather_object(gathered, experts, group=groups.ep_group)
    if groups.ep_rank != 0:
        return None
    full = dict(local)
    for part in gathered:
        full.update(part)
    return full
