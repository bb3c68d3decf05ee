"""Does meta-training learn? The learning fixes measured one at a time on the same run.

    perk reading-base --out runs/reading-base          # the base (stage 1), once
    python experiments/learning.py --model runs/reading-base/model --steps 60 --out runs/learning
    python experiments/learning.py --model tiny --steps 200 --eval-every 25 --tasks-per-batch 8 --lr 2e-3 --out runs/learning-tiny

Meta-trains the same configuration (qa1, 4 facts in 128 tokens; LoRA r=16 on the top 4 layers; K=2
AdamW; 4 tasks a step; the base frozen, except for `tiny`, whose base exists nowhere else and is
trained in the outer loop with LoRA on every layer, as `perk meta-train --model tiny` does) with the same seeds and data, changing one rule at a time:

  before            the former rules: step sizes as softplus(raw) at the outer lr, the weighted loss
                    differentiated whole (w from the state before its token, unnormalised)
  + log step sizes  step sizes in log space with their own outer lr (1e-2)
  + coefficients    token weights as normalised coefficients read from their own token (= the defaults)
  2nd-order from B=0      second-order unrolling through step 0 from PEFT's zero B (the former start)
  2nd-order from small B  the same from B ~ N(0, 1e-3) (the new start)

and prints validation answer loss and EM (16 held-out tasks) every --eval-every steps side by side,
with the learned step sizes and the logged inner loss. Each variant resumes where it stopped.
Results: <out>/learning.json and a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

from perk_cli import __version__
from perk_cli.config import (GENERATOR_LAYOUT, InnerLoopSettings, LoraSettings, ModelSettings, PrepareSettings, PromptSettings, RunConfig,
                             TrainSettings)

VARIANTS = {
    "before": (dict(step_size_space="softplus", weighting_mode="legacy"), dict(step_size_lr=None)),
    "+ log step sizes": (dict(weighting_mode="legacy"), {}),
    "+ coefficients": ({}, {}),
    "2nd-order from B=0": (dict(unroll="second-order"), {}),
    "2nd-order from small B": (dict(unroll="second-order"), {}),
}


def config_for(variant: str, args: argparse.Namespace, data: Path) -> RunConfig:
    inner, train = VARIANTS[variant]
    return RunConfig(
        perk_version=__version__, task=str(data), model=ModelSettings(name=args.model),
        lora=LoraSettings(rank=16, alpha=32, top_layers=None if args.model == "tiny" else args.top_layers),
        inner=InnerLoopSettings(steps=2, optimizer="adamw", lr_init=3e-3, lr_max=0.1, **inner),
        prompt=PromptSettings(segment_tokens=64, max_answer_tokens=16),
        train=TrainSettings(max_steps=args.steps, tasks_per_batch=args.tasks_per_batch, lr=args.lr, warmup_steps=5,
                            schedule="constant", eval_every=args.eval_every, eval_tasks=16, baseline=False,
                            train_base=args.model == "tiny", seed=0, **train),
    )


@contextlib.contextmanager
def zero_b_start(enabled: bool):
    """The former start: leave PEFT's zero B in place even when step 0 is unrolled."""
    from perk_cli.engine.meta import MetaLearner

    original = MetaLearner._leave_zero_b
    if enabled:
        MetaLearner._leave_zero_b = lambda self: None
    try:
        yield
    finally:
        MetaLearner._leave_zero_b = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="A base that reads (perk reading-base), or "
                        "'tiny' (the built-in preset, its base trained in the outer loop as meta-train does).")
    parser.add_argument("--out", type=Path, default=Path("runs/learning"))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--tasks-per-batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--top-layers", type=int, default=4)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="Comma list of variants to run.")
    args = parser.parse_args()
    from perk_cli.prepare import prepare
    from perk_cli.training.meta_train import meta_train

    data = args.out / "data"
    if not (data / "prepare.json").is_file():
        prepare(PrepareSettings(task="babi", subtask="qa1", facts=4, length=128, segment_tokens=64, model=args.model,
                                train=1000, validation=16, test=0, seed=301, out=str(data), **GENERATOR_LAYOUT))
    results = {}
    for variant in args.variants.split(","):
        run = args.out / variant.replace(" ", "_").replace("+", "plus").replace("=", "")
        if not (run / "done.json").is_file():
            with zero_b_start(variant == "2nd-order from B=0"):
                meta_train(config_for(variant, args, data), data, run, resume=(run / "last").is_dir(),
                           on_step=lambda s, t, m, v=variant: print(
                               f"{v} step {s}/{t}: outer {m['outer_loss']:.3f} inner {m['inner_loss_first']:.3f}->"
                               f"{m['inner_loss_last']:.3f} eta {m['eta_mean']:.2e} grad {m['grad_norm']:.2f}"
                               + (f" val loss {m['val_loss']:.3f} EM {m['val_em']:.2f}" if "val_em" in m else ""),
                               flush=True))
            (run / "done.json").write_text("{}\n")
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        results[variant] = [{k: r.get(k) for k in ("step", "val_loss", "val_em", "eta_mean", "eta_min", "eta_max",
                                                   "inner_loss_first", "inner_loss_last", "outer_loss",
                                                   "grad_norm", "seconds")} for r in rows]
    (args.out / "learning.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))


def table(results: dict) -> str:
    evals = {v: [r for r in rows if r["val_em"] is not None] for v, rows in results.items()}
    steps = sorted({r["step"] for rows in evals.values() for r in rows})
    lines = ["| variant | " + " | ".join(f"step {s}" for s in steps) + " | eta mean (end) | inner loss (end) | s/step |",
             "|---|" + "---|" * (len(steps) + 3)]
    for variant, rows in evals.items():
        by_step = {r["step"]: r for r in rows}
        cells = [f"{by_step[s]['val_loss']:.2f} / {by_step[s]['val_em']:.2f}" if s in by_step else "-" for s in steps]
        last = results[variant][-1]
        median = sorted(r["seconds"] for r in results[variant])[len(results[variant]) // 2]
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {last['eta_mean']:.2e} | "
                     f"{last['inner_loss_first']:.2f} -> {last['inner_loss_last']:.2f} | {median:.1f} |")
    return "validation answer loss / EM (16 tasks)\n\n" + "\n".join(lines)


if __name__ == "__main__":
    main()
