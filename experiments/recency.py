"""Does writing later segments harder give a memory the story's order? A test-time probe, no training.

    python experiments/recency.py CHECKPOINT TASKS --split validation --model BASE --bias 0,1,2,4 -o OUT

The checkpoint's inner loop is run with `InnerLoopSettings.recency` = bias: each inner step's token weights
(the checkpoint's weighter, normalised to mean 1 as always) are multiplied by exp(bias * (k / (N - 1) - 1/2))
for the token's segment k of N, so at bias b the last segment's tokens weigh e^b times the first's. PERK is scored at each bias (`perk eval`, no baselines, rows kept in
OUT/bias-<b>/), and its qa1 answers sorted by where the asked person's moves lie
(`perk_cli.evaluation.references.order_errors`). Printed as JSON: per bias, EM and the order classes.

Probes the mechanism only: a memory meta-trained with such a bias (or with a weighter that can see the
segment's place) might use it differently.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import perk_cli.evaluation.evaluate as evaluation
from perk_cli.config import EvalSettings
from perk_cli.evaluation.evaluate import evaluate
from perk_cli.evaluation.references import order_errors

_load_runtime = evaluation.load_runtime


def loading_with_recency(recency: float):
    """evaluate's load_runtime with the checkpoint's inner loop set to `recency` (InnerLoopSettings.recency)."""

    def load(*args, **kwargs):
        runtime, files = _load_runtime(*args, **kwargs)
        runtime.config = runtime.config.model_copy(
            update={"inner": runtime.config.inner.model_copy(update={"recency": recency})})
        runtime.meta.settings = runtime.config.inner
        return runtime, files

    return load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("tasks", type=Path)
    parser.add_argument("--split", default="validation")
    parser.add_argument("--model", default=None, help="the base (a model directory or delta), as perk eval's --model")
    parser.add_argument("--bias", default="0,1,2,4", help="comma-separated biases b (last segment weighs e^b x first)")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args()
    results = {}
    for bias in (float(b) for b in args.bias.split(",")):
        evaluation.load_runtime = loading_with_recency(bias)
        out = args.out / f"bias-{bias:g}"
        settings = EvalSettings(checkpoint=args.checkpoint, task=str(args.tasks), split=args.split, model=args.model,
                                baselines=[], limit=args.limit, out=str(out), max_tokens_per_group=1_000_000)
        metrics = evaluate(settings, resume=(out / "predictions.jsonl").is_file())
        results[f"{bias:g}"] = {"em": metrics["methods"]["perk"]["em"], "n": metrics["methods"]["perk"]["n"],
                                "order": order_errors(args.tasks, args.split, out / "predictions.jsonl")["perk"]}
        print(json.dumps({f"{bias:g}": results[f"{bias:g}"]}), flush=True)
    evaluation.load_runtime = _load_runtime
    (args.out / "recency.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
