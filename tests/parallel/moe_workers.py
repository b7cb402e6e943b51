"""Rank bodies for tests/parallel/test_moe_data_parallel.py (world size 2, gloo, file store):
an MoE recommender trained by DDP on half-batches, with and without the global-batch
load-balancing loss of recpar.parallel.moe_data_parallel. Kept out of the test file so the
ranks import no pytest."""

from __future__ import annotations

import os

import torch

from recpar.constants import PAD_ITEM
from recpar.model.config import ModelConfig
from recpar.model.recommender import Recommender

N_ITEMS, BATCH, SEQ, STEPS, LR = 40, 16, 10, 6, 0.5
CFG = ModelConfig.named("tiny", max_seq_len=SEQ, dropout=0.0, num_moe_experts=4,
                        moe_router_topk=2, moe_aux_loss_coeff=1.0)
"""A large aux coefficient, so that how its loss is reduced shows in the weights."""


def make_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """STEPS global batches [BATCH, SEQ] of left-padded histories and their targets."""
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(STEPS):
        ids = torch.randint(1, N_ITEMS + 1, (BATCH, SEQ), generator=g)
        lengths = torch.randint(2, SEQ + 1, (BATCH,), generator=g)
        ids[torch.arange(SEQ)[None, :] < (SEQ - lengths)[:, None]] = PAD_ITEM
        out.append((ids, torch.randint(1, N_ITEMS + 1, (BATCH, SEQ), generator=g)))
    return out


def train(dp: int = 1, rank: int = 0, global_aux: bool = True, ep: int = 1,
          max_norm: float | None = None) -> dict[str, torch.Tensor] | None:
    """STEPS SGD steps on make_batches(): one device (dp = 1), or this rank's rows r::dp
    under DDP; the final weights. SGD, not AdamW: AdamW turns the float noise of gradients
    that are zero in exact arithmetic (the attention key bias: softmax ignores a constant per
    query) into lr-sized steps (2.5e-4 at lr 1e-2 here), whatever the parallelism.

    ep > 1: experts sharded over EP groups of ep ranks (recpar.parallel.expert_parallel),
    gradients clipped to `max_norm` over the whole model; returns the gathered single-device
    state dict on EP rank 0 of each group, None on the other ranks."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from recpar.model.loss import valid_positions
    from recpar.parallel.data_parallel import TrainStep
    from recpar.parallel import expert_parallel as ep_mod
    from recpar.parallel.moe_data_parallel import apply_moe_dp

    torch.manual_seed(0)
    model = Recommender(CFG, N_ITEMS)
    step = TrainStep(model, dp_size=dp)
    runner, groups, experts = step, None, []
    if dp > 1:
        if global_aux:
            assert apply_moe_dp(model, dp) == CFG.n_moe_blocks
        if ep > 1:
            groups = ep_mod.expert_groups(dp, ep)
            experts = ep_mod.apply_ep(model, groups)
            ids = {id(p) for p in experts}
            DDP._set_params_and_buffers_to_ignore_for_model(
                step, [n for n, p in step.named_parameters() if id(p) in ids])
        runner = DDP(step, broadcast_buffers=False)
    opt = torch.optim.SGD(model.parameters(), lr=LR)  # this rank's parameters
    for ids, targets in make_batches():
        count = valid_positions(ids, targets).sum()
        loss, _ = runner(ids[rank::dp], targets[rank::dp], count)
        opt.zero_grad()
        loss.backward()
        if groups is not None:
            ep_mod.reduce_expert_grads(experts, groups)
            if max_norm is not None:
                ep_mod.clip_grad_norm_(model, experts, max_norm, groups)
        elif max_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        opt.step()
    if groups is not None:
        return ep_mod.gather_full_state_dict(model, groups)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


MAX_NORM = 0.5
"""Small enough that every step clips (so the EP-wide norm is checked)."""


def moe_ep_worker(rank: int, world: int, out_dir: str) -> None:
    """dp = world, ep = 2: the gathered weights (EP rank 0s) and their losses."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/store", rank=rank,
                            world_size=world)
    try:
        res = {"ep2": train(world, rank, True, ep=2, max_norm=MAX_NORM)}
        torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def moe_dp_worker(rank: int, world: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/store", rank=rank,
                            world_size=world)
    try:
        res = {"global_aux": train(world, rank, True), "local_aux": train(world, rank, False)}
        torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
