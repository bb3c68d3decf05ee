"""Where a checkpoint's learned token weights go: the story's facts against the filler, by length.

    python experiments/token_weights.py --checkpoint runs/perk-rb2-top8-best110 runs/heldout2-128 runs/heldout2-1024

The inner step descends sum_j w_j grad CE_j with the weights normalised to mean 1 over the context,
and Adam's first step moves each entry by about lr x sign(gradient): what the memory stores is
decided by the share of the weight mass each kind of token holds. A token is a fact token when it
lies inside an "Event k: ... ." sentence of a generated babi story (qa1/qa2/qa3); every other
target token is filler. Prints, per task set: tokens of each kind, the facts' share of the weight,
and the weight of a fact token over that of a filler token.
"""

from __future__ import annotations

import argparse
import re
import statistics
from pathlib import Path

import torch

from perk_cli.data.schema import read_split
from perk_cli.engine.losses import functional_model_call, weighted_token_nll
from perk_cli.prompts import encode_context
from perk_cli.checkpoint import load_runtime

FACT = re.compile(r"Event \d+: [^.]*\.")


def fact_flags(tokenizer, ids: list[int], text: str) -> list[bool]:
    """For each token of `ids` (one context row), whether its characters fall inside a fact sentence of
    `text`, found by decoding growing prefixes (robust to any prefix the row's prompt adds)."""
    decoded = [tokenizer.decode(ids[: j + 1]) for j in range(len(ids))]
    offset = decoded[-1].find(text[:20]) if text else -1
    spans = [(m.start() + offset, m.end() + offset) for m in FACT.finditer(text)] if offset >= 0 else []
    flags, start = [], 0
    for j in range(len(ids)):
        end = len(decoded[j])
        flags.append(any(a < end and start < b for a, b in spans))
        start = end
    return flags


@torch.no_grad()
def measure(runtime, directory: Path, n_tasks: int) -> dict:
    shares, ratios, facts, filler, lengths = [], [], [], [], []
    for task in read_split(directory, "test")[:n_tasks]:
        batch = encode_context(runtime.tokenizer, task.context, runtime.config.prompt,
                               max_len=runtime.max_positions).to(runtime.device)
        call = functional_model_call(runtime.model, dict(runtime.meta.lora_init()))
        _, weights = weighted_token_nll(call, batch, runtime.meta.weighter)
        on_fact = on_filler = 0.0
        n_fact = n_filler = 0
        for row, segment in enumerate(task.context):
            ids = batch.input_ids[row][batch.attention_mask[row].bool()].tolist()
            flags = fact_flags(runtime.tokenizer, ids, segment)
            for j in range(1, len(ids)):  # weights[row, j - 1] belongs to token j
                if not batch.target_mask[row, j]:
                    continue
                w = float(weights[row, j - 1])
                if flags[j]:
                    on_fact, n_fact = on_fact + w, n_fact + 1
                else:
                    on_filler, n_filler = on_filler + w, n_filler + 1
        shares.append(on_fact / max(on_fact + on_filler, 1e-12))
        ratios.append((on_fact / max(n_fact, 1)) / max(on_filler / max(n_filler, 1), 1e-12))
        facts.append(n_fact)
        filler.append(n_filler)
        lengths.append(task.meta.length_tokens if task.meta else None)
    return {"set": str(directory), "tasks": len(shares), "length": statistics.mean(l for l in lengths if l),
            "fact_tokens": statistics.mean(facts), "filler_tokens": statistics.mean(filler),
            "fact_share": statistics.mean(shares), "fact_over_filler": statistics.mean(ratios)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--model", default=None, help="Override the checkpoint's base (a local directory).")
    parser.add_argument("--tasks", type=int, default=8, help="Test tasks read from each set.")
    parser.add_argument("sets", type=Path, nargs="+", help="Task directories with a test split.")
    args = parser.parse_args()
    runtime, _ = load_runtime(args.checkpoint, args.model)
    if runtime.meta.weighter is None:
        raise SystemExit(f"--checkpoint {args.checkpoint}: trained without token weighting; nothing to measure")
    print(f"checkpoint {args.checkpoint}")
    print("| set | tokens | fact / filler tokens | facts' share of the weight | fact token / filler token |")
    print("|---|---|---|---|---|")
    for directory in args.sets:
        r = measure(runtime, directory, args.tasks)
        print(f"| {directory.name} ({r['tasks']} tasks) | {r['length']:.0f} | {r['fact_tokens']:.0f} / "
              f"{r['filler_tokens']:.0f} | {r['fact_share']:.3f} | {r['fact_over_filler']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
