"""meta_train(): it learns, validates, saves only its own tensors, resumes exactly, batches tasks
without changing a number, stops on a signal at a step boundary, weighs the answer, trains the recite format."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
import torch
from safetensors.torch import load_file

from perk_cli.config import PromptSettings, RunConfig
from perk_cli.checkpoint import build_runtime
from perk_cli.training.meta_train import Interrupted, meta_train, validate
from perk_cli.data.schema import read_split as read_split_tasks
from tests.conftest import run_cli, tiny_run_config


ROOT = Path(__file__).resolve().parents[2]

_config = tiny_run_config


def test_meta_training_lowers_the_validation_answer_loss(qa1, tmp_path):
    from perk_cli.data.schema import read_split

    config = _config(max_steps=20, eval_every=20)
    torch.manual_seed(config.train.seed)
    before = validate(build_runtime(config), read_split(qa1, "validation"))
    result = meta_train(config, qa1, tmp_path / "run")
    assert result.last_metrics["val_loss"] < before["val_loss"] - 1.0, (before, result.last_metrics)
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == list(range(1, 21))
    assert {"outer_loss", "inner_loss_first", "inner_loss_last", "eta_mean", "grad_norm"} <= set(lines[0])
    assert "val_em" in lines[-1]
    for name in ("best", "last"):
        files = sorted(p.name for p in (tmp_path / "run" / name).iterdir())
        assert {"config.json", "meta.safetensors", "trainer_state.json"} <= set(files)
    assert (tmp_path / "run" / "last" / "optimizer.safetensors").is_file()


def test_teacher_forced_validation_decodes_nothing_and_keeps_the_answer_loss(qa1, tmp_path, monkeypatch):
    from perk_cli.data.schema import read_split

    val = read_split(qa1, "validation")
    torch.manual_seed(1)
    runtime = build_runtime(_config(max_steps=20))
    decoded = validate(runtime, val)
    runtime.config = _config(max_steps=20, eval_decode=False)

    def no_decoding(*args, **kwargs):
        raise AssertionError("teacher-forced validation decoded an answer")

    monkeypatch.setattr("perk_cli.prompts.generate_text", no_decoding)
    forced = validate(runtime, val)
    torch.testing.assert_close(forced["val_loss"], decoded["val_loss"], rtol=1e-9, atol=1e-12)
    assert forced["val_em"] <= decoded["val_em"] and (forced["val_em"] * len(val)).is_integer()
    # a whole run, the in-context baseline's validation included, validates without decoding
    result = meta_train(_config(max_steps=2, eval_every=1, eval_decode=False, baseline=True), qa1, tmp_path / "run")
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all({"val_loss", "val_em"} <= set(line) for line in lines)
    baseline = json.loads((result.baseline / "trainer_state.json").read_text())
    assert baseline["best"]["step"] in (1, 2) and math.isfinite(baseline["best"]["val_loss"])
    saved = json.loads((tmp_path / "run" / "best" / "config.json").read_text())
    assert saved["train"]["eval_decode"] is False


def test_checkpoint_holds_no_hub_base_weights(qa1, tmp_path):
    from perk_cli.models.tiny import build_tiny_tokenizer
    from tests.conftest import micro_gpt2

    local = tmp_path / "local-model"
    micro = micro_gpt2(dtype=torch.float32)
    micro.resize_token_embeddings(2048)  # room for the tiny tokenizer's ids
    micro.save_pretrained(local)
    build_tiny_tokenizer().save_pretrained(local)
    config = _config(max_steps=1, eval_every=1, train_base=False).model_copy(
        update={"model": RunConfig.model_fields["model"].default.model_copy(update={"name": str(local)})})
    meta_train(config, qa1, tmp_path / "run")
    tensors = load_file(str(tmp_path / "run" / "last" / "meta.safetensors"))
    assert tensors and all(k.startswith(("lora_init.", "step_sizes.", "weighter.")) for k in tensors)


def _strip(lines):
    return [{k: v for k, v in json.loads(l).items() if k != "seconds"} for l in lines]


def test_resume_after_ctrl_c_equals_an_uninterrupted_run(qa1, tmp_path):
    config = _config(max_steps=6, eval_every=2)
    meta_train(config, qa1, tmp_path / "straight")

    def interrupt(step, total, metrics):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted) as info:
        meta_train(config, qa1, tmp_path / "broken", on_step=interrupt)
    assert info.value.step == 3
    state = json.loads((tmp_path / "broken" / "last" / "trainer_state.json").read_text())
    assert state["step"] == 3
    meta_train(config, qa1, tmp_path / "broken", resume=True)
    a = load_file(str(tmp_path / "straight" / "last" / "meta.safetensors"))
    b = load_file(str(tmp_path / "broken" / "last" / "meta.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _strip((tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()) == \
           _strip((tmp_path / "broken" / "metrics.jsonl").read_text().splitlines())


def test_step_sizes_move_at_their_own_learning_rate(qa1, tmp_path):
    from safetensors.torch import load_file as load

    config = _config(max_steps=1, eval_every=1, lr=1e-7, step_size_lr=0.05, warmup_steps=0, train_base=False,
                     schedule="constant", baseline=False, clip=1e6)
    torch.manual_seed(config.train.seed)
    before = build_runtime(config).meta.trainable_state_dict()
    meta_train(config, qa1, tmp_path / "run")
    after = load(tmp_path / "run" / "last" / "meta.safetensors")
    # AdamW's first step moves every entry with a gradient by lr (m/sqrt(v) = sign(g), bias-corrected).
    moved = (after["step_sizes.log_eta"] - before["step_sizes.log_eta"]).abs()  # eta moves by a factor e^0.05
    # (At inner step 0 B is still zero, so the A tensors' step-0 sizes get no gradient and stay put.)
    assert torch.allclose(moved[moved > 0], torch.tensor(0.05), rtol=1e-3) and bool((moved[1] > 0).all())
    lora_moves = max((after[k] - before[k]).abs().max() for k in before if k.startswith("lora_init."))
    assert lora_moves <= 1.01e-7


def test_plan_run_decides_where_a_run_goes_before_any_training(qa1, tmp_path, monkeypatch):
    from perk_cli.errors import PerkError
    from perk_cli.training.meta_train import plan_run

    monkeypatch.chdir(tmp_path)
    config = _config(max_steps=1, eval_tasks=2, baseline=False)
    plan = plan_run(config, str(qa1))
    assert plan.out == Path("runs") / f"tiny-{qa1.name}" and plan.task_dir == qa1 and not plan.generated
    assert plan.config.task == str(qa1) and not plan.resume
    named = plan_run(config, "babi:qa2", tmp_path / "named")
    assert named.generated and named.task_dir == tmp_path / "named" / "data"
    assert json.loads((named.task_dir / "prepare.json").read_text())["settings"]["subtask"] == "qa2"
    meta_train(plan.config, plan.task_dir, tmp_path / "done")
    with pytest.raises(PerkError, match="already holds a run; pass --resume"):
        plan_run(config, str(qa1), tmp_path / "done")
    resumed = plan_run(config, None, resume=tmp_path / "done")  # the task comes from the run's own config
    assert resumed.resume and resumed.out == tmp_path / "done" and resumed.task_dir == qa1
    with pytest.raises(PerkError, match="no last/ checkpoint"):
        plan_run(config, None, resume=tmp_path / "nothing")
    with pytest.raises(PerkError, match="--task: missing"):
        plan_run(config, None, tmp_path / "x")


def test_tasks_per_forward_batches_the_step_and_changes_no_number(qa1, tmp_path, monkeypatch):
    from perk_cli.config import ModelSettings
    from perk_cli.engine.meta import MetaLearner

    sizes = []
    original = MetaLearner.meta_losses
    monkeypatch.setattr(MetaLearner, "meta_losses",
                        lambda self, tasks, *rest: sizes.append(len(tasks)) or original(self, tasks, *rest))

    def run(name, **train):
        # float64: an unrolled Adam step's meta-gradient is ill-conditioned in float32 (Adam's slope
        # lr/eps near g = 0), so float32 runs drift apart by a few lr after outer steps
        config = _config(max_steps=2, eval_every=2, eval_tasks=2, **train)
        meta_train(config.model_copy(update={"model": ModelSettings(name="tiny", dtype="float64")}), qa1,
                   tmp_path / name)
        return load_file(str(tmp_path / name / "last" / "meta.safetensors")), \
            [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    one, one_lines = run("one")
    assert sizes == [1] * 8
    sizes.clear()
    three, three_lines = run("three", tasks_per_forward=3)
    assert sizes == [3, 1] * 2  # 4 tasks per step: a batch of 3, then the rest
    for a, b in zip(one_lines, three_lines):
        for key in ("outer_loss", "inner_loss_first", "inner_loss_last", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-9)
    assert one.keys() == three.keys()
    for key in one:  # a wrong step would differ by about the outer lr (3e-3)
        torch.testing.assert_close(three[key], one[key], rtol=1e-6, atol=1e-8)
    assert json.loads((tmp_path / "three" / "last" / "config.json").read_text())["train"]["tasks_per_forward"] == 3
    sizes.clear()  # resuming takes this invocation's tasks per forward
    config = _config(max_steps=3, eval_every=2, eval_tasks=2, tasks_per_forward=2)
    meta_train(config.model_copy(update={"model": ModelSettings(name="tiny", dtype="float64")}), qa1,
               tmp_path / "one", resume=True)
    assert sizes[:2] == [2, 2] and json.loads((tmp_path / "one" / "last" / "config.json").read_text())["train"][
        "tasks_per_forward"] == 2


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT-in-background"])
def test_a_signal_stops_the_run_at_a_step_boundary_and_resume_is_exact(qa1, tmp_path, how):
    import signal
    import time

    base = [sys.executable, "-m", "perk_cli.cli", "meta-train", "--task", str(qa1), "--tasks-per-batch", "2",
            "--eval-every", "1000", "--eval-tasks", "1", "--lora-rank", "2", "--inner-steps", "1", "--no-baseline",
            "-q"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    ignore_int = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if how.startswith("SIGINT") else None
    run = tmp_path / "stopped"
    total = 40  # a tiny step takes a fraction of a second: the signal comes long before the end
    child = subprocess.Popen(base + ["--max-steps", str(total), "--out", str(run)], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ignore_int)
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
        assert child.poll() is None and time.monotonic() < deadline, child.stderr.read()[-2000:]
        time.sleep(0.2)
    child.send_signal(signal.SIGTERM if how == "SIGTERM" else signal.SIGINT)
    _, err = child.communicate(timeout=300)
    assert child.returncode == 130, err[-2000:]
    assert "continue with: perk meta-train --resume" in err
    steps = len(metrics.read_text().splitlines())  # every finished step was logged, and none after it
    state = json.loads((run / "last" / "trainer_state.json").read_text())
    assert state["step"] == steps and 3 <= steps < total
    if how != "SIGTERM":
        return  # the stop is the same path; exactness is checked once
    resumed = subprocess.run(base + ["--resume", str(run), "--max-steps", str(total)], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    straight = subprocess.run(base + ["--max-steps", str(total), "--out", str(tmp_path / "straight")], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-2000:]
    a = load_file(str(run / "last" / "meta.safetensors"))
    b = load_file(str(tmp_path / "straight" / "last" / "meta.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_runs_answer_weight_reaches_every_loss_it_weighs(qa1, tmp_path, monkeypatch):
    """train.answer_weight is what meta-training's outer loss, PERK's validation loss and the in-context
    baseline's training and validation losses are computed with."""
    from perk_cli.engine import meta as meta_module
    from perk_cli.training import in_context

    seen = {"meta_losses": set(), "perk validation": set(), "in-context": set()}
    meta_losses, answer_loss = meta_module.MetaLearner.meta_losses, meta_module.MetaLearner.answer_loss
    icr_loss, icr_scores = in_context.answer_loss, in_context.answer_scores

    def spy(key, original):
        def call(*args):
            seen[key].add(args[-1])
            return original(*args)
        return call

    monkeypatch.setattr(meta_module.MetaLearner, "meta_losses", spy("meta_losses", meta_losses))
    monkeypatch.setattr(meta_module.MetaLearner, "answer_loss", spy("perk validation", answer_loss))
    monkeypatch.setattr(in_context, "answer_loss", spy("in-context", icr_loss))
    monkeypatch.setattr(in_context, "answer_scores", spy("in-context", icr_scores))
    meta_train(_config(max_steps=1, eval_every=1, eval_tasks=2, tasks_per_batch=2, answer_weight=7.0), qa1,
               tmp_path / "run")
    assert seen == {"meta_losses": {7.0}, "perk validation": {7.0}, "in-context": {7.0}}


