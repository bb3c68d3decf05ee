"""The functional inner loop: K optimiser steps on the LoRA tensors only, the base model untouched.

Unroll modes (differentiable=True):
  second-order  every step keeps its graph (create_graph=True)
  first-order   every inner gradient is detached; the update stays differentiable in phi_t and eta
  truncated     steps t < unroll_start first-order, the rest second-order
With differentiable=False (test time) no graph survives a step: memory is one group's activations.

The step direction is g_t = sum_j w_j grad CE_j(phi_t) / sum_j w_j over the task's target tokens:
the token weights are coefficients (normalised to mean 1), so the step lowers the weighted
cross-entropy and never the weights themselves; `settings.recency` multiplies each segment's weights
by exp(recency * (place - 1/2)) before that normalisation. In second-order steps the weights keep their graph
(`autograd.grad(..., grad_outputs=w, create_graph=True)`), so the meta-gradient reaches the weighter
exactly. `weighting_mode="legacy"` differentiates sum_j w_j CE_j / N as a whole instead.

Task-batched (`rows_per_task`): the groups hold the context rows of several tasks in order, each LoRA
tensor is stacked [n_tasks, ...] (task i's memory at index i) and every model call applies task i's
LoRA to task i's rows (`engine.lora.per_task_lora`). Task i's loss depends on its own slice only, so
one backward pass gives every task its own gradient, normalised by its own total weight; the update
is elementwise, so it is each task's own step. One forward for many small tasks instead of one each.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch

from perk_cli.config import InnerLoopSettings
from perk_cli.engine.batches import TokenBatch, task_of_rows
from perk_cli.engine.learned import TokenWeighter
from perk_cli.engine.lora import per_task_lora
from perk_cli.engine.losses import functional_model_call, inner_loss, weighted_token_nll
from perk_cli.engine.optim import FunctionalOptimizer
from perk_cli.engine.prefix import FrozenPrefix

# on_group(step, group_index, n_groups, loss) is called after every group's backward pass.
GroupCallback = Callable[[int, int, int, float], None]


@dataclass
class InnerResult:
    params: dict[str, torch.Tensor]  # phi_K by LoRA parameter name (task-batched: stacked [n_tasks, ...])
    losses: list  # weighted mean context CE at each step, before its update (task-batched: a list per step)


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
    rows_per_task: list[torch.Tensor] | None = None,
) -> InnerResult:
    """Run K = step_sizes.shape[0] inner steps; gradients of all groups are summed before each update.

    With `prefix`, the frozen blocks below the lowest LoRA layer run once per group, not once per step.
    With `rows_per_task` (one [n_tasks] count vector per group), the loop is task-batched (see above):
    `params0` values are stacked [n_tasks, ...]; coefficient weighting only.
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
    batched = rows_per_task is not None
    if batched and legacy:
        raise ValueError("the task-batched inner loop implements coefficient weighting only")
    row_task = [task_of_rows(counts) for counts in rows_per_task or []]
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
            redirect = per_task_lora(model, names, rows_per_task[index]) if batched else nullcontext()
            with torch.enable_grad(), redirect:
                call = functional_model_call(model, dict(zip(names, leaves)))
                if cached[index] is not None:
                    call = _with_prefix(call, prefix, cached[index])
                if legacy:
                    loss = inner_loss(call, group, weighter, n_targets)
                    group_grads = torch.autograd.grad(loss, leaves, create_graph=second_order)
                    weighted_nll, total_weight = weighted_nll + float(loss.detach()), 1.0
                else:
                    nll, weights = weighted_token_nll(call, group, weighter, recency=settings.recency)
                    if not second_order:
                        weights = weights.detach()
                    group_grads = torch.autograd.grad(nll, leaves, grad_outputs=weights, create_graph=second_order)
                    if batched:  # per task: [n_tasks] sums over each task's rows
                        per_task = torch.zeros(len(rows_per_task[index]), dtype=weights.dtype, device=weights.device)
                        weighted_nll = weighted_nll + per_task.index_add(
                            0, row_task[index], (nll.detach() * weights.detach()).sum(1))
                        total_weight = total_weight + per_task.index_add(0, row_task[index], weights.sum(1))
                    else:
                        weighted_nll += float((nll.detach() * weights.detach()).sum())
                        total_weight = total_weight + weights.sum()
            grads = list(group_grads) if grads is None else [a + b for a, b in zip(grads, group_grads)]
            if on_group is not None:
                on_group(step, index, len(groups), _mean_loss(weighted_nll, total_weight))
        if batched:
            grads = [g / total_weight.view(-1, *[1] * (g.dim() - 1)) for g in grads]
            losses.append((weighted_nll / total_weight.detach().clamp_min(1e-30)).tolist())
        else:
            if not legacy:
                # Weights normalised to mean 1 over the task's targets: sum_j (w_j / mean w) g_j / N.
                grads = [g / total_weight for g in grads]
            losses.append(weighted_nll / _value(total_weight))
        with torch.set_grad_enabled(differentiable):
            params, state = optimizer.step(params, grads, step_sizes[step], state)
    return InnerResult(dict(zip(names, params)), losses)


def _mean_loss(weighted_nll, total_weight) -> float:
    if torch.is_tensor(weighted_nll):  # task-batched: the mean over tasks
        return float((weighted_nll / total_weight.detach().clamp_min(1e-30)).mean())
    return weighted_nll / _value(total_weight)


def _value(total: torch.Tensor | float) -> float:
    return max(float(total.detach()) if torch.is_tensor(total) else float(total), 1e-30)


def _with_prefix(call, prefix: FrozenPrefix, hidden: torch.Tensor):
    def cached_call(**kwargs):
        with prefix.reuse(hidden):
            return call(**kwargs)

    cached_call.head = getattr(call, "head", None)  # the losses may still project only the scored positions
    return cached_call
