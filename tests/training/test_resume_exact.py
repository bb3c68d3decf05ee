"""A stopped or crashed meta-training run keeps its work: --resume continues the saved run exactly (its own
settings, not the flags' defaults), last/ is saved on a wall-clock interval too, metrics.jsonl logs each
step once, and the in-context baseline trained after PERK saves and resumes the same way."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from perk_cli import __version__
from perk_cli.config import InnerLoopSettings, LoraSettings, PromptSettings, RunConfig, TrainSettings
from perk_cli.training.meta_train import Interrupted, meta_train
from tests.conftest import prepared_qa1, run_cli

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--tasks-per-batch", "2", "--eval-every", "1000", "--eval-tasks", "1", "--lora-rank", "2", "--inner-steps",
         "1", "--no-baseline", "-q"]


@pytest.fixture(scope="module")
def qa1(tmp_path_factory):
    return prepared_qa1(tmp_path_factory, train=16, validation=2, test=2, seed=11)


def _same_tensors(a: Path, b: Path) -> bool:
    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_continues_the_saved_run_and_refuses_a_flag_that_would_change_it(qa1, tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = run_cli(["meta-train", "--task", str(qa1), "--out", str(run), "--max-steps", "3", "--lr", "3e-3",
                            *SMALL], capsys)
    assert code == 0, err
    # no --max-steps: the saved run's 3, not the flag's default 200
    code, out, err = run_cli(["meta-train", "--resume", str(run), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["steps"] == 3 and _steps(run) == [1, 2, 3]
    for args, flag in ((["--lr", "1e-2"], "--lr"), (["--lora-rank", "4"], "--lora-rank"),
                       (["--inner-steps", "2"], "--inner-steps"), (["--model", "gpt2"], "--model"),
                       (["--task", str(tmp_path)], "--task")):
        code, _, err = run_cli(["meta-train", "--resume", str(run), *args], capsys)
        assert code == 2 and err.startswith(f"error: {flag}") and len(err.strip().splitlines()) == 1, err
    config = tmp_path / "other.yaml"
    config.write_text("train:\n  warmup_steps: 7\n")
    code, _, err = run_cli(["meta-train", "--resume", str(run), "--config", str(config)], capsys)
    assert code == 2 and f"--config {config}" in err and "warmup_steps" in err
    code, _, err = run_cli(["meta-train", "--resume", str(run), "--max-steps", "2"], capsys)
    assert code == 2 and "--max-steps 2" in err and "taken 3 steps" in err
    # a flag equal to the saved value, and those that change no number, are taken; --max-steps extends it
    code, out, err = run_cli(["meta-train", "--resume", str(run), "--lr", "0.003", "--tasks-per-forward", "2",
                              "--max-steps", "5", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["steps"] == 5 and _steps(run) == [1, 2, 3, 4, 5]
    saved = json.loads((run / "last" / "config.json").read_text())
    assert saved["train"]["max_steps"] == 5 and saved["train"]["lr"] == 0.003


def test_a_killed_run_resumes_from_its_timed_save_to_the_uninterrupted_runs_weights(qa1, tmp_path):
    base = [sys.executable, "-m", "perk_cli.cli", "meta-train", "--task", str(qa1), "--max-steps", "12",
            "--save-minutes", "0.0001", *SMALL]  # last/ after every step: the timer, never validation (every 1000)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = tmp_path / "killed"
    child = subprocess.Popen(base + ["--out", str(run)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not ((run / "metrics.jsonl").is_file() and len(_steps(run)) >= 4):
        assert child.poll() is None and time.monotonic() < deadline, child.stderr.read()[-2000:]
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)  # no handler runs: what is on disk is all there is
    child.wait()
    saved = json.loads((run / "last" / "trainer_state.json").read_text())["step"]
    assert 3 <= saved < 12
    with open(run / "metrics.jsonl", "a") as f:  # a step logged after the last save, then a torn line
        f.write(json.dumps({"step": saved + 1, "outer_loss": 0.0}) + "\n" + '{"step": ')
    resumed = subprocess.run(base + ["--resume", str(run)], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    straight = subprocess.run(base + ["--out", str(tmp_path / "straight")], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-2000:]
    assert _same_tensors(run / "last" / "meta.safetensors", tmp_path / "straight" / "last" / "meta.safetensors")
    assert _steps(run) == list(range(1, 13))  # each step once


def _config(**train):
    values = dict(max_steps=4, tasks_per_batch=2, eval_every=2, eval_tasks=2, lr=3e-3, warmup_steps=1, train_base=True,
                  seed=1, baseline=True)
    return RunConfig(perk_version=__version__, lora=LoraSettings(rank=2, alpha=4), inner=InnerLoopSettings(steps=1),
                     prompt=PromptSettings(segment_tokens=32), train=TrainSettings(**{**values, **train}))


def test_the_in_context_baseline_stopped_part_way_resumes_to_the_uninterrupted_baseline(qa1, tmp_path):
    straight = meta_train(_config(), qa1, tmp_path / "straight")

    def stop_at_three(step, total, loss):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted) as info:
        meta_train(_config(), qa1, tmp_path / "stopped", on_baseline_step=stop_at_three)
    assert info.value.step == 3 and not (tmp_path / "stopped" / "in-context").exists()
    state = json.loads((tmp_path / "stopped" / "in-context-work" / "last" / "trainer_state.json").read_text())
    assert state["step"] == 3
    resumed = meta_train(_config(), qa1, tmp_path / "stopped", resume=True)
    assert resumed.step == straight.step == 4
    assert _same_tensors(straight.baseline / "meta.safetensors", resumed.baseline / "meta.safetensors")
    assert json.loads((resumed.baseline / "trainer_state.json").read_text()) == \
        json.loads((straight.baseline / "trainer_state.json").read_text())
    assert not (tmp_path / "stopped" / "in-context-work").exists()
    # resumed again once finished: nothing is trained again
    calls = []
    meta_train(_config(), qa1, tmp_path / "stopped", resume=True, on_baseline_step=lambda *a: calls.append(a))
    assert calls == []


def test_last_is_saved_on_the_clock_between_validations(qa1, tmp_path, monkeypatch):
    import types

    import perk_cli.training.outer as outer

    now = [0.0]
    monkeypatch.setattr(outer, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    saves = []
    real = __import__("perk_cli.training.meta_train", fromlist=["save_checkpoint"]).save_checkpoint

    def recording(directory, *args, **kwargs):
        saves.append((Path(directory).name, now[0]))
        return real(directory, *args, **kwargs)

    monkeypatch.setattr("perk_cli.training.meta_train.save_checkpoint", recording)

    def tick(step, total, metrics):
        now[0] += 61.0  # each step takes a little over the 1-minute interval

    meta_train(_config(max_steps=4, eval_every=100, baseline=False, save_minutes=1.0), qa1, tmp_path / "run",
               on_step=tick)
    # step 1 ends at 0 s (not due); steps 2 and 3 end 61 s after the last save (due); step 4 is validated
    assert [name for name, _ in saves if name == "last"] == ["last"] * 3
    assert json.loads((tmp_path / "run" / "last" / "trainer_state.json").read_text())["step"] == 4
