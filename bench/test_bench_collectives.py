"""Gradient-sync collectives on loopback, 2 gloo ranks, no root needed (group `collectives`).

Each case is one call of recpar's gradient-sync hook (`recpar.comm.hooks`, synchronous) on a
synthetic 4 MiB fp32 bucket, the operation `recpar bench collectives` sweeps; the emulated
cluster's all-reduce benchmarks (shaped links, root) are in test_bench_cluster.py. The ranks
start once per case (`rank_pool.RankPool`); a round is one call on both ranks.

extra_info: `algbw_gb_per_s` = bucket bytes / time and `busbw_gb_per_s` = algbw × 2(n−1)/n
(`recpar.comm.collective_bench.all_reduce_busbw`, nccl-tests' definition), both for the
dense fp32 bucket whatever the compressor sends (GB = 1e9 bytes).
"""

from __future__ import annotations

import pytest

from recpar.comm.collective_bench import all_reduce_busbw
from tests.comm.mp_launch import skip_unless_ranks

from .benchmark_stats import median_s
from .rank_pool import RankPool

pytestmark = [pytest.mark.benchmark(group="collectives"), pytest.mark.multiprocess]

WORLD = 2
BUCKET_BYTES = 4 << 20  # 4 MiB: 1 Mi fp32 gradients
CASES = ["ring", "sign", "topk", "powersgd", "fp16", "bf16"]


@pytest.mark.parametrize("case", CASES)
def test_grad_sync_loopback(benchmark, case):
    skip_unless_ranks(WORLD)
    with RankPool(WORLD, "bench.workloads:grad_sync",
                  {"case": case, "size_bytes": BUCKET_BYTES}) as pool:
        benchmark.pedantic(pool, rounds=10, warmup_rounds=2, iterations=1)
    s = median_s(benchmark)
    if s is not None:
        algbw = BUCKET_BYTES / s / 1e9
        benchmark.extra_info.update(world_size=WORLD, bucket_bytes=BUCKET_BYTES,
                                    algbw_gb_per_s=algbw,
                                    busbw_gb_per_s=all_reduce_busbw(algbw, WORLD))
