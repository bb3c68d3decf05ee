"""--init-from: a new stage starts from a checkpoint's meta-parameters, records its source, refuses what it
would silently override, and may take another base, answer format or inner-step count."""

import json
import shutil
from pathlib import Path

import pytest
import yaml
import torch
from safetensors.torch import load_file

from perk_cli.config import InnerLoopSettings, LoraSettings, PromptSettings
from perk_cli.checkpoint import build_runtime
from perk_cli.training.meta_train import meta_train, validate
from tests.conftest import run_cli, tiny_run_config

_config = tiny_run_config


def test_init_from_starts_a_fresh_run_from_a_checkpoints_meta_parameters(qa1, tmp_path):
    from perk_cli.data.schema import read_split
    from perk_cli.errors import PerkError
    from perk_cli.training.meta_train import plan_run

    first = _config(max_steps=3, eval_every=3)
    meta_train(first, qa1, tmp_path / "first")
    trained = load_file(str(tmp_path / "first" / "last" / "meta.safetensors"))
    # Another rank, inner optimiser and segment length, and outer rates so small that one step moves nothing.
    other = _config(max_steps=1, eval_every=1, lr=1e-12, step_size_lr=1e-12, init_from=str(tmp_path / "first" / "last"))
    other = other.model_copy(update={"lora": LoraSettings(rank=2, alpha=8), "inner": InnerLoopSettings(optimizer="sgd"),
                                     "prompt": PromptSettings(segment_tokens=16)})
    with pytest.raises(PerkError, match=r"--init-from .*lora\.rank=4.*leave the lora settings"):
        meta_train(other, qa1, tmp_path / "refused")  # a library caller who skipped plan_run
    plan = plan_run(other, str(qa1), tmp_path / "second")
    assert (plan.config.lora, plan.config.inner, plan.config.prompt) == (first.lora, first.inner, first.prompt)
    assert plan.config.train.init_from == str(tmp_path / "first" / "last") and plan.config.train.max_steps == 1
    result = meta_train(plan.config, plan.task_dir, plan.out)
    assert result.step == 1  # a new run: its own step count and outer optimiser
    started = load_file(str(tmp_path / "second" / "last" / "meta.safetensors"))
    assert started.keys() == trained.keys()
    for key in trained:
        torch.testing.assert_close(started[key], trained[key], rtol=1e-6, atol=1e-9)
    fresh = load_file(str(tmp_path / "first" / "best" / "meta.safetensors"))  # sanity: the test can tell runs apart
    scratch = _config(max_steps=1, eval_every=1, lr=1e-12, step_size_lr=1e-12)
    meta_train(scratch, qa1, tmp_path / "scratch")
    from_scratch = load_file(str(tmp_path / "scratch" / "last" / "meta.safetensors"))
    assert any(not torch.allclose(from_scratch[k], trained[k], atol=1e-6) for k in trained)
    assert fresh.keys() == trained.keys()
    optimizer = load_file(str(tmp_path / "second" / "last" / "optimizer.safetensors"))
    assert {float(v) for k, v in optimizer.items() if k.endswith(".step")} == {1.0}
    val = read_split(qa1, "validation")
    torch.testing.assert_close(validate(build_runtime(plan.config, started), val)["val_loss"],
                               validate(build_runtime(first, trained), val)["val_loss"], rtol=1e-5, atol=1e-6)
    with pytest.raises(PerkError, match="--init-from: a resumed run"):
        plan_run(plan.config, None, None, tmp_path / "second")
    with pytest.raises(PerkError, match=r"--init-from .*nowhere: no such directory"):
        plan_run(_config(init_from=str(tmp_path / "nowhere")), str(qa1), tmp_path / "third")


