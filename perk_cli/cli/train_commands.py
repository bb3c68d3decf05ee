"""`perk reading-base`, `perk meta-train` (with what --init-from and --resume refuse) and `perk recipe`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from perk_cli import __version__
from perk_cli.cli import render
from perk_cli.cli.common import app, out, err, json_option, quiet_option, config_option, progress
from perk_cli.cli.options import build_settings, check_sections, given_settings, option_name, setting
from perk_cli.config import (TASK_NAMES, InnerLoopSettings, LoraSettings, ModelSettings, PromptSettings,
                             ReadingBaseSettings, TrainSettings)
from perk_cli.errors import Interrupted, PerkError
from perk_cli.files import read_config_file, recover_directory


@app.command("reading-base")
def reading_base_command(
    model: Optional[str] = setting(ReadingBaseSettings, "model"),
    out_dir: Optional[Path] = setting(ReadingBaseSettings, "out", "--out", "-o"),
    task: Optional[Path] = setting(ReadingBaseSettings, "task", shown="the generated sets of --subtasks"),
    subtasks: Optional[str] = setting(ReadingBaseSettings, "subtasks", shown="qa1"),
    steps: Optional[int] = setting(ReadingBaseSettings, "steps"),
    tasks_per_step: Optional[int] = setting(ReadingBaseSettings, "tasks_per_step"),
    lr: Optional[float] = setting(ReadingBaseSettings, "lr"),
    train_tasks: Optional[int] = setting(ReadingBaseSettings, "train_tasks"),
    test_tasks: Optional[int] = setting(ReadingBaseSettings, "test_tasks"),
    seed: Optional[int] = setting(ReadingBaseSettings, "seed"),
    pool: Optional[int] = setting(ReadingBaseSettings, "pool"),
    hard_share: Optional[float] = setting(ReadingBaseSettings, "hard_share"),
    recite_share: Optional[float] = setting(ReadingBaseSettings, "recite_share"),
    bf16: Optional[bool] = setting(ReadingBaseSettings, "bf16", "--bf16/--no-bf16"),
    delta_rank: Optional[int] = setting(ReadingBaseSettings, "delta_rank", shown="none"),
    delta_from: Optional[str] = setting(ReadingBaseSettings, "delta_from"),
    evaluate: Optional[Path] = typer.Option(None, help="Only score the base saved under --out, the document in its "
                                            "prompt, on this task directory's test split (nothing trained)."),
    evaluate_recite: bool = typer.Option(False, "--evaluate-recite", help="With --evaluate: score its reading of "
                                         "the gold events in the recite layout instead (one sentence a segment)."),
    config: Optional[Path] = config_option("file of these settings"),
    json_output: bool = json_option("the report (reading_base.json)"),
    quiet: bool = quiet_option(),
) -> None:
    """Fine-tune a base to answer from its prompt (the reading base PERK presupposes), and gate it on held-out sets.

    Example: perk reading-base --model smollm2 --subtasks qa1 --steps 60 -o runs/reading-base --delta-rank 32
    """
    from perk_cli.training.reading_base import evaluate_saved, gate_line, train_reading_base

    settings = build_settings(ReadingBaseSettings, config, given_settings(reading_base_command, locals(),
                                                                             ReadingBaseSettings))
    if evaluate_recite and evaluate is None:
        raise PerkError("--evaluate-recite: goes with --evaluate DIR, the task directory to score")
    say = (lambda line: None) if quiet or json_output else (
        lambda line: out.print(line, markup=False, highlight=False, soft_wrap=True))
    if evaluate is not None:
        result = evaluate_saved(Path(settings.out), evaluate, evaluate_recite)
        if json_output:
            out.print_json(json.dumps(result))
        else:
            key = f"{evaluate}-recite" if evaluate_recite else str(evaluate)
            say(gate_line(key, result))
        return
    with progress(quiet or json_output) as bar:
        handle = bar.add_task("reading base", total=settings.steps)

        def on_step(step: int, total: int, loss: float) -> None:
            bar.update(handle, completed=step, description=f"reading base  step {step}  answer loss {loss:.3f}")

        report = train_reading_base(settings, say=say, on_step=on_step)
    if json_output:
        out.print_json(json.dumps(report))
    else:
        say(f"wrote {Path(settings.out) / 'model'} (--model loads it) and {Path(settings.out) / 'reading_base.json'}")


def _refuse_inherited_flags(flags: dict, init_from: str) -> None:
    """--init-from fixes the LoRA, inner-loop and prompt settings (less the STAGE_CHOICES): a flag that sets
    one would be silently overridden, so it is an error. --model may name another base of its architecture."""
    from perk_cli.config import RunConfig
    from perk_cli.training.meta_train import INHERITED, fixed_by_checkpoint

    given = [(section, key) for section in INHERITED for key, value in flags[section].items()
             if value is not None and fixed_by_checkpoint(section, key)]
    if given:
        flag = option_name(RunConfig, given[0])
        raise PerkError(f"{flag}: --init-from {init_from} fixes the LoRA, inner-loop and prompt "
                        f"settings (they are the checkpoint's); drop {flag}")


def _refuse_inherited_file_settings(base: dict, source, init_from: str, config: Path) -> None:
    """The same for a --config file: a LoRA, inner-loop or prompt value it writes that differs from
    the checkpoint's (`source`, its RunConfig) would be silently replaced by it (equal values are fine;
    STAGE_CHOICES are the new run's to set)."""
    from perk_cli.training.meta_train import INHERITED, fixed_by_checkpoint

    for section in INHERITED:  # the model (its name too) is this run's to choose
        theirs = getattr(source, section).model_dump(mode="json")
        for key, value in (base.get(section) or {}).items():
            if key in theirs and fixed_by_checkpoint(section, key) and value != theirs[key]:
                raise PerkError(f"--config {config}: sets {section}.{key}={value!r}, but --init-from {init_from} "
                                f"was trained with {theirs[key]!r} and fixes it; remove it from the file or start "
                                "without --init-from")


