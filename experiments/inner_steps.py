"""A checkpoint adapted with more (or fewer) inner steps than it was meta-trained with: the curve, and the
checkpoint that takes the chosen count.

    python experiments/inner_steps.py experiments/results/perk-recall-reader/checkpoint-G runs/recall-train-3 \
        --steps 4,6,8 --added-lr 3e-4,1e-3,2.9e-3            # teacher-forced EM on the validation split
    python experiments/inner_steps.py experiments/results/perk-recall-reader/checkpoint-G --save 6:1e-3 \
        --out runs/G-k6                                       # G taking 6 steps, the 2 added at 1e-3

Steps past the checkpoint's K take `--added-lr` as their size (`with_inner_steps`, the rule `perk eval
--inner-steps` applies; an `--init-from` stage that raises K starts its added steps the same way); fewer
steps keep the first ones. Each (K, size) pair is scored as `--eval-forced` validation scores a run
(teacher-forced exact match and answer loss), so choose the pair here on validation tasks and measure the
saved checkpoint held out with `perk eval`. `--decode` scores the
decoded answer instead, as `perk eval` does: where the support format's recital is rarely exact (qa2,
forced EM 0.06 where the decoded answers score 0.69), forced EM cannot tell the pairs apart.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from perk_cli.data.schema import read_split
from perk_cli.errors import PerkError
from perk_cli.checkpoint import (CheckpointFiles, build_runtime, read_checkpoint, save_checkpoint,
                                        with_inner_steps)
from perk_cli.training.meta_train import validate


def pairs(steps: list[int], added: list[float], trained: int) -> list[tuple[int, float]]:
    """Every (K, size) to score; a K at or below the trained one has no added steps, so it is scored once."""
    out = []
    for k in steps:
        for lr in (added if k > trained else added[:1]):
            out.append((k, lr))
    return out


def sweep(files: CheckpointFiles, tasks, steps: list[int], added: list[float], model: str | None = None,
          decode: bool = False) -> list[dict]:
    rows = []
    for k, lr in pairs(steps, added, files.config.inner.steps):
        config, tensors = with_inner_steps(files.config, files.tensors, k, lr)
        config = config.model_copy(update={"train": config.train.model_copy(update={"eval_decode": decode})})
        if model:
            config = config.model_copy(update={"model": config.model.model_copy(update={"name": model})})
        started = time.perf_counter()
        scores = validate(build_runtime(config, tensors, source=str(files.path)), tasks)
        rows.append({"steps": k, "added_lr": lr if k > files.config.inner.steps else None,
                     ("em" if decode else "forced_em"): scores["val_em"], "loss": scores["val_loss"],
                     "seconds_a_task": (time.perf_counter() - started) / len(tasks)})
    return rows


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("tasks", type=Path, nargs="?", help="task directory to score on (not with --save)")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--limit", type=int, default=64, help="tasks of the split to score")
    parser.add_argument("--steps", default="", help="comma-separated inner step counts (default: the trained K)")
    parser.add_argument("--added-lr", default="1e-3", help="comma-separated sizes for the added steps")
    parser.add_argument("--model", help="another --model for the checkpoint's base (a delta file, ...)")
    parser.add_argument("--decode", action="store_true", help="score decoded answers (what perk eval scores), "
                        "not teacher-forced EM; slower")
    parser.add_argument("--save", metavar="K:LR", help="write the checkpoint taking K steps, the added at LR")
    parser.add_argument("--out", type=Path, help="with --save: the new checkpoint's directory; "
                        "without: where the rows go (jsonl)")
    args = parser.parse_args(argv)
    try:
        files = read_checkpoint(args.checkpoint)
        if args.save:
            try:
                k, lr = int(args.save.split(":")[0]), float(args.save.split(":")[1])
            except (ValueError, IndexError):
                parser.error(f"--save {args.save}: expected K:LR, e.g. 6:1e-3")
            if args.out is None:
                parser.error("--save: needs --out, the new checkpoint's directory")
            if k < 1 or lr <= 0:
                parser.error(f"--save {args.save}: K must be at least 1 and LR positive")
            config, tensors = with_inner_steps(files.config, files.tensors, k, lr)
            state = {"step": (files.trainer_state or {}).get("step"), "inner_steps_from": str(files.path),
                     "trained_steps": files.config.inner.steps, "steps": k, "added_lr": lr}
            save_checkpoint(args.out, config, tensors, state)
            print(f"{args.out}: {files.path} taking {k} inner steps (trained with {files.config.inner.steps}; "
                  f"added steps at {lr:g})")
            return
        if args.tasks is None:
            parser.error("tasks: a task directory to score on (or --save K:LR --out DIR)")
        try:
            steps = [int(x) for x in args.steps.split(",") if x] or [files.config.inner.steps]
            added = _floats(args.added_lr)
        except ValueError:
            parser.error(f"--steps {args.steps!r} / --added-lr {args.added_lr!r}: expected comma-separated numbers, "
                         "e.g. --steps 4,6 --added-lr 3e-4,1e-3")
        if min(steps) < 1 or not added or min(added) <= 0:
            parser.error("--steps must be at least 1 and --added-lr positive")
        tasks = read_split(args.tasks, args.split)[: args.limit]
        rows = sweep(files, tasks, steps, added, args.model, args.decode)
    except PerkError as exc:
        parser.exit(2, f"error: {exc}\n")
    print(f"{files.path}, trained with K={files.config.inner.steps}; {len(tasks)} {args.split} tasks of {args.tasks}")
    score = "em" if args.decode else "forced_em"
    print(f"{'K':>3} {'added steps at':>15} {'decoded EM' if args.decode else 'forced EM':>10} {'loss':>8} "
          f"{'s a task':>9}")
    for row in rows:
        size = "-" if row["added_lr"] is None else f"{row['added_lr']:g}"
        print(f"{row['steps']:>3} {size:>15} {row[score]:>10.3f} {row['loss']:>8.4f} "
              f"{row['seconds_a_task']:>9.2f}")
    if args.out:
        args.out.write_text("".join(json.dumps(row) + "\n" for row in rows))


if __name__ == "__main__":
    main()
