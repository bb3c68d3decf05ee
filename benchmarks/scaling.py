"""Memory and time of test-time encoding against document length, and the engine's overhead.

    python benchmarks/scaling.py                 # ~5 minutes on 2 CPU cores; writes benchmarks/scaling.png

In one run, each measurement in its own subprocess (peak RSS is per process; one torch thread so the
two cores do not add noise):
  1. `adapt` (tiny preset, K=4, groups of 1,024 tokens) at 1K, 4K, 16K, 64K tokens: seconds and peak RSS;
  2. the in-context baseline (one forward pass over context + question) at the same lengths until
     the tiny model's 1,024 positions run out;
  3. `adapt` time over K plain PEFT forward+backward passes on the same token groups;
  4. meta-step time and memory per unroll mode and engine (benchmarks/engine.py, 512 tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

LENGTHS = [1024, 4096, 16384, 65536]
WORDS = "Mary went to the kitchen and then John went to the garden with the red ball .".split()

_PROBE = r"""
import json, resource, sys, time, torch
torch.set_num_threads(1)
from perk_cli.memory import adapt_text, adapting_runtime
from perk_cli.training.in_context import in_context_batch
from perk_cli.data.schema import Task
from perk_cli.data.segment import segment_text
from perk_cli.prompts import encode_context
kind, tokens = sys.argv[1], int(sys.argv[2])
words = sys.argv[3].split()
runtime, origin = adapting_runtime(model="tiny")
tok = runtime.tokenizer
text = " ".join(words[i % len(words)] for i in range(int(tokens * 1.0)))
ids = tok(text)["input_ids"][:tokens]
text = tok.decode(ids)
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20
warm = " ".join(words * 20)
if kind == "adapt":
    adapt_text(runtime, origin, warm, max_tokens_per_group=1024)
    before = rss(); start = time.perf_counter()
    memory = adapt_text(runtime, origin, text, max_tokens_per_group=1024)
    seconds = time.perf_counter() - start
    extra = {"context_tokens": int(memory.metadata["context_tokens"])}
elif kind == "peft":
    # K plain forward+backward passes of the PEFT model over exactly the groups adapt uses
    segments = segment_text(text, tok, runtime.config.prompt.segment_tokens)
    groups = encode_context(tok, segments, runtime.config.prompt, max_len=runtime.max_positions).split(1024)
    def passes():
        for _ in range(runtime.config.inner.steps):
            for g in groups:
                out = runtime.model(input_ids=g.input_ids, attention_mask=g.attention_mask, labels=g.input_ids)
                out.loss.backward()
    warm_groups = groups[:1]
    before = rss(); start = time.perf_counter(); passes(); seconds = time.perf_counter() - start
    extra = {"groups": len(groups)}
else:  # in-context: one forward over context + question, if it fits
    task = Task(id="x", context=[text], question="Where is Mary?", answer="kitchen")
    batch = in_context_batch(runtime, task, with_answer=False)
    if batch is None:
        print(json.dumps({"fits": False})); sys.exit(0)
    before = rss(); start = time.perf_counter()
    with torch.no_grad():
        runtime.model(input_ids=batch.input_ids)
    seconds = time.perf_counter() - start
    extra = {"fits": True, "prompt_tokens": batch.input_ids.shape[1]}
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "peak_mb": peak, "growth_mb": peak - before, **extra}))
"""


def probe(kind: str, tokens: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _PROBE, kind, str(tokens), " ".join(WORDS)], capture_output=True,
                         text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def plot(rows: list[dict], icr: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    xs = [r["tokens"] for r in rows]
    left.plot(xs, [r["adapt"]["peak_mb"] for r in rows], marker="o", label="perk adapt")
    fitting = [r for r in icr if r.get("fits")]
    left.plot([r["tokens"] for r in fitting], [r["peak_mb"] for r in fitting], marker="s", label="in-context")
    right.plot(xs, [r["adapt"]["seconds"] for r in rows], marker="o", label="perk adapt")
    right.plot(xs, [r["peft"]["seconds"] for r in rows], marker="^", label="K plain PEFT fwd+bwd")
    right.plot([r["tokens"] for r in fitting], [r["seconds"] for r in fitting], marker="s", label="in-context")
    for ax, label in ((left, "peak RSS (MB)"), (right, "seconds")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("document length (tokens)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    right.set_yscale("log")
    left.set_title("memory (in-context stops at 1,024 positions)")
    right.set_title("time")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=LENGTHS)
    parser.add_argument("--plot", type=Path, default=Path(__file__).with_name("scaling.png"))
    parser.add_argument("--skip-engine", action="store_true", help="Skip the meta-step table.")
    args = parser.parse_args()
    rows, icr = [], []
    for tokens in args.lengths:
        rows.append({"tokens": tokens, "adapt": probe("adapt", tokens), "peft": probe("peft", tokens)})
    for tokens in sorted({256, 512, 896, *args.lengths}):
        icr.append({"tokens": tokens, **probe("in-context", tokens)})
    first = rows[0]
    print("adapt on the tiny preset (K=4, groups of 1,024 tokens, 1 thread)")
    print(f"{'tokens':>8}{'seconds':>9}{'peak MB':>9}{'mem/first':>10}{'time/linear':>12}{'adapt/PEFT':>11}")
    for row in rows:
        linear = first["adapt"]["seconds"] * row["tokens"] / first["tokens"]
        print(f"{row['tokens']:>8}{row['adapt']['seconds']:>9.2f}{row['adapt']['peak_mb']:>9.0f}"
              f"{row['adapt']['peak_mb'] / first['adapt']['peak_mb']:>10.2f}"
              f"{row['adapt']['seconds'] / linear:>12.2f}{row['adapt']['seconds'] / row['peft']['seconds']:>11.2f}")
    print("\nin-context baseline (one forward pass over context + question; 64 answer tokens reserved)")
    print(f"{'tokens':>8}{'seconds':>9}{'peak MB':>9}")
    for c in icr:
        cells = f"{c['seconds']:>9.3f}{c['peak_mb']:>9.0f}" if c.get("fits") else f"{'does not fit in 1,024 positions':>40}"
        print(f"{c['tokens']:>8}" + cells)
    plot(rows, icr, args.plot)
    print(f"plot: {args.plot}")
    if not args.skip_engine:
        print()
        subprocess.run([sys.executable, str(Path(__file__).with_name("engine.py"))], check=True)


if __name__ == "__main__":
    main()
