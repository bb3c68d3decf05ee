"""experiments/inner_steps.py: which (K, size) pairs it scores, the scores against validation's own, and the
checkpoint it saves."""

import json
import math
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from perk_cli import __version__
from perk_cli.config import InnerLoopSettings, LoraSettings, PromptSettings, RunConfig, TrainSettings
from perk_cli.data.schema import read_split
from perk_cli.checkpoint import load_runtime
from perk_cli.training.meta_train import meta_train, validate
from tests.conftest import experiment_module, prepared_qa1

SCRIPT = Path(__file__).resolve().parents[1] / "inner_steps.py"


def test_a_count_without_added_steps_is_scored_once():
    pairs = experiment_module("inner_steps").pairs
    assert pairs([2, 4, 6], [1e-3, 3e-4], trained=4) == [(2, 1e-3), (4, 1e-3), (6, 1e-3), (6, 3e-4)]


def _run(script_args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *script_args], capture_output=True, text=True)


def test_the_sweep_scores_as_validation_does_and_save_writes_that_checkpoint(tmp_path_factory, tmp_path):
    data = prepared_qa1(tmp_path_factory, train=8, validation=3, test=0, seed=2)
    config = RunConfig(perk_version=__version__, lora=LoraSettings(rank=2, alpha=4),
                       inner=InnerLoopSettings(steps=2, lr_init=1e-2), prompt=PromptSettings(segment_tokens=32),
                       train=TrainSettings(max_steps=1, tasks_per_batch=1, eval_tasks=1, train_base=True,
                                           baseline=False, eval_decode=False))
    meta_train(config, data, tmp_path / "run")
    rows_path = tmp_path / "rows.jsonl"
    done = _run([str(tmp_path / "run"), str(data), "--steps", "2,3", "--added-lr", "1e-3,3e-1", "--out",
                 str(rows_path)])
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1].split()[:2] == ["K", "added"] and len(done.stdout.splitlines()) == 5
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()]
    assert [(r["steps"], r["added_lr"]) for r in rows] == [(2, None), (3, 1e-3), (3, 3e-1)]
    tasks = read_split(data, "validation")
    runtime, _ = load_runtime(tmp_path / "run")
    trained = validate(runtime, tasks)  # the run validates teacher-forced (eval_decode False)
    assert math.isclose(rows[0]["loss"], trained["val_loss"], rel_tol=1e-5)  # K as trained: the run's own score
    assert rows[0]["forced_em"] == trained["val_em"]
    assert len({round(r["loss"], 6) for r in rows}) == 3  # an added step, and its size, change the memory

    # --decode scores as a decoding validation would (the run's own config with eval_decode on)
    done = _run([str(tmp_path / "run"), str(data), "--decode", "--out", str(rows_path)])
    assert done.returncode == 0, done.stderr
    assert "decoded EM" in done.stdout.splitlines()[1]
    decoded = json.loads(rows_path.read_text())
    runtime.config = runtime.config.model_copy(update={"train": runtime.config.train.model_copy(
        update={"eval_decode": True})})
    by_decoding = validate(runtime, tasks)
    assert decoded["em"] == by_decoding["val_em"] and "forced_em" not in decoded
    assert math.isclose(decoded["loss"], by_decoding["val_loss"], rel_tol=1e-5)

    done = _run([str(tmp_path / "run"), "--save", "3:3e-1", "--out", str(tmp_path / "k3")])
    assert done.returncode == 0, done.stderr
    saved = json.loads((tmp_path / "k3" / "config.json").read_text())["inner"]
    assert (saved["steps"], saved["lr_init"]) == (3, 0.3)
    source = load_file(str(tmp_path / "run" / "best" / "meta.safetensors"))["step_sizes.log_eta"]
    eta = load_file(str(tmp_path / "k3" / "meta.safetensors"))["step_sizes.log_eta"]
    assert torch.equal(eta[:2], source) and torch.allclose(eta[2], torch.full_like(eta[2], math.log(0.3)))
    extended, _ = load_runtime(tmp_path / "k3")
    assert math.isclose(validate(extended, tasks)["val_loss"], rows[2]["loss"], rel_tol=1e-5)

    done = _run([str(tmp_path / "run"), "--save", "1:3e-1", "--out", str(tmp_path / "k1")])
    assert done.returncode == 0, done.stderr
    fewer = json.loads((tmp_path / "k1" / "config.json").read_text())["inner"]
    assert (fewer["steps"], fewer["lr_init"]) == (1, 1e-2)  # no step added: the checkpoint's lr_init stays
    assert torch.equal(load_file(str(tmp_path / "k1" / "meta.safetensors"))["step_sizes.log_eta"], source[:1])

    for bad, said in ((["--save", "three"], "--save three: expected K:LR"),
                      ([str(data), "--steps", "six"], "expected comma-separated numbers"),
                      (["--save", "3:1e-3"], "--save: needs --out"), ([], "tasks: a task directory")):
        done = _run([str(tmp_path / "run"), *bad])
        assert done.returncode == 2 and said in done.stderr.strip().splitlines()[-1], done.stderr
    done = _run([str(tmp_path / "nowhere"), str(data)])
    assert done.returncode == 2 and "nowhere" in done.stderr.strip().splitlines()[-1]
