"""Mixture-of-Experts feed-forward (paper §III.A.c, Fig. 3 right), single device.

    tokens        x                                        [T, d]   T = B x L positions
    router        r = x W_r^T                              [T, E]   E = num_moe_experts
    top-k         probs, routing_map = topk(softmax)       [T, E]   k = moe_router_topk
    experts       y_t = sum over the k chosen e of p_te MLP_e(x_t)   [T, d]
    aux loss      coeff * E * sum_e f_e P_e                (Switch Transformer, Fedus et al.
                  2022, Eq. 4: f_e the share of routed tokens, P_e the mean router probability)

Routing, capacity dropping, the load-balancing loss and its attachment to the backward pass
are megatron-core's own functions (`megatron.core.transformer.moe.moe_utils`:
topk_routing_with_score_function, apply_router_token_dropping,
compute_routing_scores_for_aux_loss, switch_load_balancing_loss_func, MoEAuxLossAutoScaler,
permute, unpermute). Two pieces of megatron-core's MoELayer are replaced, and only those:

- the router module: `TopKRouter.gating` moves its weight to `torch.cuda.current_device()`,
  and its constructor and aux-loss path need process groups (tp, cp, tp_dp_cp). Here the gate
  is a bias-free `nn.Linear(d, E)` in fp32 (megatron-core's router weight is [E, d], no bias
  by default), and the aux loss counts this device's tokens, or the global batch's where
  `recpar.parallel.moe_data_parallel` splits the batch over ranks;
- the token dispatcher: `MoEAlltoAllTokenDispatcher` makes a `torch.cuda.Stream` when it is
  built. On one device there is nothing to dispatch: the tokens are permuted into expert
  order, each expert runs on its contiguous slice, and they are unpermuted. With experts
  sharded over ranks, `recpar.parallel.expert_parallel` sets `dispatch` to its all-to-all.

Padding positions (item 0) take part in no routing decision that counts: they are left out of
the capacity, the aux loss and the load statistics, and their outputs are zero (their hidden
states reach no real position: attention hides padding keys, and the loss masks them).

Expert weights are `experts.{e}.fc` / `experts.{e}.proj`, each a dense `MLP`, so a checkpoint
names every expert and expert parallelism can shard the list.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from recpar import import_without_compile
from recpar.model.config import ModelConfig
from recpar.model.mlp import MLP


@dataclass
class MoEStats:
    """What one MoE layer routed since its last `reset_stats()` (detached counts, no syncs)."""

    tokens_per_expert: torch.Tensor
    """[E] real (non-padding) token assignments kept per expert (k per token when none drop)."""
    dropped: torch.Tensor
    """Scalar: real token assignments dropped by the expert capacity (0 when dropless)."""
    aux_loss_sum: torch.Tensor
    """Scalar: sum of the load-balancing loss (with its coefficient) over the forwards; with
    the batch split over ranks, this rank's share of it."""
    forwards: int = 0
    """Training forwards counted."""
    all_to_all_bytes: int = 0
    """Expert parallelism: token bytes this rank sent to the other ranks of its EP group in
    the forward's two all-to-alls (dispatch, combine); the backward sends the same again."""
    all_to_all_s: float = 0.0
    """Expert parallelism: wall time of the forward's all-to-alls (token counts, dispatch,
    combine), waiting for the slowest rank included."""
    all_to_all_counts_s: float = 0.0
    """Expert parallelism: the part of `all_to_all_s` the token-count exchange took. It is
    the layer's first collective, 8 bytes per expert: a rank that reaches the layer before the
    slowest rank of its EP group waits here."""
    ep: int = 1
    """Expert-parallel degree the layer ran with."""
    all_to_all_element_bytes: int = 4
    """Bytes per element of the token rows the all-to-alls carried (4: fp32)."""

    @property
    def imbalance(self) -> float:
        """max / mean tokens per expert (1.0 = perfectly even); nan before any token."""
        mean = float(self.tokens_per_expert.float().mean())
        return float(self.tokens_per_expert.max()) / mean if mean > 0 else float("nan")


