"""What both outer loops (PERK's meta-training and the in-context baseline's) share: the data order,
the learning-rate schedule, when to validate, and which validation result counts as better."""

from __future__ import annotations

import math
import random

import torch

from perk_cli.config import RunConfig


def lr_factor(step: int, config: RunConfig) -> float:
    """Linear warm-up, then cosine decay to 10% (or constant) over max_steps."""
    train = config.train
    if step < train.warmup_steps:
        return (step + 1) / train.warmup_steps
    if train.schedule == "constant":
        return 1.0
    progress = (step - train.warmup_steps) / max(1, train.max_steps - train.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def schedule_lr(optimizer: torch.optim.Optimizer, base_lrs: list[float], step: int, config: RunConfig) -> None:
    """Set each parameter group's learning rate for outer step `step` (0-based)."""
    for group, base in zip(optimizer.param_groups, base_lrs):
        group["lr"] = base * lr_factor(step, config)


def batch_indices(step: int, batch: int, n_tasks: int, seed: int) -> list[int]:
    """Task indices of an outer step: consecutive slices of a fresh permutation an epoch."""
    out = []
    for k in range(batch):
        position = step * batch + k
        epoch, offset = divmod(position, n_tasks)
        out.append(random.Random(f"{seed}/epoch/{epoch}").sample(range(n_tasks), n_tasks)[offset])
    return out


def validation_due(done: int, last: int, every: int) -> bool:
    """Validate after every `every` steps and after the last one."""
    return done % every == 0 or done == last


def better(metrics: dict, best: dict) -> bool:
    """Higher validation EM wins; a tie goes to the lower answer loss."""
    return (metrics["val_em"], -metrics["val_loss"]) > (best["val_em"], -best["val_loss"])


NO_BEST = {"val_em": -1.0, "val_loss": math.inf, "step": 0}
