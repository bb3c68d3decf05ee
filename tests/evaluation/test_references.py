"""perk_cli.evaluation.references (and experiments/heuristics.py, its command line): the trivial qa1
references read every event of a story."""

import json
import subprocess
import sys
from pathlib import Path

from perk_cli.data import vocab
from perk_cli.evaluation.references import events, order_errors, recall_attribute, recall_errors, references

ROOT = Path(__file__).resolve().parents[2]


def test_every_move_verb_is_an_event():
    context = [" ".join(f"Event {i}: Mary {verb} the {place}. Filler about the town hall."
                        for i, (verb, place) in enumerate(zip(vocab.MOVE_VERBS, vocab.LOCATIONS)))]
    found = events({"context": context})
    assert found == [(i, "Mary", place) for i, place in enumerate(vocab.LOCATIONS[:len(vocab.MOVE_VERBS)])]


def test_references_against_hand_counted_stories(tmp_path):
    tasks = [  # answer = the asked person's last place
        {"context": ["Event 0: John went back to the office. Event 1: Mary moved to the park."],
         "question": "Where is John?", "answer": "office"},  # first mention right, last place wrong
        {"context": ["Event 0: Mary went to the kitchen.", "Event 1: Mary went back to the garden."],
         "question": "Where is Mary?", "answer": "garden"},  # first mention wrong, last place right
    ]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks))
    scores = references(tmp_path, "test")
    assert scores == {"chance": 0.5, "first mention of the person": 0.5, "last place in the story": 0.5, "tasks": 2}


def test_an_object_question_has_no_person_reference(tmp_path):
    task = {"context": ["Event 0: Mary went to the kitchen. Event 1: Mary picked up the apple there. "
                        "Event 2: John moved to the park."],
            "question": "Where is the apple?", "answer": "kitchen"}  # qa2: Mary holds it in the kitchen
    (tmp_path / "test.jsonl").write_text(json.dumps(task) + "\n")
    assert references(tmp_path, "test") == {"chance": 0.5, "last place in the story": 0.0, "tasks": 1}


def test_a_qa3_question_is_scored_as_a_story(tmp_path):
    task = {"context": ["Event 0: Mary went to the kitchen. Event 1: Mary picked up the apple there. "
                        "Event 2: Mary went to the park."],
            "question": "Where was the apple before the park?", "answer": "kitchen"}
    (tmp_path / "test.jsonl").write_text(json.dumps(task) + "\n")
    assert references(tmp_path, "test") == {"chance": 0.5, "last place in the story": 0.0, "tasks": 1}


def test_the_benchmark_script_prints_the_references(tmp_path):
    task = {"context": ["Event 0: Mary went to the kitchen."], "question": "Where is Mary?", "answer": "kitchen"}
    (tmp_path / "test.jsonl").write_text(json.dumps(task) + "\n")
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "heuristics.py"), str(tmp_path)],
                          capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == references(tmp_path, "test") == {
        "chance": 1.0, "first mention of the person": 1.0, "last place in the story": 1.0, "tasks": 1}


def _records(*rows: tuple[str, str, str]) -> list[str]:
    return [f"Student {sid}, Name: {name}, Year: Junior, School: School of Engineering, Major: {major}, Grade: 50"
            for sid, name, major in rows]


def test_recall_references_against_hand_counted_databases(tmp_path):
    database = _records(("1000001", "Ann Lee", "Physics"), ("1000002", "Bo Kim", "History"),
                        ("1000003", "Cy Ray", "Physics"))
    tasks = [  # majors: Physics twice, History once
        {"context": database, "question": "What is the major of student 1000002?", "answer": "History"},
        {"context": database, "question": "What major is student with ID 1000003 studying?", "answer": "Physics"},
        {"context": database, "question": "Which school is the student with ID 1000001 enrolled in?",
         "answer": "School of Engineering"},  # one school for all three: chance 1
        {"context": database, "question": "Does student 1000001 have a higher grade than student 1000002?",
         "answer": "No"},  # relation: no reference, not counted
        {"context": database, "question": "What is the highest grade among all students?", "answer": "50"},
    ]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks))
    (tmp_path / "train.jsonl").write_text(json.dumps(tasks[1]) + "\n")  # most common training answer: Physics
    scores = references(tmp_path, "test")
    assert scores == {"chance": round((1 / 2 + 1 / 2 + 1) / 3, 3),
                      "most common training answer": round(1 / 3, 3),
                      "document majority (ignores the id)": round(2 / 3, 3), "tasks": 3}