def _source_run(qa1: Path, tmp_path: Path, capsys) -> list[str]:
    """Trains a 1-step source run into tmp_path/a; returns a meta-train command line starting from it."""
    one_step = ["meta-train", "--task", str(qa1), "--max-steps", "1", "--tasks-per-batch", "1", "--eval-tasks", "1",
                "--no-baseline", "-q"]
    code, _, err = run_cli(one_step + ["--lora-rank", "3", "--inner-steps", "2", "--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    return one_step + ["--init-from", str(tmp_path / "a")]


def test_init_from_cli_records_the_source_and_refuses_flags_it_would_override(qa1, tmp_path, capsys):
    start = _source_run(qa1, tmp_path, capsys)
    code, _, err = run_cli(start + ["--out", str(tmp_path / "b"), "--lr", "0.002"], capsys)
    assert code == 0, err
    saved = json.loads((tmp_path / "b" / "last" / "config.json").read_text())
    assert saved["lora"]["rank"] == 3 and saved["inner"]["steps"] == 2 and saved["train"]["lr"] == 0.002
    assert saved["train"]["init_from"] == str(tmp_path / "a") and saved["train"]["train_base"] is True
    assert saved["model"]["name"] == "tiny"
    for extra, flag in ((["--lora-rank", "4"], "--lora-rank"), (["--inner-optimizer", "sgd"], "--inner-optimizer"),
                        (["--segment-tokens", "16"], "--segment-tokens")):
        code, _, err = run_cli(start + ["--out", str(tmp_path / "c")] + extra, capsys)
        assert code == 2 and err.strip().startswith(f"error: {flag}:") and "--init-from" in err, err
        assert len(err.strip().splitlines()) == 1 and not (tmp_path / "c").exists()
    code, _, err = run_cli(start[:-1] + [str(tmp_path / "missing"), "--out", str(tmp_path / "c")], capsys)
    assert code == 2 and "--init-from" in err and "missing" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(start + ["--resume", str(tmp_path / "b")], capsys)
    assert code == 2 and "--init-from" in err and len(err.strip().splitlines()) == 1


def test_init_from_refuses_a_config_file_setting_it_would_override(qa1, tmp_path, capsys):
    start = _source_run(qa1, tmp_path, capsys)
    source = json.loads((tmp_path / "a" / "last" / "config.json").read_text())
    for section, key, value in (("prompt", "segment_tokens", 16), ("inner", "optimizer", "sgd")):
        file = tmp_path / f"{key}.yaml"
        file.write_text(yaml.safe_dump({section: {key: value}}))
        code, _, err = run_cli(start + ["--config", str(file), "--out", str(tmp_path / "c")], capsys)
        assert code == 2 and err.strip().startswith(f"error: --config {file}: sets {section}.{key}="), err
        assert repr(source[section][key]) in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "c").exists()
    # the checkpoint's own values, written out in full (a saved config.json as the file), are accepted
    file = tmp_path / "same.yaml"
    file.write_text(yaml.safe_dump({name: source[name] for name in ("model", "lora", "inner", "prompt")}))
    code, _, err = run_cli(start + ["--config", str(file), "--out", str(tmp_path / "d")], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "d" / "last" / "config.json").read_text())["prompt"] == source["prompt"]


def _saved_base(directory: Path, noise: float = 0.0, gpt2_micro: bool = False) -> Path:
    """The tiny preset (or a narrower GPT-2), with every weight moved by `noise` x N(0, 1), saved as a base."""
    from perk_cli.config import ModelSettings
    from perk_cli.models.base import load_base
    from perk_cli.models.tiny import build_tiny_tokenizer
    from tests.conftest import micro_gpt2

    model = micro_gpt2(dtype=torch.float32) if gpt2_micro else load_base(ModelSettings(name="tiny", dtype="float32"))[0]
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(noise * torch.randn(parameter.shape, generator=generator))
    model.save_pretrained(directory)
    build_tiny_tokenizer().save_pretrained(directory)
    return directory


