"""Rank bodies for tests/parallel/test_deepspeed_pipeline_tp.py: DeepSpeed PipelineModule with
megatron-core tensor parallelism, tp = 2 × pp = 2 (WORLD_SIZE = 4 gloo ranks on CPU).

One spawn runs every case (importing DeepSpeed and megatron-core dominates) and writes what
each rank observed to `<out_dir>/rank<k>.pt`. The model has N_ITEMS = 150 items, so the item
vocabulary (151 rows, padded to 256 = 128 × tp by Megatron-LM's rule) puts real items in both
TP shards ([0, 128) and [128, 256)).
"""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist

from recpar.model.config import ModelConfig
from recpar.model.recommender import Recommender
from recpar.parallel.plan import ParallelPlan

from .dsp_workers import (GLOBAL_BATCH, SEQ_LEN, STEPS, TRAIN_CFG,
                          _capture_grads_after_tied_reduce, init_rank, resume_roundtrip,
                          step_rows, train_reference)
from .toy_batches import unequal_padding_batches

TP, PP = 2, 2
WORLD_SIZE = TP * PP
N_ITEMS = 150
TEXT_DIM = 12

# label -> (n_layers, partition_method, num_microbatches, last step is a tail, text fusion)
CASES: dict[str, tuple[int, str, int, bool, bool]] = {
    "tp2pp2_uniform_m2_text": (2, "uniform", 2, False, True),
    "tp2pp2_balanced_m4_tail_notext": (3, "balanced", 4, True, False),
}


def model_cfg(n_layers: int, text: bool) -> ModelConfig:
    # 2 heads (one per TP rank), d_ff 32 (16 per rank); dropout 0: per-process streams.
    return ModelConfig(d_model=16, n_layers=n_layers, n_heads=2, d_ff=32, max_seq_len=SEQ_LEN,
                       dropout=0.0, text_dim=TEXT_DIM if text else 0)


def make_model(n_layers: int, text: bool) -> Recommender:
    torch.manual_seed(0)
    emb = (torch.randn(N_ITEMS + 1, TEXT_DIM, generator=torch.Generator().manual_seed(3))
           if text else None)
    return Recommender(model_cfg(n_layers, text), N_ITEMS, emb)


