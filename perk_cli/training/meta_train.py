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

from pydantic import ValidationError
import torch

from perk_cli.config import RunConfig
from perk_cli.prepare import task_directory
from perk_cli.data.schema import Task, read_split
from perk_cli.errors import Interrupted as StoppedByUser
from perk_cli.errors import PerkError
from perk_cli.files import recover_directory
from perk_cli.scores import mean_forced_scores, mean_scores
from perk_cli.engine.batches import MetaTask
from perk_cli.memory import GROW_STEP_SCALE, perk_answer, perk_forced
from perk_cli.prompts import answer_lengths, decode_budget, encode_task
from perk_cli.training import distributed
from perk_cli.checkpoint import (Runtime, build_runtime, checkpoint_config, fit_step_sizes,
                                          load_optimizer_tensors, optimizer_tensors, read_checkpoint, save_checkpoint)
from perk_cli.training.outer import (NO_BEST, Interrupted, SaveClock, StopRequests, batch_indices, better,
                                     keep_logged_steps, schedule_lr, validation_due)

StepCallback = Callable[[int, int, dict], None]  # (step, max_steps, metrics)


@dataclass
class TrainResult:
    out: Path
    step: int
    best: dict
    last_metrics: dict
    baseline: Path | None = None  # the in-context baseline, when TrainSettings.baseline


def default_run_dir(model: str, task: str) -> Path:
    """runs/<model>-<task>: `perk meta-train`'s run folder when --out is not given."""
    return Path("runs") / f"{Path(model).stem.replace('/', '-')}-{Path(task).name.replace(':', '-')}"


@dataclass
class RunPlan:
    config: RunConfig  # with `task` set to the task directory
    task_dir: Path
    out: Path
    resume: bool
    generated: bool  # the task was a name, generated into out/data


def plan_run(config: RunConfig, task: str | None = None, out: Path | None = None, resume: Path | None = None,
             rank: int = 0) -> RunPlan:
    """Where a run goes and what it trains on, before any training: a new run into `out` (default
    runs/<model>-<task>, refused if it already holds one), or `resume` continued from its last/ checkpoint
    on the task it was trained on. A task name (babi, records:relation, ...) is generated into out/data.
    Raises PerkError naming the option."""
    if config.train.init_from is not None and resume is None:
        config = inherit_settings(config, Path(config.train.init_from))
    if resume is not None:
        recover_directory(resume / "last")
        if not (resume / "last").is_dir():
            raise PerkError(f"--resume {resume}: no last/ checkpoint to resume from")
        out = resume
        saved = json.loads((resume / "config.json").read_text()) if (resume / "config.json").is_file() else {}
        if config.train.init_from is not None:
            raise PerkError("--init-from: a resumed run continues from its own last/ checkpoint; drop --init-from")
        saved_task = saved.get("task")
        if task is not None and saved_task is not None and Path(task).resolve() != Path(saved_task).resolve():
            raise PerkError(f"--task {task}: --resume {resume} continues on the tasks the run was trained on "
                            f"({saved_task}); drop --task, or start a new run with another --out")
        task = saved_task if saved_task is not None else task
    if task is None:
        raise PerkError("--task: missing; give a task directory from `perk prepare` or a name such as babi")
    out = out or default_run_dir(config.model.name, task)
    if resume is None and (out / "last").exists():
        raise PerkError(f"--out {out}: already holds a run; pass --resume {out} or another --out")
    task_dir = task_directory(task, out, config.model.name, config.train.seed, rank)
    return RunPlan(config.model_copy(update={"task": str(task_dir)}), Path(task_dir), out, resume is not None,
                   Path(task_dir) != Path(task))


