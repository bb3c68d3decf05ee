"""Trivial references for qa1, qa2 and recall task sets: what an answer that ignores the question's logic scores.

    references(Path("runs/learning-tiny/data"), "validation")
    python experiments/heuristics.py runs/learning-tiny/data --split validation   # the same, as JSON

Every accuracy perk reports stands beside these (perk demo prints them under its table):

- chance: 1 / the number of distinct places in the story (averaged over tasks);
- most common answer of the training split;
- first mention: the first place the asked person went to (qa1 only: qa2 and qa3 questions ask about an object);
- last place: the place of the story's last event, whoever moved there.
The right answer is the asked person's last place (qa1), the place of the object's holder or where it
was dropped (qa2).

Student-records recall (one student id and one attribute in the question: "What is the major of student
3109998?", "Which school is the student with ID 7077015 enrolled in?") gets its own, all blind to the id:
- chance: 1 / the number of distinct values of the asked attribute in the database;
- most common training answer, as above;
- document majority: the asked attribute's most common value in the database (ties: the first listed).
Other tasks without a story of events (records relation and aggregation) have none: they are left
out, and `tasks` counts the tasks scored.

`order_errors` sorts a method's qa1 answers by where the asked person's moves lie (one move; several
in one segment; several across segments, where only the segments' order tells the last) and counts the
wrong answers that are a place the person left, which is how a memory without the story's order fails.

`recall_errors` sorts a method's recall answers (perk eval's predictions.jsonl) into right, another
student's value of the asked attribute (the value was read, its owner was not), and anything else.
"""

from __future__ import annotations

import collections
import json
import re
from pathlib import Path

from perk_cli.data import vocab
from perk_cli.data.records import ATTRIBUTES
from perk_cli.scores import exact_match

STUDENT_ID = re.compile(r"\b\d{5,}\b")
# A move fact, numbered ("Event 3: Mary went to the kitchen.") or not ("Odalys went to Gougnies.").
MOVE = re.compile(r"(?:Event (\d+): )?\b([A-Z][a-z]+) (?:" + "|".join(vocab.MOVE_VERBS)
                  + r") (?:the ([a-z]+)|([A-Z][a-z]+))\.")


def events(task: dict) -> list[tuple[int, str, str]]:
    """(order, person, place) of every move in the story: by its event number, else where it sits."""
    found = [m for segment in task["context"] for m in MOVE.finditer(segment)]
    return sorted((int(m[1]) if m[1] else i, m[2], m[3] or m[4]) for i, m in enumerate(found))


def references(directory: Path, split: str) -> dict:
    tasks = [json.loads(line) for line in (directory / f"{split}.jsonl").read_text().splitlines()]
    train_file = directory / "train.jsonl"
    train = [json.loads(line) for line in train_file.read_text().splitlines()] if train_file.is_file() else []
    common = collections.Counter(t["answer"] for t in train).most_common(1)[0][0] if train else None
    scores = collections.defaultdict(float)
    scored = 0
    for task in tasks:
        if attribute := recall_attribute(task["question"]):
            _score_recall(task, attribute, common, scores)
            scored += 1
            continue
        story = events(task)
        if not story:  # not a story of events (records relation or aggregation): no reference
            continue
        scored += 1
        person = task["question"].removeprefix("Where is ").rstrip("?")
        places = {where for _, _, where in story}
        mine = [where for _, who, where in story if who == person]
        scores["chance"] += 1 / max(len(places), 1)
        if common is not None:  # a test-only directory has no training answers
            scores["most common training answer"] += common == task["answer"]
        if not task["question"].startswith(("Where is the ", "Where was the ")):  # qa2/qa3 ask about an object
            scores["first mention of the person"] += bool(mine) and mine[0] == task["answer"]
        scores["last place in the story"] += bool(story) and story[-1][2] == task["answer"]
    return {name: round(value / scored, 3) for name, value in scores.items()} | {"tasks": scored}


