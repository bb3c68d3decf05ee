"""What meta-training learns besides the LoRA initialisation: step sizes and token weights.

Step sizes: per-tensor, per-step inner learning rates (LSLR), kept positive. The default keeps them in log space, eta = exp(log_eta): an Adam outer step of size lr then moves
eta by a factor of about exp(lr) whatever eta's magnitude, so a 1e-3 step size learns as fast as a
1e-1 one. The former parameterisation, eta = softplus(raw), is about exp(raw) too for small steps
but was trained at the LoRA's learning rate (1e-4): 242 outer steps left eta at its initial value.
It is kept as `space="softplus"` for ablations, and old checkpoints holding `raw` load into log space.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))  # log(exp(y) - 1), stable for small and large y


class LearnedStepSizes(nn.Module):
    """eta[t, i] = min(exp(log_eta[t, i]), lr_max) for inner step t and LoRA tensor i."""

    def __init__(self, steps: int, n_tensors: int, lr_init: float, lr_max: float | None = None,
                 learn: bool = True, space: str = "log"):
        super().__init__()
        if space not in ("log", "softplus"):
            raise ValueError(f"unknown step-size space {space!r}")
        self.lr_max, self.space = lr_max, space
        start = math.log(lr_init) if space == "log" else inverse_softplus(lr_init)
        tensor = nn.Parameter(torch.full((steps, n_tensors), start), requires_grad=learn)
        # One name a parameterisation, so a checkpoint says which space its numbers live in.
        if space == "log":
            self.log_eta = tensor
        else:
            self.raw = tensor
        self._register_load_state_dict_pre_hook(self._from_softplus)

    @property
    def parameter(self) -> nn.Parameter:
        return self.log_eta if self.space == "log" else self.raw

    def forward(self) -> torch.Tensor:
        lrs = self.log_eta.exp() if self.space == "log" else F.softplus(self.raw)
        return lrs.clamp(max=self.lr_max) if self.lr_max is not None else lrs

    def _from_softplus(self, state_dict, prefix, *args) -> None:
        """A checkpoint from before log space (`raw`) loads as the same step sizes in log space."""
        if self.space == "log" and prefix + "raw" in state_dict and prefix + "log_eta" not in state_dict:
            state_dict[prefix + "log_eta"] = torch.log(F.softplus(state_dict.pop(prefix + "raw")))


class TokenWeighter(nn.Module):
    """H -> 128 -> 1 MLP with GELU, zero-initialised output layer, softplus(beta=3): one non-negative
    weight per context token for the inner loss.

    At initialisation every token weighs softplus_3(0) = ln(2)/3; meta-training moves it.
    """

    def __init__(self, hidden_size: int, width: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden_size, width), nn.GELU(), nn.Linear(width, 1))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.softplus(self.net(hidden).squeeze(-1), beta=3.0)