def _resumed_config(resume: Path, built, flags: dict, base: dict, config: Path | None):
    """The saved run's config with this invocation's RESUME_CHOICES: a flag (or --config value) that would
    change any other setting is refused in one line naming it, since the resumed run continues the saved
    one exactly; a flag equal to the saved value is fine."""
    from perk_cli.config import RunConfig
    from perk_cli.checkpoint import checkpoint_config
    from perk_cli.training.meta_train import RESUME_CHOICES

    recover_directory(resume / "last")
    if not (resume / "last").is_dir():
        raise PerkError(f"--resume {resume}: no last/ checkpoint to resume from")
    saved = checkpoint_config(resume / "last", "--resume")
    given = [(section, key, f"--config {config}") for section, values in base.items() if isinstance(values, dict)
             for key in values] + [(section, key, None) for section, values in flags.items()
                                   if isinstance(values, dict) for key, value in values.items() if value is not None]
    choices = {}
    for section, key, source in given:
        if section not in RunConfig.model_fields or not hasattr(getattr(built, section), key):
            continue  # unknown keys were refused when the settings were built
        now = getattr(built, section).model_dump(mode="json")[key]
        if section == "train" and key in RESUME_CHOICES:
            choices[key] = getattr(built.train, key)
            continue
        then = getattr(saved, section).model_dump(mode="json")[key]
        if now != then:
            flag = source or option_name(RunConfig, (section, key)) or f"{section}.{key}"
            raise PerkError(f"{flag}: --resume {resume} continues the run as it was saved ({section}.{key} = "
                            f"{then!r}, here {now!r}); drop it, or start a new run with another --out "
                            f"(only {', '.join('--' + k.replace('_', '-') for k in RESUME_CHOICES)} may change)")
    # init_from is where the run started, not what a resumed run loads (its own last/): not asked again
    return saved.model_copy(update={"train": saved.train.model_copy(update={**choices, "init_from": None})})


