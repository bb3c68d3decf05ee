"""perk_cli.evaluation.references (and benchmarks/heuristics.py, its command line): the trivial qa1
references read every event of a story."""

import json
import subprocess
import sys
from pathlib import Path

from perk_cli.data import vocab
from perk_cli.evaluation.references import events, references

ROOT = Path(__file__).resolve().parents[1]


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


def test_the_benchmark_script_prints_the_references(tmp_path):
    task = {"context": ["Event 0: Mary went to the kitchen."], "question": "Where is Mary?", "answer": "kitchen"}
    (tmp_path / "test.jsonl").write_text(json.dumps(task) + "\n")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "heuristics.py"), str(tmp_path)],
                          capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == references(tmp_path, "test") == {
        "chance": 1.0, "first mention of the person": 1.0, "last place in the story": 1.0, "tasks": 1}
