"""Teacher-forced exact match (`--eval-forced` validation) against decoded EM, task by task.

    python experiments/forced_vs_decoded.py experiments/results/perk-recall-reader/checkpoint-D runs/recall-train-3 \
        --split validation --model experiments/results/perk-recall-reader/recall-reader-r32.safetensors

Each task's context is written into one memory; the same memory is scored both ways (teacher-forced:
one forward pass; decoded: greedy decoding, read in the run's answer format, as `perk eval` does).
Prints both EMs, how often they disagree and which way, and the seconds each costs a task (the
adaptation counted with the forced side, which validation pays either way). --out keeps the rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from perk_cli.data.schema import read_split
from perk_cli.errors import PerkError
from perk_cli.scores import exact_match
from perk_cli.memory import perk_answer, perk_forced
from perk_cli.prompts import decode_budget
from perk_cli.checkpoint import build_runtime, read_checkpoint


def compare(runtime, tasks) -> list[dict]:
    budget = decode_budget(runtime.tokenizer, tasks, runtime.config.prompt)
    rows = []
    for task in tasks:
        started = time.perf_counter()
        exact, loss, lora = perk_forced(runtime, task)
        forced_at = time.perf_counter()
        answer, raw, _ = perk_answer(runtime, task, budget, lora=lora)
        rows.append({"forced": exact, "em": exact_match(answer, task.answer), "loss": loss,
                     "answer": answer, "gold": task.answer, "raw": raw, "forced_s": forced_at - started,
                     "decode_s": time.perf_counter() - forced_at})
    return rows


def summary(rows: list[dict]) -> dict:
    n = len(rows)
    forced_s = statistics.median(r["forced_s"] for r in rows)
    decode_s = statistics.median(r["decode_s"] for r in rows)
    return {"tasks": n, "forced_em": sum(r["forced"] for r in rows) / n, "decoded_em": sum(r["em"] for r in rows) / n,
            "right_only_forced": sum(r["forced"] and not r["em"] for r in rows),
            "right_only_decoded": sum(r["em"] and not r["forced"] for r in rows),
            "forced_s": forced_s, "decoded_s": forced_s + decode_s, "speedup": (forced_s + decode_s) / forced_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("tasks", type=Path, help="a task directory from perk prepare")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--model", default=None, help="the base to load instead of the checkpoint's own")
    parser.add_argument("--limit", type=int, default=None, help="the first N tasks only")
    parser.add_argument("--out", type=Path, default=None, help="write one JSON row a task here")
    args = parser.parse_args()
    try:
        files = read_checkpoint(args.checkpoint, "checkpoint")
        tasks = read_split(args.tasks, args.split)[: args.limit]
        config = files.config
        if args.model is not None:
            config = config.model_copy(update={"model": config.model.model_copy(update={"name": args.model})})
        torch.manual_seed(0)
        runtime = build_runtime(config, files.tensors, source=str(files.path))
    except PerkError as exc:
        parser.error(str(exc))
    rows = compare(runtime, tasks)
    if args.out is not None:
        args.out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = summary(rows)
    print(f"{'tasks':>6} {'forced EM':>10} {'decoded EM':>11} {'only forced':>12} {'only decoded':>13} "
          f"{'s/task forced':>14} {'s/task decoded':>15} {'ratio':>6}")
    print(f"{result['tasks']:>6} {result['forced_em']:>10.3f} {result['decoded_em']:>11.3f} "
          f"{result['right_only_forced']:>12} {result['right_only_decoded']:>13} {result['forced_s']:>14.2f} "
          f"{result['decoded_s']:>15.2f} {result['speedup']:>6.2f}")


if __name__ == "__main__":
    main()
