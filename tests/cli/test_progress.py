"""The progress bar of long commands: on a terminal a bar, in a log file plain lines a run can be followed by."""

import io
import re

from rich.console import Console

from perk_cli.cli.common import progress


def _run(console: Console, quiet: bool = False, every: float = 0.0) -> str:
    with progress(quiet, every=every, console=console) as bar:
        handle = bar.add_task("meta-train", total=3)
        for step in range(1, 4):
            bar.update(handle, completed=step, description=f"meta-train  step {step}")
    return console.file.getvalue()


def test_a_logged_run_writes_a_plain_line_as_it_goes():
    text = _run(Console(file=io.StringIO(), force_terminal=False))
    lines = [line for line in text.splitlines() if line.strip()]
    assert [line.split("  ")[:3] for line in lines] == [["meta-train", "step 1", "1/3"],
                                                         ["meta-train", "step 2", "2/3"],
                                                         ["meta-train", "step 3", "3/3"]]
    assert all(line.endswith(" s") for line in lines)


def test_a_logged_run_writes_no_more_than_a_line_each_interval():
    assert _run(Console(file=io.StringIO(), force_terminal=False), every=3600.0).strip() == ""


def test_quiet_writes_nothing():
    assert _run(Console(file=io.StringIO(), force_terminal=False), quiet=True).strip() == ""


def test_a_terminal_gets_the_bar_not_log_lines():
    text = _run(Console(file=io.StringIO(), force_terminal=True, width=100))
    assert "━" in text and not re.search(r"\d/3  \d+ s", text)
