"""recpar's synchronous DP step vs a bare DDP script, same model, batch and optimiser.

Target: recpar's step reaches >= 0.95 of the bare script's throughput, reported as
`recpar_over_bare` and `meets_target`, not asserted. The bare side is
what anyone would write: `DDP(module)` with its built-in all-reduce, `loss.backward()`,
`clip_grad_norm_`, `AdamW.step()`. The recpar side is the training loop's own pieces:
`TrainStep` + `apply_dp` (DDP + recpar's ring hook with its byte/time accounting) and the
loop's optimiser. Both run in the same 2 processes, alternating blocks of steps, so machine
noise hits both sides alike.

    make bench   (or: pytest bench/test_bench_dp.py --benchmark-enable --benchmark-only -s)

Writes results/bench/dp_vs_bare.json (or $RECPAR_BENCH_OUT/dp_vs_bare.json).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from .benchmark_stats import timed

pytestmark = pytest.mark.benchmark(group="dp")

WORLD_SIZE = 2
BLOCKS = 4  # alternating measurement blocks per side
STEPS_PER_BLOCK = 5
WARMUP_STEPS = 3
N_ITEMS = 1_682  # movielens-100k size
GLOBAL_BATCH, SEQ_LEN = 128, 50


def _rank(rank: int, world: int, init_file: str, out: str, blocks: int) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from recpar.comm.config import GradSyncConfig
    from recpar.model.config import ModelConfig
    from recpar.model.loss import valid_positions
    from recpar.model.recommender import Recommender
    from recpar.parallel.data_parallel import TrainStep, apply_dp
    from recpar.train.config import TrainConfig
    from recpar.train.optim import build_adamw

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    cfg = ModelConfig.named("tiny", text_dim=384, dropout=0.0)
    gen = torch.Generator().manual_seed(0)
    text = torch.randn(N_ITEMS + 1, 384, generator=gen)
    x = torch.randint(1, N_ITEMS + 1, (GLOBAL_BATCH, SEQ_LEN), generator=gen)
    y = torch.randint(1, N_ITEMS + 1, (GLOBAL_BATCH, SEQ_LEN), generator=gen)
    xl, yl = x[rank::world], y[rank::world]
    gcount = valid_positions(x, y).sum()
    tcfg = TrainConfig()

    torch.manual_seed(0)
    bare_model = Recommender(cfg, N_ITEMS, text)

    class Bare(torch.nn.Module):  # what a bare script writes: forward returns the loss
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, a, b):
            return self.m.loss(a, b)

    bare = DDP(Bare(bare_model), broadcast_buffers=False)
    bare_opt = torch.optim.AdamW(bare_model.parameters(), lr=tcfg.lr, betas=tcfg.betas,
                                 weight_decay=tcfg.weight_decay)

    torch.manual_seed(0)
    rp_model = Recommender(cfg, N_ITEMS, text)
    rp, state = apply_dp(TrainStep(rp_model, dp_size=world), GradSyncConfig(), torch.device("cpu"))
    rp_opt = build_adamw(rp_model, tcfg)

    def bare_step():
        loss = bare(xl, yl)
        bare_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(bare_model.parameters(), tcfg.clip_grad)
        bare_opt.step()

    def rp_step():
        loss, _ = rp(xl, yl, gcount)
        rp_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(rp_model.parameters(), tcfg.clip_grad)
        rp_opt.step()

    for _ in range(WARMUP_STEPS):
        bare_step()
        rp_step()
    times = {"bare": [], "recpar": []}
    for _ in range(blocks):
        for name, fn in (("bare", bare_step), ("recpar", rp_step)):
            dist.barrier()
            t0 = time.perf_counter()
            for _ in range(STEPS_PER_BLOCK):
                fn()
            dist.barrier()
            times[name].append(time.perf_counter() - t0)
    state.close()
    if rank == 0:
        Path(out).write_text(json.dumps(times))
    dist.destroy_process_group()
    from recpar.rank_exit import exit_rank

    exit_rank(0)  # no interpreter finalization while gloo threads live (recpar.rank_exit)


@pytest.mark.multiprocess
def test_recpar_dp_step_vs_bare_ddp(benchmark, tmp_path, timed_run):
    import torch.multiprocessing as mp

    blocks = BLOCKS if timed_run else 1  # make test: the code path once

    def run():
        init, out = tmp_path / "init", tmp_path / "times.json"
        init.unlink(missing_ok=True)
        mp.spawn(_rank, args=(WORLD_SIZE, str(init), str(out), blocks), nprocs=WORLD_SIZE,
                 join=True)
        return json.loads(out.read_text())

    times = benchmark.pedantic(run, rounds=1, iterations=1)
    samples = blocks * STEPS_PER_BLOCK * GLOBAL_BATCH
    rate = {k: samples / sum(v) for k, v in times.items()}
    ratio = rate["recpar"] / rate["bare"]
    result = {"world_size": WORLD_SIZE, "model": "tiny", "n_items": N_ITEMS,
              "global_batch": GLOBAL_BATCH, "seq_len": SEQ_LEN,
              "throughput_samples_per_s": rate, "block_s": times,
              "recpar_over_bare": ratio, "target": 0.95}
    assert all(t > 0 for v in times.values() for t in v), times
    if not timed(benchmark):  # make test: the code ran; the figures belong to a quiet machine
        return
    out_dir = Path(os.environ.get("RECPAR_BENCH_OUT", "results/bench"))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "dp_vs_bare.json").write_text(json.dumps(result, indent=2) + "\n")
    benchmark.extra_info.update(result)
    print(json.dumps(result, indent=1))
    # The target is a measured figure for the closing note and the JSON, not an assertion: a
    # timed assertion fails on noise (0.915 in one of three quiet runs here); a slower DP step
    # is caught by `make bench-check` against the baseline.
    benchmark.extra_info["meets_target"] = ratio >= 0.95
