"""Trivial references for qa1, qa2 and recall task sets, as JSON (perk_cli.evaluation.references).

    python experiments/heuristics.py runs/learning-tiny/data --split validation
    python experiments/heuristics.py runs/recall-heldout-6 --predictions runs/ev-k4-6/predictions.jsonl

With --predictions (perk eval's predictions.jsonl on that split), recall answers are sorted per method
into right, another student's value of the asked attribute, and neither; qa1 answers by where the asked
person's moves lie (one move, several in one segment, several across segments), with the share that
are a place the person left.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from perk_cli.evaluation.references import order_errors, recall_errors, references


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--predictions", type=Path, default=None,
                        help="perk eval's predictions.jsonl on this split: recall's answers sorted by kind of error")
    args = parser.parse_args()
    if not (args.directory / f"{args.split}.jsonl").is_file():
        parser.error(f"{args.directory}: no {args.split}.jsonl (a task directory from perk prepare)")
    if args.predictions is not None and not args.predictions.is_file():
        parser.error(f"--predictions {args.predictions}: no such file (perk eval writes predictions.jsonl)")
    result = references(args.directory, args.split)
    if args.predictions is not None:
        result = {"references": result, "recall errors": recall_errors(args.directory, args.split, args.predictions),
                  "qa1 order": order_errors(args.directory, args.split, args.predictions)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
