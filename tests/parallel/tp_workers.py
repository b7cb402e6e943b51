"""Rank bodies for tests/parallel/test_tensor_parallel.py: WORLD_SIZE gloo ranks on CPU.

All tensor-parallel checks run in ONE spawn (importing megatron-core costs ~10 s of CPU per
process), each rank writing its results to rank<k>.pt; the tests assert on those. Every rank
also builds and trains the single-device reference itself, from the same seed, so the
comparison needs no extra communication.
"""

from __future__ import annotations

import copy
import os
import warnings

import torch
import torch.distributed as dist

WORLD_SIZE = 2
"""Ranks the spawn uses: tp = 2, dp = pp = 1."""

N_ITEMS = 100
"""Item vocabulary n_items + 1 = 101 rows: odd, so never divisible by tp = 2."""
BATCH, SEQ = 8, 12
"""Toy batch [BATCH, SEQ] of left-padded item ids."""
STEPS = 5
"""AdamW steps compared against the single-device trajectory."""
LR = 1e-2
"""Large enough that 5 steps move the loss visibly (so a wrong update would show)."""
CLIP = 0.5
"""Max grad norm; the toy model's initial norm is above it, so clipping is exercised."""

# (name, text fusion, make_vocab_size_divisible_by):
#   text-div1:     101 -> 102 rows: one padding row at the end of rank 1's shard;
#                  text_proj gradient reduced across TP ranks.
#   notext-div128: 101 -> 256 rows (Megatron-LM's default rule): rank 1's shard [128, 256)
#                  is padding only, so its local logits are all -inf.
CASES = (("text-div1", True, 1), ("notext-div128", False, 128))


def model_config(text: bool):
    from recpar.model.config import ModelConfig

    # 4 heads of 8 (2 per TP rank), dropout 0: dropout masks cannot match the single-device
    # model's draws once heads are split, so equivalence is checked without dropout.
    return ModelConfig(d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=SEQ,
                       dropout=0.0, text_dim=16 if text else 0)


