"""Rank bodies for tests/parallel/test_zero.py (spawned, gloo on CPU, 2 ranks).

Kept out of the test module so spawned children do not import pytest or the tests. One spawn
runs every ZeRO case in sequence (DeepSpeed's import dominates the time) and writes what it
observed to `<out_dir>/rank<k>.pt`.
"""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist

from recpar.model.config import ModelConfig
from recpar.model.recommender import Recommender
from recpar.parallel.plan import ParallelPlan
from recpar.train.config import TrainConfig

from .toy_batches import unequal_padding_batches

WORLD_SIZE = 2
STEPS = 5
GLOBAL_BATCH = 8  # sequences per optimiser step, 4 per rank
SEQ_LEN = 8
N_ITEMS = 40
TEXT_DIM = 12

# label -> (ZeRO stage, micro_batch_per_rank, zero_optimization overrides). The persistence
# threshold 0 makes ZeRO-3 partition every parameter (DeepSpeed's default, 1e5 elements, would
# leave all of this small model's tensors whole). micro 2 of 4 per rank: 2 accumulation steps.
CASES: dict[str, tuple[int, int, dict]] = {
    "zero1": (1, 4, {}),
    "zero2": (2, 4, {}),
    "zero2_gas2": (2, 2, {}),
    "zero3": (3, 4, {"stage3_param_persistence_threshold": 0}),
    "zero1_tail": (1, 2, {}),
}
TAIL_CASES = ("zero1_tail",)
"""Cases whose last global batch is a 3-sequence tail: rank 0 gets all 3, rank 1 none."""
TAIL_ROWS = 3

TRAIN_CFG = TrainConfig(lr=3e-3, weight_decay=0.1, betas=(0.9, 0.98), global_batch_size=GLOBAL_BATCH,
                        clip_grad=0.5)
"""clip_grad 0.5 is small enough that clipping is active in the first steps (checked by the
test through the recorded reference gradient norms)."""


def model_cfg() -> ModelConfig:
    # dropout 0: dropout masks are per-process random streams, the comparison needs none.
    return ModelConfig(d_model=16, n_layers=2, n_heads=2, d_ff=32, max_seq_len=SEQ_LEN,
                       dropout=0.0, text_dim=TEXT_DIM)


def make_model() -> Recommender:
    torch.manual_seed(0)
    text = torch.randn(N_ITEMS + 1, TEXT_DIM, generator=torch.Generator().manual_seed(3))
    return Recommender(model_cfg(), N_ITEMS, text)


