"""One training step per scheme, tiny model, on loopback gloo ranks (group `step`).

A step is the engine's `step()` that `recpar train` times: forward, backward, the scheme's
communication and the optimiser step, on a global batch of 64 sequences × 50 positions over
1,682 items (MovieLens-100k's size), ID embeddings, dropout 0. Every rank has one intra-op
thread; ranks start once per scheme (`rank_pool.RankPool`) and a round is one step on every
rank. 4-rank plans share this machine's cores, so a step here says how recpar's code path
performs, not how the scheme scales (the scale model measures that).

extra_info: `throughput_samples_per_s` = 64 sequences / median step time.
"""

from __future__ import annotations

import math

import pytest

from tests.comm.mp_launch import skip_unless_ranks

from .benchmark_stats import median_s
from .rank_pool import RankPool
from .workloads import GLOBAL_BATCH

pytestmark = [pytest.mark.benchmark(group="step"), pytest.mark.multiprocess]

# id -> (world size, train_step kwargs)
SCHEMES: dict[str, tuple[int, dict]] = {
    "baseline": (1, {"scheme": "baseline"}),
    "dp2-ring": (2, {"scheme": "dp", "dp": 2}),
    "dp2-topk0.01": (2, {"scheme": "dp", "dp": 2, "compressor": "topk"}),
    "tp2": (2, {"scheme": "mp", "tp": 2}),
    "pp2-m2": (2, {"scheme": "mp", "pp": 2, "num_microbatches": 2}),
    "tp2dp2": (4, {"scheme": "hybrid", "tp": 2, "dp": 2}),
    "zero1-dp2": (2, {"scheme": "zero", "dp": 2, "zero_stage": 1}),
    "zero3-dp2": (2, {"scheme": "zero", "dp": 2, "zero_stage": 3}),
    "deepspeed-pp2-m2": (2, {"scheme": "deepspeed", "pp": 2, "num_microbatches": 2}),
}


@pytest.mark.parametrize("name", list(SCHEMES))
def test_train_step(benchmark, name):
    world, kwargs = SCHEMES[name]
    skip_unless_ranks(world)
    with RankPool(world, "bench.workloads:train_step", kwargs) as pool:
        loss = benchmark.pedantic(pool, rounds=5, warmup_rounds=2, iterations=1)
    assert math.isfinite(loss) and 0 < loss < 20, loss  # ln(1,683) = 7.4 at initialisation
    s = median_s(benchmark)
    if s is not None:
        benchmark.extra_info.update(world_size=world, global_batch=GLOBAL_BATCH,
                                    throughput_samples_per_s=GLOBAL_BATCH / s)
