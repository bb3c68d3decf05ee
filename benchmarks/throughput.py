"""Meta-steps per minute and peak memory, before and after the speed work, side by side in one run.

    python benchmarks/throughput.py --config tiny                  # qa1-sized: 8 tasks of 128 tokens
    python benchmarks/throughput.py --config smollm2 --model runs/reading-base-2/model   # 4 tasks of 256
    python benchmarks/throughput.py --config tiny --before 1da643e # the code as of a commit, too
    python benchmarks/throughput.py --config smollm2 --task runs/learning-smollm2/data   # real tasks

Variants, each in its own subprocess (so each peak RSS is its own), interleaved over `--rounds`:
  before   the package as of `--before REV` (`git archive` into a temporary directory, first on the
           child's PYTHONPATH): every position's logits, one task at a time
  now x1   this checkout, one task at a time (logits only at the scored positions)
  now xN   this checkout, the step's N tasks in one task-batched forward (`--tasks-per-forward N`)
Each child times `--steps` outer steps after one warm-up step (every task's meta-loss, one backward,
the outer AdamW step) on random token ids of the configuration's shape (a step's cost does not depend
on the ids; every context token is a target, so the saving on real tasks, whose segment prefixes and
padding are not, is at least this), or with `--task DIR` on the first tasks of DIR's train split,
encoded as meta-training encodes them (segments of 64 tokens). Reported: the median step time over all rounds, its ratio to
the first variant, the largest peak RSS, and the mean outer loss of the first and the last step (the
same numbers in every variant, to rounding: the outer AdamW steps in between use the meta-gradients).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    # the tiny preset as `perk demo` trains it: LoRA r=8 on both layers, base trained, K=2 AdamW truncated
    "tiny": dict(model="tiny", tasks=8, context_tokens=128, rank=8, top_layers=None, train_base=True),
    # SmolLM2 as the recall and reproduction recipes run it: LoRA r=16 on the top 4 layers, base frozen
    "smollm2": dict(model="smollm2", tasks=4, context_tokens=256, rank=16, top_layers=4, train_base=False),
}


def child(config: dict, steps: int, tasks_per_forward: int, task_dir: str | None) -> dict:
    import torch

    from perk_cli import __version__
    from perk_cli.config import InnerLoopSettings, LoraSettings, ModelSettings, RunConfig, TrainSettings
    from perk_cli.engine import MetaTask, TokenBatch
    from perk_cli.checkpoint import build_runtime

    torch.manual_seed(0)
    run = RunConfig(perk_version=__version__, model=ModelSettings(name=config["model"]),
                    lora=LoraSettings(rank=config["rank"], alpha=2 * config["rank"], top_layers=config["top_layers"]),
                    inner=InnerLoopSettings(steps=2, optimizer="adamw", lr_init=3e-3, unroll="truncated",
                                            unroll_start=1),
                    train=TrainSettings(train_base=config["train_base"]))
    runtime = build_runtime(run)
    vocab = len(runtime.tokenizer)
    rows, width = config["context_tokens"] // 64, 64
    gen = torch.Generator().manual_seed(1)
    tasks = [MetaTask(TokenBatch(torch.randint(1, vocab, (rows, width), generator=gen),
                                 torch.ones(rows, width, dtype=torch.long), torch.ones(rows, width, dtype=torch.bool)),
                      TokenBatch(torch.randint(1, vocab, (1, 24), generator=gen), torch.ones(1, 24, dtype=torch.long),
                                 torch.arange(24).unsqueeze(0) >= 20))
             for _ in range(config["tasks"])]
    if task_dir:
        import random

        from perk_cli.config import PromptSettings
        from perk_cli.data.schema import read_split
        from perk_cli.prompts import encode_task

        records = read_split(Path(task_dir), "train")[: config["tasks"]]
        tasks = [encode_task(runtime.tokenizer, record, PromptSettings(segment_tokens=64), random.Random(i))
                 for i, record in enumerate(records)]
    meta = runtime.meta
    params = [p for group in meta.parameter_groups(0.0) for p in group["params"]]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    losses = []

    def outer_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for start in range(0, len(tasks), tasks_per_forward):
            chunk = tasks[start:start + tasks_per_forward]
            if hasattr(meta, "meta_losses"):
                outcomes = meta.meta_losses(chunk)
            else:  # the code before task batching
                outcomes = [meta.meta_loss(task) for task in chunk]
            total = sum(loss for loss, _ in outcomes)
            (total / len(tasks)).backward()
            step_loss += float(total.detach()) / len(tasks)
        losses.append(step_loss)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

    outer_step()  # warm-up
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        outer_step()
        times.append(time.perf_counter() - started)
    import perk_cli

    return {"times": times, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "first_loss": losses[0], "last_loss": losses[-1], "package": str(Path(perk_cli.__file__).parent)}


def export(rev: str, into: Path) -> Path:
    """The package as of `rev`, unpacked under `into` (importable with `into` on sys.path)."""
    archive = into / "src.tar"
    with open(archive, "wb") as f:
        subprocess.run(["git", "-C", str(ROOT), "archive", rev, "perk_cli"], stdout=f, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    parser.add_argument("--model", help="Override the configuration's model (a name or a local directory).")
    parser.add_argument("--before", help="A git revision to measure as 'before' (e.g. 1da643e).")
    parser.add_argument("--tasks-per-forward", type=int, help="N of 'now xN' (default: all the step's tasks).")
    parser.add_argument("--task", help="A task directory: time its first train tasks instead of random ids.")
    parser.add_argument("--steps", type=int, default=3, help="Measured outer steps per child.")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    config = dict(CONFIGS[args.config], **({"model": args.model} if args.model else {}))
    if args.child:
        print(json.dumps(child(config, args.steps, int(args.child), args.task)))
        return
    n = args.tasks_per_forward or config["tasks"]
    with tempfile.TemporaryDirectory() as tmp:
        variants = [("now x1", None, 1), (f"now x{n}", None, n)]
        if args.before:
            variants.insert(0, (f"before ({args.before})", export(args.before, Path(tmp)), 1))
        results: dict[str, list[dict]] = {name: [] for name, _, _ in variants}
        for _ in range(args.rounds):
            for name, path, per_forward in variants:
                env = dict(os.environ)
                if path is not None:
                    env["PYTHONPATH"] = os.pathsep.join([str(path), env.get("PYTHONPATH", "")])
                out = subprocess.run([sys.executable, __file__, "--config", args.config, "--steps", str(args.steps),
                                      "--child", str(per_forward), *(["--model", args.model] if args.model else []),
                                      *(["--task", str(Path(args.task).resolve())] if args.task else [])],
                                     capture_output=True, text=True, env=env)
                if out.returncode:
                    sys.exit(f"{name} failed:\n{out.stderr[-3000:]}")
                results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    shape = f"the first {config['tasks']} train tasks of {args.task}" if args.task else \
        f"{config['tasks']} random tasks of {config['context_tokens']} context tokens"
    print(f"{args.config} ({config['model']}): {shape} per outer step, K=2 AdamW truncated, LoRA r={config['rank']}"
          f"{' top ' + str(config['top_layers']) if config['top_layers'] else ''}, "
          f"{args.rounds} rounds x {args.steps} steps, {os.cpu_count()} CPUs")
    print("| variant | s / outer step | steps / min | vs first | peak RSS MB | mean outer loss, steps 1 / last |\n|---|---|---|---|---|---|")
    first = None
    for name, _, _ in variants:
        runs = results[name]
        median = statistics.median(t for r in runs for t in r["times"])
        first = first or median
        print(f"| {name} | {median:.3f} | {60 / median:.1f} | {first / median:.2f}x | "
              f"{max(r['peak_mb'] for r in runs):.0f} | {runs[0]['first_loss']:.6f} / {runs[0]['last_loss']:.6f} |")


if __name__ == "__main__":
    main()