# What a resumed run may change: none changes a number of the steps both runs take (max_steps extends the
# run and, under a cosine schedule, stretches the remaining decay over the longer run).
RESUME_CHOICES = ("max_steps", "tasks_per_forward", "save_minutes", "max_minutes")
INHERITED = ("lora", "inner", "prompt")  # what --init-from fixes (the base is the checkpoint's unless named)
# ... except these: the outer loss's target and the decoding cap are no meta-parameters (the LoRA init, step
# sizes and weighter act on the document), so a new stage may change them, e.g. plain answers -> support;
# nor is how meta-training numbers segments (test time numbers them 0..N-1 either way). A stage may also
# weigh later segments up (recency): a fixed rule of the inner step the meta-parameters then learn under.
# So may the number of inner steps (the step sizes follow it, steps the checkpoint lacks starting at the
# run's lr_init: fit_step_sizes) and how the meta-gradient flows through them.
STAGE_CHOICES = {"prompt": ("answer_format", "max_answer_tokens", "segment_ids"),
                 "inner": ("steps", "lr_init", "unroll", "unroll_start", "recency")}


def fixed_by_checkpoint(section: str, key: str) -> bool:
    """Whether --init-from fixes `section.key` to the checkpoint's value (the INHERITED settings less the
    STAGE_CHOICES)."""
    return section in INHERITED and key not in STAGE_CHOICES.get(section, ())


def inherit_settings(config: RunConfig, init_from: Path) -> RunConfig:
    """`config` with the model name and the LoRA, inner-loop and prompt settings of the checkpoint it
    starts from (the meta-parameters only fit, and only mean something, under those), except the
    STAGE_CHOICES that `config` sets explicitly."""
    source = checkpoint_config(init_from, "--init-from")
    # Another base of the checkpoint's architecture may be named (a transfer, e.g. to a base trained further).
    base = config.model.name if "name" in config.model.model_fields_set else source.model.name
    _check_model(base, source, init_from)
    model = config.model.model_copy(update={"name": base})
    sections = {}
    for name in INHERITED:
        mine = getattr(config, name)
        chosen = {key: getattr(mine, key) for key in STAGE_CHOICES.get(name, ()) if key in mine.model_fields_set}
        theirs = getattr(source, name)
        if name == "inner" and chosen.get("lr_init", theirs.lr_init) != theirs.lr_init \
                and chosen.get("steps", theirs.steps) <= theirs.steps:
            raise PerkError(f"--init-from {init_from}: the step sizes are the checkpoint's; inner.lr_init "
                            f"(--inner-lr) only sets the steps it lacks, so it needs more than its {theirs.steps} "
                            "inner steps (--inner-steps)")
        try:  # validated again: a choice must fit the settings it joins (unroll_start <= steps)
            sections[name] = type(theirs).model_validate({**theirs.model_dump(), **chosen})
        except ValidationError as exc:
            reason = exc.errors()[0]["msg"].removeprefix("Value error, ")
            raise PerkError(f"--init-from {init_from}: {reason} (with the checkpoint's other {name} settings)")
    return config.model_copy(update={"model": model, **sections})


def _check_inherited(config: RunConfig, source: RunConfig, path: Path) -> None:
    for name in INHERITED:
        mine, theirs = getattr(config, name).model_dump(), getattr(source, name).model_dump()
        for key in mine:
            if mine[key] != theirs.get(key) and fixed_by_checkpoint(name, key):
                raise PerkError(f"--init-from {path}: trained with {name}.{key}={theirs.get(key)!r}, this run has "
                                f"{mine[key]!r}; leave the {name} settings to the checkpoint")
    _check_model(config.model.name, source, path)


def _check_model(name: str, source: RunConfig, path: Path) -> None:
    """A checkpoint's meta-parameters may start a run on another base of its architecture (the LoRA init,
    step sizes and weighter are shaped by it; build_runtime refuses a misfit), unless the checkpoint trained
    its base too: then its tensors carry that base, and loading them would replace the one named."""
    if name != source.model.name and source.train.train_base:
        raise PerkError(f"--model {name}: --init-from {path} trained its base ({source.model.name}) too, so its "
                        "meta-parameters carry that base; drop --model, or start from a checkpoint whose base "
                        "was frozen (--no-train-base)")


def outer_optimizer(runtime: Runtime) -> torch.optim.AdamW:
    train = runtime.config.train
    groups = runtime.meta.parameter_groups(train.weight_decay, train.step_size_lr)
    return torch.optim.AdamW(groups, lr=train.lr, betas=train.betas)


def trainable(runtime: Runtime) -> list[torch.nn.Parameter]:
    return [p for group in runtime.meta.parameter_groups(0.0) for p in group["params"]]