@app.command("meta-train")
def meta_train_command(
    model: Optional[str] = setting(ModelSettings, "name", "--model"),
    task: Optional[str] = typer.Option(None, help="Task directory from `perk prepare`, or a name generated into "
                                       f"<run>/data: {', '.join(TASK_NAMES)}."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help=r"Run directory \[default: runs/<model>-<task>]."),
    config: Optional[Path] = typer.Option(None, help="YAML or JSON RunConfig (model, lora, inner, prompt, train)."),
    resume: Optional[Path] = typer.Option(None, help="Continue the run in this directory from its last checkpoint."),
    init_from: Optional[str] = setting(TrainSettings, "init_from"),
    lora_rank: Optional[int] = setting(LoraSettings, "rank", "--lora-rank"),
    lora_alpha: Optional[float] = setting(LoraSettings, "alpha", "--lora-alpha"),
    lora_targets: Optional[str] = setting(LoraSettings, "targets", "--lora-targets", convert=lambda v: v.split(","),
                                          help="Comma-separated module names to adapt.", shown="all projections"),
    lora_top_layers: Optional[int] = setting(LoraSettings, "top_layers", "--lora-top-layers", shown="all layers"),
    inner_steps: Optional[int] = setting(InnerLoopSettings, "steps", "--inner-steps"),
    inner_optimizer: Optional[str] = setting(InnerLoopSettings, "optimizer", "--inner-optimizer"),
    inner_lr: Optional[float] = setting(InnerLoopSettings, "lr_init", "--inner-lr"),
    recency: Optional[float] = setting(InnerLoopSettings, "recency"),
    unroll: Optional[str] = setting(InnerLoopSettings, "unroll"),
    unroll_start: Optional[int] = setting(InnerLoopSettings, "unroll_start"),
    weighting: Optional[bool] = setting(InnerLoopSettings, "weighting", "--weighting/--no-weighting"),
    weighting_mode: Optional[str] = setting(InnerLoopSettings, "weighting_mode"),
    step_size_space: Optional[str] = setting(InnerLoopSettings, "step_size_space"),
    engine: Optional[str] = setting(InnerLoopSettings, "engine"),
    cache_prefix: Optional[bool] = setting(InnerLoopSettings, "cache_prefix", "--cache-prefix/--no-cache-prefix"),
    segment_tokens: Optional[int] = setting(PromptSettings, "segment_tokens"),
    answer_format: Optional[str] = setting(PromptSettings, "answer_format"),
    segment_ids: Optional[str] = setting(PromptSettings, "segment_ids"),
    lr: Optional[float] = setting(TrainSettings, "lr"),
    step_size_lr: Optional[float] = setting(TrainSettings, "step_size_lr"),
    schedule: Optional[str] = setting(TrainSettings, "schedule"),
    warmup_steps: Optional[int] = setting(TrainSettings, "warmup_steps"),
    clip: Optional[float] = setting(TrainSettings, "clip"),
    answer_weight: Optional[float] = setting(TrainSettings, "answer_weight"),
    tasks_per_batch: Optional[int] = setting(TrainSettings, "tasks_per_batch"),
    tasks_per_forward: Optional[int] = setting(TrainSettings, "tasks_per_forward"),
    split_writes: Optional[float] = setting(TrainSettings, "split_writes"),
    max_steps: Optional[int] = setting(TrainSettings, "max_steps"),
    max_minutes: Optional[float] = setting(TrainSettings, "max_minutes"),
    save_minutes: Optional[float] = setting(TrainSettings, "save_minutes"),
    epochs: Optional[float] = setting(TrainSettings, "epochs"),
    eval_every: Optional[int] = setting(TrainSettings, "eval_every"),
    eval_tasks: Optional[int] = setting(TrainSettings, "eval_tasks"),
    eval_decode: Optional[bool] = setting(TrainSettings, "eval_decode", "--eval-decode/--eval-forced",
                                          help="Validate by decoding answers, or by teacher-forced exact match "
                                          "(no decoding: cheap enough for many validation tasks).",
                                          shown="decode"),
    train_base: Optional[bool] = setting(TrainSettings, "train_base", "--train-base/--no-train-base",
                                         help="Train the base model too.", shown="on for tiny, off otherwise"),
    baseline: Optional[bool] = setting(TrainSettings, "baseline", "--baseline/--no-baseline"),
    seed: Optional[int] = setting(TrainSettings, "seed"),
    device: Optional[str] = setting(ModelSettings, "device"),
    dtype: Optional[str] = setting(ModelSettings, "dtype"),
    json_output: bool = json_option("the final summary"),
    quiet: bool = quiet_option(),
) -> None:
    """Meta-train PERK: LoRA init, step sizes and token weights, through the inner loop.

    Example: perk meta-train --model tiny --task babi --max-steps 100
    """
    from perk_cli.config import RunConfig
    from perk_cli.training import distributed
    from perk_cli.training.meta_train import Interrupted, meta_train, plan_run

    base = check_sections(RunConfig, read_config_file(config), config) if config else {}
    explicit_model, explicit_train_base = model, train_base  # before the defaults below fill them
    model_name = model or base.get("model", {}).get("name", "tiny")
    init_from = init_from or base.get("train", {}).get("init_from")
    source = None  # the --init-from checkpoint's config
    if init_from is not None and resume is None:
        from perk_cli.checkpoint import checkpoint_config

        source = checkpoint_config(Path(init_from), "--init-from")
        # the checkpoint's base unless --model (or the file) names another; also train_base's default
        model_name = model or base.get("model", {}).get("name") or source.model.name
    if train_base is None:
        train_base = base.get("train", {}).get("train_base", model_name == "tiny")
    flags = given_settings(meta_train_command, locals(), RunConfig)
    flags["perk_version"] = __version__
    flags["model"]["name"] = model_name  # the defaults filled above
    flags["train"].update(train_base=train_base, init_from=init_from)
    if init_from is not None:
        _refuse_inherited_flags(flags, init_from)
        if config and source is not None:
            _refuse_inherited_file_settings(base, source, init_from, config)
    task = task or base.get("task")
    rank = distributed.launched_rank()  # under torchrun only rank 0 talks and writes
    quiet = quiet or rank != 0
    run_config = build_settings(RunConfig, config, flags, base=base)  # every setting validated before any work
    if resume is not None:
        if init_from is not None:
            raise PerkError("--init-from: a resumed run continues from its own last/ checkpoint; drop --init-from")
        flags["model"]["name"], flags["train"]["train_base"] = explicit_model, explicit_train_base
        run_config = _resumed_config(resume, run_config, flags, base, config)
    plan = plan_run(run_config, task, out_dir, resume, rank)
    if plan.generated and not (quiet or json_output):
        err.print(f"--task {task}: using generated tasks in {plan.task_dir}", markup=False)
    with progress(quiet or json_output) as bar:
        handle = bar.add_task("meta-training", total=plan.config.train.max_steps)

        def on_step(step: int, total: int, m: dict) -> None:
            val = f"  val EM {m['val_em']:.2f}" if "val_em" in m else ""
            bar.update(handle, completed=step, total=total,
                       description=f"meta-train  loss {m['outer_loss']:.3f}  inner {m['inner_loss_last']:.3f}{val}")

        baseline_bar = bar.add_task("in-context baseline", total=None, visible=False)

        def on_baseline(step: int, total: int, loss: float) -> None:
            bar.update(baseline_bar, completed=step, total=total, visible=True,
                       description=f"in-context baseline  loss {loss:.3f}")

        try:
            result = meta_train(plan.config, plan.task_dir, plan.out, resume=plan.resume, on_step=on_step,
                                on_event=lambda msg: err.print(msg, markup=False), on_baseline_step=on_baseline)
        except Interrupted as exc:
            err.print(f"{exc}; continue with: perk meta-train --resume {plan.out}", markup=False)
            raise typer.Exit(130)
    if rank != 0:
        return
    summary = {"out": str(plan.out), "steps": result.step, "best": result.best, "last": result.last_metrics,
               "in_context_baseline": str(result.baseline) if result.baseline else None}
    if json_output:
        out.print_json(json.dumps(summary))
    elif not quiet:
        out.print(f"run in {plan.out}: {result.step} steps; best validation EM {result.best['val_em']:.3f} "
                  f"(loss {result.best['val_loss']:.3f}) at step {result.best['step']}"
                  + (f"; in-context baseline in {result.baseline}" if result.baseline else "; no in-context baseline"))


