"""How well a support- or recite-format memory recites the facts its answers rest on, from a `perk eval` run.

    python experiments/support_recital.py runs/ev-qa2C-last-602 runs/qa2-heldout-128-v2

Reads the evaluation's predictions.jsonl (one method's rows, `perk` by default) beside the tasks'
gold support, splits each recital (the text before `</support>`) into sentences, and prints, over the
tasks: the exact match of the answers, the share whose recital is exactly the gold support, the share
whose i-th recited sentence is the i-th gold fact (for each i), the share whose answer is named in the
recital, the EM among the exact recitals and among the rest, and the EM on the qa2 stories whose object
was put down before its dropper moved elsewhere (reading_base.dropped_then_moved). It tells a memory
that cannot find a fact (the recital wrong) from one that cannot read what it recited (the recital
right, the answer wrong). --json prints the figures as one object.

--read-with-base CHECKPOINT also has that checkpoint's base (its LoRA off) answer each question with
the recital, not the document, in its prompt, as `perk eval`'s `base` baseline reads: what the recital
is worth to a reader the memory has not changed.

    python experiments/support_recital.py runs/ev-qa2E-602 runs/qa2-heldout-128-s16-ev \
        --read-with-base runs/perk-qa2-E/last
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from perk_cli.config import PromptSettings
from perk_cli.data.schema import Task, read_split
from perk_cli.data.segment import split_sentences
from perk_cli.errors import PerkError


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


# where the recite format's recital ends: the question prompt restated (the default template's start)
_RESTATED = "\n" + PromptSettings().question_template.split("{", 1)[0]


def recital(raw: str) -> list[str]:
    """The sentences a raw answer recites: inside <support> tags (support format), or before the restated
    question prompt (recite format, the default question template)."""
    if "<support>" in raw or "</support>" in raw:
        body = raw.split("</support>")[0].split("<support>", 1)[-1]
    else:
        body = raw.split(_RESTATED, 1)[0]
    return [_norm(s) for s in split_sentences(body)]


def score(rows: list[dict], support: dict[str, list[str]], hard: set[str] = frozenset()) -> dict:
    """Figures over `rows` (predictions with id, raw, prediction, correct) against each id's gold support;
    "right_of_exact" and "right_of_rest": EM among the rows whose recital is exact and among the others;
    "dropped_then_moved": EM and count among the rows whose id is in `hard` (where there are any)."""
    n = len(rows)
    if n == 0:
        raise ValueError("no predictions to score")
    width = max(len(support[r["id"]]) for r in rows)
    at = [0] * width
    named = 0
    exact_rows, other_rows = [], []
    for row in rows:
        said, gold = recital(row["raw"]), [_norm(s) for s in support[row["id"]]]
        (exact_rows if said == gold else other_rows).append(row)
        named += bool(row["prediction"]) and any(row["prediction"] in s for s in said)
        for i, fact in enumerate(gold):
            at[i] += i < len(said) and said[i] == fact
    em = lambda some: sum(r["correct"] for r in some) / len(some) if some else None  # noqa: E731
    hard_rows = [row for row in rows if row["id"] in hard]
    return {"tasks": n, "em": em(rows), "recital_exact": len(exact_rows) / n,
            "fact_at": [k / n for k in at], "answer_in_recital": named / n,
            "right_of_exact": em(exact_rows), "right_of_rest": em(other_rows),
            **({"dropped_then_moved": {"em": em(hard_rows), "n": len(hard_rows)}} if hard_rows else {})}


def read_recitals(runtime, rows: list[dict], tasks: dict[str, Task], budget: int = 16) -> list[float]:
    """Exact match of the runtime's base (adapter off, plain answers) reading each row's recital in its
    prompt in place of the task's document; 0 where nothing was recited or it does not fit."""
    from perk_cli.scores import exact_match
    from perk_cli.training.in_context import answer_in_context

    scores = []
    for row in rows:
        task, said = tasks[row["id"]], recital(row["raw"])
        answered = None
        if said:
            with runtime.model.disable_adapter():
                answered = answer_in_context(runtime, task.model_copy(update={"context": said}), budget, "plain")
        scores.append(exact_match(answered[0], task.answer) if answered else 0.0)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("evaluation", type=Path, help="the --out directory of a perk eval run")
    parser.add_argument("tasks", type=Path, help="the task directory it evaluated")
    parser.add_argument("--split", default="test")
    parser.add_argument("--method", default="perk")
    parser.add_argument("--read-with-base", type=Path, default=None, metavar="CHECKPOINT",
                        help="also score that checkpoint's base answering from each recital")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args()
    path = args.evaluation / "predictions.jsonl"
    try:
        if not path.is_file():
            raise PerkError(f"{path}: no predictions; pass the --out directory of `perk eval`")
        tasks = {t.id: t for t in read_split(args.tasks, args.split)}
        support = {i: t.support for i, t in tasks.items()}
        rows = [row for row in map(json.loads, path.read_text().splitlines()) if row["method"] == args.method]
        missing = [row["id"] for row in rows if not support.get(row["id"])]
        if missing:
            raise PerkError(f"{args.tasks}: task {missing[0]} has no gold support in its {args.split} split")
        if not rows:
            raise PerkError(f"{path}: no rows of method {args.method!r}")
        runtime = None
        if args.read_with_base is not None:
            from perk_cli.checkpoint import load_runtime

            runtime, _ = load_runtime(args.read_with_base)
    except PerkError as exc:
        parser.error(str(exc))
    from perk_cli.training.reading_base import dropped_then_moved

    result = score(rows, support, {i for i, task in tasks.items() if dropped_then_moved(task)})
    if runtime is not None:
        read = read_recitals(runtime, rows, tasks)
        result["base_reading_recital_em"] = sum(read) / len(read)
    if args.json:
        print(json.dumps(result))
        return
    facts = [f"fact {i + 1}" for i in range(len(result["fact_at"]))]
    share = lambda value: "-" if value is None else f"{value:.3f}"  # noqa: E731
    hard = result.get("dropped_then_moved")
    print(f"{'tasks':>6} {'EM':>6} {'recital = support':>18} " + " ".join(f"{f:>7}" for f in facts)
          + f" {'answer recited':>15} {'EM, exact recitals':>19} {'EM, the rest':>13}"
          + (f" {'EM, dropped then moved':>23}" if hard else "")
          + (f" {'base reads recital':>19}" if runtime is not None else ""))
    print(f"{result['tasks']:>6} {result['em']:>6.3f} {result['recital_exact']:>18.3f} "
          + " ".join(f"{v:>7.3f}" for v in result["fact_at"]) + f" {result['answer_in_recital']:>15.3f}"
          + f" {share(result['right_of_exact']):>19} {share(result['right_of_rest']):>13}"
          + (f" {share(hard['em']) + ' of ' + str(hard['n']):>23}" if hard else "")
          + (f" {result['base_reading_recital_em']:>19.3f}" if runtime is not None else ""))


if __name__ == "__main__":
    main()