def test_a_recite_format_run_trains_evaluates_and_refuses_targets_cut_before_their_answer(qa1, tmp_path, capsys):
    """--answer-format recite reaches the run and the evaluation (answers read after the restated question);
    a target cap that would cut training targets before their answer is one line, with nothing written."""
    from perk_cli.models.base import load_tokenizer
    from perk_cli.prompts import answer_lengths

    tasks = read_split_tasks(qa1, "train")
    prompt = PromptSettings(answer_format="recite")
    lengths = answer_lengths(load_tokenizer("tiny"), tasks, prompt)
    assert min(lengths) > 8 and max(lengths) <= prompt.max_answer_tokens
    one_step = ["meta-train", "--task", str(qa1), "--max-steps", "1", "--tasks-per-batch", "1", "--eval-tasks", "1",
                "--no-baseline", "-q", "--lora-rank", "3", "--inner-steps", "2", "--answer-format", "recite"]
    file = tmp_path / "short.yaml"
    file.write_text(yaml.safe_dump({"prompt": {"max_answer_tokens": max(lengths) - 1}}))
    code, _, err = run_cli(one_step + ["--config", str(file), "--out", str(tmp_path / "short")], capsys)
    assert code == 2 and str(qa1) in err and "cut before their answer" in err and f"needs {max(lengths)}" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "short").exists()
    code, _, err = run_cli(one_step + ["--out", str(tmp_path / "r")], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "r" / "last" / "config.json").read_text())["prompt"]["answer_format"] == "recite"
    code, out, err = run_cli(["eval", "--checkpoint", str(tmp_path / "r"), "--task", str(qa1), "--baselines", "",
                              "--limit", "2", "--out", str(tmp_path / "ev"), "--json", "-q"], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    from perk_cli.prompts import extract_answer

    assert all(row["prediction"] == extract_answer(row["raw"], prompt) for row in rows)
