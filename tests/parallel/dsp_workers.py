"""Rank bodies for tests/parallel/test_deepspeed_pipeline.py (spawned, gloo on CPU, 2 ranks).

Kept out of the test module so spawned children do not import pytest or the tests. One spawn
runs every case in sequence (DeepSpeed's import dominates) and writes what each rank observed
to `<out_dir>/rank<k>.pt`.
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
GLOBAL_BATCH = 8
SEQ_LEN = 8
N_ITEMS = 40
TEXT_DIM = 12
TAIL_ROWS = 3

# label -> (n_layers, partition_method, num_microbatches, last step is a TAIL_ROWS tail)
CASES: dict[str, tuple[int, str, int, bool]] = {
    "pp2_uniform_m2": (2, "uniform", 2, False),
    "pp2_balanced_m4_tail": (3, "balanced", 4, True),
}

TRAIN_CFG = TrainConfig(lr=3e-3, weight_decay=0.1, betas=(0.9, 0.98),
                        global_batch_size=GLOBAL_BATCH, clip_grad=0.5)
"""clip_grad 0.5: clipping is active in the first steps (the test checks the reference norms)."""


def model_cfg(n_layers: int) -> ModelConfig:
    # dropout 0: dropout masks are per-process random streams, the comparison needs none.
    return ModelConfig(d_model=16, n_layers=n_layers, n_heads=2, d_ff=32, max_seq_len=SEQ_LEN,
                       dropout=0.0, text_dim=TEXT_DIM)


def make_model(n_layers: int) -> Recommender:
    torch.manual_seed(0)
    text = torch.randn(N_ITEMS + 1, TEXT_DIM, generator=torch.Generator().manual_seed(3))
    return Recommender(model_cfg(n_layers), N_ITEMS, text)


def make_batches() -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) [STEPS, GLOBAL_BATCH, SEQ_LEN], left-padded, unequal padding: the
    micro-batches hold different numbers of valid positions, so normalising each by its own
    count (or averaging micro-batch means) would give another loss than the global mean."""
    return unequal_padding_batches(STEPS, GLOBAL_BATCH, SEQ_LEN, N_ITEMS)


def step_rows(step: int, tail: bool) -> int:
    return TAIL_ROWS if tail and step == STEPS - 1 else GLOBAL_BATCH


