"""`perk eval`: adapt a fresh memory per task, answer, score EM/F1; the same for each baseline.

    perk eval --checkpoint runs/qa1 --task data/qa1 --split test --limit 100

Writes predictions.jsonl, metrics.json and accuracy_vs_length.png. Contexts longer than the model's
positions count as in-context failures (reported, not skipped).
"""

from __future__ import annotations

import json
import math
import random
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Callable

from perk_cli.baselines import answer_in_context, load_in_context, plain_ttt, plain_ttt_init, tune_plain_ttt
from perk_cli.checkpoint import read_checkpoint, resolve_checkpoint
from perk_cli.config import EvalSettings
from perk_cli.data.schema import Task, read_split
from perk_cli.decode import answer_question
from perk_cli.encoding import encode_context
from perk_cli.errors import PerkError
from perk_cli.metrics import exact_match, token_f1
from perk_cli.runtime import build_runtime

TaskCallback = Callable[[int, int], None]


def length_bucket(tokens: int | None) -> str:
    return "unknown" if not tokens else str(2 ** round(math.log2(max(tokens, 1))))


def position_bucket(position: float | None) -> str:
    if position is None:
        return "unknown"
    return "early" if position < 1 / 3 else ("middle" if position < 2 / 3 else "late")


def summarise(rows: list[dict]) -> dict:
    """EM/F1 per method, overall and by length and position bucket."""
    out: dict = {}
    for method in sorted({r["method"] for r in rows}):
        mine = [r for r in rows if r["method"] == method]
        entry = {"n": len(mine), "em": statistics.mean(r["correct"] for r in mine),
                 "f1": statistics.mean(r["f1"] for r in mine),
                 "failures": sum(1 for r in mine if r.get("note"))}
        for key in ("length_bucket", "position_bucket"):
            groups = defaultdict(list)
            for r in mine:
                groups[r[key]].append(r)
            entry[f"by_{key.removesuffix('_bucket')}"] = {
                k: {"n": len(v), "em": statistics.mean(x["correct"] for x in v)} for k, v in sorted(groups.items())}
        out[method] = entry
    return out


def plot(metrics: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, entry in metrics.items():
        points = sorted((int(k), v["em"]) for k, v in entry["by_length"].items() if k != "unknown")
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("exact match")
    ax.set_ylim(-0.02, 1.02)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
                            settings.max_tokens_per_step)
    notes.append(f"plain TTT: learning rate {tuning['pick']:g}, the best of {tuning['grid']} on "
                 f"{tuning['tasks']} validation tasks")
    return tuning["pick"], tuning


def evaluate(settings: EvalSettings, on_task: TaskCallback | None = None) -> dict:
    checkpoint = resolve_checkpoint(Path(settings.checkpoint))
    run_dir = checkpoint.parent if checkpoint.name in ("best", "last") else checkpoint
    tasks: list[Task] = read_split(Path(settings.task), settings.split)
    if settings.limit is not None and settings.limit < len(tasks):
        tasks = random.Random(settings.seed).sample(tasks, settings.limit)
    files = read_checkpoint(checkpoint)
    config = files.config
    if settings.model:
        config = config.model_copy(update={"model": config.model.model_copy(update={"name": settings.model})})
    runtime = build_runtime(config, files.tensors, source=str(files.path))
    in_context = load_in_context(run_dir) if "in-context" in settings.baselines else None
    notes = []
    if "in-context" in settings.baselines and in_context is None:
        notes.append(f"{run_dir} has no in-context baseline (meta-train --no-baseline?): not reported")
    init = plain_ttt_init(runtime, settings.seed) if "plain-ttt" in settings.baselines else None
    tokenizer, prompt = runtime.tokenizer, runtime.config.prompt
    budget = settings.max_new_tokens or prompt.max_answer_tokens
    plain_lr, plain_tuning = settings.plain_lr, None
    if init is not None and plain_lr is None:
        plain_lr, plain_tuning = _tune_plain_lr(runtime, init, settings, budget, notes)
    rows = []
    for i, task in enumerate(tasks):
        meta = task.meta
        base = {"id": task.id, "question": task.question, "gold": task.answer,
                "length_tokens": meta.length_tokens if meta else None,
                "length_bucket": length_bucket(meta.length_tokens if meta else None),
                "position_bucket": position_bucket(meta.position if meta else None)}
        context = encode_context(tokenizer, task.context, prompt, max_len=runtime.max_positions).to(runtime.device)

        def record(method: str, answer: str, raw: str, note: str = "") -> None:
            rows.append({**base, "method": method, "prediction": answer, "raw": raw,
                         "correct": exact_match(answer, task.answer), "f1": token_f1(answer, task.answer),
                         **({"note": note} if note else {})})

        adapted = runtime.meta.adapt(context, max_tokens_per_group=settings.max_tokens_per_step).params
        record("perk", *answer_question(runtime.model, tokenizer, task.question, len(task.context), prompt,
                                        lora=adapted, max_new_tokens=budget))
        if init is not None:
            plain = plain_ttt(runtime, context, init, plain_lr, settings.max_tokens_per_step).params
            record("plain-ttt", *answer_question(runtime.model, tokenizer, task.question, len(task.context),
                                                 prompt, lora=plain, max_new_tokens=budget))
        if in_context is not None:
            answered = answer_in_context(in_context, task, budget)
            if answered is None:
                record("in-context", "", "", note=f"context exceeds the model's {in_context.max_positions} positions")
            else:
                record("in-context", *answered)
        if on_task:
            on_task(i + 1, len(tasks))
    out = Path(settings.out) if settings.out else run_dir / f"eval-{settings.split}"
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "predictions.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    metrics = summarise(rows)
    report = {"checkpoint": str(checkpoint), "fingerprint": files.fingerprint, "task": settings.task,
              "split": settings.split, "n_tasks": len(tasks), "methods": metrics, "notes": notes,
              "plain_ttt": {"lr": plain_lr, "tuning": plain_tuning} if init is not None else None,
              "settings": settings.model_dump(mode="json")}
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(metrics, out / "accuracy_vs_length.png")
    report["out"] = str(out)
    return report
