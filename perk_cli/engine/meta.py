"""The meta-learner: Omega = (phi_0, eta, w) around a PEFT-wrapped, frozen base model.

phi_0 is the PEFT model's own LoRA parameters (so the base is never copied); eta are learned step
sizes; w is the token weighter. `meta_loss` runs the differentiable inner loop on a task's context
and scores the answer with the adapted LoRA; `adapt` is the test-time path with no graph kept.
"""

from __future__ import annotations

import torch
from torch import nn

from perk_cli.config import InnerLoopSettings
from perk_cli.engine.batches import MetaTask, TokenBatch, task_of_rows
from perk_cli.engine.inner_loop import GroupCallback, InnerResult, keeps_graph, run_inner_loop
from perk_cli.engine.learned import LearnedStepSizes, TokenWeighter
from perk_cli.engine.lora import lora_parameters, per_task_lora
from perk_cli.engine.losses import answer_loss, answer_scores, functional_model_call, weighted_token_nll
from perk_cli.engine.prefix import FrozenPrefix, find_frozen_prefix


class MetaLearner(nn.Module):
    def __init__(self, peft_model: nn.Module, settings: InnerLoopSettings, train_base: bool = False):
        super().__init__()
        # Not a registered submodule: this module's state_dict/parameters hold only what it learns.
        self.__dict__["model"] = peft_model
        self.settings = settings
        self.train_base = train_base
        self.lora_names = list(lora_parameters(peft_model))
        if not self.lora_names:
            raise ValueError("the model has no LoRA tensors; wrap it with perk_cli.models.lora.attach_lora")
        reference = next(iter(lora_parameters(peft_model).values()))
        self.step_sizes = LearnedStepSizes(
            settings.steps, len(self.lora_names), settings.lr_init, settings.lr_max, settings.learn_lr,
            settings.step_size_space,
        ).to(reference.device, reference.dtype)
        self.weighter = (
            TokenWeighter(peft_model.config.hidden_size).to(reference.device, reference.dtype)
            if settings.weighting else None
        )
        for name, param in peft_model.named_parameters():
            if name not in self.lora_names:
                param.requires_grad_(train_base)
        if keeps_graph(settings, 0):
            self._leave_zero_b()

    def _leave_zero_b(self) -> None:
        """Step 0 is unrolled: move an exactly-zero B (PEFT's init) to N(0, b_init_std).

        At B = 0 the gradient of A is exactly 0, and Adam's g / (|g| + eps) has slope lr/eps there, so
        the second-order meta-gradient through step 0 explodes (measured: 700x the truncated one on SmolLM2,
        9,500x on a micro GPT-2; 2x from N(0, 1e-3)).
        """
        lora_b = [p for n, p in self.lora_init().items() if ".lora_B." in n]
        if lora_b and all(not p.any() for p in lora_b):
            with torch.no_grad():
                for param in lora_b:
                    param.normal_(0.0, self.settings.b_init_std)

    def lora_init(self) -> dict[str, nn.Parameter]:
        return lora_parameters(self.model)

    def base_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if n not in self.lora_names}

    def parameter_groups(self, weight_decay: float, step_size_lr: float | None = None) -> list[dict]:
        """AdamW groups: decay on matrices; none on biases, norms, 1-D tensors or eta.

        With `step_size_lr`, the step sizes get a group of their own with that learning rate.
        """
        decay, no_decay, steps = [], [], []
        named = list(self.lora_init().items()) + list(self.named_parameters())
        if self.train_base:
            named += list(self.base_parameters().items())
        for name, param in named:
            if not param.requires_grad:
                continue
            if name.startswith("step_sizes") and step_size_lr is not None:
                steps.append(param)
            else:
                (no_decay if param.ndim < 2 or name.startswith("step_sizes") else decay).append(param)
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if steps:
            groups.append({"params": steps, "weight_decay": 0.0, "lr": step_size_lr})
        return groups

    def frozen_prefix(self) -> FrozenPrefix | None:
        """The frozen blocks the inner loop may run once per group (None: caching off or impossible)."""
        return find_frozen_prefix(self.model, self.lora_names) if self.settings.cache_prefix else None

    def inner_loop(self, context: TokenBatch, *, differentiable: bool, on_group: GroupCallback | None = None,
                   max_tokens_per_group: int | None = None, start: dict[str, torch.Tensor] | None = None,
                   step_scale: float = 1.0) -> InnerResult:
        """The inner loop on a task's context. `max_tokens_per_group` overrides the settings' group size
        (peak memory is one group's). The `higher` engine serves the differentiable path only."""
        groups = context.split(max_tokens_per_group or self.settings.max_tokens_per_group)
        if self.settings.engine == "higher" and differentiable:
            from perk_cli.engine.higher_engine import run_inner_loop_higher

            return run_inner_loop_higher(self.model, self.lora_names, groups, self.step_sizes(),
                                         self.weighter, self.settings)
        params0 = self.lora_init() if start is None else {name: start[name] for name in self.lora_init()}
        step_sizes = self.step_sizes() if step_scale == 1.0 else self.step_sizes() * step_scale
        return run_inner_loop(self.model, params0, groups, step_sizes, self.weighter,
                              self.settings, differentiable=differentiable, on_group=on_group,
                              prefix=self.frozen_prefix())

    def meta_loss(self, task: MetaTask, answer_weight: float = 1.0) -> tuple[torch.Tensor, InnerResult]:
        """Outer loss CE(answer | question; theta, phi_K), differentiable into Omega (the answer's own
        tokens weighted `answer_weight`: see losses.answer_scores). A task written in two calls
        (`task.first_write`) chains them: the second starts from the first's phi_K, and the outer loss
        differentiates through both."""
        if task.first_write is None:
            result = self.inner_loop(task.context, differentiable=True)
        else:
            rows = task.context.input_ids.shape[0]
            first = self.inner_loop(task.context.rows(0, task.first_write).as_document(), differentiable=True)
            second = self.inner_loop(task.context.rows(task.first_write, rows).as_document(), differentiable=True,
                                     start=first.params, step_scale=task.grow_scale)
            result = InnerResult(second.params, first.losses + second.losses)
        return self.answer_loss(result.params, task.question, answer_weight), result

    def meta_losses(self, tasks: list[MetaTask], answer_weight: float = 1.0) -> list[tuple[torch.Tensor, InnerResult]]:
        """`meta_loss` of each task, the tasks run together: one task-batched inner loop (their context
        rows in one batch, each with its own memory) and one answer forward. The same numbers as one
        task at a time, to rounding. The `higher` engine, legacy weighting and tasks written in two calls
        run them one by one."""
        if len(tasks) == 1 or self.settings.engine == "higher" or self.settings.weighting_mode == "legacy" \
                or any(task.first_write is not None for task in tasks):
            return [self.meta_loss(task, answer_weight) for task in tasks]
        n = len(tasks)
        device = tasks[0].context.input_ids.device
        context = TokenBatch.concat([t.context for t in tasks])
        row_task = _row_tasks([t.context for t in tasks], device)
        bounds = context.split_bounds(self.settings.max_tokens_per_group)
        result = run_inner_loop(
            self.model, {k: p.unsqueeze(0).expand(n, *p.shape) for k, p in self.lora_init().items()},
            [context.rows(a, b) for a, b in bounds], self.step_sizes(), self.weighter, self.settings,
            differentiable=True, prefix=self.frozen_prefix(),
            rows_per_task=[torch.bincount(row_task[a:b], minlength=n) for a, b in bounds])
        question = TokenBatch.concat([t.question for t in tasks])
        question_rows = _row_tasks([t.question for t in tasks], device)
        with per_task_lora(self.model, self.lora_names, torch.bincount(question_rows, minlength=n)):
            nll, _ = weighted_token_nll(functional_model_call(self.model, result.params), question, None)
        weights = question.target_weights(answer_weight).to(nll.dtype)
        sums = torch.zeros(n, dtype=nll.dtype, device=device).index_add(0, question_rows, (nll * weights).sum(1))
        totals = torch.zeros_like(sums).index_add(0, question_rows, weights.sum(1)).clamp_min(1.0)
        return [(sums[i] / totals[i],
                 InnerResult({k: v[i] for k, v in result.params.items()}, [step[i] for step in result.losses]))
                for i, task in enumerate(tasks)]

    def answer_loss(self, params: dict[str, torch.Tensor], question: TokenBatch,
                    answer_weight: float = 1.0) -> torch.Tensor:
        return answer_loss(functional_model_call(self.model, params), question, answer_weight)

    def answer_scores(self, params: dict[str, torch.Tensor], question: TokenBatch,
                      answer_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(answer loss, [B] teacher-forced exact match) with `params` as the LoRA: see losses.answer_scores."""
        return answer_scores(functional_model_call(self.model, params), question, answer_weight)

    def adapt(self, context: TokenBatch, on_group: GroupCallback | None = None,
              max_tokens_per_group: int | None = None, start: dict[str, torch.Tensor] | None = None,
              step_scale: float = 1.0) -> InnerResult:
        """Test time: the inner loop with no graph kept; returns detached phi_K. `start` replaces the
        learned LoRA init as phi_0 (a memory grown by another document starts from what it holds), and
        `step_scale` multiplies every learned step size."""
        result = self.inner_loop(context, differentiable=False, on_group=on_group,
                                 max_tokens_per_group=max_tokens_per_group, start=start, step_scale=step_scale)
        return InnerResult({n: p.detach() for n, p in result.params.items()}, result.losses)

    def trainable_state_dict(self, include_base: bool = False) -> dict[str, torch.Tensor]:
        """Omega as flat tensors: 'lora_init.<name>', 'step_sizes.log_eta', 'weighter.*', and 'base.*' when
        the base is trained (or `include_base`: a base that exists nowhere else, like tiny's)."""
        state = {f"lora_init.{n}": p.detach() for n, p in self.lora_init().items()}
        state.update({k: v.detach() for k, v in self.state_dict().items()})
        if self.train_base or include_base:
            state.update({f"base.{n}": p.detach() for n, p in self.base_parameters().items()})
        return state

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        lora, base = self.lora_init(), self.base_parameters()
        own = {k: v for k, v in state.items() if not k.startswith(("lora_init.", "base."))}
        with torch.no_grad():
            for key, value in state.items():
                if key.startswith("lora_init."):
                    lora[key.removeprefix("lora_init.")].copy_(value)
                elif key.startswith("base."):
                    base[key.removeprefix("base.")].copy_(value)
        missing = [n for n in lora if f"lora_init.{n}" not in state]
        if missing:
            raise KeyError(f"state has no LoRA init for {missing[0]}")
        self.load_state_dict(own)


def _row_tasks(batches: list[TokenBatch], device: torch.device) -> torch.Tensor:
    """The task index of every row of the batches concatenated."""
    return task_of_rows(torch.tensor([b.input_ids.shape[0] for b in batches], device=device))
