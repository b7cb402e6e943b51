"""Rank workloads for `rank_pool.RankPool` (built once per rank, run once per call).

Each factory runs on every rank after the gloo group exists and returns the callable that one
benchmark round runs. They use recpar's own pieces: the training engines the loop uses
(`recpar.train.engines.build_engine`, so a step is exactly what `recpar train` times) and the
gradient-sync hooks on a synthetic bucket (as `recpar bench collectives` does).
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path
from typing import Callable

import torch

N_ITEMS = 1_682
"""MovieLens-100k's item count, the offline laptop dataset the default sweep trains on."""
SEQ_LEN = 50
"""Positions per training sequence: the named sizes' max_seq_len."""
GLOBAL_BATCH = 64
"""Sequences per optimiser step, split over the dp replicas."""
N_SEQ = 8 * GLOBAL_BATCH
"""Synthetic training sequences: 8 distinct batches, cycled."""

_SCRATCH: list[tempfile.TemporaryDirectory] = []  # alive as long as the rank's process


def _scratch_dir() -> Path:
    """An empty directory for a RunSpec's data/out paths (engines never write during steps),
    removed when the rank's process exits (TemporaryDirectory's finalizer), not left in /tmp."""
    _SCRATCH.append(tempfile.TemporaryDirectory(prefix="recpar-bench-"))
    return Path(_SCRATCH[-1].name)


def train_step(scheme: str, dp: int = 1, tp: int = 1, pp: int = 1, zero_stage: int = 0,
               compressor: str = "none", algorithm: str = "ring",
               num_microbatches: int = 1) -> Callable[[], float]:
    """One optimiser step of the tiny recommender under the plan, through the engine the
    training loop builds for it; returns the step's mean loss (rank 0's figure)."""
    import torch.distributed as dist

    from recpar.comm.config import GradSyncConfig
    from recpar.model.config import ModelConfig
    from recpar.model.recommender import Recommender
    from recpar.parallel.plan import ParallelPlan
    from recpar.train.config import TrainConfig
    from recpar.train.engines import EngineContext, build_engine
    from recpar.train.spec import RunSpec

    world = dist.get_world_size()
    plan = ParallelPlan(scheme=scheme, dp=dp, tp=tp, pp=pp, num_microbatches=num_microbatches)
    model_cfg = ModelConfig.named("tiny", dropout=0.0, text_dim=0)  # ID embeddings only
    plan.validate(world_size=world, n_heads=model_cfg.n_heads, n_layers=model_cfg.n_layers)
    out = _scratch_dir()
    spec = RunSpec(data_dir=out, out_dir=out, run_id=f"bench-{scheme}", model=model_cfg,
                   train=TrainConfig(global_batch_size=GLOBAL_BATCH), plan=plan,
                   use_text=False, grad_sync=GradSyncConfig(algorithm=algorithm,
                                                            compressor=compressor),
                   zero_stage=zero_stage)
    torch.manual_seed(0)  # same initial weights on every rank, as the loop builds them
    model = Recommender(model_cfg, N_ITEMS)
    engine = build_engine(EngineContext(spec=spec, model=model, model_cfg=model_cfg,
                                        device=torch.device("cpu"), rank=dist.get_rank(),
                                        world=world, seq_len=SEQ_LEN))
    engine.train()
    gen = torch.Generator().manual_seed(1)
    inputs = torch.randint(1, N_ITEMS + 1, (N_SEQ, SEQ_LEN), generator=gen)  # [N_SEQ, L]
    targets = torch.randint(1, N_ITEMS + 1, (N_SEQ, SEQ_LEN), generator=gen)
    batches = itertools.cycle(torch.arange(N_SEQ).split(GLOBAL_BATCH))  # same on every rank

    def step() -> float:
        return engine.step(inputs, targets, next(batches)).loss_mean

    return step


def dp_no_sync_replay(per_rank_batch: int, batches_per_call: int) -> Callable[[], float]:
    """The DP engine's no-sync replay (`ReplicaEngine.no_sync_ms`, what `recpar train` runs
    after training to separate exposed communication): every rank's fwd+bwd on
    `batches_per_call` batches of `per_rank_batch` sequences with no gradient synchronisation.
    The plan is dp = world size (a replica alone at world size 1); returns rank 0's mean ms."""
    import torch.distributed as dist

    from recpar.model.config import ModelConfig
    from recpar.model.recommender import Recommender
    from recpar.parallel.plan import ParallelPlan
    from recpar.train.config import TrainConfig
    from recpar.train.engines import EngineContext, build_engine
    from recpar.train.spec import RunSpec

    world = dist.get_world_size()
    scheme = "dp" if world > 1 else "baseline"
    plan = ParallelPlan(scheme=scheme, dp=world)
    model_cfg = ModelConfig.named("tiny", dropout=0.0, text_dim=0)  # ID embeddings only
    plan.validate(world_size=world, n_heads=model_cfg.n_heads, n_layers=model_cfg.n_layers)
    batch = world * per_rank_batch  # weak scaling: every rank's share is per_rank_batch
    out = _scratch_dir()
    spec = RunSpec(data_dir=out, out_dir=out, run_id=f"bench-nosync-{world}", model=model_cfg,
                   train=TrainConfig(global_batch_size=batch), plan=plan, use_text=False)
    torch.manual_seed(0)
    model = Recommender(model_cfg, N_ITEMS)
    engine = build_engine(EngineContext(spec=spec, model=model, model_cfg=model_cfg,
                                        device=torch.device("cpu"), rank=dist.get_rank(),
                                        world=world, seq_len=SEQ_LEN))
    n_seq = batches_per_call * batch
    gen = torch.Generator().manual_seed(1)
    inputs = torch.randint(1, N_ITEMS + 1, (n_seq, SEQ_LEN), generator=gen)  # [n_seq, L]
    targets = torch.randint(1, N_ITEMS + 1, (n_seq, SEQ_LEN), generator=gen)
    batches = list(torch.arange(n_seq).split(batch))  # the same global batches on every rank

    def replay() -> float:
        return engine.no_sync_ms(inputs, targets, batches, steps=batches_per_call)

    return replay


def grad_sync(case: str, size_bytes: int, topk_ratio: float = 0.01) -> Callable[[], None]:
    """One gradient-sync call of `case` (ring, hierarchical, sign, topk, powersgd, fp16, bf16)
    on a synthetic fp32 bucket of `size_bytes`, synchronous (overlap off), on the default
    group."""
    import torch.distributed as dist

    from recpar.comm.collective_bench import case_config, matrix_shape
    from recpar.comm.hooks import SyntheticBucket, make_grad_sync_hook

    cfg = case_config(case, ranks_per_node=1, topk_ratio=topk_ratio, powersgd_rank=1,
                      error_feedback=True)
    state, hook = make_grad_sync_hook(cfg)
    numel = size_bytes // 4
    buf = torch.randn(numel, generator=torch.Generator().manual_seed(1000 + dist.get_rank()))
    shapes = [matrix_shape(numel)] if case == "powersgd" else None
    bucket = SyntheticBucket(buf, grad_shapes=shapes)
    # PowerSGD runs plain all-reduce for its first calls: the factory steps past them, so
    # every timed call compresses.
    for _ in range(cfg.powersgd_start_iter if case == "powersgd" else 0):
        hook(state, bucket).wait()

    def call() -> None:
        hook(state, bucket).wait()

    return call
