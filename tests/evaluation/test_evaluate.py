"""evaluate(): the base baseline is the base without its adapter, its answers read as plain text under a
support-format run, and --inner-steps adapts as a checkpoint saved with that count does."""

import json

import pytest
import torch

from perk_cli.training.meta_train import meta_train
from perk_cli.data.schema import read_split as read_split_tasks
from tests.conftest import run_cli, tiny_run_config

_config = tiny_run_config


def test_eval_base_baseline_is_the_base_without_its_adapter(qa1, tmp_path, capsys):
    from perk_cli.data.schema import read_split
    from perk_cli.engine.lora import lora_parameters, lora_values
    from perk_cli.checkpoint import load_runtime
    from perk_cli.training.in_context import answer_in_context

    config = _config(max_steps=2, eval_every=2, baseline=False)
    meta_train(config, qa1, tmp_path / "run")
    code, out, err = run_cli(["eval", "--checkpoint", str(tmp_path / "run"), "--task", str(qa1), "--limit", "3",
                              "--max-new-tokens", "3", "--baselines", "base", "--out", str(tmp_path / "ev"),
                              "--json"], capsys)
    assert code == 0, err
    assert set(json.loads(out)["methods"]) == {"perk", "base"}
    rows = [json.loads(l) for l in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    base_rows = {r["id"]: r for r in rows if r["method"] == "base"}
    assert len(base_rows) == 3
    runtime, _ = load_runtime(tmp_path / "run")
    lora = lora_parameters(runtime.model)
    assert any(float(p.detach().abs().max()) > 0 for n, p in lora.items() if ".lora_B." in n)  # the adapter is not a no-op
    tasks = {t.id: t for t in read_split(qa1, "test")}
    zero_b = {n: torch.zeros_like(p) for n, p in lora.items() if ".lora_B." in n}
    with lora_values(runtime.model, zero_b):  # the LoRA's contribution is B @ A = 0: the base alone
        for task_id, row in base_rows.items():
            answer, raw = answer_in_context(runtime, tasks[task_id], 3)
            assert (answer, raw) == (row["prediction"], row["raw"])
    code, _, err = run_cli(["eval", "--checkpoint", str(tmp_path / "run"), "--task", str(qa1), "--baselines",
                            "base,bogus", "--out", str(tmp_path / "ev2")], capsys)
    assert code == 2 and "--baselines" in err and len(err.strip().splitlines()) == 1


def test_eval_reads_the_base_baselines_answer_as_plain_text_under_a_support_format_run(qa1, tmp_path, capsys):
    """A support-format run's base was never taught the tags, nor was plain TTT's fresh LoRA: their answer
    is the first line of what they decode, not an empty <output> match (which scored a reading base 0.00
    instead of 0.97)."""
    config = _config(max_steps=1, eval_every=1, baseline=False)
    config = config.model_copy(update={"prompt": config.prompt.model_copy(update={"answer_format": "support"})})
    meta_train(config, qa1, tmp_path / "run")
    code, _, err = run_cli(["eval", "--checkpoint", str(tmp_path / "run"), "--task", str(qa1), "--limit", "4",
                            "--max-new-tokens", "4", "--baselines", "base,plain-ttt", "--plain-lr", "1e-3",
                            "--out", str(tmp_path / "ev")], capsys)
    assert code == 0, err
    rows = [json.loads(l) for l in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    for method in ("base", "plain-ttt"):
        plain = [r for r in rows if r["method"] == method]
        assert len(plain) == 4 and all("<output>" not in r["raw"] for r in plain)
        assert [r["prediction"] for r in plain] == [r["raw"].strip().split("\n", 1)[0].strip() for r in plain]
        assert any(r["prediction"] for r in plain), method  # the old reading gave "" for every one of these
    # plain TTT's answer loss is the plain answer's, not the support target's (tags, facts and answer)
    from perk_cli.evaluation.evaluate import plain_reader
    from perk_cli.memory import perk_answer, plain_ttt
    from perk_cli.models.lora import peft_init
    from perk_cli.prompts import encode_context, encode_task
    from perk_cli.checkpoint import load_runtime

    runtime, _ = load_runtime(tmp_path / "run")
    task = read_split_tasks(qa1, "test")[0]
    context = encode_context(runtime.tokenizer, task.context, runtime.config.prompt, max_len=runtime.max_positions)
    lora = plain_ttt(runtime, context, peft_init(runtime.model, 0), 1e-3).params
    plain = plain_reader(runtime)
    assert plain.config.prompt.answer_format == "plain" and runtime.config.prompt.answer_format == "support"
    assert plain.config.prompt.segment_tokens == runtime.config.prompt.segment_tokens
    plain_target = encode_task(runtime.tokenizer, task, plain.config.prompt, max_len=runtime.max_positions)
    expected = float(runtime.meta.answer_loss(lora, plain_target.question).detach())
    assert perk_answer(plain, task, 4, lora=lora)[2] == pytest.approx(expected, rel=1e-6)
    assert abs(perk_answer(runtime, task, 4, lora=lora)[2] - expected) > 1e-3


def test_eval_inner_steps_adapts_as_the_checkpoint_saved_with_that_count_does(qa1, tmp_path, capsys):
    """--inner-steps K --added-lr LR scores PERK exactly as a checkpoint saved with K steps (the added at LR)
    would, records both in metrics.json, and refuses a count below 1 in one line naming the flag."""
    from perk_cli.checkpoint import read_checkpoint, save_checkpoint, with_inner_steps

    run = tmp_path / "run"
    meta_train(_config(max_steps=1, eval_every=1, baseline=False), qa1, run)
    common = ["--task", str(qa1), "--limit", "3", "--max-new-tokens", "3", "--baselines", "", "--json"]
    code, out, err = run_cli(["eval", "--checkpoint", str(run), "--inner-steps", "3", "--added-lr", "0.3",
                              "--out", str(tmp_path / "ev3"), *common], capsys)
    assert code == 0, err
    assert json.loads(out)["settings"]["inner_steps"] == 3 and json.loads(out)["settings"]["added_lr"] == 0.3
    files = read_checkpoint(run)
    save_checkpoint(tmp_path / "k3", *with_inner_steps(files.config, files.tensors, 3, 0.3))
    code, _, err = run_cli(["eval", "--checkpoint", str(tmp_path / "k3"), "--out", str(tmp_path / "saved"),
                            *common], capsys)
    assert code == 0, err
    code, _, err = run_cli(["eval", "--checkpoint", str(run), "--out", str(tmp_path / "ev2"), *common], capsys)
    assert code == 0, err

    def losses(name):
        return [json.loads(line)["answer_loss"] for line in (tmp_path / name / "predictions.jsonl").read_text().splitlines()]

    assert losses("ev3") == losses("saved")  # the flag is the saved checkpoint, to the bit
    assert all(abs(a - b) > 1e-6 for a, b in zip(losses("ev3"), losses("ev2")))  # and the third step changed the memory
    code, _, err = run_cli(["eval", "--checkpoint", str(run), "--inner-steps", "0", *common], capsys)
    assert code == 2 and "--inner-steps" in err and len(err.strip().splitlines()) == 1


def test_eval_on_a_mixture_scores_each_family_apart(qa1, tmp_path, capsys):
    from perk_cli.config import PrepareSettings
    from perk_cli.prepare import prepare

    qa2 = tmp_path / "qa2"
    prepare(PrepareSettings(task="babi", subtask="qa2", facts=3, out=str(qa2), segment_tokens=32, train=0,
                            validation=0, test=3, seed=6))
    code, _, err = run_cli(["prepare", "--task", "mix", "--input", f"{qa1},{qa2}", "-o", str(tmp_path / "mix")], capsys)
    assert code == 0, err
    meta_train(_config(max_steps=1, eval_every=1, baseline=False), qa1, tmp_path / "run")
    code, out, err = run_cli(["eval", "--checkpoint", str(tmp_path / "run"), "--task", str(tmp_path / "mix"),
                              "--max-new-tokens", "3", "--baselines", "", "--out", str(tmp_path / "ev"), "--json"],
                           capsys)
    assert code == 0, err
    rows = [json.loads(l) for l in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    assert [r["family"] for r in rows] == ["babi/qa1", "babi/qa2"] * 3 + ["babi/qa1"] * 5  # 8 and 3, interleaved
    perk = json.loads(out)["methods"]["perk"]
    for family in ("babi/qa1", "babi/qa2"):
        mine = [r["correct"] for r in rows if r["family"] == family]
        assert perk["by_family"][family] == {"n": len(mine), "em": pytest.approx(sum(mine) / len(mine))}
    code, out, err = run_cli(["eval", "--checkpoint", str(tmp_path / "run"), "--task", str(tmp_path / "mix"),
                              "--max-new-tokens", "3", "--baselines", "", "--out", str(tmp_path / "ev"), "--resume"],
                             capsys)  # the finished folder, read back and rendered
    assert code == 0 and "babi/qa1" in out and "babi/qa2" in out, err
