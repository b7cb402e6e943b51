"""Encoding a gradient bucket with recpar's codecs, single process (group `codecs`).

One bucket = 1 Mi fp32 elements (4 MiB, about a DDP bucket's size). Sign (Formula 10), top-k
at three ratios (Formula 11), and the fp16/bf16 casts (and scaling) that torch's
`fp16_compress_hook`/`bf16_compress_hook` apply before their all-reduce. Decoding, which
allocates the dense result and is much noisier here, is its own group (`codec_decode`);
PowerSGD needs a process group and is in `collectives`. extra_info: `gb_per_s`.
"""

import pytest
import torch

from recpar.comm import codecs
from recpar.comm.byte_formulas import topk_k

from .benchmark_stats import median_s
from .codec_inputs import TOPK_RATIOS, WORLD, N, bucket, gb_per_s

pytestmark = pytest.mark.benchmark(group="codecs")


@pytest.fixture(scope="module")
def grad():
    return bucket()


def test_sign_encode(benchmark, grad):
    payload, _ = benchmark(codecs.sign_encode, grad)
    assert payload.numel() == N // 8 + 4
    benchmark.extra_info.update(gb_per_s(median_s(benchmark)))


@pytest.mark.parametrize("ratio", TOPK_RATIOS)
def test_topk_encode(benchmark, grad, ratio):
    payload, _ = benchmark(codecs.topk_encode, grad, ratio)
    assert payload.numel() == 2 * topk_k(N, ratio)  # values and indices, int32 words
    benchmark.extra_info.update(gb_per_s(median_s(benchmark)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_cast_encode(benchmark, grad, dtype):
    """What the cast hooks do before the all-reduce: cast, divide by the world size."""
    out = benchmark(lambda: grad.to(dtype).div_(WORLD))
    assert out.dtype == dtype and out.numel() == N
    benchmark.extra_info.update(gb_per_s(median_s(benchmark)))
