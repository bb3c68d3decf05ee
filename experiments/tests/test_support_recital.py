"""experiments/support_recital.py: recitals scored against hand-counted figures, and the script end to end."""

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import experiment_module

SCRIPT = Path(__file__).resolve().parents[1] / "support_recital.py"
SUPPORT = {"a": ["Event 4: Gertrude picked up the box there.", "Event 3: Gertrude travelled to the school."],
           "b": ["Event 5: Emily left the ball.", "Event 2: Emily went to the park."],
           "c": ["Event 1: Jeff got the cup there.", "Event 0: Jeff moved to the kitchen."]}
ROWS = [  # a: recited exactly; b: first fact right, second wrong; c: both wrong, the answer a recited place
    {"id": "a", "method": "perk", "prediction": "school", "correct": 1.0,
     "raw": "<support>Event 4: Gertrude picked up the box there.  Event 3: Gertrude travelled to the school."
            "</support>\n<output>school</output>"},
    {"id": "b", "method": "perk", "prediction": "kitchen", "correct": 0.0,
     "raw": "<support>Event 5: Emily left the ball. Event 0: Emily went to the kitchen.</support>\n"
            "<output>kitchen</output>"},
    {"id": "c", "method": "perk", "prediction": "garden", "correct": 0.0,
     "raw": "<support>Event 5: Jeff took the cup there.</support>\n<output>garden</output>"},
]


def test_score_counts_recited_facts_by_position():
    result = experiment_module("support_recital").score(ROWS, SUPPORT)
    assert result["tasks"] == 3 and result["em"] == 1 / 3
    assert result["recital_exact"] == 1 / 3  # only a (whitespace differences do not count)
    assert result["fact_at"] == [2 / 3, 1 / 3]  # fact 1: a, b; fact 2: a
    assert result["answer_in_recital"] == 2 / 3  # c's "garden" is not in its recital
    assert (result["right_of_exact"], result["right_of_rest"]) == (1.0, 0.0)  # a right; b, c wrong
    assert "dropped_then_moved" not in result
    assert experiment_module("support_recital").score(ROWS, SUPPORT, {"a", "b"})["dropped_then_moved"] == {"em": 0.5, "n": 2}


