"""The optimiser every scheme uses: AdamW, decaying matrices only (the usual GPT recipe;
the groups: `recpar.model.param_groups`)."""

from __future__ import annotations

import torch
from torch import nn

from recpar.model.param_groups import adamw_param_groups
from recpar.train.config import TrainConfig


def build_adamw(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(adamw_param_groups(model, cfg.weight_decay), lr=cfg.lr,
                             betas=cfg.betas)
