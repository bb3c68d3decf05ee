"""Which part of a memory hurts reading? Answer-only teacher-forced EM with parts of the LoRA switched off.

    python experiments/lora_ablation.py experiments/results/perk-qa2-reader/checkpoint-qa2-W2 \
        runs/qa2-heldout-128-s16-ev --split test --limit 60

Each task's context is written into one memory (the checkpoint's inner loop). The question is then
teacher-forced with its gold target (in the support format: the gold facts, then the answer), and a task
counts right when every one of the answer's own tokens (`answer_mask`) is the model's top token. That is
reading alone: the recital is given, right, whatever the memory would have recited; a second column
counts every target token (recital and answer: what greedy decoding would reproduce). The same memory is
scored with every LoRA tensor on, with the LoRA off at some modules (B set to zero: that module is the
base's), and off everywhere (the base reading the gold facts). Prints one row a variant.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path

import torch

from perk_cli.data.schema import read_split
from perk_cli.engine.losses import functional_model_call
from perk_cli.errors import PerkError
from perk_cli.prompts import encode_task
from perk_cli.checkpoint import load_runtime

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj", "c_attn", "attn.c_proj")
MLP = ("gate_proj", "up_proj", "down_proj", "c_fc", "mlp.c_proj")


def layer_of(name: str) -> int:
    return int(re.search(r"\.(?:layers|h)\.(\d+)\.", name).group(1))


def variants(names: list[str]) -> dict[str, set[str]]:
    """Variant name -> the LoRA tensors switched off (their B zeroed)."""
    layers = sorted({layer_of(n) for n in names})
    half = layers[len(layers) // 2]
    b_names = [n for n in names if ".lora_B." in n]
    return {
        "all on": set(),
        "attention off": {n for n in b_names if any(m in n for m in ATTENTION)},
        "mlp off": {n for n in b_names if any(m in n for m in MLP)},
        "q,k off": {n for n in b_names if "q_proj" in n or "k_proj" in n},
        f"layers {layers[0]}-{half - 1} off": {n for n in b_names if layer_of(n) < half},
        f"layers {half}-{layers[-1]} off": {n for n in b_names if layer_of(n) >= half},
        "all off (the base)": set(b_names),
    }


@torch.no_grad()
def forced_right(runtime, params: dict[str, torch.Tensor], question) -> tuple[bool, bool]:
    """(every answer token is the model's top token, every target token is), the gold target forced: the
    first is reading alone, the second reciting and reading (what greedy decoding would reproduce)."""
    call = functional_model_call(runtime.model, params)
    logits = call(input_ids=question.input_ids, attention_mask=question.attention_mask).logits[:, :-1]
    hits = logits.argmax(-1) == question.input_ids[:, 1:]
    answer, target = question.answer_mask[:, 1:], question.target_mask[:, 1:]
    return bool(answer.any() and hits[answer].all()), bool(target.any() and hits[target].all())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("tasks", type=Path, help="a task directory from perk prepare")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None, help="the first N tasks only")
    parser.add_argument("--answer-format", choices=("plain", "support", "recite"), default=None,
                        help="score the question in this format instead of the checkpoint's")
    parser.add_argument("--out", type=Path, default=None, help="write one JSON row a task here")
    args = parser.parse_args()
    try:
        tasks = read_split(args.tasks, args.split)[: args.limit]
        runtime, _ = load_runtime(args.checkpoint)
        if args.answer_format is not None:
            prompt = runtime.config.prompt.model_copy(update={"answer_format": args.answer_format,
                                                              "max_answer_tokens": 160})
            runtime = dataclasses.replace(runtime, config=runtime.config.model_copy(update={"prompt": prompt}))
    except PerkError as exc:
        parser.error(str(exc))
    rows = []
    for task in tasks:
        encoded = encode_task(runtime.tokenizer, task, runtime.config.prompt, max_len=runtime.max_positions)
        encoded = encoded.to(runtime.device)
        lora = runtime.meta.adapt(encoded.context).params
        row = {"gold": task.answer, "whole": {}}
        for name, off in variants(list(lora)).items():
            params = {n: (torch.zeros_like(v) if n in off else v) for n, v in lora.items()}
            row[name], row["whole"][name] = forced_right(runtime, params, encoded.question)
        rows.append(row)
    if args.out is not None:
        args.out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"{'variant':<22} {'answer EM (gold facts forced)':>30} {'whole target forced':>20}   tasks: {len(rows)}")
    for name in rows[0]["whole"]:
        print(f"{name:<22} {sum(r[name] for r in rows) / len(rows):>30.3f} "
              f"{sum(r['whole'][name] for r in rows) / len(rows):>20.3f}")


if __name__ == "__main__":
    main()
