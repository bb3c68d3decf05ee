"""benchmarks/reading_base.py: which task sets --subtasks makes (names, seeds, facts) and its one-line error."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from reading_base import task_sets  # noqa: E402


def _prepared(directory: Path) -> dict:
    return json.loads((directory / "prepare.json").read_text())["settings"]


def test_qa1_alone_keeps_the_first_attempts_sets_and_keys(tmp_path):
    train, test = task_sets(tmp_path, 2, 3, "tiny")
    assert list(train) == [None, 128] and list(test) == [128, 256]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        "qa1-test-128", "qa1-test-256", "qa1-train-128", "qa1-train-clean"]
    settings = _prepared(tmp_path / "data" / "qa1-test-256")
    assert (settings["seed"], settings["facts"], settings["subtask"]) == (212, 4, "qa1")
    assert _prepared(tmp_path / "data" / "qa1-train-clean")["seed"] == 201
    assert len(test[256]) == 3 and len(train[None]) == 2


def test_two_subtasks_make_each_its_own_seeded_sets(tmp_path):
    train, test = task_sets(tmp_path, 2, 2, "tiny", ("qa1", "qa2"))
    assert list(train) == ["qa1-clean", "qa1-128", "qa2-clean", "qa2-128"]
    assert list(test) == ["qa1-128", "qa1-256", "qa2-128", "qa2-256"]
    qa2 = _prepared(tmp_path / "data" / "qa2-train-128")
    assert (qa2["seed"], qa2["facts"], qa2["subtask"], qa2["length"]) == (222, 6, "qa2", 128)
    assert _prepared(tmp_path / "data" / "qa2-test-128")["seed"] == 231
    assert all(t.question.startswith("Where is the ") for t in test["qa2-256"])


def test_recall_is_sized_by_records_with_sets_of_its_own(tmp_path):
    train, test = task_sets(tmp_path, 2, 2, "tiny", ("qa1", "recall"))
    assert list(train) == ["qa1-clean", "qa1-128", "recall-3rec", "recall-6rec"]
    assert list(test) == ["qa1-128", "qa1-256", "recall-6rec", "recall-12rec"]
    held_out = _prepared(tmp_path / "data" / "recall-test-12rec")
    assert (held_out["task"], held_out["subtask"], held_out["records"], held_out["seed"]) == (
        "records", "recall", 12, 272)
    assert _prepared(tmp_path / "data" / "recall-train-3rec")["seed"] == 261
    for key, records in (("recall-3rec", 3), ("recall-6rec", 6)):
        assert all(len(t.context) == records and t.context[0].startswith("Student ") for t in train[key])
    assert all(t.question.startswith("What is the ") and len(t.context) == 12 for t in test["recall-12rec"])


def test_an_unknown_subtask_is_one_line_naming_the_option(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "reading_base.py"), "--out", str(tmp_path),
                           "--model", "tiny", "--subtasks", "qa1,qa9"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--subtasks qa1,qa9: expected a comma list of qa1, qa2, qa3, recall" in done.stderr
    assert "Traceback" not in done.stderr


def test_evaluate_saved_scores_a_saved_base_by_decoding(tmp_path, tmp_path_factory):
    """`--evaluate` (and the gate after training) on a saved base directory: decoded in-context EM, as
    perk eval's `base` reads it, recorded in the report."""
    from perk_cli.config import ModelSettings
    from perk_cli.evaluation.scores import exact_match
    from perk_cli.models.base import load_base
    from perk_cli.training.in_context import answer_in_context
    from reading_base import evaluate_saved, in_context_runtime
    from tests.conftest import prepared_qa1

    data = prepared_qa1(tmp_path_factory, train=0, validation=0, test=3, seed=5)
    model, tokenizer = load_base(ModelSettings(name="tiny", dtype="float32"))
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    evaluate_saved(tmp_path, data)
    result = json.loads((tmp_path / "reading_base.json").read_text())["held_out_in_context"][str(data)]
    saved, saved_tokenizer = load_base(ModelSettings(name=str(tmp_path / "model"), dtype="float32"))
    runtime = in_context_runtime(saved, saved_tokenizer)
    from perk_cli.data.schema import read_split
    answers = [answer_in_context(runtime, task, 8)[0] for task in read_split(data, "test")]
    expected = sum(exact_match(a, t.answer) for a, t in zip(answers, read_split(data, "test"))) / 3
    assert result["n"] == 3 and result["val_em"] == expected and result["val_loss"] > 0