@app.command("recipe")
def recipe_command(
    name: Optional[str] = typer.Argument(None, help="A recipe name or a recipe.json file; none lists the recipes."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Where its data and stages go; the same "
                                           "command continues a stopped run there."),
    json_output: bool = json_option("each stage's summary"),
    quiet: bool = quiet_option(),
) -> None:
    """Run a multi-stage recipe (the commands that made a checkpoint) as one resumable run.

    Each stage prepares its own tasks, then meta-trains (from the previous stage's best/) or fine-tunes a
    reading base the later stages run over. Stopped at any point, the same command continues it.

    Example: perk recipe qa1-open -o runs/qa1-open     (perk recipe: the recipes, with their cost)
    """
    from perk_cli.training.recipe import RECIPES, load_recipe, run_recipe

    if name is None:
        if json_output:
            out.print_json(json.dumps({key: make().model_dump(mode="json") for key, make in RECIPES.items()}))
        else:
            out.print(render.recipes_table(RECIPES))
        return
    recipe = load_recipe(name, "NAME")
    if out_dir is None:
        raise PerkError(f"--out: where recipe {recipe.name} writes its stages; e.g. perk recipe {name} -o runs/{recipe.name}")
    say = (lambda line: None) if quiet or json_output else (
        lambda line: err.print(line, markup=False, highlight=False, soft_wrap=True))
    if not quiet and not json_output:
        say(f"recipe {recipe.name}: {recipe.description}; about {recipe.minutes:.0f} minutes on 2 CPU cores")
    with progress(quiet or json_output) as bar:
        handle = bar.add_task("recipe", total=None)

        def on_step(stage: str, step: int, total: int, metrics: dict) -> None:
            loss = metrics.get("outer_loss", metrics.get("answer_loss"))
            val = f"  val EM {metrics['val_em']:.2f}" if "val_em" in metrics else ""
            bar.update(handle, completed=step, total=total, description=f"{stage}  step {step}  loss {loss:.3f}{val}")

        try:
            result = run_recipe(recipe, out_dir, say=say, on_step=on_step)
        except (Interrupted, KeyboardInterrupt) as exc:
            raise Interrupted((str(exc) if isinstance(exc, Interrupted) else "interrupted")
                              + f"; rerun perk recipe {name} -o {out_dir} to continue where it stopped")
    if json_output:
        out.print_json(json.dumps({"recipe": recipe.name, "checkpoint": str(result.checkpoint),
                                   "stages": result.stages}))
        return
    out.print(render.recipe_table(recipe, result.stages))
    out.print(f"checkpoint: {result.checkpoint} (perk adapt --checkpoint {result.checkpoint.parent})", markup=False)
