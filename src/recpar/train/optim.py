"""The optimiser every scheme uses: AdamW, decaying matrices only (the usual GPT recipe)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from recpar.train.config import TrainConfig


def adamw_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices (embeddings, linears), not norms/biases."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_adamw(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(adamw_param_groups(model, cfg.weight_decay), lr=cfg.lr,
                             betas=cfg.betas)
