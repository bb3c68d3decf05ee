"""Every bad input ends in one line naming the input and exit 2, with nothing written: a table of the
cases, each run through the real entry point (`perk_cli.cli.main`)."""

import io
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from perk_cli import __version__
from perk_cli.config import LoraSettings, PromptSettings, RunConfig
from perk_cli.memory import adapt_text, adapting_runtime
from perk_cli.checkpoint import build_runtime, save_checkpoint
from tests.conftest import run_cli

DOC = "Mary went to the kitchen. John went to the garden. Mary moved to the office."


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A tiny checkpoint, a document, a memory of it, and a task directory."""
    root = tmp_path_factory.mktemp("made")
    checkpoint = root / "run" / "best"
    config = RunConfig(perk_version=__version__, lora=LoraSettings(rank=2, alpha=4),
                       prompt=PromptSettings(segment_tokens=32))
    save_checkpoint(checkpoint, config, build_runtime(config).state_tensors())
    document = root / "doc.txt"
    document.write_text(DOC)
    runtime, origin = adapting_runtime(checkpoint=checkpoint)
    memory = root / "mem.safetensors"
    adapt_text(runtime, origin, DOC).save(memory)
    return {"checkpoint": checkpoint, "doc": document, "mem": memory, "root": root}


def _edited_memory(source: Path, target: Path, **changes) -> Path:
    from safetensors import safe_open

    with safe_open(str(source), framework="pt") as f:
        metadata = dict(f.metadata())
    save_file(load_file(str(source)), str(target), metadata={**metadata, **changes})
    return target


def _memory_cases(made, tmp_path):
    mem, prompt = made["mem"], json.loads(_meta(made["mem"])["prompt"])
    return [
        (_edited_memory(mem, tmp_path / "a.safetensors", lora="{not json"), "memory metadata 'lora' is not valid"),
        (_edited_memory(mem, tmp_path / "b.safetensors", segments="three"), "memory metadata 'segments' is 'three'"),
        (_edited_memory(mem, tmp_path / "c.safetensors", prompt=json.dumps({**prompt, "colour": "red"})),
         "memory metadata 'prompt' is not valid (colour"),
        (_edited_memory(mem, tmp_path / "d.safetensors", prompt=json.dumps(
            {**prompt, "question_template": "{x} {question}"})), "unknown field {x}"),
    ]


def _meta(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata())


def _one_line(code, err, expected):
    assert code == 2, err
    assert expected in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


@pytest.mark.parametrize("args, expected", [
    (["ask", "{mem}", "Where is Mary?", "--device", "gpu"], "--device gpu: expected auto, cpu, cuda or mps"),
    (["ask", "{mem}", ""], "question: empty"),
    (["ask", "{mem}", "Where is Mary? " * 400], "exceeds the model's 1024 positions"),
    (["adapt", "{doc}", "-o", "{root}/m.safetensors", "--checkpoint", "{checkpoint}", "--segment-tokens", "0"],
     "--segment-tokens 0: "),
    (["adapt", "{doc}", "-o", "{root}/m.safetensors", "--checkpoint", "{checkpoint}", "--segment-tokens", "4"],
     "--segment-tokens 4: "),
    (["adapt", "{doc}", "-o", "/dev/null/m.safetensors", "--checkpoint", "{checkpoint}"],
     "--out /dev/null/m.safetensors: cannot write there"),
    (["adapt", "{doc}", "-o", "{doc}", "--checkpoint", "{checkpoint}"], "is the document itself"),
    (["adapt", "{doc}", "-o", "{root}/m.safetensors", "--model", "tiny", "--lr", "nan"], "--lr nan: a learning rate"),
    (["adapt", "{doc}", "-o", "{root}/m.safetensors", "--checkpoint", "{checkpoint}", "--steps", "3", "--lr", "inf"],
     "--lr inf: a learning rate"),
    (["adapt", "{root}", "-o", "{root}/m.safetensors", "--model", "tiny"], "is a directory"),
    (["meta-train", "--task", "babi", "--lr", "nan", "--out", "{root}/never"], "--lr: "),
    (["meta-train", "--task", "babi", "--inner-lr", "inf", "--out", "{root}/never"], "--inner-lr: "),
    (["eval", "--checkpoint", "{checkpoint}", "--task", "{root}", "--added-lr", "nan"], "--added-lr: "),
])
def test_a_bad_flag_is_one_line_and_writes_nothing(made, args, expected, capsys):
    before = sorted(p.name for p in made["root"].iterdir())
    doc_bytes = made["doc"].read_bytes()
    code, _, err = run_cli([a.format(**made) for a in args], capsys)
    _one_line(code, err, expected)
    assert sorted(p.name for p in made["root"].iterdir()) == before
    assert made["doc"].read_bytes() == doc_bytes  # never replaced by a memory


def test_an_edited_memory_or_a_whole_model_is_refused_before_its_tensors_are_read(made, tmp_path, capsys, monkeypatch):
    for path, expected in _memory_cases(made, tmp_path):
        code, _, err = run_cli(["ask", str(path), "Where is Mary?"], capsys)
        _one_line(code, err, expected)
        assert str(path) in err
    model = tmp_path / "model.safetensors"  # a whole model's weights, as the Hub ships them
    save_file({"transformer.wte.weight": torch.zeros(8, 4)}, str(model), metadata={"format": "pt"})
    import perk_cli.memory as memory

    real = memory.safe_open

    class Watched:
        def __init__(self, *args, **kwargs):
            self.inner = real(*args, **kwargs)

        def __enter__(self):
            self.file = self.inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

        def metadata(self):
            return self.file.metadata()

        def keys(self):
            return self.file.keys()

        def get_tensor(self, name):
            raise AssertionError("a tensor was read from a file that is not a memory")

    monkeypatch.setattr(memory, "safe_open", Watched)
    code, _, err = run_cli(["ask", str(model), "Where is Mary?"], capsys)
    _one_line(code, err, "not a perk memory (format 'pt'")


def test_a_non_utf8_question_on_stdin_is_one_line(made, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("Where is Mary?\nO\u00f9 est ".encode() + b"\xe9t\xe9?\n")))
    code, _, err = run_cli(["ask", str(made["mem"])], capsys)
    _one_line(code, err, "stdin: line 2 is not valid UTF-8")


@pytest.mark.parametrize("record, reader, expected", [
    ({"context": ["Mary went to the kitchen."], "question": "Where is Mary?", "answer": "kitchen", "support": [1]},
     "jsonl", "field 'support': expected a list of strings"),
    ({"database": [5], "questions": [{"question": "Year of 5?", "answer": "x"}]}, "student-records",
     "field 'database': entries must be student objects"),
])
def test_a_malformed_record_names_its_file_line_and_field(record, reader, expected, tmp_path, capsys):
    source = tmp_path / "records.jsonl"
    source.write_text(json.dumps(record) + "\n")
    code, _, err = run_cli(["prepare", "--task", reader, "--input", str(source), "-o", str(tmp_path / "out")], capsys)
    _one_line(code, err, f"{source}:1: {expected}")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, expected", [
    ("lora: 4\n", "'lora' must be a mapping of lora settings"),
    ("model: gpt2\n", "'model' must be a mapping of model settings"),
    ("prompt:\n  question_template: '{x} {question}'\n", "unknown field {x}"),
    ("train:\n  lr: .nan\n", "lr"),
])
def test_a_bad_config_file_is_one_line_naming_it(text, expected, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(text)
    code, _, err = run_cli(["meta-train", "--config", str(config), "--task", "babi", "--out", str(tmp_path / "r")],
                           capsys)
    _one_line(code, err, expected)
    assert not (tmp_path / "r").exists()


def test_a_failed_write_names_the_file_and_leaves_nothing(made, tmp_path, capsys, monkeypatch):
    import errno

    import perk_cli.memory as memory

    def disk_full(tensors, path, metadata=None):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(memory, "save_file", disk_full)
    out = tmp_path / "m.safetensors"
    code, _, err = run_cli(["adapt", str(made["doc"]), "-o", str(out), "--checkpoint", str(made["checkpoint"])], capsys)
    _one_line(code, err, "No space left on device")
    assert list(tmp_path.iterdir()) == []  # neither the memory nor its staging file


def test_a_diverging_adaptation_writes_no_memory(made, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    code, _, err = run_cli(["adapt", str(made["doc"]), "-o", str(out), "--model", "tiny", "--lr", "1e30",
                            "--steps", "3"], capsys)
    _one_line(code, err, "adapting diverged")
    assert not out.exists()
