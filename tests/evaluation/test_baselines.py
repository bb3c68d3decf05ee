"""Fair baselines: validation decodes what the target needs, the in-context baseline gets PERK's steps
and best-by-validation selection, plain TTT's learning rate is tuned on validation."""

import json

import pytest
import torch

from perk_cli import __version__
from perk_cli.config import EvalSettings, InnerLoopSettings, LoraSettings, PromptSettings, RunConfig, TrainSettings
from perk_cli.data.schema import read_split
from perk_cli.prompts import answer_target
from perk_cli.checkpoint import build_runtime
from tests.conftest import prepared_qa1


@pytest.fixture(scope="module")
def qa1(tmp_path_factory):
    return prepared_qa1(tmp_path_factory, train=32, validation=6, test=4, seed=9)


def _config(answer_format="plain", **train):
    values = dict(max_steps=4, tasks_per_batch=2, eval_every=2, eval_tasks=3, lr=3e-3, warmup_steps=1,
                  train_base=False, baseline=False, seed=2)
    values.update(train)
    return RunConfig(perk_version=__version__, lora=LoraSettings(rank=2, alpha=4), inner=InnerLoopSettings(steps=1),
                     prompt=PromptSettings(segment_tokens=32, answer_format=answer_format), train=TrainSettings(**values))


def test_validation_decodes_as_many_tokens_as_the_support_target_needs(qa1, monkeypatch):
    import perk_cli.memory as memory
    from perk_cli.training.meta_train import validate

    runtime = build_runtime(_config("support"))
    tasks = read_split(qa1, "validation")[:3]
    budgets = []
    real = memory.answer_question
    monkeypatch.setattr(memory, "answer_question",
                        lambda *a, **k: budgets.append(k["max_new_tokens"]) or real(*a, **k))
    validate(runtime, tasks)
    needed = max(len(runtime.tokenizer(answer_target(t.answer, t.support, runtime.config.prompt),
                                       add_special_tokens=False)["input_ids"]) for t in tasks)
    plain = max(len(runtime.tokenizer(f" {t.answer}")["input_ids"]) for t in tasks)
    assert needed > plain + 4  # the former budget could not hold the support target
    assert budgets and all(b >= needed for b in budgets)


def test_the_in_context_baseline_trains_the_steps_perk_took_and_keeps_its_best(qa1, tmp_path, monkeypatch):
    import perk_cli.training.in_context as baselines
    from perk_cli.checkpoint import read_checkpoint
    from perk_cli.training.meta_train import meta_train

    scripted = iter([0.25, 0.75, 0.5])  # validation EM after steps 1, 2, 3: step 2 is the best
    snapshots = {}

    def fake_validate(runtime, tasks, budget):
        em = next(scripted)
        snapshots[em] = {k: v.clone() for k, v in runtime.state_tensors().items()}
        return {"val_loss": 1.0, "val_em": em}

    monkeypatch.setattr(baselines, "validate_in_context", fake_validate)
    # 32 tasks, 4 a step: 3/8 of an epoch is 3 steps, far fewer than max_steps
    config = _config(max_steps=40, epochs=0.375, tasks_per_batch=4, eval_every=1, baseline=True)
    result = meta_train(config.model_copy(update={"task": str(qa1)}), qa1, tmp_path / "run")
    assert result.step == 3 and result.baseline == tmp_path / "run" / "in-context"
    files = read_checkpoint(result.baseline)
    assert files.trainer_state["step"] == 3 and files.trainer_state["best"]["step"] == 2
    for key, value in snapshots[0.75].items():
        torch.testing.assert_close(files.tensors[key], value)
    assert any(not torch.equal(files.tensors[k], v) for k, v in snapshots[0.5].items())


def test_plain_ttt_learning_rate_is_tuned_on_the_validation_split(qa1, tmp_path):
    from perk_cli.evaluation.evaluate import evaluate
    from perk_cli.checkpoint import save_checkpoint

    config = _config()
    runtime = build_runtime(config)
    save_checkpoint(tmp_path / "ckpt", config, runtime.state_tensors())
    grid = [1e-4, 3e-2]
    settings = EvalSettings(checkpoint=str(tmp_path / "ckpt"), task=str(qa1), limit=2, baselines=["plain-ttt"],
                            plain_lr_grid=grid, plain_lr_tasks=2, max_new_tokens=3, out=str(tmp_path / "eval"))
    report = evaluate(settings)
    tuning = report["plain_ttt"]["tuning"]
    assert tuning["grid"] == grid and tuning["tasks"] == 2 and len(tuning["points"]) == 2
    best = max(tuning["points"], key=lambda p: (p["val_em"], -p["val_loss"]))
    assert report["plain_ttt"]["lr"] == tuning["pick"] == best["lr"]
    assert tuning["points"][0]["val_loss"] != tuning["points"][1]["val_loss"]  # the grid points really differ
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["plain_ttt"]["tuning"]["pick"] == tuning["pick"]
    assert any("plain TTT: learning rate" in note for note in report["notes"])
    fixed = evaluate(settings.model_copy(update={"plain_lr": 5e-3, "out": str(tmp_path / "eval-fixed")}))
    assert fixed["plain_ttt"] == {"lr": 5e-3, "tuning": None}
    on_validation = evaluate(settings.model_copy(update={"split": "validation", "out": str(tmp_path / "eval-val")}))
    assert on_validation["plain_ttt"]["tuning"] is None  # never tuned on the split it is scored on
    assert any("untuned" in note for note in on_validation["notes"])


