"""`perk eval`: adapt a fresh memory per task, answer, score EM/F1; the same for each baseline.

    perk eval --checkpoint runs/qa1 --task data/qa1 --split test --limit 100

Writes each task's rows to predictions.jsonl as it is scored (a stopped evaluation keeps them, and
`--resume` continues it to the same metrics.json), then metrics.json and accuracy_vs_length.png, into
--out or runs/eval/<checkpoint>-<task>-<split>-<settings digest>. Contexts longer than the model's
positions count as in-context failures (reported, not skipped); the base-truncated baseline instead reads
the document's last segments that fit (what a practitioner without PERK would do).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import random
from pathlib import Path
from typing import Callable

import torch

from perk_cli.config import EvalSettings
from perk_cli.data.schema import Task, read_split
from perk_cli.errors import Interrupted, PerkError
from perk_cli.evaluation.outputs import EvalFolder
from perk_cli.scores import (exact_match, length_bucket, mean_scores, plot, position_bucket, summarise,
                                        token_f1)
from perk_cli.memory import perk_answer, plain_ttt
from perk_cli.models.lora import peft_init
from perk_cli.prompts import encode_context
from perk_cli.checkpoint import DEFAULT_RUNS, Runtime, load_runtime, resolve_checkpoint
from perk_cli.checkpoint import fingerprint as checkpoint_fingerprint
from perk_cli.training.in_context import (answer_in_context, answer_truncated, has_in_context_baseline,
                                         load_in_context)

TaskCallback = Callable[[int, int], None]


def plain_reader(runtime: Runtime) -> Runtime:
    """The runtime plain TTT answers with: its memory is a fresh LoRA trained on the document alone, on a
    base never taught a support-format run's tags, so its answer is read (and its answer loss taken) as
    plain text, as the base baseline's is."""
    prompt = runtime.config.prompt
    if prompt.answer_format == "plain":
        return runtime
    config = runtime.config.model_copy(update={"prompt": prompt.model_copy(update={"answer_format": "plain"})})
    return dataclasses.replace(runtime, config=config)


@torch.no_grad()
def tune_plain_ttt(runtime: Runtime, init: dict[str, torch.Tensor], tasks: list[Task], grid: list[float],
                   budget: int, max_tokens_per_group: int | None = None) -> dict:
    """Plain TTT's learning rate chosen on validation tasks: best EM (greedy, as every method is decoded),
    ties broken by the lower answer loss. Returns the grid, each point's EM and loss, and the pick."""
    runtime = plain_reader(runtime)
    contexts = [encode_context(runtime.tokenizer, task.context, runtime.config.prompt,
                               max_len=runtime.max_positions).to(runtime.device) for task in tasks]
    points = []
    for lr in grid:
        scored = []
        for task, context in zip(tasks, contexts):
            adapted = plain_ttt(runtime, context, init, lr, max_tokens_per_group).params
            answer, _, loss = perk_answer(runtime, task, budget, lora=adapted)
            scored.append((answer, task.answer, loss))
        points.append({"lr": lr, **mean_scores(scored)})
    best = max(points, key=lambda p: (p["val_em"], -p["val_loss"]))
    return {"grid": list(grid), "points": points, "pick": best["lr"], "tasks": len(tasks)}


def _tune_plain_lr(runtime, init, settings: EvalSettings, budget: int, notes: list[str]) -> tuple[float, dict | None]:
    """Plain TTT's lr from the grid, on the task directory's validation split (never the evaluated split)."""
    try:
        val_tasks = read_split(Path(settings.task), "validation")
    except PerkError:
        val_tasks = []
    if settings.split == "validation" or not val_tasks:
        fallback = 1e-3 if 1e-3 in settings.plain_lr_grid else settings.plain_lr_grid[len(settings.plain_lr_grid) // 2]
        notes.append(f"plain TTT: no separate validation split to tune on; untuned learning rate {fallback:g}")
        return fallback, None
    tuning = tune_plain_ttt(runtime, init, val_tasks[: settings.plain_lr_tasks], settings.plain_lr_grid, budget,
                            settings.max_tokens_per_group)
    notes.append(f"plain TTT: learning rate {tuning['pick']:g}, the best of {tuning['grid']} on "
                 f"{tuning['tasks']} validation tasks")
    return tuning["pick"], tuning


def default_out(settings: EvalSettings, checkpoint: Path, fingerprint: str) -> Path:
    """runs/eval/<checkpoint>-<task>-<split>-<digest>: one folder per checkpoint, task and the settings that
    change a number, so a later evaluation on another task or --limit never overwrites this one, and the
    same command finds its own folder again (--resume). Never inside the installed package."""
    run = checkpoint.parent if checkpoint.name in ("best", "last") else checkpoint
    identity = {**settings.model_dump(mode="json", exclude={"out"}), "fingerprint": fingerprint}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]
    return DEFAULT_RUNS / "eval" / f"{run.name}-{Path(settings.task).name}-{settings.split}-{digest}"


