"""Where a meta-step's time goes: torch.profiler's per-op table for one outer step (issue 14's "profile first").

    python benchmarks/profile_step.py --model tiny                  # qa1-sized: 128 tokens, K=2, 8 tasks
    python benchmarks/profile_step.py --model smollm2 --tasks 4 --context-tokens 256 --top-layers 4

Random token ids of the given shape (the cost does not depend on their values), truncated unrolling
from step 1, frozen-prefix caching on (the defaults); one warm-up step, then one profiled outer step
(every task's meta-loss and backward). Prints the ops by self CPU time, and the share of the time in
the LM head's matmuls (the ones whose output or input has the vocabulary's width).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile


def build(model: str, context_tokens: int, top_layers: int | None, steps: int):
    from perk_cli import __version__
    from perk_cli.config import InnerLoopSettings, LoraSettings, ModelSettings, RunConfig
    from perk_cli.checkpoint import build_runtime
    from smollm2 import random_task  # benchmarks/ is on sys.path when run as a script

    torch.manual_seed(0)
    config = RunConfig(perk_version=__version__, model=ModelSettings(name=model),
                       lora=LoraSettings(rank=16, alpha=32, top_layers=top_layers),
                       inner=InnerLoopSettings(steps=steps, unroll="truncated", unroll_start=1))
    runtime = build_runtime(config)
    vocab = len(runtime.tokenizer)
    return runtime, random_task(vocab, context_tokens), vocab


def outer_step(runtime, task, tasks: int) -> None:
    for _ in range(tasks):
        loss, _ = runtime.meta.meta_loss(task)
        (loss / tasks).backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--context-tokens", type=int, default=128)
    parser.add_argument("--top-layers", type=int, default=None)
    parser.add_argument("--inner-steps", type=int, default=2)
    parser.add_argument("--rows", type=int, default=15, help="Ops to list.")
    args = parser.parse_args()
    runtime, task, vocab = build(args.model, args.context_tokens, args.top_layers, args.inner_steps)
    outer_step(runtime, task, 1)  # warm-up
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        outer_step(runtime, task, args.tasks)
    wall = time.perf_counter() - started
    events = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in events)
    head = sum(e.self_cpu_time_total for e in events
               if e.key in ("aten::mm", "aten::addmm", "aten::bmm")
               and any(vocab in (shape or []) for shape in (e.input_shapes or [])))
    print(f"model {args.model}: one outer step of {args.tasks} tasks, {args.context_tokens} context tokens, "
          f"K={args.inner_steps}: {wall:.2f} s under the profiler; LM-head matmuls {100 * head / total:.0f}% "
          "of self CPU time")
    by_op = prof.key_averages()
    print("| op | self CPU s | share | calls |\n|---|---|---|---|")
    for event in sorted(by_op, key=lambda e: -e.self_cpu_time_total)[: args.rows]:
        print(f"| {event.key} | {event.self_cpu_time_total / 1e6:.2f} | "
              f"{100 * event.self_cpu_time_total / total:.0f}% | {event.count} |")


if __name__ == "__main__":
    main()