def toy_batches(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """n (inputs, targets) pairs [BATCH, SEQ], left-padded; includes an all-padding row."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        seq = torch.randint(1, N_ITEMS + 1, (BATCH, SEQ + 1), generator=g)
        lengths = torch.randint(2, SEQ + 2, (BATCH,), generator=g)
        lengths[0] = 0  # all padding: contributes nothing
        for i, n_real in enumerate(lengths.tolist()):
            seq[i, : SEQ + 1 - n_real] = 0
        out.append((seq[:, :-1].clone(), seq[:, 1:].clone()))
    return out


def _optimizer(model):
    # Same grouping as recpar.train.loop: decay matrices, not vectors.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                              {"params": no_decay, "weight_decay": 0.0}], lr=LR)


def _grads(model) -> dict:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()
            if p.grad is not None}


def _partition_dims(model) -> dict:
    """name -> sharded dim (megatron's `partition_dim`) or None when replicated."""
    return {n: (p.partition_dim if getattr(p, "tensor_model_parallel", False) else None)
            for n, p in model.named_parameters()}


class _AllReduceCounter:
    """Counts torch.distributed.all_reduce calls and bytes while active (megatron's mappings,
    layers and cross-entropy all call it through the module attribute)."""

    def __init__(self):
        self.calls, self.bytes = 0, 0
        self._orig = None

    def __enter__(self):
        self._orig = dist.all_reduce

        def counting(tensor, *args, **kwargs):
            self.calls += 1
            self.bytes += tensor.numel() * tensor.element_size()
            return self._orig(tensor, *args, **kwargs)

        dist.all_reduce = counting
        return self

    def __exit__(self, *exc):
        dist.all_reduce = self._orig


def _run_case(name: str, text: bool, divisible_by: int, plan) -> dict:
    from recpar.model.recommender import Recommender
    from recpar.parallel.tensor_parallel import apply_tp, clip_grad_norm_

    cfg = model_config(text)
    torch.manual_seed(1234)
    text_emb = torch.randn(N_ITEMS + 1, cfg.text_dim) if text else None
    ref = Recommender(cfg, N_ITEMS, text_emb)
    tp = apply_tp(copy.deepcopy(ref), plan, make_vocab_size_divisible_by=divisible_by)
    res: dict = {"vocab_range": (tp.vocab_start_index, tp.vocab_end_index),
                 "padded_vocab_size": tp.padded_vocab_size,
                 "partition_dims": _partition_dims(tp),
                 "local_param_shapes": {n: tuple(p.shape) for n, p in tp.named_parameters()},
                 "n_local_heads": [b.attn.num_attention_heads_per_partition for b in tp.blocks],
                 "qkv_local_out": tp.blocks[0].attn.qkv.output_size_per_partition}
    batches = toy_batches(STEPS + 1, seed=7)
    x_eval, y_eval = batches[0]

    # Forward: full scores after the all-gather, and the local logit shard.
    ref.eval(), tp.eval()
    with torch.no_grad():
        res["score_ref"] = ref.score_last(x_eval)
        res["score_tp"] = tp.score_last(x_eval)
        res["logits_ref"] = ref.logits(ref(x_eval))  # [B, L, n_items + 1]
        res["logits_tp_local"] = tp.logits(tp(x_eval))  # [B, L, V_local]
        res["eval_loss_ref"] = ref.loss(x_eval, y_eval)
        res["eval_loss_tp"] = tp.loss(x_eval, y_eval)

    # Training: the same batches, AdamW, clipping; megatron's TP grad norm vs torch's.
    ref.train(), tp.train()
    opt_ref, opt_tp = _optimizer(ref), _optimizer(tp)
    res["loss_ref"], res["loss_tp"], res["norm_ref"], res["norm_tp"] = [], [], [], []
    for step, (x, y) in enumerate(batches[:STEPS]):
        for model, opt, key in ((ref, opt_ref, "ref"), (tp, opt_tp, "tp")):
            opt.zero_grad(set_to_none=True)
            loss = model.loss(x, y)
            loss.backward()
            if step == 0:
                res[f"grads0_{key}"] = _grads(model)
            if key == "ref":
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
            else:
                norm = clip_grad_norm_(model, CLIP)
            res[f"loss_{key}"].append(float(loss))
            res[f"norm_{key}"].append(float(norm))
            opt.step()
    res["params_ref"] = {n: p.detach().clone() for n, p in ref.named_parameters()}
    res["params_tp"] = {n: p.detach().clone() for n, p in tp.named_parameters()}

    # One more step with dist.all_reduce counted: TP collectives of a training step.
    x, y = batches[STEPS]
    opt_tp.zero_grad(set_to_none=True)
    with _AllReduceCounter() as counter:
        tp.loss(x, y).backward()
        clip_grad_norm_(tp, CLIP)
    res["allreduce_calls"], res["allreduce_bytes"] = counter.calls, counter.bytes
    return res


def _run_dropout(plan) -> dict:
    """Train-mode step with dropout 0.1: the replicated stream must stay in step across TP
    ranks (same loss everywhere) while attention dropout draws from the per-rank stream."""
    import dataclasses

    from recpar.model.recommender import Recommender
    from recpar.parallel.tensor_parallel import apply_tp

    cfg = dataclasses.replace(model_config(False), dropout=0.1)
    torch.manual_seed(99)
    model = apply_tp(Recommender(cfg, N_ITEMS), plan, make_vocab_size_divisible_by=1)
    x, y = toy_batches(1, seed=3)[0]
    model.train()
    before = {k: v.clone() for k, v in model.tp_rng._states.items()}
    loss = model.loss(x, y)
    loss.backward()
    model.eval()
    with torch.no_grad():
        model.score_last(x)  # eval: must not touch the TP stream
    return {"loss": float(loss), "default_state": torch.get_rng_state(),
            "tp_seed": model.tp_rng.seed, "tp_states_before": before,
            "tp_state_after": model.tp_rng._states.get("cpu"), "active": model.tp_rng.active}


def run_all(rank: int, world_size: int, out_dir: str) -> None:
    """Rank body: every TP check, results to out_dir/rank<rank>.pt."""
    warnings.filterwarnings("ignore")  # megatron's "Transformer Engine / APEX not installed"
    torch.set_num_threads(1)  # 2 ranks on 2 shared cores
    from recpar.model.recommender import Recommender
    from recpar.parallel import process_groups as pg
    from recpar.parallel.plan import ParallelPlan, PlanError
    from recpar.parallel.tensor_parallel import apply_tp

    dist.init_process_group("gloo", init_method=f"file://{os.path.join(out_dir, 'store')}",
                            rank=rank, world_size=world_size)
    res: dict = {"errors": {}}
    plan = ParallelPlan(scheme="mp", tp=world_size)
    try:
        apply_tp(Recommender(model_config(False), N_ITEMS), plan)
    except RuntimeError as e:
        res["errors"]["apply_before_init"] = str(e)
    try:
        pg.init_parallel_groups(ParallelPlan(scheme="mp", tp=world_size + 2))
    except PlanError as e:
        res["errors"]["world_mismatch"] = str(e)
    pg.init_parallel_groups(plan)
    pg.init_parallel_groups(plan)  # idempotent for the same plan
    res["groups"] = {"tp_rank": pg.tp_rank(), "tp_world_size": pg.tp_world_size(),
                     "dp_world_size": pg.dp_world_size(), "pp_world_size": pg.pp_world_size(),
                     "tp_src_rank": pg.tp_src_rank()}
    try:
        pg.init_parallel_groups(ParallelPlan(scheme="dp", dp=world_size))
    except RuntimeError as e:
        res["errors"]["replan"] = str(e)
    for name, text, div in CASES:
        res[name] = _run_case(name, text, div, plan)
    res["dropout"] = _run_dropout(plan)
    pg.destroy()
    res["initialized_after_destroy"] = pg.is_initialized()
    torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def spawn(out_dir) -> list[dict]:
    """Run `run_all` on WORLD_SIZE spawned ranks; their result dicts, by rank."""
    from ..comm.mp_launch import start_ranks

    start_ranks(run_all, (WORLD_SIZE, str(out_dir)), WORLD_SIZE)
    return [torch.load(os.path.join(str(out_dir), f"rank{r}.pt"), weights_only=False)
            for r in range(WORLD_SIZE)]