def test_the_plain_lr_grid_flag_reaches_the_tuning_and_a_bad_grid_is_one_line(qa1, tmp_path, capsys):
    from perk_cli.checkpoint import save_checkpoint
    from tests.conftest import run_cli

    config = _config()
    save_checkpoint(tmp_path / "ckpt", config, build_runtime(config).state_tensors())
    common = ["eval", "--checkpoint", str(tmp_path / "ckpt"), "--task", str(qa1), "--limit", "1",
              "--baselines", "plain-ttt", "--max-new-tokens", "2", "--out", str(tmp_path / "eval"), "--json"]
    code, out, err = run_cli([*common, "--plain-lr-grid", "2e-3, 5e-2"], capsys)
    assert code == 0, err
    assert json.loads(out)["plain_ttt"]["tuning"]["grid"] == [2e-3, 5e-2]
    for bad, says in (("1e-3,fast", "comma list of learning rates"), ("1e-3,-1", "learning rates are > 0"),
                      ("", "at least 1")):
        code, _, err = run_cli([*common, "--plain-lr-grid", bad], capsys)
        assert code == 2 and err.count("\n") <= 2 and "--plain-lr-grid" in err and says in err, (bad, err)


def test_base_truncated_reads_the_last_segments_that_fit_the_window(qa1, tmp_path, capsys):
    """Where a document overflows the base's positions, base-truncated reads its longest tail of whole
    segments that fits with the question and room to answer (one more segment would not fit), and answers
    as the base does from that tail; a document that fits is read whole, as by the base baseline."""
    from perk_cli.config import PrepareSettings
    from perk_cli.prepare import prepare
    from perk_cli.prompts import encode_question
    from perk_cli.checkpoint import load_runtime, save_checkpoint
    from perk_cli.training.in_context import answer_in_context
    from tests.conftest import run_cli

    config = _config()
    save_checkpoint(tmp_path / "ckpt", config, build_runtime(config).state_tensors())
    long_dir = tmp_path / "long"
    prepare(PrepareSettings(task="babi", subtask="qa1", facts=3, length=1400, segment_tokens=32, train=0,
                            validation=0, test=3, seed=4, out=str(long_dir)))
    common = ["eval", "--checkpoint", str(tmp_path / "ckpt"), "--max-new-tokens", "3", "--no-perk", "--json",
              "--baselines", "base,base-truncated"]
    code, out, err = run_cli(common + ["--task", str(long_dir), "--out", str(tmp_path / "ev-long")], capsys)
    assert code == 0, err
    methods = json.loads(out)["methods"]
    assert set(methods) == {"base", "base-truncated"}  # --no-perk: no memory adapted
    assert methods["base"]["failures"] == 3 and methods["base-truncated"]["failures"] == 0
    runtime, _ = load_runtime(tmp_path / "ckpt")
    assert runtime.max_positions == 1024
    prompt, room = runtime.config.prompt, max(3, runtime.config.prompt.max_answer_tokens)
    tasks = {t.id: t for t in read_split(long_dir, "test")}
    rows = [json.loads(line) for line in (tmp_path / "ev-long" / "predictions.jsonl").read_text().splitlines()]
    truncated = [r for r in rows if r["method"] == "base-truncated"]
    assert len(truncated) == 3
    for row in truncated:
        task = tasks[row["id"]]
        n, kept = len(task.context), row["segments_read"]

        def tokens(k: int) -> int:
            return encode_question(runtime.tokenizer, task.question, k, prompt,
                                   context=task.context[n - k:]).input_ids.shape[1]

        assert row["segments"] == n and 0 < kept < n
        assert tokens(kept) + room <= 1024 < tokens(kept + 1) + room  # the longest tail that fits
        tail = task.context[n - kept:]
        with runtime.model.disable_adapter():
            assert answer_in_context(runtime, task.model_copy(update={"context": tail}), 3, "plain") == \
                (row["prediction"], row["raw"])
        assert any(task.support[0] in segment for segment in task.context)  # the flag below can be either
        assert row["support_read"] is any(task.support[0] in segment for segment in tail)
    code, out, err = run_cli(common + ["--task", str(qa1), "--limit", "2", "--out", str(tmp_path / "ev")], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    by_method = {m: {r["id"]: r for r in rows if r["method"] == m} for m in ("base", "base-truncated")}
    assert len(by_method["base"]) == 2 and by_method["base"].keys() == by_method["base-truncated"].keys()
    for task_id, row in by_method["base-truncated"].items():
        assert row["segments_read"] == row["segments"] and row["support_read"] is True
        assert (row["prediction"], row["raw"]) == (by_method["base"][task_id]["prediction"],
                                                   by_method["base"][task_id]["raw"])
    code, _, err = run_cli(["eval", "--checkpoint", str(tmp_path / "ckpt"), "--task", str(qa1), "--no-perk",
                            "--baselines", ""], capsys)
    assert code == 2 and "--no-perk" in err and len(err.strip().splitlines()) == 1