def make_batches() -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) [STEPS, GLOBAL_BATCH, SEQ_LEN], left-padded with unequal padding, so
    the two ranks' halves hold different numbers of valid positions (the global-token scaling
    of zero_step is then visible: a per-rank mean would give a different gradient)."""
    return unequal_padding_batches(STEPS, GLOBAL_BATCH, SEQ_LEN, N_ITEMS)


def step_rows(step: int, tail: bool) -> int:
    return TAIL_ROWS if tail and step == STEPS - 1 else GLOBAL_BATCH


def shard(step: int, rank: int, tail: bool) -> slice:
    """This rank's rows of the step's global batch (contiguous; the tail all on rank 0)."""
    if step_rows(step, tail) < GLOBAL_BATCH:
        return slice(0, TAIL_ROWS) if rank == 0 else slice(0, 0)
    per_rank = GLOBAL_BATCH // WORLD_SIZE
    return slice(rank * per_rank, (rank + 1) * per_rank)


def reference(tail: bool = False) -> dict:
    """Single process, whole global batch, the baseline loop's AdamW + clipping."""
    from recpar.model.param_groups import adamw_param_groups

    model = make_model()
    opt = torch.optim.AdamW(adamw_param_groups(model, TRAIN_CFG.weight_decay), lr=TRAIN_CFG.lr,
                            betas=TRAIN_CFG.betas)
    x, y = make_batches()
    losses, norms = [], []
    for s in range(STEPS):
        rows = step_rows(s, tail)
        loss = model.loss(x[s, :rows], y[s, :rows])
        opt.zero_grad()
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), TRAIN_CFG.clip_grad)))
        opt.step()
        losses.append(float(loss.detach()))
    return {"losses": losses, "grad_norms": norms,
            "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}


def zero_worker(rank: int, world: int, out_dir: str) -> None:
    from recpar.parallel.zero import apply_zero, zero_state_dict, zero_step

    torch.set_num_threads(1)
    os.environ["LOCAL_RANK"] = str(rank)  # one node: local rank = rank (torchrun sets it)
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/rdzv", rank=rank,
                            world_size=world)
    plan = ParallelPlan(scheme="zero", dp=world)
    x, y = make_batches()
    result: dict = {}
    t0 = time.perf_counter()
    import deepspeed  # noqa: F401  (timed on its own: the import dominates)
    result["import_s"] = time.perf_counter() - t0
    for label, (stage, micro, overrides) in CASES.items():
        t0 = time.perf_counter()
        engine = apply_zero(make_model(), TRAIN_CFG, plan, stage, micro_batch_per_rank=micro,
                            zero_overrides=overrides)
        t1 = time.perf_counter()
        tail = label in TAIL_CASES
        losses = [float(zero_step(engine, x[s, shard(s, rank, tail)], y[s, shard(s, rank, tail)]))
                  for s in range(STEPS)]
        t2 = time.perf_counter()
        params = list(engine.module.parameters())
        if stage == 3:  # this rank's parameter partition and its fp32 optimizer master copy
            param_numel = sum(p.ds_tensor.numel() for p in params)
            master = engine.optimizer.fp32_partitioned_groups_flat
        else:  # full parameters on every rank, partitioned fp32 master + AdamW state
            param_numel = sum(p.numel() for p in params)
            master = engine.optimizer.single_partition_of_fp32_groups
        opt_states = [s for s in engine.optimizer.optimizer.state.values() if "exp_avg" in s]
        result[label] = {"losses": losses, "state": zero_state_dict(engine),
                         "stage": engine.zero_optimization_stage(),
                         "gas": engine.gradient_accumulation_steps(),
                         "model_numel": sum(p.ds_numel if stage == 3 else p.numel() for p in params),
                         "local_param_numel": param_numel,
                         "local_master_numel": sum(t.numel() for t in master),
                         "local_exp_avg_numel": sum(s["exp_avg"].numel() for s in opt_states),
                         "optimizer_class": type(engine.optimizer).__name__,
                         "basic_optimizer_class": type(engine.basic_optimizer).__name__,
                         "init_s": t1 - t0, "steps_s": t2 - t1}
        engine.destroy()
        del engine
    for stage in RESUME_STAGES:
        result[f"resume_zero{stage}"] = _resume_case(stage, rank, world, out_dir)
    if rank == 0:
        result["reference"] = reference()
        result["reference_tail"] = reference(tail=True)
    torch.save(result, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


RESUME_STAGES = (1, 3)
"""Stages whose save/load through the training loop's ZeroEngine is checked."""
RESUME_AFTER = 3
"""Steps before the checkpoint; the remaining STEPS - RESUME_AFTER run on both engines."""


def _resume_case(stage: int, rank: int, world: int, out_dir: str) -> dict:
    """Engine A trains RESUME_AFTER steps and saves (DeepSpeed's partitioned checkpoint, as the
    loop does each epoch); engine B, built fresh like a restarted job, loads it; both then take
    the remaining steps. Interrupted + resumed must equal uninterrupted, exactly."""
    from types import SimpleNamespace

    from recpar.train.checkpoint import CheckpointError
    from recpar.train.engines.base import EngineContext
    from recpar.train.engines.zero import ZeroEngine

    spec = SimpleNamespace(plan=ParallelPlan(scheme="zero", dp=world), train=TRAIN_CFG,
                           zero_stage=stage)

    def engine():
        model = make_model()
        return ZeroEngine(EngineContext(spec=spec, model=model, model_cfg=model.cfg,
                                        device=torch.device("cpu"), rank=rank, world=world,
                                        seq_len=SEQ_LEN))

    x, y = make_batches()
    idx = torch.arange(GLOBAL_BATCH)
    ckpt = f"{out_dir}/resume-zero{stage}"
    a = engine()
    for s in range(RESUME_AFTER):
        a.step(x[s], y[s], idx)
    a.save(ckpt, "fp-a")
    b = engine()
    b.load(ckpt, "fp-a")
    loaded = b.full_state_dict()
    wrong = None
    try:
        b.load(ckpt, "fp-other")
    except CheckpointError as e:
        wrong = str(e)
    losses_a = [a.step(x[s], y[s], idx).loss_mean for s in range(RESUME_AFTER, STEPS)]
    losses_b = [b.step(x[s], y[s], idx).loss_mean for s in range(RESUME_AFTER, STEPS)]
    out = {"losses_a": losses_a, "losses_b": losses_b, "state_a": a.full_state_dict(),
           "state_b": b.full_state_dict(), "loaded": loaded, "wrong_fingerprint": wrong}
    a.engine.destroy()
    b.engine.destroy()
    return out