def recall_attribute(question: str) -> str | None:
    """The attribute a recall question asks for (None when the question is not recall's)."""
    if len(STUDENT_ID.findall(question)) != 1:
        return None
    words = set(re.findall(r"[a-z]+", question.lower()))
    asked = [attribute for attribute in ATTRIBUTES if attribute in words]
    return asked[0] if len(asked) == 1 else None


def attribute_values(task: dict, attribute: str) -> list[str]:
    """The asked attribute's value in every record of the database, in order."""
    field = re.compile(rf"\b{ATTRIBUTES[attribute]}: ([^,]+)")
    return [m.group(1).strip() for segment in task["context"] for m in field.finditer(segment)]


def _score_recall(task: dict, attribute: str, common: str | None, scores: dict) -> None:
    values = attribute_values(task, attribute)
    majority = collections.Counter(values).most_common(1)[0][0] if values else ""
    scores["chance"] += 1 / max(len(set(values)), 1)
    if common is not None:
        scores["most common training answer"] += exact_match(common, task["answer"])
    scores["document majority (ignores the id)"] += exact_match(majority, task["answer"])


def recall_errors(directory: Path, split: str, predictions: Path) -> dict:
    """Per method: the share of recall answers that are right, another student's value of the asked
    attribute in the same database, or neither (not a value of it there, or empty)."""
    tasks = {task["id"]: task for task in map(json.loads, (directory / f"{split}.jsonl").read_text().splitlines())}
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for row in map(json.loads, predictions.read_text().splitlines()):
        task = tasks.get(row["id"])
        attribute = recall_attribute(task["question"]) if task else None
        if attribute is None:
            continue
        if exact_match(row["prediction"], task["answer"]):
            kind = "right"
        elif any(exact_match(row["prediction"], value) for value in attribute_values(task, attribute)):
            kind = "another student's value"
        else:
            kind = "not in the database"
        counts[row["method"]][kind] += 1
    kinds = ("right", "another student's value", "not in the database")
    return {method: {kind: round(c[kind] / sum(c.values()), 3) for kind in kinds} | {"tasks": sum(c.values())}
            for method, c in counts.items()}


ORDER_CLASSES = ("one move", "moves in one segment", "moves across segments")


def order_class(task: dict) -> str | None:
    """Where the asked person's moves lie (ORDER_CLASSES), or None for a task that is not qa1's."""
    if not task["question"].startswith("Where is ") or task["question"].startswith("Where is the "):
        return None
    person = task["question"].removeprefix("Where is ").rstrip("?")
    segments = [k for k, segment in enumerate(task["context"]) for m in MOVE.finditer(segment) if m[2] == person]
    if not segments:
        return None
    return ORDER_CLASSES[0] if len(segments) == 1 else ORDER_CLASSES[1 if len(set(segments)) == 1 else 2]


def order_errors(directory: Path, split: str, predictions: Path) -> dict:
    """Per method and ORDER_CLASS: the tasks, the share answered right, and the share answered with a place
    the asked person had left (an earlier move's place)."""
    tasks = {task["id"]: task for task in map(json.loads, (directory / f"{split}.jsonl").read_text().splitlines())}
    counts: dict = collections.defaultdict(lambda: collections.defaultdict(collections.Counter))
    for row in map(json.loads, predictions.read_text().splitlines()):
        task = tasks.get(row["id"])
        kind = order_class(task) if task else None
        if kind is None:
            continue
        person = task["question"].removeprefix("Where is ").rstrip("?")
        left = [where for _, who, where in events(task) if who == person][:-1]
        tally = counts[row["method"]][kind]
        tally["tasks"] += 1
        if exact_match(row["prediction"], task["answer"]):
            tally["right"] += 1
        elif any(exact_match(row["prediction"], where) for where in left):
            tally["a place the person left"] += 1
    return {method: {kind: {"tasks": c[kind]["tasks"], "right": round(c[kind]["right"] / c[kind]["tasks"], 3),
                            "a place the person left": round(c[kind]["a place the person left"] / c[kind]["tasks"], 3)}
                     for kind in ORDER_CLASSES if c[kind]["tasks"]}
            for method, c in counts.items()}