def test_init_from_may_name_another_base_of_its_architecture(qa1, tmp_path, capsys):
    """A frozen-base checkpoint's meta-parameters start a run on another base of the same shape (a transfer:
    qa2's base continued the qa1 reader); its own base reproduces its validation loss, the other base is really
    used, and a base of another shape, or a checkpoint whose base was trained, is one line."""
    first, second = _saved_base(tmp_path / "base-a"), _saved_base(tmp_path / "base-b", noise=0.02)
    one_step = ["meta-train", "--task", str(qa1), "--max-steps", "1", "--tasks-per-batch", "1", "--eval-tasks", "4",
                "--eval-every", "1", "--no-baseline", "-q"]
    code, _, err = run_cli(one_step + ["--model", str(first), "--no-train-base", "--lora-rank", "3",
                                       "--out", str(tmp_path / "source")], capsys)
    assert code == 0, err
    source = json.loads((tmp_path / "source" / "last" / "trainer_state.json").read_text())["metrics"]
    frozen = ["--lr", "1e-12", "--step-size-lr", "1e-12", "--init-from", str(tmp_path / "source")]
    losses = {}
    for name, base in (("same", first), ("other", second)):
        code, _, err = run_cli(one_step + frozen + ["--model", str(base), "--out", str(tmp_path / name)], capsys)
        assert code == 0, err
        saved = json.loads((tmp_path / name / "last" / "config.json").read_text())
        assert saved["model"]["name"] == str(base) and saved["lora"]["rank"] == 3
        losses[name] = json.loads((tmp_path / name / "last" / "trainer_state.json").read_text())["metrics"]["val_loss"]
        started = load_file(str(tmp_path / name / "last" / "meta.safetensors"))
        trained = load_file(str(tmp_path / "source" / "best" / "meta.safetensors"))
        for key in trained:
            torch.testing.assert_close(started[key], trained[key], rtol=1e-6, atol=1e-9)
    assert losses["same"] == pytest.approx(source["val_loss"], rel=1e-5)
    assert abs(losses["other"] - source["val_loss"]) > 1e-3
    file = tmp_path / "other-base.yaml"  # a --config file may name the base too
    file.write_text(yaml.safe_dump({"model": {"name": str(second)}}))
    code, _, err = run_cli(one_step + frozen + ["--config", str(file), "--out", str(tmp_path / "by-file")], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "by-file" / "last" / "config.json").read_text())["model"]["name"] == str(second)
    narrow = _saved_base(tmp_path / "base-narrow", gpt2_micro=True)
    code, _, err = run_cli(one_step + frozen + ["--model", str(narrow), "--out", str(tmp_path / "bad")], capsys)
    assert code == 2 and str(tmp_path / "source") in err and "does not fit model" in err, err
    assert len(err.strip().splitlines()) == 1
    code, _, err = run_cli(one_step + ["--model", str(first), "--train-base", "--lora-rank", "3",
                                       "--out", str(tmp_path / "trained")],
                           capsys)
    assert code == 0, err
    code, _, err = run_cli(one_step + ["--init-from", str(tmp_path / "trained"), "--model", str(second),
                                       "--out", str(tmp_path / "bad")], capsys)
    assert code == 2 and err.strip().startswith(f"error: --model {second}:") and "trained its base" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()


def test_init_from_lets_a_new_stage_choose_its_answer_format(qa1, tmp_path, capsys):
    """The outer target and decoding cap are the new run's (plain -> support is a curriculum step); the rest of
    the prompt stays the checkpoint's."""
    start = _source_run(qa1, tmp_path, capsys)
    source = json.loads((tmp_path / "a" / "last" / "config.json").read_text())
    assert source["prompt"]["answer_format"] == "plain"
    file = tmp_path / "support.yaml"
    file.write_text(yaml.safe_dump({"prompt": {"answer_format": "support", "max_answer_tokens": 48}}))
    for extra, out in ((["--config", str(file)], "file"), (["--answer-format", "support"], "flag")):
        code, _, err = run_cli(start + extra + ["--out", str(tmp_path / out)], capsys)
        assert code == 0, err
        prompt = json.loads((tmp_path / out / "last" / "config.json").read_text())["prompt"]
        assert prompt["answer_format"] == "support"
        assert prompt["max_answer_tokens"] == (48 if out == "file" else source["prompt"]["max_answer_tokens"])
        assert {k: v for k, v in prompt.items() if k not in ("answer_format", "max_answer_tokens")} == {
            k: v for k, v in source["prompt"].items() if k not in ("answer_format", "max_answer_tokens")}


def test_init_from_lets_a_new_stage_number_its_segments_in_story_order(qa1, tmp_path, capsys, monkeypatch):
    """How meta-training numbers segments is a stage's choice (a shuffled-id checkpoint may go on with ordered
    ids): the run records it and trains on consecutive ids in story order, while validation numbers 0..N-1."""
    import perk_cli.prompts as prompts

    start = _source_run(qa1, tmp_path, capsys)
    assert json.loads((tmp_path / "a" / "last" / "config.json").read_text())["prompt"]["segment_ids"] == "shuffled"
    seen, encode = [], prompts.encode_context

    def spy(tokenizer, segments, settings, doc_ids=None, max_len=None):
        seen.append(doc_ids)
        return encode(tokenizer, segments, settings, doc_ids, max_len)

    monkeypatch.setattr(prompts, "encode_context", spy)
    code, _, err = run_cli(start + ["--segment-ids", "ordered", "--max-steps", "4", "--out", str(tmp_path / "ordered")],
                           capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "ordered" / "last" / "config.json").read_text())["prompt"]["segment_ids"] == "ordered"
    trained = [d for d in seen if d is not None]
    assert trained and all(d == list(range(d[0], d[0] + len(d))) for d in trained)
    assert len({d[0] for d in trained}) > 1 and None in seen  # random offsets; validation counts from 0


