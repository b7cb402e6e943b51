"""Speed of recpar's gradient codecs (single process; the collectives are in
`recpar bench collectives`). 1 Mi fp32 elements = one 4 MiB bucket; 4 ranks' payloads."""

import pytest
import torch

from recpar.comm import codecs

N = 1 << 20  # elements per bucket (4 MiB of fp32)
WORLD = 4


@pytest.fixture(scope="module")
def grad():
    return torch.randn(N, generator=torch.Generator().manual_seed(0))


def test_sign_encode(benchmark, grad):
    payload, _ = benchmark(codecs.sign_encode, grad)
    assert payload.numel() == N // 8 + 4


def test_sign_decode_mean(benchmark, grad):
    gathered = torch.stack([codecs.sign_encode(grad * (i + 1))[0] for i in range(WORLD)])
    out = benchmark(codecs.sign_decode_mean, gathered, N)
    assert out.numel() == N


def test_topk_encode_1pct(benchmark, grad):
    payload, _ = benchmark(codecs.topk_encode, grad, 0.01)
    assert payload.numel() == 2 * ((N + 99) // 100)


def test_topk_decode_mean_1pct(benchmark, grad):
    gathered = torch.stack([codecs.topk_encode(grad * (i + 1), 0.01)[0] for i in range(WORLD)])
    out = benchmark(codecs.topk_decode_mean, gathered, N)
    assert out.numel() == N
