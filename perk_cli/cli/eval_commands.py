"""`perk eval`, `perk compare` and `perk reproduce`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from perk_cli.cli import render
from perk_cli.cli.common import app, out, json_option, quiet_option, config_option, progress
from perk_cli.cli.options import build_settings, given_settings, setting
from perk_cli.config import EvalSettings, ReproduceSettings
from perk_cli.errors import PerkError


@app.command("eval")
def eval_command(
    checkpoint: Path = setting(EvalSettings, "checkpoint"),
    task: Path = setting(EvalSettings, "task"),
    split: Optional[str] = setting(EvalSettings, "split"),
    out_dir: Optional[Path] = setting(EvalSettings, "out", "--out", "-o",
                                      shown="runs/eval/<checkpoint>-<task>-<split>-<settings digest>"),
    limit: Optional[int] = setting(EvalSettings, "limit"),
    seed: Optional[int] = setting(EvalSettings, "seed"),
    baselines: Optional[str] = setting(EvalSettings, "baselines", convert=lambda v: [b for b in v.split(",") if b]),
    plain_lr: Optional[float] = setting(EvalSettings, "plain_lr", shown="tuned on the validation split"),
    plain_lr_grid: Optional[str] = setting(EvalSettings, "plain_lr_grid", shown="1e-4,3e-4,1e-3,3e-3,1e-2"),
    max_tokens_per_group: Optional[int] = setting(EvalSettings, "max_tokens_per_group"),
    max_new_tokens: Optional[int] = setting(EvalSettings, "max_new_tokens"),
    model: Optional[str] = setting(EvalSettings, "model"),
    inner_steps: Optional[int] = setting(EvalSettings, "inner_steps", shown="the checkpoint's"),
    added_lr: Optional[float] = setting(EvalSettings, "added_lr", shown="1e-3"),
    perk: Optional[bool] = setting(EvalSettings, "perk", "--perk/--no-perk", shown="--perk"),
    resume: bool = typer.Option(False, "--resume", help="Continue the evaluation stopped in --out (or the default "
                                "folder of these settings): the tasks already scored are kept, not run again."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start again where --out holds an evaluation."),
    config: Optional[Path] = config_option("EvalSettings"),
    json_output: bool = json_option("metrics"),
    quiet: bool = quiet_option(),
) -> None:
    """Evaluate PERK and its baselines: EM/F1 overall, by length and by fact position.

    Each task's rows are written as it is scored; a stopped evaluation continues with the same command and --resume.

    Example: perk eval --checkpoint runs/tiny-qa1 --task data/qa1 --limit 100
    """
    from perk_cli.evaluation.evaluate import evaluate

    flags = given_settings(eval_command, locals(), EvalSettings)
    settings = build_settings(EvalSettings, config, flags)
    with progress(quiet or json_output) as bar:
        handle = bar.add_task("evaluating", total=None)
        report = evaluate(settings, lambda done, total: bar.update(handle, completed=done, total=total),
                          resume=resume, overwrite=overwrite)
    if json_output:
        out.print_json(json.dumps(report))
        return
    out.print(render.eval_table(settings, report))
    for note in report["notes"]:
        out.print(f"note: {note}", markup=False)
    out.print(f"predictions, metrics.json and accuracy_vs_length.png in {report['out']}", markup=False)


@app.command()
def compare(
    first: str = typer.Argument(..., help="An evaluation: perk eval's --out folder (or its predictions.jsonl), "
                                "then :METHOD [default: :perk]."),
    second: str = typer.Argument(..., help="The other, the same way (may be the same folder with another method)."),
    json_output: bool = json_option("the comparison"),
) -> None:
    """Two evaluations task by task: each one's EM on the tasks both answered, who got what, the sign test.

    Example: perk compare runs/eval/a runs/eval/b   (perk compare runs/eval/a:perk runs/eval/a:plain-ttt)
    """
    from perk_cli.evaluation.compare import compare as compare_methods
    from perk_cli.evaluation.compare import read_method, render as render_comparison

    (name_first, rows_first), (name_second, rows_second) = read_method(first), read_method(second)
    result = compare_methods(rows_first, rows_second)
    if result["tasks"] == 0:
        raise PerkError(f"{first} and {second} share no task id: evaluations of different task sets")
    if json_output:
        out.print_json(json.dumps({"first": first, "second": second, **result}))
        return
    same = name_first == name_second  # one method in two evaluations: name each by its argument
    out.print(render_comparison(first if same else name_first, second if same else name_second, result),
              markup=False, highlight=False, soft_wrap=True)


@app.command()
def reproduce(
    recipe: Optional[str] = setting(ReproduceSettings, "recipe", shown="none"),
    family: Optional[str] = setting(ReproduceSettings, "family", shown="recall, or the recipe's"),
    model: Optional[str] = setting(ReproduceSettings, "model"),
    base: Optional[str] = setting(ReproduceSettings, "base", shown="none: --model"),
    out_dir: Optional[Path] = setting(ReproduceSettings, "out", "--out", "-o"),
    minutes: Optional[float] = setting(ReproduceSettings, "minutes"),
    steps: Optional[int] = setting(ReproduceSettings, "steps", shown="none: --minutes"),
    length: Optional[int] = setting(ReproduceSettings, "length", shown="the family's"),
    segment_tokens: Optional[int] = setting(ReproduceSettings, "segment_tokens", shown="128, or the recipe's"),
    curriculum: Optional[str] = setting(ReproduceSettings, "curriculum", shown="none"),
    curriculum_steps: Optional[int] = setting(ReproduceSettings, "curriculum_steps"),
    test_tasks: Optional[int] = setting(ReproduceSettings, "test_tasks"),
    train_tasks: Optional[int] = setting(ReproduceSettings, "train_tasks"),
    validation_tasks: Optional[int] = setting(ReproduceSettings, "validation_tasks"),
    max_new_tokens: Optional[int] = setting(ReproduceSettings, "max_new_tokens",
                                             shown="16; 72 with support; the target cap + 4 with recite"),
    eval_forced: Optional[bool] = setting(ReproduceSettings, "eval_forced", "--eval-forced/--eval-decode"),
    answer_format: Optional[str] = setting(ReproduceSettings, "answer_format"),
    top_layers: Optional[int] = setting(ReproduceSettings, "top_layers"),
    inner_steps: Optional[int] = setting(ReproduceSettings, "inner_steps"),
    lr: Optional[float] = setting(ReproduceSettings, "lr"),
    step_size_lr: Optional[float] = setting(ReproduceSettings, "step_size_lr"),
    tasks_per_batch: Optional[int] = setting(ReproduceSettings, "tasks_per_batch"),
    tasks_per_forward: Optional[int] = setting(ReproduceSettings, "tasks_per_forward"),
    answer_weight: Optional[float] = setting(ReproduceSettings, "answer_weight"),
    config: Optional[Path] = config_option("file of these settings"),
    json_output: bool = json_option("results.json"),
    quiet: bool = quiet_option("Only the final table."),
) -> None:
    """Reproduce the paper's comparison: truncated and first-order PERK, plain TTT and the in-context reference, by length.

    Each stage is skipped when its output exists, so a stopped run continues with the same command.

    Example: perk reproduce --recipe qa1-reader --test-tasks 20 -o runs/repro-qa1
    """
    from perk_cli.evaluation.reproduce import reproduce as run_reproduction

    settings = build_settings(ReproduceSettings, config, given_settings(reproduce, locals(), ReproduceSettings))
    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        if not (quiet or json_output):
            out.print(line, markup=False, highlight=False, soft_wrap=True)

    results = run_reproduction(settings, say)
    if json_output:
        out.print_json(json.dumps(results))
    elif quiet and lines:
        out.print(lines[-1], markup=False, highlight=False, soft_wrap=True)  # the table
