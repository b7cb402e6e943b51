"""The bucket the codec benchmarks encode and decode (test_bench_codecs, _codec_decode)."""

import torch

N = 1 << 20
"""Elements per bucket: 4 MiB of fp32, about one DDP bucket."""
WORLD = 4
"""Ranks whose payloads a decode averages."""
TOPK_RATIOS = (0.1, 0.01, 0.001)


def bucket() -> torch.Tensor:
    return torch.randn(N, generator=torch.Generator().manual_seed(0))


def gb_per_s(seconds: float | None) -> dict:
    """extra_info: fp32 bytes of the bucket / median time (GB = 1e9 bytes); {} untimed."""
    return {} if seconds is None else {"gb_per_s": 4 * N / seconds / 1e9}
