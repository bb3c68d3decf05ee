"""The functional inner loop: K optimiser steps on the LoRA tensors only, the base model untouched.

Unroll modes (differentiable=True):
  second-order  every step keeps its graph (create_graph=True)
  first-order   every inner gradient is detached; the update stays differentiable in phi_t and eta
  truncated     steps t < unroll_start first-order, the rest second-order
With differentiable=False (test time) no graph survives a step: memory is one group's activations.

The step direction is g_t = sum_j w_j grad CE_j(phi_t) / sum_j w_j over the task's target tokens:
the token weights are coefficients (normalised to mean 1), so the step lowers the weighted
cross-entropy and never the weights themselves. In second-order steps the weights keep their graph
(`autograd.grad(..., grad_outputs=w, create_graph=True)`), so the meta-gradient reaches the weighter
exactly. `weighting_mode="legacy"` differentiates sum_j w_j CE_j / N as a whole instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from perk_cli.config import InnerLoopSettings
from perk_cli.engine.batches import TokenBatch
from perk_cli.engine.learned import TokenWeighter
from perk_cli.engine.losses import functional_model_call, inner_loss, weighted_token_nll
from perk_cli.engine.optim import FunctionalOptimizer
from perk_cli.engine.prefix import FrozenPrefix

# on_group(step, group_index, n_groups, loss) is called after every group's backward pass.
GroupCallback = Callable[[int, int, int, float], None]


@dataclass
class InnerResult:
    params: dict[str, torch.Tensor]  # phi_K by LoRA parameter name
    losses: list[float]  # weighted mean context CE at each step, before its update


def optimizer_for(settings: InnerLoopSettings) -> FunctionalOptimizer:
    return FunctionalOptimizer(settings.optimizer, settings.betas, settings.eps, settings.weight_decay)


def keeps_graph(settings: InnerLoopSettings, step: int) -> bool:
    """Whether inner step `step` is second-order under the settings' unroll mode."""
    if settings.unroll == "second-order":
        return True
    if settings.unroll == "truncated":
        return step >= settings.unroll_start
    return False


def run_inner_loop(
    model: torch.nn.Module,
    params0: dict[str, torch.Tensor],
    groups: list[TokenBatch],
    step_sizes: torch.Tensor,
    weighter: TokenWeighter | None,
    settings: InnerLoopSettings,
    *,
    differentiable: bool,
    on_group: GroupCallback | None = None,
    prefix: FrozenPrefix | None = None,
) -> InnerResult:
    """Run K = step_sizes.shape[0] inner steps; gradients of all groups are summed before each update.

    With `prefix`, the frozen blocks below the lowest LoRA layer run once per group, not once per step.
    """
    names = list(params0)
    params = list(params0.values())
    differentiable = differentiable and torch.is_grad_enabled()  # under no_grad: same values, no graph
    if not differentiable:
        params = [p.detach() for p in params]
        step_sizes = step_sizes.detach()
    optimizer = optimizer_for(settings)
    state = optimizer.init_state(params)
    legacy = settings.weighting_mode == "legacy"
    n_targets = sum(g.n_targets for g in groups)
    losses: list[float] = []
    cached = [prefix.hidden(model, g) for g in groups] if prefix is not None else [None] * len(groups)
    for step in range(step_sizes.shape[0]):
        second_order = differentiable and keeps_graph(settings, step)
        grads: list[torch.Tensor] | None = None
        weighted_nll, total_weight = 0.0, 0.0  # the total weight is a tensor with graph in 2nd-order steps
        for index, group in enumerate(groups):
            # A first-order step differentiates w.r.t. detached copies: its forward graph never
            # reaches phi_0, and nothing of it outlives the group.
            leaves = params if second_order else [p.detach().requires_grad_() for p in params]
            with torch.enable_grad():
                call = functional_model_call(model, dict(zip(names, leaves)))
                if cached[index] is not None:
                    call = _with_prefix(call, prefix, cached[index])
                if legacy:
                    loss = inner_loss(call, group, weighter, n_targets)
                    group_grads = torch.autograd.grad(loss, leaves, create_graph=second_order)
                    weighted_nll, total_weight = weighted_nll + float(loss.detach()), 1.0
                else:
                    nll, weights = weighted_token_nll(call, group, weighter)
                    if not second_order:
                        weights = weights.detach()
                    group_grads = torch.autograd.grad(nll, leaves, grad_outputs=weights, create_graph=second_order)
                    weighted_nll += float((nll.detach() * weights.detach()).sum())
                    total_weight = total_weight + weights.sum()
            grads = list(group_grads) if grads is None else [a + b for a, b in zip(grads, group_grads)]
            if on_group is not None:
                on_group(step, index, len(groups), weighted_nll / _value(total_weight))
        if not legacy:
            # Weights normalised to mean 1 over the task's targets: sum_j (w_j / mean w) g_j / N.
            grads = [g / total_weight for g in grads]
        losses.append(weighted_nll / _value(total_weight))
        with torch.set_grad_enabled(differentiable):
            params, state = optimizer.step(params, grads, step_sizes[step], state)
    return InnerResult(dict(zip(names, params)), losses)


def _value(total: torch.Tensor | float) -> float:
    return max(float(total.detach()) if torch.is_tensor(total) else float(total), 1e-30)


def _with_prefix(call, prefix: FrozenPrefix, hidden: torch.Tensor):
    def cached_call(**kwargs):
        with prefix.reuse(hidden):
            return call(**kwargs)

    return cached_call