@torch.no_grad()
def validate(runtime: Runtime, tasks: list[Task]) -> dict:
    """Post-adaptation answer loss and exact match on the given tasks: of the greedily decoded answer,
    or teacher-forced (`train.eval_decode` false: the whole target is the greedy continuation)."""
    if not runtime.config.train.eval_decode:
        return mean_forced_scores([perk_forced(runtime, task)[:2] for task in tasks])
    budget = decode_budget(runtime.tokenizer, tasks, runtime.config.prompt)
    scored = []
    for task in tasks:
        answer, _, loss = perk_answer(runtime, task, budget)
        scored.append((answer, task.answer, loss))
    return mean_scores(scored)


def _refuse_cut_answers(runtime: Runtime, tasks: list[Task], task_dir: Path) -> None:
    """A target cut by prompt.max_answer_tokens before its answer ends would train on no answer: refused."""
    prompt = runtime.config.prompt
    lengths = answer_lengths(runtime.tokenizer, tasks, prompt)
    cut = sum(length > prompt.max_answer_tokens for length in lengths)
    if cut:
        raise PerkError(f"{task_dir}: {cut} of {len(tasks)} training targets ({prompt.answer_format} format) are cut "
                        f"before their answer by prompt.max_answer_tokens {prompt.max_answer_tokens}; the longest needs "
                        f"{max(lengths)}: set it in --config (prompt: {{max_answer_tokens: N}})")


