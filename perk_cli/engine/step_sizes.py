"""Learned per-tensor, per-step inner learning rates (LSLR), kept positive through softplus."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))  # log(exp(y) - 1), stable for small and large y


class LearnedStepSizes(nn.Module):
    """eta[t, i] = min(softplus(raw[t, i]), lr_max) for inner step t and LoRA tensor i."""

    def __init__(self, steps: int, n_tensors: int, lr_init: float, lr_max: float | None = None,
                 learn: bool = True):
        super().__init__()
        self.lr_max = lr_max
        self.raw = nn.Parameter(torch.full((steps, n_tensors), inverse_softplus(lr_init)), requires_grad=learn)

    def forward(self) -> torch.Tensor:
        lrs = F.softplus(self.raw)
        return lrs.clamp(max=self.lr_max) if self.lr_max is not None else lrs
