"""`perk meta-train`: the outer loop over tasks, with validation, best/last checkpoints and exact resume.

    perk meta-train --model tiny --task data/qa1 --out runs/qa1 --max-steps 200

The data order is a pure function of (seed, step), and the optimiser state, step and guard history
are checkpointed, so a resumed run equals an uninterrupted one. Under torchrun the tasks of a step
are sharded across ranks and the outer gradients all-reduced; only rank 0 writes.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from perk_cli import distributed
from perk_cli.checkpoint import read_checkpoint, save_checkpoint
from perk_cli.config import RunConfig
from perk_cli.data.schema import Task, read_split
from perk_cli.decode import answer_question
from perk_cli.encoding import decode_budget, encode_task
from perk_cli.errors import PerkError
from perk_cli.metrics import exact_match
from perk_cli.runtime import Runtime, build_runtime

StepCallback = Callable[[int, int, dict], None]  # (step, max_steps, metrics)


class Interrupted(Exception):
    """Ctrl-C during training: the last checkpoint was saved at `step`."""

    def __init__(self, step: int, path: Path):
        super().__init__(f"interrupted at step {step}; checkpoint saved in {path}")
        self.step, self.path = step, path


@dataclass
class TrainResult:
    out: Path
    step: int
    best: dict
    last_metrics: dict
    baseline: Path | None = None  # the in-context baseline, when TrainSettings.baseline


def lr_factor(step: int, config: RunConfig) -> float:
    """Linear warm-up, then cosine decay to 10% (or constant) over max_steps."""
    train = config.train
    if step < train.warmup_steps:
        return (step + 1) / train.warmup_steps
    if train.schedule == "constant":
        return 1.0
    progress = (step - train.warmup_steps) / max(1, train.max_steps - train.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def batch_indices(step: int, batch: int, n_tasks: int, seed: int) -> list[int]:
    """Task indices of an outer step: consecutive slices of a fresh permutation an epoch."""
    out = []
    for k in range(batch):
        position = step * batch + k
        epoch, offset = divmod(position, n_tasks)
        out.append(random.Random(f"{seed}/epoch/{epoch}").sample(range(n_tasks), n_tasks)[offset])
    return out


def outer_optimizer(runtime: Runtime) -> torch.optim.AdamW:
    train = runtime.config.train
    groups = runtime.meta.parameter_groups(train.weight_decay, train.step_size_lr)
    return torch.optim.AdamW(groups, lr=train.lr, betas=train.betas)


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    return {f"{index}.{key}": (value if torch.is_tensor(value) else torch.tensor(value))
            for index, state in optimizer.state_dict()["state"].items() for key, value in state.items()}


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    state_dict = optimizer.state_dict()
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    state_dict["state"] = state
    optimizer.load_state_dict(state_dict)


def trainable(runtime: Runtime) -> list[torch.nn.Parameter]:
    return [p for group in runtime.meta.parameter_groups(0.0) for p in group["params"]]


@torch.no_grad()
def validate(runtime: Runtime, tasks: list[Task]) -> dict:
    """Post-adaptation answer loss and exact match (greedy decoding) on the given tasks."""
    tokenizer, prompt = runtime.tokenizer, runtime.config.prompt
    budget = decode_budget(tokenizer, tasks, prompt)
    losses, hits = [], []
    for task in tasks:
        encoded = encode_task(tokenizer, task, prompt, max_len=runtime.max_positions).to(runtime.device)
        adapted = runtime.meta.adapt(encoded.context).params
        losses.append(float(runtime.meta.answer_loss(adapted, encoded.question)))
        answer, _ = answer_question(runtime.model, tokenizer, task.question, len(task.context), prompt,
                                    lora=adapted, max_new_tokens=budget)
        hits.append(exact_match(answer, task.answer))
    return {"val_loss": statistics.mean(losses), "val_em": statistics.mean(hits)}


def _step_sizes(runtime: Runtime) -> dict:
    lrs = runtime.meta.step_sizes().detach()
    return {"eta_mean": float(lrs.mean()), "eta_min": float(lrs.min()), "eta_max": float(lrs.max())}


def meta_train(config: RunConfig, task_dir: Path, out: Path, resume: bool = False,
               on_step: StepCallback | None = None, on_event: Callable[[str], None] | None = None,
               on_baseline_step: Callable[[int, int, float], None] | None = None) -> TrainResult:
    """Meta-train into `out`; then, with `config.train.baseline`, the in-context baseline on the same
    number of outer steps as PERK took (time or epoch limits included) and the same best-by-validation
    selection, into `out/in-context`."""
    rank, world = distributed.init()
    say = on_event if (on_event and rank == 0) else (lambda message: None)
    train_tasks = read_split(task_dir, "train")
    try:
        val_tasks = read_split(task_dir, "validation")[: config.train.eval_tasks]
    except PerkError:
        val_tasks = []
        say(f"{task_dir} has no validation split: best/ follows the training loss")
    step, best, history = 0, {"val_em": -1.0, "val_loss": math.inf, "step": 0}, []
    if resume:
        files = read_checkpoint(out / "last")
        config = files.config.model_copy(update={"train": files.config.train.model_copy(
            update={"max_steps": max(config.train.max_steps, files.config.train.max_steps)})})
        runtime = build_runtime(config, files.tensors, source=str(files.path))
        optimizer = outer_optimizer(runtime)
        if files.optimizer is not None:
            load_optimizer_tensors(optimizer, files.optimizer)
        state = files.trainer_state or {}
        step, best, history = state.get("step", 0), state.get("best", best), state.get("norm_history", [])
        say(f"resuming {out} at step {step}")
    else:
        torch.manual_seed(config.train.seed)
        runtime = build_runtime(config)
        optimizer = outer_optimizer(runtime)
    train = config.train
    params = trainable(runtime)
    scheduler_base = [group["lr"] for group in optimizer.param_groups]
    metrics_path = out / "metrics.jsonl"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(config.model_dump_json(indent=2) + "\n")

    def save(name: str, metrics: dict) -> None:
        if rank != 0:
            return
        trainer_state = {"step": step, "best": best, "norm_history": history[-50:], "metrics": metrics,
                         "optimizer": "optimizer.safetensors"}
        save_checkpoint(out / name, config, runtime.state_tensors(), trainer_state,
                        optimizer_tensors(optimizer) if name == "last" else None)

    max_steps = train.max_steps
    if train.epochs is not None:
        max_steps = min(max_steps, math.ceil(train.epochs * len(train_tasks) / train.tasks_per_batch))
    metrics: dict = {}
    started_run = time.monotonic()
    try:
        while step < max_steps:
            started = time.perf_counter()
            for group, base_lr in zip(optimizer.param_groups, scheduler_base):
                group["lr"] = base_lr * lr_factor(step, config)
            optimizer.zero_grad(set_to_none=True)
            indices = batch_indices(step, train.tasks_per_batch, len(train_tasks), train.seed)
            totals = [0.0, 0.0, 0.0]  # outer loss, first and last inner loss (summed over tasks)
            for k, index in enumerate(indices):
                if k % world != rank:
                    continue
                rng = random.Random(f"{train.seed}/ids/{step}/{k}")
                task = encode_task(runtime.tokenizer, train_tasks[index], config.prompt, rng,
                                   max_len=runtime.max_positions).to(runtime.device)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=runtime.device.type == "cuda"):
                    loss, result = runtime.meta.meta_loss(task)
                (loss / train.tasks_per_batch).backward()
                totals = [totals[0] + float(loss.detach()), totals[1] + result.losses[0], totals[2] + result.losses[-1]]
            distributed.all_reduce_grads(params)
            totals = distributed.all_reduce_sum(totals)
            norm = float(torch.nn.utils.clip_grad_norm_(params, train.clip))
            recent = history[-20:]
            spike = (not math.isfinite(norm)) or (train.spike_factor is not None and len(recent) >= 5
                                                  and norm > train.spike_factor * statistics.median(recent))
            if not spike:
                optimizer.step()
                history.append(norm)
            step += 1
            if train.max_minutes is not None:
                late = time.monotonic() - started_run > 60 * train.max_minutes
                if distributed.all_reduce_sum([float(late)])[0] > 0:  # every rank stops at the same step
                    max_steps = step  # out of time: this step is the last (validated and saved below)
            n = len(indices)
            metrics = {"step": step, "outer_loss": totals[0] / n, "inner_loss_first": totals[1] / n,
                       "inner_loss_last": totals[2] / n, "grad_norm": norm, "skipped": spike,
                       "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - started,
                       **_step_sizes(runtime)}
            if step % train.eval_every == 0 or step == max_steps:
                if val_tasks:
                    metrics.update(validate(runtime, val_tasks))
                    better = (metrics["val_em"], -metrics["val_loss"]) > (best["val_em"], -best["val_loss"])
                else:
                    better = metrics["outer_loss"] < best["val_loss"]
                    metrics.update(val_loss=metrics["outer_loss"], val_em=0.0)
                if better:
                    best = {"val_em": metrics["val_em"], "val_loss": metrics["val_loss"], "step": step}
                    save("best", metrics)
                save("last", metrics)
            if rank == 0:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(metrics) + "\n")
            if on_step and rank == 0:
                on_step(step, max_steps, metrics)
    except KeyboardInterrupt:
        save("last", metrics)
        raise Interrupted(step, out / "last")
    finally:
        distributed.barrier()
    baseline = None
    if train.baseline and rank == 0:
        from perk_cli.baselines import train_in_context

        say(f"in-context baseline: {step} outer steps, as PERK took")
        baseline = train_in_context(config, train_tasks, out, on_baseline_step, val_tasks, steps=step)
    return TrainResult(out, step, best, metrics, baseline)
