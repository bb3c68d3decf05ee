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
