"""Copy a prepared bAbI task directory with every task's support replaced by all the story's events.

    python benchmarks/event_support.py runs/qa2-train-4s runs/qa2-train-4s-ev

With `--answer-format support`, the memory then recites the whole story's events ("Event 0: ...",
in order, filler left out) before it answers: a diagnosis of where qa2 fails (can the memory recite
the story? can the adapted model read what it recited?), not a general recipe, since it needs to know
which sentences are events. Needs segments holding one sentence each (`perk prepare --segment-tokens
16`), so that an event is a segment; a task whose events cannot be told apart that way is refused.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from perk_cli.data.schema import SPLITS


def event_support(task: dict) -> dict:
    events = [segment for segment in task["context"] if "Event " in segment]
    if not events or any(not (s.startswith("Event ") and s.endswith(".") and s.count("Event ") == 1) for s in events):
        raise ValueError(f"task {task['id']}: its events are not one a segment; prepare with --segment-tokens 16")
    return {**task, "support": events}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a bAbI task directory from perk prepare")
    parser.add_argument("out", type=Path, help="the new directory (must not exist)")
    args = parser.parse_args()
    if not (args.source / "prepare.json").is_file():
        parser.error(f"{args.source}: not a prepared task directory (no prepare.json)")
    if args.out.exists():
        parser.error(f"{args.out}: exists; name a new directory")
    converted = {}
    try:
        for split in SPLITS:
            path = args.source / f"{split}.jsonl"
            if path.is_file():
                converted[split] = [event_support(json.loads(line)) for line in path.read_text().splitlines()]
    except ValueError as exc:
        parser.error(f"{args.source}: {exc}")
    args.out.mkdir(parents=True)
    shutil.copy(args.source / "prepare.json", args.out / "prepare.json")
    for split, tasks in converted.items():
        (args.out / f"{split}.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks))
    print(f"{args.out}: " + ", ".join(f"{len(t)} {s}" for s, t in converted.items()))


if __name__ == "__main__":
    main()