def split_write(task: MetaTask, share: float, rng: random.Random) -> MetaTask:
    """`task`, written in two calls with probability `share` (train.split_writes): cut at a random row, the
    second call at the step-size scale a grown memory uses (`perk adapt --into`). A one-row task stays whole."""
    rows = task.context.input_ids.shape[0]
    if rows < 2 or not share or rng.random() >= share:
        return task
    return MetaTask(task.context, task.question, first_write=rng.randint(1, rows - 1), grow_scale=GROW_STEP_SCALE)


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
    step, best, history = 0, dict(NO_BEST), []
    if resume:
        files = read_checkpoint(out / "last")
        # The run's own settings, but how far to go, how many tasks share a forward and when to save (none
        # changes a number of the steps both runs take) are this invocation's.
        config = files.config.model_copy(update={"train": files.config.train.model_copy(
            update={key: getattr(config.train, key) for key in RESUME_CHOICES})})
        runtime = build_runtime(config, files.tensors, source=str(files.path))
        optimizer = outer_optimizer(runtime)
        if files.optimizer is not None:
            load_optimizer_tensors(optimizer, files.optimizer)
        state = files.trainer_state or {}
        step, best, history = state.get("step", 0), state.get("best", best), state.get("norm_history", [])
        if config.train.max_steps < step:
            raise PerkError(f"--max-steps {config.train.max_steps}: the run in {out} has taken {step} steps already; "
                            f"give at least {step}")
        keep_logged_steps(out / "metrics.jsonl", step)
        say(f"resuming {out} at step {step}")
    elif config.train.init_from is not None:
        torch.manual_seed(config.train.seed)
        files = read_checkpoint(Path(config.train.init_from), "--init-from")
        _check_inherited(config, files.config, Path(config.train.init_from))
        tensors = fit_step_sizes(files.tensors, config.inner.steps, config.inner.lr_init)
        runtime = build_runtime(config, tensors, source=str(files.path))
        optimizer = outer_optimizer(runtime)
        on_base = "" if files.config.model.name == config.model.name else \
            f" on base {config.model.name} (they were trained on {files.config.model.name})"
        say(f"starting from the meta-parameters of {files.path} (trained "
            f"{(files.trainer_state or {}).get('step', '?')} steps){on_base}")
    else:
        torch.manual_seed(config.train.seed)
        runtime = build_runtime(config)
        optimizer = outer_optimizer(runtime)
    _refuse_cut_answers(runtime, train_tasks, task_dir)
    train = config.train
    params = trainable(runtime)
    scheduler_base = [group["lr"] for group in optimizer.param_groups]
    metrics_path = out / "metrics.jsonl"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(config.model_dump_json(indent=2) + "\n")

    saved = {"last": step if resume else None}  # the step last/ holds

    def save(name: str, metrics: dict) -> None:
        if rank != 0:
            return
        saved[name] = step
        trainer_state = {"step": step, "best": best, "norm_history": history[-50:], "metrics": metrics,
                         "optimizer": "optimizer.safetensors"}
        save_checkpoint(out / name, config, runtime.state_tensors(), trainer_state,
                        optimizer_tensors(optimizer) if name == "last" else None)

    clock = SaveClock(train.save_minutes)
    max_steps = train.max_steps
    if train.epochs is not None:
        max_steps = min(max_steps, math.ceil(train.epochs * len(train_tasks) / train.tasks_per_batch))
    metrics: dict = {}
    started_run = time.monotonic()
    with StopRequests(lambda: say("stopping at the end of this step (last/ is saved there); "
                                  "interrupt again to stop now")) as stop:
        try:
            whole = True  # the state is that of a finished step (its line logged): last/ may be saved from it
            while step < max_steps:
                whole = False
                started = time.perf_counter()
                schedule_lr(optimizer, scheduler_base, step, config)
                optimizer.zero_grad(set_to_none=True)
                indices = batch_indices(step, train.tasks_per_batch, len(train_tasks), train.seed)
                totals = [0.0, 0.0, 0.0]  # outer loss, first and last inner loss (summed over tasks)
                mine = [(k, index) for k, index in enumerate(indices) if k % world == rank]
                for start in range(0, len(mine), train.tasks_per_forward):
                    tasks = [split_write(encode_task(runtime.tokenizer, train_tasks[index], config.prompt,
                                                     random.Random(f"{train.seed}/ids/{step}/{k}"),
                                                     max_len=runtime.max_positions),
                                         train.split_writes, random.Random(f"{train.seed}/writes/{step}/{k}")
                                         ).to(runtime.device)
                             for k, index in mine[start:start + train.tasks_per_forward]]
                    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=runtime.device.type == "cuda"):
                        outcomes = runtime.meta.meta_losses(tasks, train.answer_weight)
                    (sum(loss for loss, _ in outcomes) / train.tasks_per_batch).backward()
                    for loss, result in outcomes:
                        totals = [totals[0] + float(loss.detach()), totals[1] + result.losses[0],
                                  totals[2] + result.losses[-1]]
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
                validated = validation_due(step, max_steps, train.eval_every)
                if validated:
                    if val_tasks:
                        metrics.update(validate(runtime, val_tasks))
                        improved = better(metrics, best)
                    else:
                        improved = metrics["outer_loss"] < best["val_loss"]
                        metrics.update(val_loss=metrics["outer_loss"], val_em=0.0)
                    if improved:
                        best = {"val_em": metrics["val_em"], "val_loss": metrics["val_loss"], "step": step}
                        save("best", metrics)
                if rank == 0:  # logged before last/ is saved: a crash between leaves a line resume cuts back
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(metrics) + "\n")
                whole = True
                if validated or clock.due():
                    save("last", metrics)
                    clock.reset()
                if on_step and rank == 0:
                    on_step(step, max_steps, metrics)
                if step < max_steps and distributed.all_reduce_sum([float(stop.requested)])[0] > 0:
                    raise KeyboardInterrupt  # every rank stops at this step, its last/ exactly resumable
        except KeyboardInterrupt:
            if whole:
                save("last", metrics)
            elif saved["last"] is None:  # stopped at once, mid-step, before anything was saved
                raise StoppedByUser(f"interrupted during step {step + 1}, before a checkpoint was saved; nothing to "
                                    f"resume: start the run again (remove {out} first)")
            raise Interrupted(saved["last"], out / "last")  # mid-step: last/ stays as it was saved
        finally:
            distributed.barrier()
    baseline = None
    if train.baseline and rank == 0:
        from perk_cli.training.in_context import train_in_context

        say(f"in-context baseline: {step} outer steps, as PERK took")
        baseline = train_in_context(config, train_tasks, out, on_baseline_step, val_tasks, steps=step, say=say)
    return TrainResult(out, step, best, metrics, baseline)
