"""SGD, Adam and AdamW written functionally: new tensors out, so an update can stay differentiable.

The arithmetic follows torch.optim (single-tensor path) so that one step equals torch.optim's.
Each tensor has its own learning rate, which may be a tensor that requires grad (learned step sizes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


def safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt(x) with a zero (not infinite) derivative at x == 0.

    With a zero-initialised LoRA B, the first gradient of A is exactly zero, so Adam's second moment
    is zero there; the plain sqrt would turn the meta-gradient into NaN (higher masks it the same way).
    """
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, torch.ones_like(x)).sqrt(), torch.zeros_like(x))


@dataclass
class OptimizerState:
    step: int = 0
    exp_avg: list[torch.Tensor] = field(default_factory=list)
    exp_avg_sq: list[torch.Tensor] = field(default_factory=list)


class FunctionalOptimizer:
    """`kind` is 'sgd' (L2 weight decay), 'adam' (L2, like torch.optim.Adam) or 'adamw' (decoupled)."""

    def __init__(self, kind: str, betas=(0.9, 0.95), eps: float = 1e-8, weight_decay: float = 0.0):
        if kind not in ("sgd", "adam", "adamw"):
            raise ValueError(f"unknown optimizer {kind!r}")
        self.kind, self.betas, self.eps, self.weight_decay = kind, tuple(betas), eps, weight_decay

    def init_state(self, params: list[torch.Tensor]) -> OptimizerState:
        if self.kind == "sgd":
            return OptimizerState()
        zeros = [torch.zeros_like(p, requires_grad=False) for p in params]
        return OptimizerState(0, zeros, [z.clone() for z in zeros])

    def step(self, params, grads, lrs, state: OptimizerState):
        """Return (new params, new state); `lrs[i]` is the learning rate of tensor i."""
        wd = self.weight_decay
        if self.kind == "sgd":
            new = [p - lr * (g + wd * p if wd else g) for p, g, lr in zip(params, grads, lrs)]
            return new, OptimizerState(state.step + 1)
        beta1, beta2 = self.betas
        t = state.step + 1
        bias1, bias2_sqrt = 1 - beta1**t, math.sqrt(1 - beta2**t)
        new_params, new_m, new_v = [], [], []
        for p, g, lr, m, v in zip(params, grads, lrs, state.exp_avg, state.exp_avg_sq):
            if self.kind == "adamw":
                p = p * (1 - lr * wd) if wd else p
            elif wd:
                g = g + wd * p
            m = m + (1 - beta1) * (g - m)  # torch: exp_avg.lerp_(grad, 1 - beta1)
            v = v * beta2 + (1 - beta2) * g * g
            denom = safe_sqrt(v) / bias2_sqrt + self.eps
            new_params.append(p - (lr / bias1) * (m / denom))
            new_m.append(m)
            new_v.append(v)
        return new_params, OptimizerState(t, new_m, new_v)
