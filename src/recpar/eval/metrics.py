"""Top-K ranking metrics from 0-based ranks of the held-out item.

rank r = number of candidates ranked above the target (0 = the target is first).
    HR@K   = 1 if r < K else 0
    NDCG@K = 1 / log2(r + 2) if r < K else 0   (one relevant item, so the ideal DCG is 1)
Averaged over examples by the *_at_k functions; the per-example forms are summed by
`recpar.eval.protocols.evaluate` across batches.
"""

from __future__ import annotations

import torch


def _check(ranks: torch.Tensor, k: int) -> None:
    if k < 1:
        raise ValueError(f"metrics: k={k} must be >= 1")
    if ranks.dtype.is_floating_point or ranks.dtype == torch.bool:
        raise ValueError(f"metrics: ranks must be an integer tensor, got {ranks.dtype}")
    if ranks.numel() and int(ranks.min()) < 0:
        raise ValueError(f"metrics: ranks must be >= 0, got min {int(ranks.min())}")


def hits(ranks: torch.Tensor, k: int) -> torch.Tensor:
    """[N] int ranks -> [N] float64, 1.0 where the target is in the top k."""
    _check(ranks, k)
    return (ranks < k).to(torch.float64)


def ndcg_gains(ranks: torch.Tensor, k: int) -> torch.Tensor:
    """[N] int ranks -> [N] float64 NDCG@k per example."""
    _check(ranks, k)
    r = ranks.to(torch.float64)
    return torch.where(ranks < k, 1.0 / torch.log2(r + 2.0), torch.zeros_like(r))


def hit_rate_at_k(ranks: torch.Tensor, k: int) -> float:
    """Mean HR@k over the examples (nan for no examples)."""
    return float(hits(ranks, k).mean()) if ranks.numel() else float("nan")


def ndcg_at_k(ranks: torch.Tensor, k: int) -> float:
    """Mean NDCG@k over the examples (nan for no examples)."""
    return float(ndcg_gains(ranks, k).mean()) if ranks.numel() else float("nan")
