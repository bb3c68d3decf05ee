"""The `perk` command line: one function a command, each parsing flags into settings and calling the library."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
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


def _read_document(document: str) -> tuple[str | None, list[str] | None]:
    """(text, None) for a text file or '-' (stdin); (None, segments) for a task record file."""
    from perk_cli.data.schema import read_tasks, read_text

    if document == "-":
        data = sys.stdin.buffer.read()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise PerkError("stdin: not valid UTF-8; re-encode the document as UTF-8")
        if not text.strip() or "\x00" in text:
            raise PerkError("stdin: empty or binary input; pipe a UTF-8 text document")
        return text, None
    path = Path(document)
    if path.suffix in (".jsonl", ".json"):
        tasks = read_tasks(path)
        if not tasks:
            raise PerkError(f"{path}: no task records")
        return None, tasks[0].context
    return read_text(path), None


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
    json_output: bool = typer.Option(False, "--json", help="Print the memory's metadata as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Write a document into a memory file by test-time gradient steps.

    Example: perk adapt doc.txt -o mem.safetensors --checkpoint runs/qa1
    """
    from perk_cli.adapt import adapt_segments, adapt_text, load_adapter
    from perk_cli.memory import export_peft

    if output.exists() and output.is_dir():
        raise PerkError(f"--out {output}: is a directory; give a file name like mem.safetensors")
    text, segments = _read_document(document)
    runtime, origin = load_adapter(checkpoint, model, plain_steps=steps, plain_lr=lr)
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
                  f"tokens, final inner loss {memory.metadata['final_inner_loss']}"
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
