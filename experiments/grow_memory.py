"""Does a memory written in two calls remember the first? bAbI stories adapted whole, in two halves (the
second call grows the first's memory: `perk adapt --into`, `POST /v1/memories/{id}/append`), and the
second half alone, scored by where the answer's supporting fact sits.

    perk prepare --task babi --subtask qa1 --facts 4 --length 1024 --segment-tokens 64 --model smollm2-reader \
        --train 0 --validation 0 --test 40 --seed 871 -o runs/grow-qa1-1024
    python experiments/grow_memory.py runs/grow-qa1-1024 [--checkpoint shipped] [--out runs/grow-qa1-1024.json]
    python experiments/grow_memory.py runs/grow-qa1-1024-val --append-scales 1,0.5,0.25 --only-grown

`--append-scales` grows each memory at these multiples of the learned step sizes (the second call only;
`perk adapt --grow-step-scale`), a test-time lever chosen on a validation set of its own (0.5) before
it was scored on the held-out one.

A story's segments are cut in the middle; its supporting facts (qa1: the asked person's last move; qa2:
the object's last take or drop and its holder's move) lie in the first half, the second, or both. Prints
EM a condition, overall and by that half, and writes the rows as JSON. A checkpoint that recites before it
answers (qa2's) needs its full answer length: `--max-new-tokens 0` takes the checkpoint's own.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from perk_cli.data.schema import read_split
from perk_cli.scores import exact_match
from perk_cli.memory import Origin, adapt_segments
from perk_cli.prompts import answer_question
from perk_cli.checkpoint import load_runtime


def where_support_lies(support: list[str], first: list[str], second: list[str]) -> str:
    """'first', 'second' or 'both': the halves whose segments hold the task's supporting facts."""
    def holds(half: list[str]) -> bool:
        return any(fact in segment for fact in support for segment in half)
    in_first, in_second = holds(first), holds(second)
    return "both" if in_first and in_second else "second" if in_second else "first"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tasks", type=Path)
    parser.add_argument("--checkpoint", default="shipped")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--append-scales", default="1", help="Comma list of factors on the second call's step sizes.")
    parser.add_argument("--only-grown", action="store_true", help="Skip the whole story and the second half alone.")
    parser.add_argument("--inner-steps", type=int, help="Inner steps at test time (perk eval --inner-steps).")
    parser.add_argument("--added-lr", type=float, default=1e-3)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--skip-alone", action="store_true", help="Skip the second half alone.")
    parser.add_argument("--max-new-tokens", type=int, default=6, help="0: the checkpoint's max_answer_tokens.")
    args = parser.parse_args()
    scales = [float(x) for x in args.append_scales.split(",")]
    runtime, files = load_runtime(Path(args.checkpoint), inner_steps=args.inner_steps, added_lr=args.added_lr)
    origin = Origin("checkpoint", str(files.path), files.fingerprint)
    rows = []
    for task in read_split(args.tasks, args.split)[: args.limit]:
        half = len(task.context) // 2
        first, second = task.context[:half], task.context[half:]
        fact_half = where_support_lies(task.support, first, second)
        first_memory = adapt_segments(runtime, origin, first)
        memories = {}
        if not args.only_grown:
            memories["whole"] = (adapt_segments(runtime, origin, task.context), len(task.context))
            if not args.skip_alone:
                memories["second half alone"] = (adapt_segments(runtime, origin, second), len(second))
        for scale in scales:  # the second call's steps only
            grown = adapt_segments(runtime, origin, second, into=first_memory, grow_step_scale=scale)
            memories["two calls" if scale == 1 else f"two calls, steps x{scale:g}"] = (grown, len(task.context))
        row = {"id": task.id, "gold": task.answer, "fact_half": fact_half}
        for name, (memory, n) in memories.items():
            with torch.no_grad():
                answer, _ = answer_question(runtime.model, runtime.tokenizer, task.question, n, runtime.config.prompt,
                                            lora=memory.lora, max_new_tokens=args.max_new_tokens or None)
            row[name] = {"answer": answer, "correct": exact_match(answer, task.answer)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    halves = [h for h in ("first", "second", "both") if any(r["fact_half"] == h for r in rows)]
    print("| condition | EM (n) | " + " | ".join(f"facts in the {h} half" if h != "both" else "facts in both" for h in halves)
          + " |")
    print("|---|---|" + "---|" * len(halves))
    for name in [k for k in rows[0] if isinstance(rows[0][k], dict)]:
        cells = []
        for subset in [rows] + [[r for r in rows if r["fact_half"] == h] for h in halves]:
            correct = sum(r[name]["correct"] for r in subset)
            cells.append(f"{correct / max(1, len(subset)):.3f} ({len(subset)})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