class MoEMLP(nn.Module):
    """Top-k routed expert MLPs in place of a block's dense MLP; see the module docstring."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        import_without_compile.megatron_core()  # forward routes with megatron-core (moe_utils)
        self.num_experts = cfg.num_moe_experts
        self.topk = cfg.moe_router_topk
        self.capacity_factor = cfg.moe_expert_capacity_factor
        self.aux_loss_coeff = cfg.moe_aux_loss_coeff
        self.router = nn.Linear(cfg.d_model, cfg.num_moe_experts, bias=False)  # W_r [E, d]
        # Set by recpar.parallel.moe_data_parallel when the batch is split over ranks:
        # (this rank's tokens per expert [E], its real token count) -> (the global batch's,
        # its token count, the factor that makes the replicas' averaged gradient the global
        # loss's). None: this device holds the whole batch.
        self.aux_loss_reduce = None
        # Set by recpar.parallel.expert_parallel.apply_ep (experts sharded over ranks):
        # (permuted tokens, tokens per expert [E], this rank's experts, the MoEStats to count
        # its traffic in, or None) -> their outputs.
        # None: every expert is here.
        self.dispatch = None
        self.ep = 1  # expert-parallel degree; apply_ep sets it with `dispatch`
        self.experts = nn.ModuleList(MLP(cfg) for _ in range(cfg.num_moe_experts))  # dense MLPs
        self.reset_stats()

    def reset_stats(self) -> None:
        e = self.num_experts
        self.stats = MoEStats(tokens_per_expert=torch.zeros(e, dtype=torch.long),
                              dropped=torch.zeros((), dtype=torch.long),
                              aux_loss_sum=torch.zeros(()), ep=self.ep)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, L, d], pad [B, L] bool (True = padding position; None = none) -> [B, L, d]."""
        from megatron.core.transformer.moe.moe_utils import (
            MoEAuxLossAutoScaler, apply_router_token_dropping,
            compute_routing_scores_for_aux_loss, permute, switch_load_balancing_loss_func,
            topk_routing_with_score_function, unpermute)

        b, l, d = x.shape
        tokens = x.reshape(b * l, d)  # [T, d]
        is_pad = (torch.zeros(b * l, dtype=torch.bool, device=x.device) if pad is None
                  else pad.reshape(b * l))  # [T]
        with torch.autocast(x.device.type, enabled=False):  # routing in fp32 under bf16 too
            logits = self.router(tokens.float())  # [T, E] (megatron-core: moe_router_dtype)
        probs, routing_map = topk_routing_with_score_function(logits, self.topk)  # [T, E] x2
        real = ~is_pad[:, None]  # [T, 1]
        routing_map = routing_map & real  # padding goes to no expert
        probs = probs * real
        routed = routing_map
        training = self.training and torch.is_grad_enabled()
        # host sync, only where a Python int is needed: megatron-core's capacity and the aux
        # loss's token count (not in an evaluation forward of a dropless model)
        n_real = (int(real.sum()) if self.capacity_factor is not None
                  or (training and self.aux_loss_coeff > 0) else None)
        if self.capacity_factor is not None and n_real:
            # megatron-core computes the capacity, ceil(T k / E x factor), from the rows it is
            # given: it gets the real rows only, so padding neither counts nor takes capacity
            # (drop policy "probs": an expert keeps its most confident tokens)
            rows = real.squeeze(1).nonzero().squeeze(1)  # [n_real]
            kept_p, kept_m = apply_router_token_dropping(
                probs[rows], routing_map[rows], router_topk=self.topk,
                capacity_factor=self.capacity_factor)
            probs = torch.zeros_like(probs).index_copy(0, rows, kept_p)
            routing_map = torch.zeros_like(routing_map).index_copy(0, rows, kept_m)
        if training:
            if self.aux_loss_coeff > 0:
                aux_map, scores = compute_routing_scores_for_aux_loss(
                    logits, self.topk, "softmax", padding_mask=is_pad)  # masks padding rows
                counts, n_tokens, scale = aux_map.sum(dim=0), n_real, 1.0  # [E], T
                if self.aux_loss_reduce is not None:  # every rank, even one without tokens
                    counts, n_tokens, scale = self.aux_loss_reduce(counts, n_real)
                if n_tokens:
                    # this device's share of the batch's loss: its probabilities against the
                    # batch's token counts (the shares sum to the loss over the whole batch)
                    aux = switch_load_balancing_loss_func(
                        scores, counts, n_tokens, self.topk, self.num_experts,
                        self.aux_loss_coeff)
                    probs = MoEAuxLossAutoScaler.apply(probs, aux * scale)  # its gradient
                    self.stats.aux_loss_sum += aux.detach()
            with torch.no_grad():
                kept = routing_map.sum(dim=0)  # [E]
                self.stats.tokens_per_expert += kept.to(torch.long).cpu()
                self.stats.dropped += (routed.sum() - kept.sum()).to(torch.long).cpu()
            self.stats.forwards += 1

        # every expert on its contiguous slice of the permuted tokens
        permuted, _, order = permute(tokens, routing_map)  # [sum kept, d], [sum kept]
        counts = routing_map.sum(dim=0).tolist()  # host sync: the split sizes are data-dependent
        if self.dispatch is not None:
            stats = self.stats if training else None
            expert_out = self.dispatch(permuted, counts, self.experts, stats)  # [sum kept, d]
        else:
            expert_out = torch.cat([expert(chunk) for expert, chunk
                                    in zip(self.experts, permuted.split(counts))])
        y = unpermute(expert_out, order, tokens.shape, probs=probs.to(expert_out.dtype),
                      routing_map=routing_map)  # [T, d], weighted sum over the chosen experts
        return y.reshape(b, l, d)