def test_recall_attribute_reads_both_question_styles():
    assert recall_attribute("What is the grade of student 8884968?") == "grade"
    assert recall_attribute("What is the name of the student with ID 3109998?") == "name"
    assert recall_attribute("Which year is student with ID 4918490 in?") == "year"
    assert recall_attribute("Do student 1 and student 2 study the same major?") is None  # no 5-digit id
    assert recall_attribute("Are student 8746953 and student 8732675 in the same year?") is None  # two ids
    assert recall_attribute("Where is Mary?") is None


def test_recall_errors_sort_answers_by_kind(tmp_path):
    database = _records(("1000001", "Ann Lee", "Physics"), ("1000002", "Bo Kim", "History"))
    tasks = [{"id": f"t{i}", "context": database, "question": "What is the major of student 1000002?",
              "answer": "History"} for i in range(3)]
    tasks.append({"id": "t3", "context": database, "question": "What is the highest grade among all students?",
                  "answer": "50"})  # not recall: not counted
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks))
    rows = [("perk", "t0", "history"), ("perk", "t1", "Physics"), ("perk", "t2", "Chemistry"), ("perk", "t3", "9"),
            ("base", "t0", "History"), ("base", "t1", ""), ("base", "t2", "History")]
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text("".join(json.dumps({"method": m, "id": i, "prediction": p}) + "\n" for m, i, p in rows))
    assert recall_errors(tmp_path, "test", predictions) == {
        "perk": {"right": 0.333, "another student's value": 0.333, "not in the database": 0.333, "tasks": 3},
        "base": {"right": 0.667, "another student's value": 0.0, "not in the database": 0.333, "tasks": 3}}
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "heuristics.py"), str(tmp_path),
                           "--predictions", str(predictions)], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout)["recall errors"] == recall_errors(tmp_path, "test", predictions)


def test_order_errors_sort_qa1_answers_by_where_the_persons_moves_lie(tmp_path):
    tasks = [
        {"id": "one", "context": ["Ann went to Oslo. Bo went to Lima.", "Bo moved to Rome."],
         "question": "Where is Ann?", "answer": "Oslo"},
        {"id": "same", "context": ["Ann went to Oslo. Ann moved to Lima.", "Bo went to Rome."],
         "question": "Where is Ann?", "answer": "Lima"},
        {"id": "across1", "context": ["Ann went to Oslo.", "Bo went to Rome.", "Ann journeyed to Lima."],
         "question": "Where is Ann?", "answer": "Lima"},
        {"id": "across2", "context": ["Ann went to Oslo.", "Ann travelled to Kyiv.", "Ann journeyed to Lima."],
         "question": "Where is Ann?", "answer": "Lima"},
        {"id": "object", "context": ["Ann went to Oslo. Ann picked up the apple there."],
         "question": "Where is the apple?", "answer": "Oslo"},  # qa2: not sorted
    ]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks))
    rows = [("perk", "one", "Oslo"), ("perk", "same", "Oslo"), ("perk", "across1", "oslo"),
            ("perk", "across2", "Rome"), ("perk", "object", "Oslo"), ("base", "across1", "Lima")]
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text("".join(json.dumps({"method": m, "id": i, "prediction": p}) + "\n" for m, i, p in rows))
    assert order_errors(tmp_path, "test", predictions) == {
        "perk": {"one move": {"tasks": 1, "right": 1.0, "a place the person left": 0.0},
                 "moves in one segment": {"tasks": 1, "right": 0.0, "a place the person left": 1.0},
                 "moves across segments": {"tasks": 2, "right": 0.0, "a place the person left": 0.5}},
        "base": {"moves across segments": {"tasks": 1, "right": 1.0, "a place the person left": 0.0}}}
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "heuristics.py"), str(tmp_path),
                           "--predictions", str(predictions)], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout)["qa1 order"] == order_errors(tmp_path, "test", predictions)