def train_reference(make, x, y, tail: bool) -> dict:
    """Single process, whole global batch, the baseline loop's AdamW + clipping, on the model
    `make()` builds (same seed: the pipeline's initial weights); also the gradient of the
    first step (before clipping)."""
    from recpar.train.optim import build_adamw

    model = make()
    opt = build_adamw(model, TRAIN_CFG)
    losses, norms, first_grads = [], [], None
    for s in range(STEPS):
        rows = step_rows(s, tail)
        loss = model.loss(x[s, :rows], y[s, :rows])
        opt.zero_grad()
        loss.backward()
        if first_grads is None:
            first_grads = {k: p.grad.detach().clone() for k, p in model.named_parameters()}
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), TRAIN_CFG.clip_grad)))
        opt.step()
        losses.append(float(loss.detach()))
    return {"losses": losses, "grad_norms": norms, "first_grads": first_grads,
            "init": make().state_dict(),
            "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}


def reference(n_layers: int, tail: bool) -> dict:
    """`train_reference` of this module's model and batches."""
    x, y = make_batches()
    return train_reference(lambda: make_model(n_layers), x, y, tail)


def _capture_grads_after_tied_reduce(engine, sink: list) -> None:
    """Record every stage parameter's gradient right after DeepSpeed's ReduceTiedGrads of the
    first step (before the dp reduction and the optimizer, which consumes the grads)."""
    from deepspeed.runtime.pipe import schedule

    from recpar.parallel.deepspeed_layers import recommender_key

    orig = type(engine)._INSTRUCTION_MAP[schedule.ReduceTiedGrads]

    def wrapped(self):
        orig(self)
        if not sink:
            n = self.module.recpar_n_layers
            sink.append({recommender_key(k, n): p.grad.detach().clone()
                         for k, p in self.module.named_parameters() if p.grad is not None})

    engine._INSTRUCTION_MAP = {**type(engine)._INSTRUCTION_MAP, schedule.ReduceTiedGrads: wrapped}


RESUME_AT = 3
"""Resume case: save after this many steps, continue to STEPS in the same and a fresh engine."""


def resume_roundtrip(build, out_dir: str, x, y) -> tuple[dict, object]:
    """Train `build()`'s engine RESUME_AT steps, save (fingerprint "fp-A"), continue to STEPS;
    then a fresh `build()` loads the checkpoint and continues the same steps. Returns the
    weights and losses of both, and the second engine (still open, for further checks)."""
    idx = torch.arange(GLOBAL_BATCH)
    first = build()
    for s in range(RESUME_AT):
        first.step(x[s], y[s], idx)
    first.save(out_dir, "fp-A")
    saved = first.full_state_dict()
    losses_first = [first.step(x[s], y[s], idx).loss_mean for s in range(RESUME_AT, STEPS)]
    final_first = first.full_state_dict()
    first.close()

    second = build()
    second.load(out_dir, "fp-A")
    restored = second.full_state_dict()
    losses_second = [second.step(x[s], y[s], idx).loss_mean for s in range(RESUME_AT, STEPS)]
    final_second = second.full_state_dict()
    return {"saved": saved, "restored": restored, "losses_first": losses_first,
            "losses_second": losses_second, "final_first": final_first,
            "final_second": final_second}, second


def resume_case(rank: int, world: int, out_dir: str, x, y) -> dict:
    """`DeepSpeedPipelineEngine` save -> fresh engine (from the initial weights) load: the
    restored weights equal the saved ones and training continues bit for bit; a checkpoint
    with another fingerprint is refused."""
    from types import SimpleNamespace

    from recpar.train.checkpoint import CheckpointError
    from recpar.train.engines.base import EngineContext
    from recpar.train.engines.deepspeed_pipeline import DeepSpeedPipelineEngine

    n_layers, partition, m, _ = CASES["pp2_uniform_m2"]
    plan = ParallelPlan(scheme="deepspeed", pp=world, num_microbatches=m,
                        partition_method=partition)

    def build() -> DeepSpeedPipelineEngine:
        model = make_model(n_layers)
        return DeepSpeedPipelineEngine(EngineContext(
            spec=SimpleNamespace(plan=plan, train=TRAIN_CFG, seed=0), model=model,
            model_cfg=model.cfg, device=torch.device("cpu"), rank=rank, world=world,
            seq_len=SEQ_LEN))

    result, second = resume_roundtrip(build, out_dir, x, y)
    try:
        second.load(out_dir, "fp-B")
        refused = None
    except CheckpointError as err:
        refused = str(err)
    second.close()
    return {**result, "refused": refused}


def init_rank(rank: int, world: int, out_dir: str) -> None:
    """One spawned gloo rank on this machine: 1 thread, LOCAL_RANK set as torchrun would."""
    torch.set_num_threads(1)
    os.environ["LOCAL_RANK"] = str(rank)  # one node: local rank = rank (torchrun sets it)
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/rdzv", rank=rank,
                            world_size=world)


def dsp_worker(rank: int, world: int, out_dir: str) -> None:
    from recpar.parallel.deepspeed_pipeline import (apply_deepspeed_pipeline, pipeline_record,
                                                    pipeline_state_dict, pipeline_step)

    init_rank(rank, world, out_dir)
    x, y = make_batches()
    result: dict = {}
    for label, (n_layers, partition, m, tail) in CASES.items():
        plan = ParallelPlan(scheme="deepspeed", pp=world, num_microbatches=m,
                            partition_method=partition)
        t0 = time.perf_counter()
        engine = apply_deepspeed_pipeline(make_model(n_layers), TRAIN_CFG, plan)
        t1 = time.perf_counter()
        grads: list = []
        _capture_grads_after_tied_reduce(engine, grads)
        losses = []
        for s in range(STEPS):
            rows = step_rows(s, tail)
            losses.append(float(pipeline_step(engine, x[s, :rows], y[s, :rows])))
        t2 = time.perf_counter()
        tied = {recommender_key_tied: p.detach().clone() for recommender_key_tied, p in
                ((k.partition(".")[2].partition(".")[2], p)
                 for k, p in engine.module.named_parameters() if k.startswith("tied_modules."))}
        result[label] = {"losses": losses, "first_grads": grads[0] if grads else {},
                         "tied_params": tied, "state": pipeline_state_dict(engine),
                         "record": pipeline_record(engine),
                         "basic_optimizer_class": type(engine.basic_optimizer).__name__,
                         "init_s": t1 - t0, "steps_s": t2 - t1}
        engine.destroy()
        del engine
    result["resume"] = resume_case(rank, world, out_dir, x, y)
    if rank == 0:
        for label, (n_layers, _, _, tail) in CASES.items():
            result[label]["reference"] = reference(n_layers, tail)
    torch.save(result, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()