def routed_assignments(model: nn.Module) -> int:
    """Token assignments (kept and dropped) the MoE layers of `model` counted so far."""
    return sum(int(m.stats.tokens_per_expert.sum()) + int(m.stats.dropped)
               for m in model.modules() if isinstance(m, MoEMLP))


@contextlib.contextmanager
def expert_forward_flops(model: nn.Module):
    """Count the FLOPs the expert MLPs of `model` compute in their forwards while the block
    runs; yields a one-element list holding the count. torch's FlopCounterMode counts every
    op; a forward pre-hook and hook on each expert read its running total around the expert's
    call. Only forwards: FlopCounterMode's attribution of backward ops to modules is not
    reliable (module names without the block index, backward ops of other modules counted
    inside an expert's window)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter, total, start = FlopCounterMode(display=False), [0], []
    experts = [e for m in model.modules() if isinstance(m, MoEMLP)
               for e in (m.experts.values() if isinstance(m.experts, nn.ModuleDict)
                         else m.experts)]

    def before(module, args):
        start.append(counter.get_total_flops())

    def after(module, args, out):
        total[0] += counter.get_total_flops() - start.pop()

    handles = [h for e in experts for h in (e.register_forward_pre_hook(before),
                                             e.register_forward_hook(after))]
    try:
        with counter:
            yield total
    finally:
        for h in handles:
            h.remove()


def measured_experts_per_token(cfg: ModelConfig, flops: int, routed: int) -> float | None:
    """Experts a token ran through in an MoE layer, measured: the expert MLPs' forward FLOPs
    over one expert's forward FLOPs on one token, 2 x its 2 d d_ff matmul weights (Kaplan et
    al. 2020 §2.1; biases and the activation are not matmuls, and FlopCounterMode counts
    neither), per (token, MoE layer) pair. The pairs are the router's: `routed` assignments
    (summed over the layers, `routed_assignments`) / k, each real token choosing k per layer."""
    pairs = routed / cfg.moe_router_topk
    if not pairs:
        return None
    return flops / (2 * 2 * cfg.d_model * cfg.d_ff) / pairs


def moe_record(cfg: ModelConfig, n_items: int, model: nn.Module,
               counted_step: tuple[int, int] | None = None) -> dict:
    """The run record's `moe` section: per MoE block what its router did over the training
    forwards of this process (a resumed run: since it resumed), on this rank's share of each
    batch (tokens per expert, imbalance = max / mean, dropped assignments, mean aux loss: its
    share of the batch's), and the parameters and FLOPs per token a token uses against a
    dense model with the same total parameters. `counted_step`: (expert MLP forward FLOPs,
    routed assignments) of one training step (`expert_forward_flops`), summed over the ranks
    (None: no step counted, e.g. a resumed run)."""
    layers = []
    for name, module in model.named_modules():
        if not isinstance(module, MoEMLP):
            continue
        st = module.stats
        routed = int(st.tokens_per_expert.sum()) + int(st.dropped)
        imbalance = st.imbalance
        layer = {
            "module": name,
            "tokens_per_expert": st.tokens_per_expert.tolist(),
            "imbalance_max_over_mean": None if imbalance != imbalance else imbalance,  # nan
            "dropped_tokens_count": int(st.dropped),
            "dropped_share": int(st.dropped) / routed if routed else None,
            "aux_loss_mean": float(st.aux_loss_sum) / st.forwards if st.forwards else None,
            "forwards_count": st.forwards}
        if st.ep > 1 and st.forwards:
            # uniform routing: of the routed assignments, (ep-1)/ep go to another rank, out
            # and back (rows of d_model elements, of the size the all-to-alls carried)
            predicted = (2 * routed / st.forwards * (st.ep - 1) / st.ep * cfg.d_model
                         * st.all_to_all_element_bytes)
            layer.update(all_to_all_bytes_per_forward=st.all_to_all_bytes / st.forwards,
                         all_to_all_bytes_per_forward_uniform_formula=predicted,
                         all_to_all_ms_per_forward=1e3 * st.all_to_all_s / st.forwards,
                         all_to_all_counts_ms_per_forward=(1e3 * st.all_to_all_counts_s
                                                           / st.forwards))
        layers.append(layer)
    return {
        "num_experts": cfg.num_moe_experts, "router_topk": cfg.moe_router_topk,
        "layers": layers,
        "params_total_count": cfg.param_count(n_items),
        "params_active_count": cfg.active_param_counts(n_items).total,
        "flops_per_token": cfg.flops_per_token(n_items),
        "flops_per_token_dense_equal_total_params": cfg.flops_per_token(n_items, active=False),
        "experts_per_token_measured": (None if counted_step is None else
                                       measured_experts_per_token(cfg, *counted_step)),
    }
