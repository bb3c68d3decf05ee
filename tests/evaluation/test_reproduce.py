"""perk reproduce (perk_cli.evaluation.reproduce) end to end on the tiny preset: every stage, the table, the
plot, and resuming."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMMAND = [sys.executable, "-m", "perk_cli.cli", "reproduce"]


def _run(out: Path) -> str:
    done = subprocess.run(COMMAND + ["--family", "recall", "--model", "tiny", "--minutes", "0.05",
                           "--train-tasks", "24", "--test-tasks", "2", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_reproduce_runs_every_stage_and_resumes(tmp_path):
    out = tmp_path / "repro"
    first = _run(out)
    results = json.loads((out / "results.json").read_text())
    steps = results["recipe"]["outer_steps"]
    assert steps >= 1 and results["recipe"]["train"]["step_size_lr"] == 1e-2
    for m in (1, 2, 4, 8):
        assert set(results[f"perk-truncated/x{m}"]) == {"perk", "in-context", "plain-ttt"}
        assert set(results[f"perk-first-order/x{m}"]) == {"perk"}
        assert all(row["n"] == 2 for row in results[f"perk-truncated/x{m}"].values())
    # first-order ran exactly as many outer steps as truncated PERK
    assert json.loads((out / "perk-first-order" / "done.json").read_text())["steps"] == steps
    assert "| PERK (truncated) |" in first and "| in-context |" in first
    # the id-blind reference, recomputed here by hand for the 1x test set
    from perk_cli.data.schema import read_split
    from perk_cli.scores import exact_match
    tasks = read_split(out / "data" / "recall-x1", "test")
    hits = 0.0
    for task in tasks:
        label = task.question.split()[3].capitalize()  # "What is the <attribute> of student N?"
        values = [seg.split(f"{label}: ")[1].split(",")[0] for seg in task.context if f"{label}: " in seg]
        hits += exact_match(max(values, key=lambda v: (values.count(v), -values.index(v))), task.answer)
    assert "| document majority (ignores the id) |" in first
    assert results["reference/x1"]["document majority (ignores the id)"]["em"] == hits / len(tasks)
    # a second call finds every stage done: nothing is retrained or re-evaluated
    before = (out / "perk-truncated" / "metrics.jsonl").read_text()
    second = _run(out)
    assert "step" not in second.split("truncated PERK:")[0]
    assert (out / "perk-truncated" / "metrics.jsonl").read_text() == before
    assert "eval " not in second


def _tiny_delta(tmp_path: Path) -> Path:
    """A base delta (as smollm2-reader is one) over a saved tiny base directory."""
    import copy

    import torch

    from perk_cli.config import ModelSettings
    from perk_cli.models.base import load_base
    from perk_cli.models.delta import make_delta, save_delta

    model, tokenizer = load_base(ModelSettings(name="tiny", dtype="float32"))
    directory = tmp_path / "base"
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    tuned = copy.deepcopy(model)
    with torch.no_grad():
        next(p for p in tuned.parameters() if p.ndim == 1).add_(0.1)  # a norm or bias vector
    tensors, report = make_delta(model, tuned, rank=2)
    save_delta(tmp_path / "reader.safetensors", tensors, base=str(directory), rank=2, report=report)
    return tmp_path / "reader.safetensors"


def test_base_problem_names_what_a_base_can_be(tmp_path):
    import torch
    from safetensors.torch import save_file

    from perk_cli.evaluation.reproduce import base_problem
    assert base_problem("smollm2-reader") is None  # shipped with the package
    assert "not a model directory" in base_problem("runs/no-such-base")
    assert "shipped reader (smollm2-reader, smollm2-open-reader)" in base_problem("runs/no-such-base")
    assert base_problem("no-such.safetensors") == "--base no-such.safetensors: no such file"
    save_file({"x": torch.zeros(2)}, str(tmp_path / "weights.safetensors"))
    assert "not a perk base delta" in base_problem(str(tmp_path / "weights.safetensors"))
    assert base_problem(str(_tiny_delta(tmp_path))) is None


def test_reproduce_on_a_base_delta_with_a_curriculum(tmp_path):
    """--base: a base delta used frozen, the base itself as the in-context reference, qa1's trivial
    references, and the curriculum stage started from truncated PERK's best/."""
    base = _tiny_delta(tmp_path)
    out = tmp_path / "repro"
    args = COMMAND + ["--family", "qa1", "--base", str(base), "--length", "48", "--segment-tokens",
            "24", "--steps", "2", "--curriculum", "48,96", "--curriculum-steps", "1", "--train-tasks", "8",
            "--test-tasks", "2", "--top-layers", "1", "--tasks-per-batch", "2", "--tasks-per-forward", "2",
            "--validation-tasks", "3", "--eval-forced", "--answer-format", "support", "--out", str(out)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["recipe"]["outer_steps"] == 2 and results["recipe"]["model"]["name"] == str(base)
    assert results["recipe"]["lora"]["top_layers"] == 1 and results["recipe"]["train"]["tasks_per_forward"] == 2
    train, prompt = results["recipe"]["train"], results["recipe"]["prompt"]
    assert (train["eval_tasks"], train["eval_decode"], prompt["answer_format"]) == (3, False, "support")
    for data in ("qa1-x1", "qa1-curriculum"):  # the validation tasks that choose best/, in both stages
        assert len((out / "data" / data / "validation.jsonl").read_text().splitlines()) == 3
    settings = json.loads((out / "eval" / "perk-truncated" / "x1" / "metrics.json").read_text())["settings"]
    assert settings["max_new_tokens"] == 72  # room for the recited facts, the support format's default
    for m in (1, 2, 4, 8):
        assert set(results[f"perk-truncated/x{m}"]) == {"perk", "base", "plain-ttt"}
        assert set(results[f"perk-curriculum/x{m}"]) == set(results[f"perk-first-order/x{m}"]) == {"perk"}
        assert set(results[f"reference/x{m}"]) == {"chance", "first mention of the person", "last place in the story"}
    assert not (out / "perk-truncated" / "in-context").exists()  # nothing fine-tuned for the reference
    curriculum = json.loads((out / "perk-curriculum" / "config.json").read_text())
    assert curriculum["train"]["init_from"] == str(out / "perk-truncated" / "best")
    assert curriculum["lora"] == results["recipe"]["lora"] and curriculum["inner"] == results["recipe"]["inner"]
    mixture = [json.loads(l)["meta"]["length_tokens"] for l in
               (out / "data" / "qa1-curriculum" / "train.jsonl").read_text().splitlines()]
    assert len(mixture) == 8 and max(mixture[0::2]) < min(mixture[1::2])  # the short and the long length in turn
    assert json.loads((out / "perk-curriculum" / "done.json").read_text())["steps"] == 1
    assert "| base, context in prompt |" in done.stdout and "| PERK (truncated) + 1 steps on 48,96 tokens |" in done.stdout
    assert "| first mention of the person |" in done.stdout
    # the reference recomputed by hand: the first place the asked person went to
    hits = 0
    for line in (out / "data" / "qa1-x1" / "test.jsonl").read_text().splitlines():
        task = json.loads(line)
        person = task["question"].removeprefix("Where is ").rstrip("?")
        text = " ".join(task["context"])
        first = text[text.index(f"{person} "):].split(" the ", 1)[1].split(".")[0]
        hits += first == task["answer"]
    assert results["reference/x1"]["first mention of the person"]["em"] == hits / 2


def test_reproduce_qa2_in_the_recite_format(tmp_path):
    """--answer-format recite: the target cap measured on the training tasks (the longest target through its
    answer, plus 4), decoding with room for the whole recital, the answer weight passed on, and qa2's
    trivial references (chance and the story's last place; its question names an object, not a person)."""
    from perk_cli.config import PromptSettings
    from perk_cli.data.schema import read_split
    from perk_cli.models.base import load_tokenizer
    from perk_cli.prompts import answer_lengths

    base = _tiny_delta(tmp_path)
    out = tmp_path / "repro"
    args = COMMAND + ["--family", "qa2", "--base", str(base), "--length", "64", "--segment-tokens",
            "24", "--steps", "1", "--train-tasks", "6", "--test-tasks", "2", "--top-layers", "1",
            "--tasks-per-batch", "2", "--tasks-per-forward", "2", "--validation-tasks", "2", "--eval-forced",
            "--answer-format", "recite", "--answer-weight", "30", "--out", str(out)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    prompt, train = results["recipe"]["prompt"], results["recipe"]["train"]
    tokenizer = load_tokenizer(str(tmp_path / "base"))
    data = out / "data" / "qa2-x1"
    tasks = read_split(data, "train") + read_split(data, "validation")
    longest = max(answer_lengths(tokenizer, tasks, PromptSettings(answer_format="recite")))
    assert longest > 16  # the facts and the restated question come before the answer
    assert (prompt["answer_format"], prompt["max_answer_tokens"], train["answer_weight"]) == ("recite", longest + 4, 30.0)
    settings = json.loads((out / "eval" / "perk-truncated" / "x1" / "metrics.json").read_text())["settings"]
    assert settings["max_new_tokens"] == longest + 8
    for m in (1, 2, 4, 8):
        assert set(results[f"reference/x{m}"]) == {"chance", "last place in the story"}
    assert "| last place in the story |" in done.stdout and "| PERK first-order |" in done.stdout


def _tiny_recipe_file(tmp_path: Path, base: Path) -> Path:
    """Two tiny stages over the base delta, as a recipe.json (what `run_recipe` writes)."""
    from perk_cli import __version__
    from perk_cli.config import (InnerLoopSettings, LoraSettings, ModelSettings, PrepareSettings, PromptSettings,
                                 RunConfig, TrainSettings)
    from perk_cli.training.recipe import Recipe, RecipeStage

    def stage(name: str, seed: int, length, steps: int) -> RecipeStage:
        return RecipeStage(
            name=name,
            data=PrepareSettings(task="babi", subtask="qa1", facts=4, length=length, segment_tokens=24,
                                 model=str(base), train=4, validation=2, test=0, seed=seed, out="-"),
            config=RunConfig(perk_version=__version__, model=ModelSettings(name=str(base)),
                             lora=LoraSettings(rank=2, alpha=4, top_layers=1),
                             inner=InnerLoopSettings(steps=1, optimizer="adamw", lr_init=1e-2, unroll="truncated"),
                             prompt=PromptSettings(segment_tokens=24, max_answer_tokens=8),
                             train=TrainSettings(max_steps=steps, tasks_per_batch=2, lr=1e-2, step_size_lr=1e-2,
                                                 warmup_steps=0, schedule="constant", eval_every=1, eval_tasks=2,
                                                 eval_decode=False, baseline=False, train_base=False, seed=0)))

    recipe = Recipe(name="tiny-two-stages", description="two tiny stages", minutes=1,
                    stages=[stage("short", 31, 48, 2), stage("mixed", 32, [48, 96], 1)])
    path = tmp_path / "recipe.json"
    path.write_text(recipe.model_dump_json(indent=2))
    return path


def test_reproduce_with_a_recipe(tmp_path):
    """--recipe: truncated PERK is the recipe's stages (its first and its last each a row), first-order PERK
    runs the first stage's tasks for the steps it trained, the test sets take the first stage's length and
    segments, and plain TTT's rate is tuned once at 1x and used at every length."""
    base = _tiny_delta(tmp_path)
    recipe = _tiny_recipe_file(tmp_path, base)
    out = tmp_path / "repro"
    args = COMMAND + ["--recipe", str(recipe), "--test-tasks", "2", "--validation-tasks", "2",
            "--out", str(out)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["recipe"]["name"] == "tiny-two-stages" and results["recipe"]["outer_steps"] == 2
    assert [(s["name"], s["steps"]) for s in results["recipe"]["stages"]] == [("short", 2), ("mixed", 1)]
    mixed = json.loads((out / "perk-recipe" / "mixed" / "config.json").read_text())
    assert mixed["train"]["init_from"] == str(out / "perk-recipe" / "short" / "best")
    first_order = json.loads((out / "perk-first-order" / "config.json").read_text())
    short = json.loads((out / "perk-recipe" / "short" / "config.json").read_text())
    assert first_order["inner"] == {**short["inner"], "unroll": "first-order"}
    assert first_order["task"] == short["task"] == str(out / "perk-recipe" / "data" / "short")
    assert json.loads((out / "perk-first-order" / "done.json").read_text())["steps"] == 2
    x1 = [json.loads(line) for line in (out / "data" / "qa1-x1" / "test.jsonl").read_text().splitlines()]
    assert all(len(task["context"]) > 1 for task in x1)  # 48-token stories in 24-token segments
    assert not (out / "data" / "qa1-x1" / "train.jsonl").is_file()  # the recipe brings its own
    for m in (1, 2, 4, 8):
        assert set(results[f"perk-recipe/short/x{m}"]) == {"perk", "base", "plain-ttt"}
        assert set(results[f"perk-recipe/mixed/x{m}"]) == set(results[f"perk-first-order/x{m}"]) == {"perk"}
    tuned = json.loads((out / "eval" / "perk-recipe" / "short" / "x1" / "metrics.json").read_text())
    assert tuned["plain_ttt"]["tuning"] is not None  # chosen on the 1x validation tasks
    for m in (2, 4, 8):
        report = json.loads((out / "eval" / "perk-recipe" / "short" / f"x{m}" / "metrics.json").read_text())
        assert report["plain_ttt"] == {"lr": tuned["plain_ttt"]["lr"], "tuning": None}
    assert "| PERK (truncated), stage 1 (short) |" in done.stdout
    assert "| PERK (truncated), all 2 stages (3 steps) |" in done.stdout
    assert "| PERK first-order, stage 1's tasks and steps |" in done.stdout


def test_reproduce_refuses_flags_a_recipe_sets(tmp_path):
    base = _tiny_delta(tmp_path)
    recipe = _tiny_recipe_file(tmp_path, base)
    for extra, message in ((["--family", "qa2"], "--family qa2: --recipe tiny-two-stages uses qa1; leave --family out"),
                           (["--steps", "3"], "--steps: --recipe tiny-two-stages sets its own stages"),
                           (["--segment-tokens", "64"], "--segment-tokens 64: --recipe tiny-two-stages uses 24")):
        done = subprocess.run(COMMAND + ["--recipe", str(recipe), *extra, "--out",
                               str(tmp_path / "r")], capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert done.returncode != 0 and message in done.stderr and "Traceback" not in done.stderr
    for extra, message in ((["--base", "smollm2-reader"], f"--base smollm2-reader: --recipe tiny-two-stages uses {base}"),
                           (["--curriculum", "48,96"], "--curriculum: --recipe tiny-two-stages sets its own stages"),
                           (["--length", "96"], "--length: --recipe tiny-two-stages sets its own stages")):
        done = subprocess.run(COMMAND + ["--recipe", str(recipe), *extra, "--out",
                               str(tmp_path / "r")], capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert done.returncode != 0 and message in done.stderr and "Traceback" not in done.stderr
    from perk_cli.training.recipe import Recipe

    good = Recipe.model_validate_json(recipe.read_text())
    first = good.stages[0]
    first_order = first.model_copy(update={"config": first.config.model_copy(update={
        "inner": first.config.inner.model_copy(update={"unroll": "first-order"})})})
    six_facts = first.model_copy(update={"data": first.data.model_copy(update={"facts": 6})})
    (tmp_path / "bad.json").write_text("{not json")
    for name, stages, message in (
            ("first-order.json", [first_order], "every stage must unroll truncated over a frozen base"),
            ("six-facts.json", [six_facts], "its first stage has facts 6; the qa1 test sets here have 4"),
            ("bad.json", None, "--recipe " + str(tmp_path / "bad.json") + ": not a perk recipe")):
        if stages is not None:
            (tmp_path / name).write_text(good.model_copy(update={"stages": stages}).model_dump_json())
        done = subprocess.run(COMMAND + ["--recipe", str(tmp_path / name), "--out",
                               str(tmp_path / "r")], capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert done.returncode != 0 and message in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run(COMMAND + ["--recipe", "no-such-recipe", "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert "--recipe no-such-recipe: not a recipe name (qa1-reader, qa1-open, open-mix) nor a recipe.json file" in done.stderr
    assert not (tmp_path / "r").exists()  # refused before anything was written