def test_a_stage_may_weigh_later_segments_up_and_adapt_follows_its_checkpoint(qa1, tmp_path, capsys):
    """--recency is a stage's choice; the checkpoint carries it to `perk adapt` (a memory written with it
    differs from one written by the same meta-parameters without it)."""
    from safetensors import safe_open

    start = _source_run(qa1, tmp_path, capsys)
    code, _, err = run_cli(start + ["--recency", "2", "--out", str(tmp_path / "recent")], capsys)
    assert code == 0, err
    config = json.loads((tmp_path / "recent" / "best" / "config.json").read_text())
    assert config["inner"]["recency"] == 2.0
    flat = tmp_path / "flat"
    shutil.copytree(tmp_path / "recent" / "best", flat)
    config["inner"]["recency"] = 0.0
    (flat / "config.json").write_text(json.dumps(config))
    doc = tmp_path / "doc.txt"
    doc.write_text(" ".join(f"Event {i}: Mary went to the kitchen number {i}." for i in range(120)))
    memories = []
    for checkpoint in (tmp_path / "recent", flat):
        out = tmp_path / f"{checkpoint.name}.safetensors"
        code, _, err = run_cli(["adapt", str(doc), "-o", str(out), "--checkpoint", str(checkpoint), "-q"], capsys)
        assert code == 0, err
        with safe_open(str(out), "pt") as f:
            memories.append({k: f.get_tensor(k) for k in f.keys()})
    assert memories[0].keys() == memories[1].keys()
    assert any(not torch.equal(memories[0][k], memories[1][k]) for k in memories[0])


def test_init_from_lets_a_new_stage_take_more_inner_steps(qa1, tmp_path, capsys):
    """K is a stage's choice: the source's K=2 step sizes carry over and the added steps start at the run's
    lr_init (the checkpoint's unless --inner-lr sets it); the rest of the inner loop stays the checkpoint's,
    and an impossible or meaningless choice is one line."""
    import math

    from safetensors.torch import load_file

    start = _source_run(qa1, tmp_path, capsys)
    source = json.loads((tmp_path / "a" / "last" / "config.json").read_text())["inner"]
    eta = load_file(str(tmp_path / "a" / "last" / "meta.safetensors"))["step_sizes.log_eta"]
    assert eta.shape[0] == 2 and not torch.allclose(eta, torch.full_like(eta, math.log(source["lr_init"])))
    frozen = ["--lr", "1e-12", "--step-size-lr", "1e-12"]  # an outer step this small moves nothing we compare
    for extra, out, added in ((["--inner-lr", "1e-4"], "k4", 1e-4), ([], "k4-default", source["lr_init"])):
        code, _, err = run_cli(start + ["--inner-steps", "4", "--unroll-start", "2", *frozen, *extra,
                                        "--out", str(tmp_path / out)], capsys)
        assert code == 0, err
        inner = json.loads((tmp_path / out / "last" / "config.json").read_text())["inner"]
        assert inner["steps"] == 4 and inner["unroll_start"] == 2 and inner["lr_init"] == added
        assert {k: v for k, v in inner.items() if k not in ("steps", "unroll_start", "lr_init")} == {
            k: v for k, v in source.items() if k not in ("steps", "unroll_start", "lr_init")}
        fitted = load_file(str(tmp_path / out / "last" / "meta.safetensors"))["step_sizes.log_eta"]
        expected = torch.cat([eta, torch.full_like(eta, math.log(added))])
        torch.testing.assert_close(fitted, expected, atol=1e-6, rtol=0)
    # how the meta-gradient flows is the stage's too
    code, _, err = run_cli(start + ["--unroll", "second-order", *frozen, "--out", str(tmp_path / "so")], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "so" / "last" / "config.json").read_text())["inner"]["unroll"] == "second-order"
    assert source["unroll"] == "truncated"
    # valid on its own (the default K is 4), not with the checkpoint's K=2
    code, _, err = run_cli(start + ["--unroll-start", "3", "--out", str(tmp_path / "bad")], capsys)
    assert code == 2 and "--init-from" in err and "unroll_start (3) must be at most steps (2)" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()
    # the checkpoint's 2 steps keep their learned sizes: --inner-lr would change nothing
    code, _, err = run_cli(start + ["--inner-lr", "0.1", "--out", str(tmp_path / "bad")], capsys)
    assert code == 2 and "--inner-lr" in err and "--inner-steps" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()
