"""Seconds and peak memory of one meta-step per unroll mode and engine.

    python benchmarks/engine.py                                  # the tiny preset; K=4, 512 context tokens
    python benchmarks/engine.py --model gpt2-124m --repeats 2    # GPT-2-124M's shape (random weights)

LoRA r=16 on all projections of every layer, SGD inner steps, the token weighter on. Every method runs
the official rule (`weighting_mode="legacy"`: the weighted loss differentiated whole), the only one the
`higher` engine implements, so `second-order` and `higher` compute the same meta-loss (printed).

Each method runs in its own subprocess (so peak RSS is its own); the table reports the median time
of the measured steps and the peak RSS growth above the process's state after loading the model,
plus ratios to second-order, all measured in one run.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

METHODS = ["second-order", "truncated", "first-order", "higher", "peft-fwd-bwd"]


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _model(name: str):
    """(frozen model, vocabulary size): the tiny preset, or GPT-2-124M's configuration with random weights."""
    if name == "tiny":
        from perk_cli.config import ModelSettings
        from perk_cli.models.base import load_base

        model, tokenizer = load_base(ModelSettings(name="tiny"))
        return model, len(tokenizer)
    from transformers import AutoModelForCausalLM, GPT2Config

    model = AutoModelForCausalLM.from_config(GPT2Config(), attn_implementation="eager")  # 12 x 768, vocab 50,257
    model.requires_grad_(False)
    return model.eval(), model.config.vocab_size


def run_one(method: str, context_tokens: int, steps: int, repeats: int, model_name: str = "tiny") -> dict:
    import torch

    from perk_cli.config import InnerLoopSettings, LoraSettings
    from perk_cli.engine import MetaLearner, MetaTask, TokenBatch
    from perk_cli.models.lora import attach_lora

    torch.manual_seed(0)
    model, vocab = _model(model_name)
    peft_model = attach_lora(model, LoraSettings(rank=16, alpha=32))
    segment = 64
    rows = context_tokens // segment
    context = TokenBatch(torch.randint(1, vocab, (rows, segment)), torch.ones(rows, segment, dtype=torch.long),
                         torch.ones(rows, segment, dtype=torch.bool))
    question = TokenBatch(torch.randint(1, vocab, (1, 24)), torch.ones(1, 24, dtype=torch.long),
                          torch.arange(24).unsqueeze(0) >= 20)
    task = MetaTask(context, question)
    if method == "peft-fwd-bwd":
        def step():
            out = peft_model(input_ids=context.input_ids, attention_mask=context.attention_mask,
                             labels=context.input_ids)
            out.loss.backward()
            return float(out.loss.detach())
    else:
        settings = InnerLoopSettings(
            steps=steps, optimizer="sgd", lr_init=1e-2,
            unroll="second-order" if method == "higher" else method,
            engine="higher" if method == "higher" else "func", weighting_mode="legacy",
        )
        meta = MetaLearner(peft_model, settings)

        def step():
            loss, _ = meta.meta_loss(task)
            loss.backward()
            return float(loss.detach())
    baseline = _rss_mb()
    loss = step()  # warm-up (counted in the peak: a first step is a real cost)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"method": method, "seconds": statistics.median(times), "peak_mb": _peak_mb() - baseline, "loss": loss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny", "gpt2-124m"], default="tiny")
    parser.add_argument("--methods", default=",".join(METHODS), help="Comma-separated subset of " + ", ".join(METHODS))
    parser.add_argument("--context-tokens", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--one", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.context_tokens, args.steps, args.repeats, args.model)))
        return
    rows = []
    for method in args.methods.split(","):
        out = subprocess.run([sys.executable, __file__, "--one", method, "--context-tokens", str(args.context_tokens),
                              "--steps", str(args.steps), "--repeats", str(args.repeats), "--model", args.model],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    ref = rows[0]
    print(f"{args.model}, K={args.steps}, {args.context_tokens} context tokens, LoRA r=16 (all projections), "
          f"torch threads={__import__('torch').get_num_threads()}")
    print(f"{'method':<14}{'s/step':>9}{'peak MB':>10}{'time/2nd':>10}{'mem/2nd':>9}{'meta-loss':>12}")
    for row in rows:
        print(f"{row['method']:<14}{row['seconds']:>9.3f}{row['peak_mb']:>10.1f}"
              f"{row['seconds'] / ref['seconds']:>10.2f}{row['peak_mb'] / max(ref['peak_mb'], 1e-9):>9.2f}"
              f"{row.get('loss', float('nan')):>12.6f}")


if __name__ == "__main__":
    main()
