"""The `perk` command line: one function a command, each parsing flags into settings and calling the library."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from perk_cli import __version__
from perk_cli.errors import PerkError

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


def _progress(quiet: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=err, disable=quiet, transient=True)


@app.command()
def prepare(
    task: str = typer.Option(..., "--task", help="babilong | student-records | longgorilla | jsonl | babi | records"),
    out_dir: Optional[Path] = typer.Option(None, "-o", "--out", help="Output directory."),
    input: Optional[Path] = typer.Option(None, "--input", help="File or directory of records to read."),
    hub: Optional[str] = typer.Option(None, help="Hugging Face dataset id (babilong), e.g. RMT-team/babilong."),
    hub_config: Optional[str] = typer.Option(None, help="Hub dataset config, e.g. 1k."),
    hub_split: Optional[str] = typer.Option(None, help="Hub dataset split, e.g. qa1."),
    split: Optional[str] = typer.Option(None, help="Split a single input file goes to [default: test]."),
    subtask: Optional[str] = typer.Option(None, help="babi: qa1|qa2|qa3; records: recall|relation|aggregate."),
    model: Optional[str] = typer.Option(None, help="Tokenizer for token counts and cutting [default: tiny]."),
    segment_tokens: Optional[int] = typer.Option(None, help="Max tokens a segment when cutting text [default: 256]."),
    facts: Optional[int] = typer.Option(None, help="babi: facts a story [default: qa1 6, qa2 10, qa3 12]."),
    length: Optional[int] = typer.Option(None, help="Target context length in tokens (filler or records added)."),
    distractors: Optional[int] = typer.Option(None, help="babi: filler sentences when --length is not set."),
    filler: Optional[Path] = typer.Option(None, help="babi: haystack text file or directory of .txt files."),
    position: Optional[str] = typer.Option(None, help="babi: where the facts sit: uniform|early|middle|late."),
    records: Optional[int] = typer.Option(None, help="records: students a database [default: 20]."),
    train: Optional[int] = typer.Option(None, help="Generated training tasks [default: 200]."),
    validation: Optional[int] = typer.Option(None, help="Generated validation tasks [default: 50]."),
    test: Optional[int] = typer.Option(None, help="Generated test tasks [default: 100]."),
    seed: Optional[int] = typer.Option(None, help="Seed; the same seed gives byte-identical files [default: 0]."),
    config: Optional[Path] = typer.Option(None, help="YAML or JSON file of these settings; flags override it."),
    json_output: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Turn task files, a Hub dataset, or generated tasks into a task directory.

    Example: perk prepare --task babi --subtask qa1 --length 512 -o data/qa1-512
    """
    from perk_cli.config import PrepareSettings
    from perk_cli.prepare import prepare as run_prepare
    from perk_cli.settings_io import build_settings

    flags = dict(task=task, out=str(out_dir) if out_dir else None, input=str(input) if input else None, hub=hub,
                 hub_config=hub_config, hub_split=hub_split, split=split, subtask=subtask, model=model,
                 segment_tokens=segment_tokens, facts=facts, length=length, distractors=distractors,
                 filler=str(filler) if filler else None, position=position, records=records, train=train,
                 validation=validation, test=test, seed=seed)
    settings = build_settings(PrepareSettings, config, flags)
    with _progress(quiet or json_output) as bar:
        handle = bar.add_task("preparing", total=None)
        summary = run_prepare(settings, lambda done, total: bar.update(handle, completed=done, total=total))
    if json_output:
        out.print_json(json.dumps(summary))
        return
    table = Table(title=f"{settings.out}  ({summary['source']})")
    for column in ("split", "tasks", "min tokens", "mean tokens", "max tokens"):
        table.add_column(column, justify="right" if column != "split" else "left")
    for split_name, count in summary["counts"].items():
        lengths = summary["length_tokens"][split_name]
        table.add_row(split_name, str(count), str(lengths["min"]), str(lengths["mean"]), str(lengths["max"]))
    if not quiet:
        out.print(table)


