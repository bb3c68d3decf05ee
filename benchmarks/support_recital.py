"""How well a support-format memory recites the facts its answers rest on, from a `perk eval` run.

    python benchmarks/support_recital.py runs/ev-qa2C-last-602 runs/qa2-heldout-128-v2

Reads the evaluation's predictions.jsonl (one method's rows, `perk` by default) beside the tasks'
gold support, splits each recital (the text before `</support>`) into sentences, and prints, over the
tasks: the exact match of the answers, the share whose recital is exactly the gold support, the share
whose i-th recited sentence is the i-th gold fact (for each i), and the share whose answer is named in
the recital. It tells a memory that cannot find a fact (the recital wrong) from one that cannot read
what it recited (the recital right, the answer wrong). --json prints the figures as one object.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from perk_cli.data.schema import read_split
from perk_cli.data.segment import split_sentences
from perk_cli.errors import PerkError


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def recital(raw: str) -> list[str]:
    """The sentences a raw support-format answer recites."""
    body = raw.split("</support>")[0].split("<support>", 1)[-1]
    return [_norm(s) for s in split_sentences(body)]


def score(rows: list[dict], support: dict[str, list[str]]) -> dict:
    """Figures over `rows` (predictions with id, raw, prediction, correct) against each id's gold support."""
    n = len(rows)
    if n == 0:
        raise ValueError("no predictions to score")
    width = max(len(support[r["id"]]) for r in rows)
    at = [0] * width
    exact = named = 0
    for row in rows:
        said, gold = recital(row["raw"]), [_norm(s) for s in support[row["id"]]]
        exact += said == gold
        named += bool(row["prediction"]) and any(row["prediction"] in s for s in said)
        for i, fact in enumerate(gold):
            at[i] += i < len(said) and said[i] == fact
    return {"tasks": n, "em": sum(r["correct"] for r in rows) / n, "recital_exact": exact / n,
            "fact_at": [k / n for k in at], "answer_in_recital": named / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("evaluation", type=Path, help="the --out directory of a perk eval run")
    parser.add_argument("tasks", type=Path, help="the task directory it evaluated")
    parser.add_argument("--split", default="test")
    parser.add_argument("--method", default="perk")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args()
    path = args.evaluation / "predictions.jsonl"
    try:
        if not path.is_file():
            raise PerkError(f"{path}: no predictions; pass the --out directory of `perk eval`")
        support = {t.id: t.support for t in read_split(args.tasks, args.split)}
        rows = [row for row in map(json.loads, path.read_text().splitlines()) if row["method"] == args.method]
        missing = [row["id"] for row in rows if not support.get(row["id"])]
        if missing:
            raise PerkError(f"{args.tasks}: task {missing[0]} has no gold support in its {args.split} split")
        if not rows:
            raise PerkError(f"{path}: no rows of method {args.method!r}")
    except PerkError as exc:
        parser.error(str(exc))
    result = score(rows, support)
    if args.json:
        print(json.dumps(result))
        return
    facts = [f"fact {i + 1}" for i in range(len(result["fact_at"]))]
    print(f"{'tasks':>6} {'EM':>6} {'recital = support':>18} " + " ".join(f"{f:>7}" for f in facts)
          + f" {'answer recited':>15}")
    print(f"{result['tasks']:>6} {result['em']:>6.3f} {result['recital_exact']:>18.3f} "
          + " ".join(f"{v:>7.3f}" for v in result["fact_at"]) + f" {result['answer_in_recital']:>15.3f}")


if __name__ == "__main__":
    main()
