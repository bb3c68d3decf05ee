"""Ctrl-C ends every long command in one line that says what was kept and how to continue, exit 130."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from perk_cli.training.outer import Interrupted
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]


def test_ctrl_c_in_demo_train_here_is_one_line_and_exit_130(tmp_path):
    out = tmp_path / "demo"
    child = subprocess.Popen([sys.executable, "-m", "perk_cli.cli", "demo", "--train-here", "--minutes", "5",
                              "--test-tasks", "1", "-o", str(out), "-q"], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    metrics = out / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.is_file() and metrics.read_text().strip()):
        assert child.poll() is None and time.monotonic() < deadline, child.stderr.read()[-2000:]
        time.sleep(0.2)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=300)
    assert child.returncode == 130, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("interrupted at step") and f"rerun with perk demo --train-here -o {out}" in err


@pytest.mark.parametrize("flags, stop, expected", [
    (["--retrain"], Interrupted(7, Path("x/last")), "interrupted at step 7; checkpoint saved in x/last; rerun with "
     "perk demo --retrain -o {out} to continue (the recipe resumes from its last saved step)"),
    ([], KeyboardInterrupt(), "interrupted; rerun with perk demo -o {out} to start again"),
])
def test_a_stopped_demo_says_how_to_continue(flags, stop, expected, tmp_path, capsys, monkeypatch):
    def stopped(*args, **kwargs):
        raise stop

    monkeypatch.setattr("perk_cli.demo.run_demo", stopped)
    out = tmp_path / "demo"
    code, _, err = run_cli(["demo", *flags, "-o", str(out)], capsys)
    assert code == 130 and err.strip() == expected.format(out=out)