def make_batches() -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) [STEPS, GLOBAL_BATCH, SEQ_LEN], left-padded, unequal padding."""
    return unequal_padding_batches(STEPS, GLOBAL_BATCH, SEQ_LEN, N_ITEMS)


def reference(n_layers: int, text: bool, tail: bool) -> dict:
    """Single process, whole global batch, the baseline loop's AdamW + clipping
    (`dsp_workers.train_reference` on this module's model and batches)."""
    x, y = make_batches()
    return train_reference(lambda: make_model(n_layers, text), x, y, tail)


def _layout(engine) -> dict:
    """This rank's megatron groups and DeepSpeed grid coordinates (global ranks)."""
    from recpar.parallel import process_groups as pg

    grid = engine.grid
    return {"megatron": {"tp": dist.get_process_group_ranks(pg.tp_group()),
                         "pp": dist.get_process_group_ranks(pg.pp_group()),
                         "dp": dist.get_process_group_ranks(pg.dp_group()),
                         "tp_rank": pg.tp_rank(), "pp_rank": pg.pp_rank()},
            "deepspeed": {"tp": list(grid.slice_group), "pp": list(grid.pp_group),
                          "dp": list(grid.dp_group), "tp_rank": grid.get_slice_parallel_rank(),
                          "pp_rank": grid.get_stage_id()}}


LAYOUTS = ((2, 2, 1), (2, 2, 2), (2, 1, 2), (4, 2, 2), (2, 4, 1), (2, 3, 3))
"""(tp, pp, dp) whose megatron and DeepSpeed layouts are compared for every rank (no ranks
needed: megatron's RankGenerator is what `initialize_model_parallel` builds its groups from)."""


def layout_agreement() -> dict[tuple[int, int, int], list[str]]:
    """(tp, pp, dp) -> `topology_mismatches` over all ranks of megatron's default layout vs
    `deepspeed_topology` (empty lists: the two agree)."""
    from megatron.core.parallel_state import RankGenerator

    from recpar.parallel.deepspeed_pipeline import deepspeed_topology, topology_mismatches
    from recpar.parallel.process_groups import DEFAULT_ORDER

    out = {}
    for tp, pp, dp in LAYOUTS:
        gen = RankGenerator(tp=tp, ep=1, dp=dp, pp=pp, cp=1, order=DEFAULT_ORDER)
        groups = {name: gen.get_ranks(name) for name in ("tp", "pp", "dp")}
        topo = deepspeed_topology(ParallelPlan(scheme="deepspeed", tp=tp, pp=pp, dp=dp))
        bad: list[str] = []
        for rank in range(tp * pp * dp):
            mine = {name: next(g for g in gs if rank in g) for name, gs in groups.items()}
            bad += topology_mismatches(topo, mine, rank)
        out[(tp, pp, dp)] = bad
    return out


def resume_case(rank: int, world: int, out_dir: str, x, y) -> dict:
    """`DeepSpeedPipelineEngine` (tp2 × pp2) save -> fresh engine load: the restored weights
    equal the saved ones and training continues bit for bit."""
    from types import SimpleNamespace

    from recpar.train.engines.base import EngineContext
    from recpar.train.engines.deepspeed_pipeline import DeepSpeedPipelineEngine

    n_layers, partition, m, _, text = CASES["tp2pp2_uniform_m2_text"]
    plan = ParallelPlan(scheme="deepspeed", tp=TP, pp=PP, num_microbatches=m,
                        partition_method=partition)

    def build() -> DeepSpeedPipelineEngine:
        model = make_model(n_layers, text)
        return DeepSpeedPipelineEngine(EngineContext(
            spec=SimpleNamespace(plan=plan, train=TRAIN_CFG, seed=0), model=model,
            model_cfg=model.cfg, device=torch.device("cpu"), rank=rank, world=world,
            seq_len=SEQ_LEN))

    result, second = resume_roundtrip(build, out_dir, x, y)
    second.close()
    files = sorted(os.listdir(f"{out_dir}/deepspeed/last")) if rank == 0 else []
    return {**result, "files": files}


def dsp_tp_worker(rank: int, world: int, out_dir: str) -> None:
    from recpar.parallel.deepspeed_layers import recommender_key
    from recpar.parallel.deepspeed_pipeline import (apply_deepspeed_pipeline, pipeline_record,
                                                    pipeline_state_dict, pipeline_step)

    init_rank(rank, world, out_dir)
    x, y = make_batches()
    result: dict = {}
    for label, (n_layers, partition, m, tail, text) in CASES.items():
        plan = ParallelPlan(scheme="deepspeed", tp=TP, pp=PP, num_microbatches=m,
                            partition_method=partition)
        t0 = time.perf_counter()
        engine = apply_deepspeed_pipeline(make_model(n_layers, text), TRAIN_CFG, plan, seed=0)
        t1 = time.perf_counter()
        grads: list = []
        _capture_grads_after_tied_reduce(engine, grads)
        losses, norms = [], []
        for s in range(STEPS):
            rows = step_rows(s, tail)
            losses.append(float(pipeline_step(engine, x[s, :rows], y[s, :rows])))
            norms.append(float(engine.get_global_grad_norm()))
        t2 = time.perf_counter()
        n = engine.module.recpar_n_layers
        tied = {k.split(".", 2)[2]: p.detach().clone()
                for k, p in engine.module.named_parameters() if k.startswith("tied_modules.")}
        shard_dims = {recommender_key(k, n): int(p.partition_dim)
                      for k, p in engine.module.named_parameters()
                      if getattr(p, "tensor_model_parallel", False)}
        result[label] = {"losses": losses, "grad_norms": norms,
                         "first_grads": grads[0] if grads else {}, "shard_dims": shard_dims,
                         "tied_params": tied, "state": pipeline_state_dict(engine),
                         "record": pipeline_record(engine), "layout": _layout(engine),
                         "pipe_partitioned": bool(engine.is_pipe_partitioned),
                         "grad_partitioned": bool(engine.is_grad_partitioned),
                         "init_s": t1 - t0, "steps_s": t2 - t1}
        engine.destroy()
        del engine
    result["resume"] = resume_case(rank, world, out_dir, x, y)
    if rank == 0:
        for label, (n_layers, _, _, tail, text) in CASES.items():
            result[label]["reference"] = reference(n_layers, text, tail)
        result["layouts"] = layout_agreement()
    torch.save(result, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()
