"""Which parameters AdamW decays: matrices (embeddings, linears), not norms or biases — the
usual GPT recipe. A property of the model's parameters, so it lives here, below both the
training loop (`recpar.train.optim`) and the DeepSpeed engines (`recpar.parallel`), which
hand the groups to their own optimisers."""

from __future__ import annotations

from typing import Any

from torch import nn


def adamw_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices (embeddings, linears), not norms/biases."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]
