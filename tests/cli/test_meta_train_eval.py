"""perk meta-train and perk eval as a user runs them: every output written, bad input in one line, a config
file under the flags, the flags reaching the config."""

import json
import shutil

import pytest
import torch

from perk_cli.training.meta_train import meta_train
from tests.conftest import run_cli, tiny_run_config

_config = tiny_run_config


def test_meta_train_and_eval_cli_write_every_output(qa1, tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = run_cli(["meta-train", "--task", str(qa1), "--out", str(run), "--max-steps", "2",
                              "--tasks-per-batch", "2", "--eval-every", "2", "--eval-tasks", "2", "--lora-rank", "4",
                              "--inner-steps", "2", "--unroll-start", "1", "--answer-weight", "3", "--json"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["steps"] == 2 and summary["in_context_baseline"].endswith("in-context")
    assert json.loads((run / "config.json").read_text())["train"]["answer_weight"] == 3.0
    code, out, err = run_cli(["eval", "--checkpoint", str(run), "--task", str(qa1), "--limit", "3",
                              "--max-new-tokens", "4", "--max-tokens-per-group", "40", "--out", str(tmp_path / "ev")],
                             capsys)
    assert code == 0, err
    for method in ("perk", "plain-ttt", "in-context"):
        assert method in out
    assert sorted(p.name for p in (tmp_path / "ev").iterdir()) == ["accuracy_vs_length.png", "eval.json",
                                                                  "metrics.json", "predictions.jsonl"]
    rows = [json.loads(l) for l in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 9 and {r["method"] for r in rows} == {"perk", "plain-ttt", "in-context"}
    assert {"id", "question", "gold", "prediction", "correct", "method"} <= set(rows[0])
    # the answer loss scored with each memory is recorded (PERK, plain TTT), not for the in-context baseline
    assert all(r["answer_loss"] > 0 for r in rows if r["method"] != "in-context")
    assert not any("answer_loss" in r for r in rows if r["method"] == "in-context")
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["n_tasks"] == 3 and set(metrics["methods"]) == {"perk", "plain-ttt", "in-context"}
    assert metrics["settings"]["max_tokens_per_group"] == 40
    code, _, err = run_cli(["eval", "--checkpoint", str(run), "--task", str(qa1), "--max-tokens-per-group", "0"],
                           capsys)
    assert code == 2 and "--max-tokens-per-group" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "ev" / "accuracy_vs_length.png").read_bytes()[:4] == b"\x89PNG"
    # a context beyond the model's positions is an in-context failure, reported, not skipped
    from perk_cli.config import PrepareSettings
    from perk_cli.prepare import prepare

    long_dir = tmp_path / "long"
    prepare(PrepareSettings(task="babi", subtask="qa1", facts=3, length=1400, train=0, validation=0, test=2,
                            out=str(long_dir)))
    code, out, err = run_cli(["eval", "--checkpoint", str(run), "--task", str(long_dir), "--max-new-tokens", "3",
                              "--out", str(tmp_path / "ev-long"), "--json"], capsys)
    assert code == 0, err
    icr = json.loads(out)["methods"]["in-context"]
    assert icr["n"] == 2 and icr["failures"] == 2 and icr["em"] == 0.0


@pytest.mark.parametrize("args, expected", [
    (["meta-train", "--task", "nosuchtask"], "unknown task"),
    (["meta-train", "--task", "babi:qa9"], "--task babi:qa9: --subtask must be one of"),
    (["meta-train", "--task", "babi", "--inner-steps", "-1"], "--inner-steps: "),
    (["meta-train", "--task", "babi", "--lora-rank", "0"], "--lora-rank: "),
    (["meta-train", "--task", "babi", "--max-steps", "0"], "--max-steps: "),
    (["meta-train", "--task", "babi", "--answer-weight", "0"], "--answer-weight: "),
])
def test_meta_train_bad_input(tmp_path, capsys, args, expected):
    code, _, err = run_cli([*args, "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()  # nothing generated or written before validation


def test_eval_bad_input(qa1, tmp_path, capsys):
    run = tmp_path / "run"
    meta_train(_config(max_steps=1, eval_every=1, baseline=False), qa1, run)
    no_split = tmp_path / "nosplit"
    shutil.copytree(qa1, no_split)
    (no_split / "test.jsonl").unlink()
    code, _, err = run_cli(["eval", "--checkpoint", str(run), "--task", str(no_split)], capsys)
    assert code == 2 and "split 'test' not found" in err
    from perk_cli.models.tiny import build_tiny_tokenizer
    from tests.conftest import micro_gpt2

    other = tmp_path / "other"
    micro_gpt2(dtype=torch.float32).save_pretrained(other)
    build_tiny_tokenizer().save_pretrained(other)
    capsys.readouterr()
    code, _, err = run_cli(["eval", "--checkpoint", str(run), "--task", str(qa1), "--model", str(other)], capsys)
    assert code == 2 and "does not fit" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["eval", "--checkpoint", str(tmp_path / "nope"), "--task", str(qa1)], capsys)
    assert code == 2 and "no such directory" in err


def test_meta_train_config_file_and_flag_override(qa1, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("lora:\n  rank: 2\n  alpha: 4\ninner:\n  steps: 2\n  unroll_start: 1\n"
                      "train:\n  max_steps: 1\n  tasks_per_batch: 1\n  eval_every: 1\n  eval_tasks: 1\n")
    code, _, err = run_cli(["meta-train", "--config", str(config), "--task", str(qa1), "--lora-rank", "3",
                            "--out", str(tmp_path / "r"), "--no-baseline", "-q"], capsys)
    assert code == 0, err
    saved = json.loads((tmp_path / "r" / "best" / "config.json").read_text())
    assert saved["lora"]["rank"] == 3 and saved["lora"]["alpha"] == 4 and saved["inner"]["steps"] == 2
    assert saved["train"]["train_base"] is True  # the tiny preset's default


def test_meta_train_step_size_lr_and_cache_prefix_flags_reach_the_config(qa1, tmp_path, capsys):
    args = ["meta-train", "--task", str(qa1), "--max-steps", "1", "--tasks-per-batch", "1", "--eval-tasks", "1",
            "--no-baseline", "-q"]
    code, _, err = run_cli(args + ["--out", str(tmp_path / "a"), "--step-size-lr", "0.05", "--no-cache-prefix",
                                   "--max-minutes", "30", "--tasks-per-forward", "2", "--eval-forced"], capsys)
    assert code == 0, err
    saved = json.loads((tmp_path / "a" / "last" / "config.json").read_text())
    assert saved["train"]["step_size_lr"] == 0.05 and saved["inner"]["cache_prefix"] is False
    assert saved["train"]["eval_decode"] is False
    assert saved["train"]["max_minutes"] == 30 and saved["train"]["tasks_per_forward"] == 2
    code, _, err = run_cli(args + ["--out", str(tmp_path / "b")], capsys)
    assert code == 0, err
    saved = json.loads((tmp_path / "b" / "last" / "config.json").read_text())
    assert saved["train"]["step_size_lr"] == 1e-2 and saved["inner"]["cache_prefix"] is True
    assert saved["train"]["max_minutes"] is None and saved["train"]["tasks_per_forward"] == 1
    assert saved["train"]["eval_decode"] is True
    code, _, err = run_cli(args + ["--out", str(tmp_path / "f"), "--tasks-per-forward", "0"], capsys)
    assert code == 2 and "--tasks-per-forward" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(args + ["--out", str(tmp_path / "c"), "--step-size-lr", "-1"], capsys)
    assert code == 2 and "--step-size-lr" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(args + ["--out", str(tmp_path / "d"), "--weighting-mode", "legacy",
                                   "--step-size-space", "softplus"], capsys)
    assert code == 0, err
    saved = json.loads((tmp_path / "d" / "last" / "config.json").read_text())
    assert saved["inner"]["weighting_mode"] == "legacy" and saved["inner"]["step_size_space"] == "softplus"
    assert saved["train"]["step_size_lr"] == 1e-2
    code, _, err = run_cli(args + ["--out", str(tmp_path / "e"), "--weighting-mode", "heavy"], capsys)
    assert code == 2 and "--weighting-mode" in err and len(err.strip().splitlines()) == 1


def test_eval_baselines_option_and_epochs_limit(qa1, tmp_path, capsys):
    run = tmp_path / "run"
    # 64 training tasks, 8 a step: half an epoch is 4 steps, fewer than --max-steps
    code, out, err = run_cli(["meta-train", "--task", str(qa1), "--out", str(run), "--max-steps", "50",
                              "--epochs", "0.5", "--tasks-per-batch", "8", "--eval-every", "50", "--eval-tasks", "1",
                              "--lora-rank", "2", "--inner-steps", "1", "--unroll", "first-order", "--no-baseline",
                              "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["steps"] == 4
    code, out, err = run_cli(["eval", "--checkpoint", str(run), "--task", str(qa1), "--limit", "2",
                              "--max-new-tokens", "2", "--baselines", "plain-ttt", "--json"], capsys)
    assert code == 0, err
    assert set(json.loads(out)["methods"]) == {"perk", "plain-ttt"}
    code, out, err = run_cli(["eval", "--checkpoint", str(run), "--task", str(qa1), "--limit", "2",
                              "--max-new-tokens", "2", "--baselines", "", "--json"], capsys)
    assert code == 0, err
    assert set(json.loads(out)["methods"]) == {"perk"}
