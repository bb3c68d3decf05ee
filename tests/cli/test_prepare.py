"""`perk prepare` through the real entry point: outputs, --json, --config, and every bad input."""

import json

import pytest

from tests.conftest import run_cli


def test_help_lists_only_built_commands_with_an_example(capsys):
    from perk_cli.cli import app

    code, out, _ = run_cli(["--help"], capsys)
    commands = {"prepare", "reading-base", "meta-train", "recipe", "eval", "compare", "reproduce", "adapt", "ask", "serve",
                "demo"}
    registered = {c.name or c.callback.__name__ for c in app.registered_commands}
    assert code == 0 and registered == commands  # nothing else is registered (no placeholder commands)
    for command in sorted(commands):
        assert f"│ {command} " in out, command  # listed in the top-level help
        code, text, _ = run_cli([command, "--help"], capsys)
        assert code == 0 and f"Example: perk {command}" in text, command


def test_help_shows_the_settings_defaults_and_descriptions(capsys):
    from perk_cli.config import LoraSettings, TrainSettings

    code, out, _ = run_cli(["meta-train", "--help"], capsys)
    text = " ".join(out.replace("│", " ").split())  # rich wraps help text across lines and box edges
    assert code == 0
    assert f"LoRA rank r. [default: {LoraSettings().rank}]" in text
    assert f"[default: {TrainSettings().tasks_per_batch}]" in text and "[default: cosine]" in text
    assert "Run directory [default: runs/<model>-<task>]" in text  # brackets survive rich markup


def test_generate_writes_splits_and_prepare_json(tmp_path, capsys):
    out_dir = tmp_path / "qa1"
    code, out, err = run_cli(["prepare", "--task", "babi", "--subtask", "qa1", "--length", "200", "--train", "4",
                              "--validation", "2", "--test", "3", "-o", str(out_dir), "--json"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["counts"] == {"train": 4, "validation": 2, "test": 3}
    assert sorted(p.name for p in out_dir.iterdir()) == ["prepare.json", "test.jsonl", "train.jsonl",
                                                        "validation.jsonl"]
    assert json.loads((out_dir / "prepare.json").read_text())["settings"]["length"] == 200


def test_config_file_with_flag_override(tmp_path, capsys):
    config = tmp_path / "prep.yaml"
    config.write_text("task: records\nsubtask: recall\nrecords: 7\ntrain: 3\nvalidation: 0\ntest: 2\n")
    code, _, err = run_cli(["prepare", "--task", "records", "--config", str(config), "--test", "1",
                            "-o", str(tmp_path / "r"), "-q"], capsys)
    assert code == 0, err
    lines = (tmp_path / "r" / "test.jsonl").read_text().splitlines()
    assert len(lines) == 1 and len(json.loads(lines[0])["context"]) == 7


def _record(**overrides):
    record = {"context": ["Mary went to the kitchen."], "question": "Where is Mary?", "answer": "kitchen"}
    record.update(overrides)
    return json.dumps(record)


@pytest.mark.parametrize("content, expected", [
    (None, "no such file"),
    (b"", "file is empty"),
    (_record().encode() + b"\n{not json\n", ":2: not valid JSON"),
    ((_record() + "\n" + json.dumps({"context": ["x"], "answer": "y"})).encode(), ":2: field 'question': missing"),
    (_record(context=[]).encode(), ":1: field 'context': empty context"),
    (_record(context="   ").encode(), ":1: field 'context': empty context"),
    (b'{"context": ["caf\xe9"], "question": "q", "answer": "a"}', ":1: not valid UTF-8"),
])
def test_bad_input_is_one_line_exit_2_and_leaves_no_output(tmp_path, capsys, content, expected):
    path = tmp_path / "tasks.jsonl"
    if content is not None:
        path.write_bytes(content)
    out_dir = tmp_path / "out"
    code, _, err = run_cli(["prepare", "--task", "jsonl", "--input", str(path), "-o", str(out_dir)], capsys)
    assert code == 2
    line = err.strip()
    assert "\n" not in line and str(path) in line and expected in line and "Traceback" not in line
    assert not out_dir.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_failed_run_keeps_the_previous_output(tmp_path, capsys):
    out_dir = tmp_path / "out"
    assert run_cli(["prepare", "--task", "babi", "--subtask", "qa1", "--train", "2", "--validation", "0",
                    "--test", "0", "-o", str(out_dir), "-q"], capsys)[0] == 0
    before = (out_dir / "train.jsonl").read_bytes()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n")
    assert run_cli(["prepare", "--task", "jsonl", "--input", str(bad), "-o", str(out_dir)], capsys)[0] == 2
    assert (out_dir / "train.jsonl").read_bytes() == before


def test_refuses_to_overwrite_a_foreign_directory(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    code, _, err = run_cli(["prepare", "--task", "babi", "--subtask", "qa1", "-o", str(tmp_path / "mine")], capsys)
    assert code == 2 and "not empty" in err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"


@pytest.mark.parametrize("args, expected", [
    (["--task", "babi", "--subtask", "qa9"], "--subtask must be one of qa1, qa2, qa3"),
    (["--task", "babi", "--subtask", "qa1", "--length", "0"], "--length:"),
    (["--task", "nonsense"], "--task:"),
    (["--task", "babilong"], "exactly one of --input or --hub"),
    (["--task", "babi", "--subtask", "qa1", "--filler", "/no/such/filler"], "--filler /no/such/filler"),
])
def test_bad_options(tmp_path, capsys, args, expected):
    code, _, err = run_cli(["prepare", *args, "-o", str(tmp_path / "o")], capsys)
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1


def test_hub_offline_is_one_clear_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run_cli(["prepare", "--task", "babilong", "--hub", "RMT-team/babilong", "--hub-config", "1k",
                            "--hub-split", "qa1", "-o", str(tmp_path / "o")], capsys)
    assert code == 2 and "unreachable" in err and "--input" in err


def test_a_bad_length_list_is_one_line_naming_the_flag(tmp_path, capsys):
    code, _, err = run_cli(["prepare", "--task", "babi", "--length", "128,12x", "-o", str(tmp_path / "d")], capsys)
    assert code == 2 and "--length: expected a length in tokens or a comma list of them, got '128,12x'" in err
    assert not (tmp_path / "d").exists()
