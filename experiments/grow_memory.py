"""Does a memory written in two calls remember the first? qa1 stories adapted whole, in two halves (the
second call grows the first's memory: `perk adapt --into`, `POST /v1/memories/{id}/append`), and the
second half alone, scored by where the answer's supporting fact sits.

    perk prepare --task babi --subtask qa1 --facts 4 --length 1024 --segment-tokens 64 --model smollm2-reader \
        --train 0 --validation 0 --test 40 --seed 871 -o runs/grow-qa1-1024
    python experiments/grow_memory.py runs/grow-qa1-1024 [--checkpoint shipped] [--out runs/grow-qa1-1024.json]

A story's segments are cut in the middle; its supporting fact (the asked person's last move) lies in one
half. Prints EM a condition, overall and by that half, and writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from perk_cli.data.schema import read_split
from perk_cli.evaluation.scores import exact_match
from perk_cli.memory import Origin, adapt_segments
from perk_cli.prompts import answer_question
from perk_cli.training.checkpoint import load_runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tasks", type=Path)
    parser.add_argument("--checkpoint", default="shipped")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    runtime, files = load_runtime(Path(args.checkpoint))
    origin = Origin("checkpoint", str(files.path), files.fingerprint)
    rows = []
    for task in read_split(args.tasks, args.split):
        half = len(task.context) // 2
        first, second = task.context[:half], task.context[half:]
        fact_half = "second" if task.support and any(f in s for f in task.support for s in second) else "first"
        whole = adapt_segments(runtime, origin, task.context)
        grown = adapt_segments(runtime, origin, second, into=adapt_segments(runtime, origin, first))
        alone = adapt_segments(runtime, origin, second)
        row = {"id": task.id, "gold": task.answer, "fact_half": fact_half}
        for name, memory, n in (("whole", whole, len(task.context)), ("two calls", grown, len(task.context)),
                                ("second half alone", alone, len(second))):
            with torch.no_grad():
                answer, _ = answer_question(runtime.model, runtime.tokenizer, task.question, n, runtime.config.prompt,
                                            lora=memory.lora, max_new_tokens=6)
            row[name] = {"answer": answer, "correct": exact_match(answer, task.answer)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("| condition | EM (n) | fact in the first half | fact in the second half |")
    print("|---|---|---|---|")
    for name in ("whole", "two calls", "second half alone"):
        cells = []
        for subset in (rows, [r for r in rows if r["fact_half"] == "first"], [r for r in rows if r["fact_half"] == "second"]):
            correct = sum(r[name]["correct"] for r in subset)
            cells.append(f"{correct / max(1, len(subset)):.3f} ({len(subset)})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