@app.command()
def adapt(
    document: str = typer.Argument(..., help="Text file, '-' for stdin, or a task file (.jsonl: its first record)."),
    output: Path = typer.Option(..., "-o", "--out", help="Memory file to write (.safetensors)."),
    checkpoint: Optional[Path] = typer.Option(None, help="Checkpoint or run directory from meta-train "
                                              "[default: most recent under runs/]."),
    model: Optional[str] = typer.Option(None, help="Base model for plain test-time training (no checkpoint), "
                                        "or to override the checkpoint's base path."),
    segment_tokens: Optional[int] = typer.Option(None, help="Max tokens a segment [default: the checkpoint's]."),
    max_tokens_per_step: int = typer.Option(4096, min=1, help="Tokens an accumulation group: bounds peak memory."),
    steps: int = typer.Option(4, min=1, help="Plain TTT only: inner steps."),
    lr: float = typer.Option(1e-3, min=0.0, help="Plain TTT only: fixed learning rate."),
    peft: Optional[Path] = typer.Option(None, help="Also write a PEFT adapter directory here."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | mps [the checkpoint's, auto]."),
    json_output: bool = typer.Option(False, "--json", help="Print the memory's metadata as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Write a document into a memory file by test-time gradient steps.

    Example: perk adapt doc.txt -o mem.safetensors --checkpoint runs/qa1
    """
    from perk_cli.adapt import adapt_segments, adapt_text, load_adapter, read_document
    from perk_cli.memory import export_peft

    if output.exists() and output.is_dir():
        raise PerkError(f"--out {output}: is a directory; give a file name like mem.safetensors")
    text, segments = read_document(document)
    if device is not None and device not in ("auto", "cpu", "cuda", "mps"):
        raise PerkError(f"--device {device}: expected auto, cpu, cuda or mps")
    runtime, origin = load_adapter(checkpoint, model, plain_steps=steps, plain_lr=lr, device=device)
    if origin.note and not quiet:
        err.print(origin.note, markup=False)
    with _progress(quiet or json_output) as bar:
        handle = bar.add_task("adapting", total=None)

        def on_group(step: int, group: int, n_groups: int, loss: float) -> None:
            bar.update(handle, completed=step * n_groups + group + 1, total=runtime.config.inner.steps * n_groups,
                       description=f"adapting  step {step + 1}  loss {loss:.3f}")

        if segments is not None:
            memory = adapt_segments(runtime, origin, segments, max_tokens_per_step=max_tokens_per_step,
                                    on_group=on_group)
        else:
            memory = adapt_text(runtime, origin, text, segment_tokens, max_tokens_per_step, on_group)
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
    memory: Path = typer.Argument(..., help="Memory file written by `perk adapt`."),
    questions: Optional[list[str]] = typer.Argument(None, help="Questions (or one a line on stdin)."),
    model: Optional[str] = typer.Option(None, help="Base model path, overriding the one the memory names."),
    max_new_tokens: Optional[int] = typer.Option(None, min=1, help="Decoding budget [default: 64]."),
    interactive: bool = typer.Option(False, "--interactive", "-i", help="Ask questions at a prompt."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | mps"),
    json_output: bool = typer.Option(False, "--json", help="Print {question, answer, raw} per question."),
) -> None:
    """Answer questions from a memory, without re-reading the document.

    Example: perk ask mem.safetensors "Where is Mary?"
    """
    from perk_cli.reader import load_reader

    reader = load_reader(memory, model=model, device=device)

    def answer(question: str) -> None:
        text, raw = reader.ask(question, max_new_tokens)
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
                answer(question)
        return
    if not questions:
        if sys.stdin.isatty():
            raise PerkError("no question: pass questions as arguments, on stdin, or use --interactive")
        questions = [line.strip() for line in sys.stdin if line.strip()]
    for question in questions:
        answer(question)


@app.command("meta-train")
def meta_train_command(
    model: Optional[str] = typer.Option(None, help="Hub id, local directory, .gguf file, or 'tiny' [default: tiny]."),
    task: Optional[str] = typer.Option(None, help="Task directory from `perk prepare`, or a name: babi, babi:qa2, "
                                       "records, records:relation."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory [default: runs/<model>-<task>]."),
    config: Optional[Path] = typer.Option(None, help="YAML or JSON RunConfig (model, lora, inner, prompt, train)."),
    resume: Optional[Path] = typer.Option(None, help="Continue the run in this directory from its last checkpoint."),
    lora_rank: Optional[int] = typer.Option(None, help="LoRA rank [16]."),
    lora_alpha: Optional[float] = typer.Option(None, help="LoRA alpha [32]; scaling alpha/sqrt(r)."),
    lora_targets: Optional[str] = typer.Option(None, help="Comma-separated module names [all projections]."),
    lora_top_layers: Optional[int] = typer.Option(None, help="Adapt only the top k layers."),
    inner_steps: Optional[int] = typer.Option(None, help="Inner steps K [4]."),
    inner_optimizer: Optional[str] = typer.Option(None, help="sgd | adam | adamw [adamw]."),
    inner_lr: Optional[float] = typer.Option(None, help="Initial learned step size [1e-3]."),
    unroll: Optional[str] = typer.Option(None, help="second-order | first-order | truncated [truncated]."),
    unroll_start: Optional[int] = typer.Option(None, help="Truncated: first second-order step [1]."),
    weighting: Optional[bool] = typer.Option(None, "--weighting/--no-weighting", help="Token weighting [on]."),
    weighting_mode: Optional[str] = typer.Option(None, help="coefficients | legacy (the former rule, for "
                                                 "ablations) [coefficients]."),
    step_size_space: Optional[str] = typer.Option(None, help="log | softplus (the former one, for ablations) [log]."),
    engine: Optional[str] = typer.Option(None, help="func | higher [func]."),
    segment_tokens: Optional[int] = typer.Option(None, help="Max tokens a segment for plain documents [256]."),
    answer_format: Optional[str] = typer.Option(None, help="plain | support [plain]."),
    lr: Optional[float] = typer.Option(None, help="Outer AdamW learning rate [1e-4]."),
    step_size_lr: Optional[float] = typer.Option(None, help="Outer learning rate of the log step sizes [1e-2]."),
    cache_prefix: Optional[bool] = typer.Option(None, "--cache-prefix/--no-cache-prefix",
                                                help="Run the frozen layers below the LoRA once per group [on]."),
    schedule: Optional[str] = typer.Option(None, help="cosine | constant [cosine]."),
    warmup_steps: Optional[int] = typer.Option(None, help="Warm-up steps [10]."),
    clip: Optional[float] = typer.Option(None, help="Gradient clipping norm [1.0]."),
    tasks_per_batch: Optional[int] = typer.Option(None, help="Tasks an outer step [8]."),
    max_steps: Optional[int] = typer.Option(None, help="Outer steps [200]."),
    epochs: Optional[float] = typer.Option(None, help="Stop after this many passes over train, if sooner."),
    eval_every: Optional[int] = typer.Option(None, help="Validate every N steps [50]."),
    eval_tasks: Optional[int] = typer.Option(None, help="Validation tasks a pass [32]."),
    train_base: Optional[bool] = typer.Option(None, "--train-base/--no-train-base",
                                              help="Train the base too [on for tiny, off otherwise]."),
    baseline: Optional[bool] = typer.Option(None, "--baseline/--no-baseline", help="Train the in-context baseline."),
    seed: Optional[int] = typer.Option(None, help="Seed [0]."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | mps."),
    dtype: Optional[str] = typer.Option(None, help="auto | float32 | bfloat16."),
    json_output: bool = typer.Option(False, "--json", help="Print the final summary as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Meta-train PERK: LoRA init, step sizes and token weights, through the inner loop.

    Example: perk meta-train --model tiny --task babi --max-steps 100
    """
    from perk_cli import __version__
    from perk_cli.config import RunConfig
    from perk_cli.prepare import task_directory
    from perk_cli.settings_io import build_settings, read_config_file
    from perk_cli.train import Interrupted, meta_train

    if resume is not None:
        if not (resume / "last").is_dir():
            raise PerkError(f"--resume {resume}: no last/ checkpoint to resume from")
        out_dir = resume
    base = read_config_file(config) if config else {}
    def section(name: str, values: dict) -> dict:
        merged = dict(base.get(name, {}))
        merged.update({k: v for k, v in values.items() if v is not None})
        return merged
    model_name = model or base.get("model", {}).get("name", "tiny")
    flags = {
        "perk_version": __version__,
        "model": section("model", {"name": model_name, "device": device, "dtype": dtype}),
        "lora": section("lora", {"rank": lora_rank, "alpha": lora_alpha, "top_layers": lora_top_layers,
                                 "targets": lora_targets.split(",") if lora_targets else None}),
        "inner": section("inner", {"steps": inner_steps, "optimizer": inner_optimizer, "lr_init": inner_lr,
                                   "unroll": unroll, "unroll_start": unroll_start, "weighting": weighting,
                                   "weighting_mode": weighting_mode, "step_size_space": step_size_space,
                                   "engine": engine, "cache_prefix": cache_prefix}),
        "prompt": section("prompt", {"segment_tokens": segment_tokens, "answer_format": answer_format}),
        "train": section("train", {"lr": lr, "step_size_lr": step_size_lr, "schedule": schedule,
                                   "warmup_steps": warmup_steps, "clip": clip, "tasks_per_batch": tasks_per_batch, "max_steps": max_steps, "epochs": epochs,
                                   "eval_every": eval_every, "eval_tasks": eval_tasks, "baseline": baseline,
                                   "seed": seed,
                                   "train_base": train_base if train_base is not None else
                                   base.get("train", {}).get("train_base", model_name == "tiny")}),
    }
    task = task or base.get("task")
    if task is None and resume is None:
        raise PerkError("--task: missing; give a task directory from `perk prepare` or a name such as babi")
    if out_dir is None:
        stem = Path(model_name).stem.replace("/", "-")
        out_dir = Path("runs") / f"{stem}-{Path(task).name.replace(':', '-')}"
    if resume is None and (out_dir / "last").exists():
        raise PerkError(f"--out {out_dir}: already holds a run; pass --resume {out_dir} or another --out")
    if resume is not None:
        previous = json.loads((resume / "config.json").read_text()) if (resume / "config.json").is_file() else {}
        task = task or previous.get("task")
    rank = int(os.environ.get("RANK", "0"))  # under torchrun only rank 0 talks and writes
    quiet = quiet or rank != 0
    run_config = build_settings(RunConfig, None, flags)  # validate every setting before any work
    task_dir = task_directory(task, out_dir, model_name, run_config.train.seed, rank)
    if Path(task_dir) != Path(task) and not (quiet or json_output):
        err.print(f"--task {task}: using generated tasks in {task_dir}", markup=False)
    run_config = run_config.model_copy(update={"task": str(task_dir)})
    with _progress(quiet or json_output) as bar:
        handle = bar.add_task("meta-training", total=run_config.train.max_steps)

        def on_step(step: int, total: int, m: dict) -> None:
            val = f"  val EM {m['val_em']:.2f}" if "val_em" in m else ""
            bar.update(handle, completed=step, total=total,
                       description=f"meta-train  loss {m['outer_loss']:.3f}  inner {m['inner_loss_last']:.3f}{val}")

        baseline_bar = bar.add_task("in-context baseline", total=None, visible=False)

        def on_baseline(step: int, total: int, loss: float) -> None:
            bar.update(baseline_bar, completed=step, total=total, visible=True,
                       description=f"in-context baseline  loss {loss:.3f}")

        try:
            result = meta_train(run_config, task_dir, out_dir, resume=resume is not None, on_step=on_step,
                                on_event=lambda msg: err.print(msg, markup=False), on_baseline_step=on_baseline)
        except Interrupted as exc:
            err.print(f"{exc}; continue with: perk meta-train --resume {out_dir}", markup=False)
            raise typer.Exit(130)
        baseline_dir = result.baseline
    if rank != 0:
        return
    summary = {"out": str(out_dir), "steps": result.step, "best": result.best, "last": result.last_metrics,
               "in_context_baseline": str(baseline_dir) if baseline_dir else None}
    if json_output:
        out.print_json(json.dumps(summary))
    elif not quiet:
        out.print(f"run in {out_dir}: {result.step} steps; best validation EM {result.best['val_em']:.3f} "
                  f"(loss {result.best['val_loss']:.3f}) at step {result.best['step']}"
                  + (f"; in-context baseline in {baseline_dir}" if baseline_dir else "; no in-context baseline"))


@app.command("eval")
def eval_command(
    checkpoint: Path = typer.Option(..., help="Run or checkpoint directory from meta-train."),
    task: Path = typer.Option(..., help="Task directory from `perk prepare`."),
    split: Optional[str] = typer.Option(None, help="train | validation | test [test]."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Output directory [<run>/eval-<split>]."),
    limit: Optional[int] = typer.Option(None, help="Evaluate a seeded subsample of N tasks."),
    seed: Optional[int] = typer.Option(None, help="Subsample seed [0]."),
    baselines: Optional[str] = typer.Option(None, help="Comma list of in-context,plain-ttt ['' for none]."),
    plain_lr: Optional[float] = typer.Option(None, help="Plain-TTT learning rate [tuned on the validation split]."),
    max_tokens_per_step: Optional[int] = typer.Option(None, help="Tokens an accumulation group [4096]."),
    max_new_tokens: Optional[int] = typer.Option(None, help="Decoding budget [the checkpoint's, 64]."),
    model: Optional[str] = typer.Option(None, help="Override the checkpoint's base model path."),
    config: Optional[Path] = typer.Option(None, help="YAML or JSON EvalSettings; flags override it."),
    json_output: bool = typer.Option(False, "--json", help="Print metrics as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Evaluate PERK and its baselines: EM/F1 overall, by length and by fact position.

    Example: perk eval --checkpoint runs/tiny-qa1 --task data/qa1 --limit 100
    """
    from perk_cli.config import EvalSettings
    from perk_cli.evaluate import evaluate
    from perk_cli.settings_io import build_settings

    flags = dict(checkpoint=str(checkpoint), task=str(task), split=split, out=str(out_dir) if out_dir else None,
                 limit=limit, seed=seed, plain_lr=plain_lr, max_tokens_per_step=max_tokens_per_step,
                 max_new_tokens=max_new_tokens, model=model,
                 baselines=[b for b in baselines.split(",") if b] if baselines is not None else None)
    settings = build_settings(EvalSettings, config, flags)
    with _progress(quiet or json_output) as bar:
        handle = bar.add_task("evaluating", total=None)
        report = evaluate(settings, lambda done, total: bar.update(handle, completed=done, total=total))
    if json_output:
        out.print_json(json.dumps(report))
        return
    table = Table(title=escape(f"{settings.task} [{settings.split}], {report['n_tasks']} tasks"))
    buckets = sorted({b for m in report["methods"].values() for b in m["by_length"]},
                     key=lambda b: (b == "unknown", int(b) if b.isdigit() else 0))
    for column in ["method", "EM", "F1", *[f"EM@{b}" for b in buckets], "failures"]:
        table.add_column(column, justify="left" if column == "method" else "right")
    for method, m in report["methods"].items():
        table.add_row(method, f"{m['em']:.3f}", f"{m['f1']:.3f}",
                      *[f"{m['by_length'][b]['em']:.3f}" if b in m["by_length"] else "-" for b in buckets],
                      str(m["failures"]))
    out.print(table)
    for note in report["notes"]:
        out.print(f"note: {note}", markup=False)
    out.print(f"predictions, metrics.json and accuracy_vs_length.png in {report['out']}", markup=False)


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Where data, run and evaluations go."),
    minutes: float = typer.Option(4.0, min=0.01, help="Meta-training time budget when training here."),
    retrain: bool = typer.Option(False, help="Train from scratch even if a bundled checkpoint exists."),
    checkpoint: Optional[Path] = typer.Option(None, help="Use this checkpoint instead of training."),
    test_tasks: int = typer.Option(40, min=1, help="Held-out tasks at each length."),
    seed: int = typer.Option(0, help="Seed."),
    json_output: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only the final table."),
) -> None:
    """The whole pipeline, offline, in under 10 minutes on a CPU: prepare, meta-train, eval, adapt, ask.

    Example: perk demo
    """
    import dataclasses

    from perk_cli.demo import run_demo

    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "data").is_dir():
        raise PerkError(f"--out {out_dir}: not empty and not a previous demo; choose another directory")
    if out_dir.exists() and (out_dir / "run").exists() and checkpoint is None:
        import shutil

        shutil.rmtree(out_dir / "run")  # a previous demo's run: the demo always starts fresh
    say = (lambda message: None) if (quiet or json_output) else (lambda message: err.print(message, markup=False))
    with _progress(quiet or json_output) as bar:
        handle = bar.add_task("meta-training", total=None)
        result = run_demo(out_dir, minutes, retrain, checkpoint, test_tasks, seed, say,
                          lambda step, total, m: bar.update(handle, completed=step, description=(
                              f"meta-training  step {step}  loss {m['outer_loss']:.3f}")))
    if json_output:
        out.print_json(json.dumps({k: (str(v) if isinstance(v, Path) else v)
                                   for k, v in dataclasses.asdict(result).items()}))
        return
    table = Table(title=f"qa1 exact match, {test_tasks} held-out tasks a length")
    table.add_column("method")
    for length in result.lengths:
        label = "training length" if length == result.lengths[0] else f"{length // result.lengths[0]}x"
        table.add_column(f"{length} tokens ({label})", justify="right")
    names = {"perk": "PERK", "in-context": "in-context (FT-ICR)", "plain-ttt": "plain test-time training"}
    for method in ("perk", "in-context", "plain-ttt"):
        if method in result.em:
            table.add_row(names[method], *[f"{result.em[method].get(n, float('nan')):.3f}" for n in result.lengths])
    table.add_row("chance (1 of 9 places)", *[f"{result.chance:.3f}" for _ in result.lengths])
    out.print(table)
    source = "trained here (tiny preset)" if result.trained_here else str(result.checkpoint)
    out.print(f"checkpoint: {source}", markup=False)
    out.print(f"sample document ({len(result.document)} chars): {result.document[:160]}...", markup=False)
    out.print(f"question: {result.question}   gold: {result.gold}   PERK's answer from the memory: "
              f"{result.answer!r}", markup=False)
    out.print(f"files: {out_dir} (data/, run/, eval-*/predictions.jsonl and metrics.json, sample-memory.safetensors)"
              f"; {result.seconds / 60:.1f} minutes", markup=False)


def main() -> None:
    try:
        app()
    except PerkError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted", markup=False)
        sys.exit(130)


if __name__ == "__main__":
    main()
