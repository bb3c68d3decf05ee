"""The token-weighting model: one non-negative weight per context token for the inner loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TokenWeighter(nn.Module):
    """H -> 128 -> 1 MLP with GELU, zero-initialised output layer, softplus(beta=3).

    At initialisation every token weighs softplus_3(0) = ln(2)/3; meta-training moves it.
    """

    def __init__(self, hidden_size: int, width: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden_size, width), nn.GELU(), nn.Linear(width, 1))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.softplus(self.net(hidden).squeeze(-1), beta=3.0)
