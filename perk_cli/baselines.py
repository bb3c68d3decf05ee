"""The two baselines every evaluation reports beside PERK.

- In-context (FT-ICR): the same base with a LoRA fine-tuned to answer with the whole context in the
  prompt, on the same training tasks with the same step budget. Limited by the model's positions.
- Plain test-time training: the same inner loop from a zero-B LoRA, fixed learning rate, no weighting
  and no meta-learning.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch

from perk_cli.checkpoint import read_checkpoint, save_checkpoint
from perk_cli.config import InnerLoopSettings, RunConfig
from perk_cli.data.schema import Task
from perk_cli.encoding import answer_target, pad_rows, question_prompt
from perk_cli.engine.batches import TokenBatch
from perk_cli.engine.inner_loop import InnerResult, run_inner_loop
from perk_cli.engine.losses import answer_loss, functional_model_call
from perk_cli.runtime import Runtime, build_runtime

IN_CONTEXT_DIR = "in-context"


def context_text(task: Task) -> str:
    return "\n".join(task.context) + "\n"


def in_context_batch(runtime: Runtime, task: Task, with_answer: bool = True) -> TokenBatch | None:
    """Context + question prompt (+ answer target); None when it exceeds the model's positions."""
    tokenizer, prompt = runtime.tokenizer, runtime.config.prompt
    ids = tokenizer(context_text(task) + question_prompt(task.question, len(task.context), prompt),
                    add_special_tokens=False)["input_ids"]
    target: list[int] = []
    if with_answer:
        target = tokenizer(answer_target(task.answer, task.support, prompt), add_special_tokens=False)["input_ids"]
        target = target[: prompt.max_answer_tokens] + [tokenizer.eos_token_id]
    if len(ids) + len(target) + (0 if with_answer else prompt.max_answer_tokens) > runtime.max_positions:
        return None
    return pad_rows([(ids + target, [False] * len(ids) + [True] * len(target))], tokenizer.pad_token_id)


@torch.no_grad()
def answer_in_context(runtime: Runtime, task: Task, budget: int) -> tuple[str, str] | None:
    """(answer, raw) decoded greedily with the whole context in the prompt, as every method is decoded;
    None when the context does not fit the model's positions."""
    from perk_cli.decode import generate_text
    from perk_cli.encoding import cut_output, extract_answer

    batch = in_context_batch(runtime, task, with_answer=False)
    if batch is None:
        return None
    raw = cut_output(generate_text(runtime.model, runtime.tokenizer, batch.input_ids, budget), runtime.config.prompt)
    return extract_answer(raw, runtime.config.prompt), raw


@torch.no_grad()
def validate_in_context(runtime: Runtime, tasks: list[Task], budget: int) -> dict:
    """Answer loss and EM (greedy, the same decoding as PERK) of the in-context LoRA on the tasks whose
    context fits the model's positions."""
    from perk_cli.metrics import exact_match

    losses, hits = [], []
    for task in tasks:
        scored, answered = in_context_batch(runtime, task), answer_in_context(runtime, task, budget)
        if scored is None or answered is None:
            continue
        losses.append(float(answer_loss(functional_model_call(runtime.model, {}), scored.to(runtime.device))))
        hits.append(exact_match(answered[0], task.answer))
    if not hits:
        return {"val_loss": math.inf, "val_em": 0.0}
    return {"val_loss": sum(losses) / len(losses), "val_em": sum(hits) / len(hits)}


