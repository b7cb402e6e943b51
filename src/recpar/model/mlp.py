"""The position-wise feed-forward network of a block, and of each expert of an MoE block."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recpar.model.config import ModelConfig


class MLP(nn.Module):
    """Position-wise feed-forward d -> d_ff -> d with GELU."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.d_ff)
        self.proj = nn.Linear(cfg.d_ff, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))  # [B, L, d]
