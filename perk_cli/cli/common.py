"""What every command shares: the Typer app, the consoles, the common options, the progress bar, and the
checks a command makes of its arguments before any work."""

from __future__ import annotations

import math
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from perk_cli import __version__
from perk_cli.errors import PerkError, os_error_line

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


def json_option(what: str):
    return typer.Option(False, "--json", help=f"Print {what} as JSON.")


def quiet_option(help: str = "No progress bar."):
    return typer.Option(False, "--quiet", "-q", help=help)


def config_option(what: str):
    return typer.Option(None, help=f"YAML or JSON {what}; flags override it.")


class _LoggedProgress(Progress):
    """A progress bar that, where stderr is not a terminal (a run logged to a file under nohup), writes one
    plain line at most every `every` seconds instead, so a long run's log shows where it is."""

    def __init__(self, *columns, every: float = 30.0, **kwargs) -> None:
        super().__init__(*columns, **kwargs)
        self._logging = not self.disable and not self.console.is_terminal
        self._every, self._last_line = every, time.monotonic()

    def update(self, task_id, **kwargs) -> None:
        super().update(task_id, **kwargs)
        self._log(task_id)

    def advance(self, task_id, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._log(task_id)

    def _log(self, task_id) -> None:
        now = time.monotonic()
        if self._logging and now - self._last_line >= self._every:
            self._last_line = now
            task = self._tasks[task_id]
            total = f"/{task.total:g}" if task.total is not None else ""
            self.console.print(f"{task.description}  {task.completed:g}{total}  "
                               f"{task.elapsed or 0.0:.0f} s", markup=False, highlight=False, soft_wrap=True)


def progress(quiet: bool, every: float = 30.0, console: Console | None = None) -> Progress:
    return _LoggedProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                           TimeRemainingColumn(), console=console or err, disable=quiet, transient=True, every=every)



def check_device(device: str | None) -> None:
    if device is not None and device not in ("auto", "cpu", "cuda", "mps"):
        raise PerkError(f"--device {device}: expected auto, cpu, cuda or mps")


def check_lr(lr: float, option: str, what: str = "a learning rate") -> None:
    if not math.isfinite(lr) or lr <= 0:
        raise PerkError(f"{option} {lr}: {what} is a finite positive number")


def check_writable(path: Path, option: str) -> None:
    """The folder of an output file exists (or can be made) and takes a file, before any work."""
    import tempfile

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=True):
            pass
    except OSError as exc:
        raise PerkError(f"{option} {path}: cannot write there ({os_error_line(exc)})")
