"""Copy a prepared bAbI task directory with every task's support replaced by all the story's events.

    python experiments/event_support.py runs/qa2-train-4s runs/qa2-train-4s-ev

With `--answer-format support`, the memory then recites the whole story's events ("Event 0: ...",
in order, filler left out) before it answers: a diagnosis of where qa2 fails (can the memory recite
the story? can the adapted model read what it recited?), not a general recipe, since it needs to know
which sentences are events. Needs segments holding one sentence each (`perk prepare --segment-tokens
16`), so that an event is a segment; a task whose events cannot be told apart that way is refused.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from perk_cli.data.babi import event_support
from perk_cli.data.schema import SPLITS, read_split, write_prepared
from perk_cli.errors import PerkError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a bAbI task directory from perk prepare")
    parser.add_argument("out", type=Path, help="the new directory (must not exist)")
    args = parser.parse_args()
    info_path = args.source / "prepare.json"
    try:
        if not info_path.is_file():
            raise PerkError(f"{args.source}: not a prepared task directory (no prepare.json)")
        if args.out.exists():
            raise PerkError(f"{args.out}: exists; name a new directory")
        try:
            converted = {split: [event_support(task) for task in read_split(args.source, split)]
                         for split in SPLITS if (args.source / f"{split}.jsonl").is_file()}
        except ValueError as exc:  # event_support's refusal; read_split's errors name their file already
            raise PerkError(f"{args.source}: {exc}")
        info = {**json.loads(info_path.read_text()),
                "support": f"every event, by experiments/event_support.py from {args.source}"}
        write_prepared(args.out, converted, info)
    except PerkError as exc:
        parser.error(str(exc))
    print(f"{args.out}: " + ", ".join(f"{len(t)} {s}" for s, t in converted.items()))


if __name__ == "__main__":
    main()
