"""Decoding what 4 ranks sent back into one dense fp32 bucket, single process (group
`codec_decode`): sign and top-k (the mean of the ranks' decoded payloads) and the fp16/bf16
casts back to fp32 after torch's cast hooks' all-reduce. Each call allocates the dense 4 MiB
result, which makes these the noisiest benchmarks on a shared machine (bench/README.md), so
they have their own threshold. extra_info: `gb_per_s`.
"""

import pytest
import torch

from recpar.comm import codecs

from .benchmark_stats import median_s
from .codec_inputs import TOPK_RATIOS, WORLD, N, bucket, gb_per_s

pytestmark = pytest.mark.benchmark(group="codec_decode")


@pytest.fixture(scope="module")
def grad():
    return bucket()


def test_sign_decode_mean(benchmark, grad):
    gathered = torch.stack([codecs.sign_encode(grad * (i + 1))[0] for i in range(WORLD)])
    out = benchmark(codecs.sign_decode_mean, gathered, N)
    assert out.numel() == N
    benchmark.extra_info.update(gb_per_s(median_s(benchmark)))


@pytest.mark.parametrize("ratio", TOPK_RATIOS)
def test_topk_decode_mean(benchmark, grad, ratio):
    gathered = torch.stack([codecs.topk_encode(grad * (i + 1), ratio)[0] for i in range(WORLD)])
    out = benchmark(codecs.topk_decode_mean, gathered, N)
    assert out.numel() == N
    benchmark.extra_info.update(gb_per_s(median_s(benchmark)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_cast_decode(benchmark, grad, dtype):
    """What the cast hooks do after the all-reduce: back to the bucket's fp32."""
    reduced = grad.to(dtype)
    out = benchmark(reduced.to, torch.float32)
    assert out.dtype == torch.float32 and out.numel() == N
    benchmark.extra_info.update(gb_per_s(median_s(benchmark)))