def train_in_context(config: RunConfig, tasks: list[Task], out: Path,
                     on_step: Callable[[int, int, float], None] | None = None,
                     val_tasks: list[Task] | None = None, steps: int | None = None) -> Path:
    """Fine-tune the in-context LoRA (and the base, when the run trains it) for `steps` outer steps (the
    steps PERK took; default max_steps) on PERK's learning-rate schedule, validating every `eval_every`
    steps and at the end; the weights with the best validation EM (then loss) are saved, as PERK's
    best/ is kept."""
    from perk_cli.encoding import decode_budget
    from perk_cli.train import batch_indices, lr_factor

    torch.manual_seed(config.train.seed)
    runtime = build_runtime(config)
    train = config.train
    lora = runtime.meta.lora_init()
    params = list(lora.values()) + (list(runtime.meta.base_parameters().values()) if train.train_base else [])
    optimizer = torch.optim.AdamW(params, lr=train.lr, betas=train.betas, weight_decay=train.weight_decay)
    fitting = [t for t in tasks if in_context_batch(runtime, t) is not None]
    if not fitting:
        raise ValueError("no training task fits the model's positions with its context in the prompt")
    val_tasks = (val_tasks or [])[: train.eval_tasks]
    budget = decode_budget(runtime.tokenizer, val_tasks, config.prompt) if val_tasks else 0
    steps = train.max_steps if steps is None else steps
    best: dict = {"val_em": -1.0, "val_loss": math.inf, "step": 0}
    best_state: dict[str, torch.Tensor] | None = None
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = train.lr * lr_factor(step, config)
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for index in batch_indices(step, train.tasks_per_batch, len(fitting), train.seed):
            batch = in_context_batch(runtime, fitting[index]).to(runtime.device)
            loss = answer_loss(functional_model_call(runtime.model, {}), batch)
            (loss / train.tasks_per_batch).backward()
            total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(params, train.clip)
        optimizer.step()
        done = step + 1
        if val_tasks and (done % train.eval_every == 0 or done == steps):
            metrics = validate_in_context(runtime, val_tasks, budget)
            if (metrics["val_em"], -metrics["val_loss"]) > (best["val_em"], -best["val_loss"]):
                best = {**metrics, "step": done}
                best_state = {k: v.detach().clone() for k, v in runtime.state_tensors().items()}
        if on_step:
            on_step(done, steps, total / train.tasks_per_batch)
    state = best_state if best_state is not None else runtime.state_tensors()
    save_checkpoint(out / IN_CONTEXT_DIR, config, state,
                    {"step": steps, "fits": len(fitting), "best": best if val_tasks else None})
    return out / IN_CONTEXT_DIR


def load_in_context(run_dir: Path) -> Runtime | None:
    path = run_dir / IN_CONTEXT_DIR
    if not (path / "meta.safetensors").is_file():
        return None
    files = read_checkpoint(path)
    return build_runtime(files.config, files.tensors, source=str(path))


def plain_ttt_init(runtime: Runtime, seed: int = 0) -> dict[str, torch.Tensor]:
    """A fresh PEFT-style LoRA: A ~ kaiming-uniform(a=sqrt(5)) from `seed`, B = 0."""
    generator = torch.Generator().manual_seed(seed)
    init = {}
    for name, param in runtime.meta.lora_init().items():
        if ".lora_B." in name:
            init[name] = torch.zeros_like(param)
        else:
            bound = 1 / math.sqrt(param.shape[1])  # kaiming_uniform_(a=sqrt(5)) on a Linear weight
            values = (torch.rand(param.shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound
            init[name] = values.to(param.dtype).to(param.device)
    return init


def plain_ttt(runtime: Runtime, context: TokenBatch, init: dict[str, torch.Tensor], lr: float,
              max_tokens_per_group: int | None = None) -> InnerResult:
    """The checkpoint's inner loop (K, optimiser) from `init`, fixed lr, no token weighting."""
    inner = runtime.config.inner
    settings = InnerLoopSettings(steps=inner.steps, optimizer=inner.optimizer, lr_init=lr, lr_max=None,
                                 learn_lr=False, betas=inner.betas, eps=inner.eps, weighting=False,
                                 unroll="first-order")
    step_sizes = torch.full((inner.steps, len(init)), lr, device=runtime.device)
    return run_inner_loop(runtime.model, init, context.split(max_tokens_per_group), step_sizes, None, settings,
                          differentiable=False)


@torch.no_grad()
def tune_plain_ttt(runtime: Runtime, init: dict[str, torch.Tensor], tasks: list[Task], grid: list[float],
                   budget: int, max_tokens_per_group: int | None = None) -> dict:
    """Plain TTT's learning rate chosen on validation tasks: best EM (greedy, as every method is decoded),
    ties broken by the lower answer loss. Returns the grid, each point's EM and loss, and the pick."""
    from perk_cli.decode import answer_question
    from perk_cli.encoding import encode_task
    from perk_cli.metrics import exact_match

    tokenizer, prompt = runtime.tokenizer, runtime.config.prompt
    encoded = [encode_task(tokenizer, t, prompt, max_len=runtime.max_positions).to(runtime.device) for t in tasks]
    points = []
    for lr in grid:
        losses, hits = [], []
        for task, pair in zip(tasks, encoded):
            adapted = plain_ttt(runtime, pair.context, init, lr, max_tokens_per_group).params
            losses.append(float(answer_loss(functional_model_call(runtime.model, adapted), pair.question)))
            answer, _ = answer_question(runtime.model, tokenizer, task.question, len(task.context), prompt,
                                        lora=adapted, max_new_tokens=budget)
            hits.append(exact_match(answer, task.answer))
        points.append({"lr": lr, "val_em": sum(hits) / len(hits), "val_loss": sum(losses) / len(losses)})
    best = max(points, key=lambda p: (p["val_em"], -p["val_loss"]))
    return {"grid": list(grid), "points": points, "pick": best["lr"], "tasks": len(tasks)}