def evaluate(settings: EvalSettings, on_task: TaskCallback | None = None, resume: bool = False,
             overwrite: bool = False) -> dict:
    """Score PERK and the baselines on `settings.split`, each task's rows appended to predictions.jsonl as
    it is scored; `resume` continues an evaluation stopped part way in the same folder (the same metrics
    as an uninterrupted run), `overwrite` starts a folder's evaluation again."""
    if not settings.perk and not settings.baselines:
        raise PerkError("--no-perk with no --baselines: nothing to score; name a baseline or drop --no-perk")
    if resume and overwrite:
        raise PerkError("--resume and --overwrite: choose one (continue the evaluation, or start it again)")
    checkpoint = resolve_checkpoint(Path(settings.checkpoint))
    run_dir = checkpoint.parent if checkpoint.name in ("best", "last") else checkpoint
    tasks: list[Task] = read_split(Path(settings.task), settings.split)
    if settings.limit is not None and settings.limit < len(tasks):
        tasks = random.Random(settings.seed).sample(tasks, settings.limit)
    meta_file = checkpoint / "meta.safetensors"
    fingerprint = checkpoint_fingerprint(meta_file) if meta_file.is_file() else ""
    out = Path(settings.out) if settings.out else default_out(settings, checkpoint, fingerprint)
    has_in_context = "in-context" in settings.baselines and has_in_context_baseline(run_dir)
    methods = (int(settings.perk) + int("plain-ttt" in settings.baselines) + int(has_in_context)
               + int("base" in settings.baselines) + int("base-truncated" in settings.baselines))
    identity = {"settings": settings.model_dump(mode="json", exclude={"out"}), "checkpoint": str(checkpoint),
                "fingerprint": fingerprint, "task_ids": [task.id for task in tasks]}
    folder = EvalFolder.open(out, identity, methods, resume=resume, overwrite=overwrite)
    folder.save_state()  # the folder is writable before any model is loaded
    runtime, files = load_runtime(checkpoint, settings.model, inner_steps=settings.inner_steps,
                                  added_lr=settings.added_lr)
    in_context = load_in_context(run_dir) if has_in_context else None
    notes = []
    if "in-context" in settings.baselines and in_context is None:
        notes.append(f"{run_dir} has no in-context baseline (meta-train --no-baseline?): not reported")
    init = peft_init(runtime.model, settings.seed) if "plain-ttt" in settings.baselines else None
    prompt = runtime.config.prompt
    budget = settings.max_new_tokens or prompt.max_answer_tokens
    plain_lr, plain_tuning = settings.plain_lr, None
    if init is not None and plain_lr is None:
        if "plain_lr" in folder.state:  # chosen before the stop: the same pick, not tuned again
            plain_lr, plain_tuning, notes = folder.state["plain_lr"], folder.state["plain_tuning"], folder.state["notes"]
        else:
            plain_lr, plain_tuning = _tune_plain_lr(runtime, init, settings, budget, notes)
    folder.save_state(plain_lr=plain_lr, plain_tuning=plain_tuning, notes=notes)
    groups = settings.max_tokens_per_group
    if on_task and folder.scored:
        on_task(folder.scored, len(tasks))
    try:
        for i, task in enumerate(tasks[folder.scored:], start=folder.scored):
            rows: list[dict] = []
            meta = task.meta
            base = {"id": task.id, "question": task.question, "gold": task.answer,
                    "length_tokens": meta.length_tokens if meta else None,
                    "length_bucket": length_bucket(meta.length_tokens if meta else None),
                    "position_bucket": position_bucket(meta.position if meta else None),
                    "family": (meta.family if meta else None) or "unknown"}

            def record(method: str, answer: str, raw: str, loss: float | None = None, note: str = "",
                       **extra) -> None:
                rows.append({**base, "method": method, "prediction": answer, "raw": raw,
                             "correct": exact_match(answer, task.answer), "f1": token_f1(answer, task.answer),
                             **({"answer_loss": loss} if loss is not None else {}), **({"note": note} if note else {}),
                             **extra})

            if settings.perk:
                record("perk", *perk_answer(runtime, task, budget, groups))
            if init is not None:
                context = encode_context(runtime.tokenizer, task.context, prompt,
                                         max_len=runtime.max_positions).to(runtime.device)
                plain = plain_ttt(runtime, context, init, plain_lr, groups).params
                record("plain-ttt", *perk_answer(plain_reader(runtime), task, budget, lora=plain))
            for method, reader in (("in-context", in_context),
                                   ("base", runtime if "base" in settings.baselines else None)):
                if reader is None:
                    continue
                # the base was never trained on the run's answer format (a support-format run's base still
                # answers plainly), so its answer is read as plain text; the in-context LoRA was trained on it
                with reader.model.disable_adapter() if method == "base" else contextlib.nullcontext():
                    answered = answer_in_context(reader, task, budget, "plain" if method == "base" else None)
                if answered is None:
                    record(method, "", "", note=f"context exceeds the model's {reader.max_positions} positions")
                else:
                    record(method, *answered)
            if "base-truncated" in settings.baselines:
                with runtime.model.disable_adapter():
                    answer, raw, kept = answer_truncated(runtime, task, budget, "plain")
                read = task.context[len(task.context) - kept:]
                record("base-truncated", answer, raw, segments_read=kept, segments=len(task.context),
                       **({"support_read": all(any(fact in segment for segment in read) for fact in task.support)}
                          if task.support else {}))
            folder.append(rows)
            if on_task:
                on_task(i + 1, len(tasks))
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted after {folder.scored} of {len(tasks)} tasks, their rows kept in "
                          f"{out / 'predictions.jsonl'}; rerun the same command with --resume to continue")
    metrics = summarise(folder.rows)
    report = {"checkpoint": str(checkpoint), "fingerprint": files.fingerprint, "task": settings.task,
              "split": settings.split, "n_tasks": len(tasks), "methods": metrics, "notes": notes,
              "plain_ttt": {"lr": plain_lr, "tuning": plain_tuning} if init is not None else None,
              "settings": settings.model_dump(mode="json")}
    folder.finish(report)
    plot(metrics, out / "accuracy_vs_length.png")
    report["out"] = str(out)
    return report