def test_the_script_splits_out_the_dropped_then_moved_stories(tmp_path):
    evaluation, tasks = tmp_path / "eval", tmp_path / "tasks"
    evaluation.mkdir()
    tasks.mkdir()
    moved_on = [*reversed(SUPPORT["b"]), "Event 6: Emily journeyed to the office."]  # dropped in the park, then left
    (evaluation / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tasks / "test.jsonl").write_text("".join(
        json.dumps({"id": k, "context": moved_on if k == "b" else v, "question": "Where is the ball?" if k == "b"
                    else "Where is the box?", "answer": "park" if k == "b" else "?", "support": v}) + "\n"
        for k, v in SUPPORT.items()))
    done = subprocess.run([sys.executable, str(SCRIPT), str(evaluation), str(tasks), "--json"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["dropped_then_moved"] == {"em": 0.0, "n": 1}  # b, answered "kitchen"
    done = subprocess.run([sys.executable, str(SCRIPT), str(evaluation), str(tasks)], capture_output=True, text=True)
    header, figures = done.stdout.strip().splitlines()
    assert "EM, dropped then moved" in header and figures.endswith("0.000 of 1")


def test_a_recite_format_recital_is_the_lines_before_the_restated_question():
    recital = experiment_module("support_recital").recital
    raw = ("\nEvent 4: Gertrude picked up the box there.\nEvent 3: Gertrude travelled to the school.\n"
           "You have memorized 9 documents.\nWhere is the box?\nAnswer: school")
    assert recital(raw) == SUPPORT["a"]
    assert recital("\nEvent 4: Gertrude picked up the box there.\nEvent 3: Gertrude") == \
        ["Event 4: Gertrude picked up the box there.", "Event 3: Gertrude"]  # budget spent mid-recital
    rows = [{**ROWS[0], "raw": raw}, {**ROWS[1], "raw": raw.replace("Gertrude picked up the box", "Emily left the ball")}]
    assert experiment_module("support_recital").score(rows, SUPPORT)["recital_exact"] == 1 / 2


def test_the_script_reads_an_evaluation_beside_its_tasks(tmp_path):
    evaluation, tasks = tmp_path / "eval", tmp_path / "tasks"
    evaluation.mkdir()
    tasks.mkdir()
    base_row = {"id": "x", "method": "base", "prediction": "school", "correct": 1.0, "raw": " school"}
    (evaluation / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*ROWS, base_row]))
    (tasks / "test.jsonl").write_text("".join(
        json.dumps({"id": k, "context": v, "question": "Where is it?", "answer": "?", "support": v}) + "\n"
        for k, v in SUPPORT.items()))
    done = subprocess.run([sys.executable, str(SCRIPT), str(evaluation), str(tasks), "--json"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["fact_at"] == [2 / 3, 1 / 3]  # the base row is left out
    done = subprocess.run([sys.executable, str(SCRIPT), str(evaluation), str(tasks)], capture_output=True, text=True)
    header, figures = done.stdout.strip().splitlines()
    assert "fact 2" in header and figures.split()[:2] == ["3", "0.333"]
    done = subprocess.run([sys.executable, str(SCRIPT), str(evaluation), str(tasks), "--method", "base"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "task x has no gold support" in done.stderr.strip().splitlines()[-1]
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "nowhere"), str(tasks)],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "nowhere" in done.stderr.strip().splitlines()[-1]
    done = subprocess.run([sys.executable, str(SCRIPT), str(evaluation), str(tasks), "--split", "validation"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "split 'validation' not found" in done.stderr.strip().splitlines()[-1]


def test_read_recitals_puts_the_recital_before_the_unadapted_base(monkeypatch):
    import contextlib

    import perk_cli.training.in_context as in_context
    from perk_cli.data.schema import Task

    state = {"adapter_off": False}

    @contextlib.contextmanager
    def disable_adapter():
        state["adapter_off"] = True
        yield
        state["adapter_off"] = False

    calls = []

    def answer(runtime, task, budget, answer_format=None):
        calls.append((state["adapter_off"], task.context, task.question, answer_format))
        return ("school", " school") if "school" in " ".join(task.context) else ("park", " park")

    monkeypatch.setattr(in_context, "answer_in_context", answer)
    runtime = type("Runtime", (), {"model": type("Model", (), {"disable_adapter": staticmethod(disable_adapter)})})
    tasks = {k: Task(id=k, context=["a long document"], question=f"Where is {k}?", answer=a)
             for k, a in (("a", "school"), ("b", "kitchen"), ("c", "garden"))}
    rows = [ROWS[0], {**ROWS[1], "raw": "<support></support>\n<output>kitchen</output>"}, ROWS[2]]
    scores = experiment_module("support_recital").read_recitals(runtime, rows, tasks)
    assert scores == [1.0, 0.0, 0.0]  # a read right; b recited nothing (no call); c read "park"
    assert calls == [(True, SUPPORT["a"], "Where is a?", "plain"),
                     (True, ["Event 5: Jeff took the cup there."], "Where is c?", "plain")]


def test_the_script_reads_recitals_with_a_checkpoints_base(tmp_path_factory, tmp_path):
    from perk_cli import __version__
    from perk_cli.config import InnerLoopSettings, LoraSettings, PromptSettings, RunConfig, TrainSettings
    from perk_cli.training.meta_train import meta_train
    from tests.conftest import prepared_qa1

    data = prepared_qa1(tmp_path_factory, train=4, validation=2, test=2, seed=2)
    config = RunConfig(perk_version=__version__, lora=LoraSettings(rank=2, alpha=4),
                       inner=InnerLoopSettings(steps=1), prompt=PromptSettings(segment_tokens=32),
                       train=TrainSettings(max_steps=1, tasks_per_batch=1, eval_tasks=1, baseline=False))
    meta_train(config, data, tmp_path / "run")
    tests = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()]
    evaluation = tmp_path / "eval"
    evaluation.mkdir()
    (evaluation / "predictions.jsonl").write_text("".join(json.dumps(
        {"id": t["id"], "method": "perk", "prediction": "", "correct": 0.0,
         "raw": "<support>" + " ".join(t["support"]) + "</support>"}) + "\n" for t in tests))
    done = subprocess.run([sys.executable, str(SCRIPT), str(evaluation), str(data), "--json",
                           "--read-with-base", str(tmp_path / "run" / "last")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["tasks"] == 2 and result["recital_exact"] == 1.0
    assert 0.0 <= result["base_reading_recital_em"] <= 1.0
