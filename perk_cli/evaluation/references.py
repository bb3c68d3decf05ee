"""Trivial references for qa1 (and qa2) task sets: what an answer that ignores the question's logic scores.

    references(Path("runs/learning-tiny/data"), "validation")
    python benchmarks/heuristics.py runs/learning-tiny/data --split validation   # the same, as JSON

Every accuracy perk reports stands beside these (perk demo prints them under its table):

- chance: 1 / the number of distinct places in the story (averaged over tasks);
- most common answer of the training split;
- first mention: the first place the asked person went to (qa1 only: a qa2 question asks for an object);
- last place: the place of the story's last event, whoever moved there.
The right answer is the asked person's last place (qa1), the place of the object's holder or where it
was dropped (qa2).
"""

from __future__ import annotations

import collections
import json
import re
from pathlib import Path

EVENT = re.compile(r"Event (\d+): (\w+) [a-z ]+? to the (\w+)\.")  # every verb of vocab.MOVE_VERBS


def events(task: dict) -> list[tuple[int, str, str]]:
    return sorted((int(i), who, where) for segment in task["context"] for i, who, where in EVENT.findall(segment))


def references(directory: Path, split: str) -> dict:
    tasks = [json.loads(line) for line in (directory / f"{split}.jsonl").read_text().splitlines()]
    train_file = directory / "train.jsonl"
    train = [json.loads(line) for line in train_file.read_text().splitlines()] if train_file.is_file() else []
    common = collections.Counter(t["answer"] for t in train).most_common(1)[0][0] if train else None
    scores = collections.defaultdict(float)
    for task in tasks:
        story = events(task)
        person = task["question"].removeprefix("Where is ").rstrip("?")
        places = {where for _, _, where in story}
        mine = [where for _, who, where in story if who == person]
        scores["chance"] += 1 / max(len(places), 1)
        if common is not None:  # a test-only directory has no training answers
            scores["most common training answer"] += common == task["answer"]
        if not task["question"].startswith("Where is the "):  # qa2 asks where an object is
            scores["first mention of the person"] += bool(mine) and mine[0] == task["answer"]
        scores["last place in the story"] += bool(story) and story[-1][2] == task["answer"]
    return {name: round(value / len(tasks), 3) for name, value in scores.items()} | {"tasks": len(tasks)}
