"""perk_cli.training.recipe: stages chained by their best/ checkpoints, resumable, and the shipped recipe."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from perk_cli import __version__
from perk_cli.config import (GENERATOR_LAYOUT, InnerLoopSettings, LoraSettings, ModelSettings, PrepareSettings, PromptSettings,
                             RunConfig, TrainSettings)
from perk_cli.errors import PerkError
from perk_cli.checkpoint import read_checkpoint, upgrade_config
from perk_cli.config import ReadingBaseSettings
from perk_cli.training.recipe import ReadingBaseStage, Recipe, RecipeStage, qa1_reader_recipe, run_recipe
from tests.conftest import run_cli

REPO = Path(__file__).resolve().parents[2]


def tiny_stage(name: str, seed: int, lr: float = 1e-2, steps: int = 2) -> RecipeStage:
    return RecipeStage(
        name=name,
        data=PrepareSettings(task="babi", subtask="qa1", facts=4, length=64, segment_tokens=32, model="tiny", train=4,
                             validation=1, test=0, seed=seed, out="-", **GENERATOR_LAYOUT),
        config=RunConfig(perk_version=__version__, model=ModelSettings(name="tiny", dtype="float32"),
                         lora=LoraSettings(rank=2, alpha=4, top_layers=1),
                         inner=InnerLoopSettings(steps=1, optimizer="adamw", lr_init=1e-2),
                         prompt=PromptSettings(segment_tokens=32, max_answer_tokens=8),
                         train=TrainSettings(max_steps=steps, tasks_per_batch=1, lr=lr, step_size_lr=lr, warmup_steps=0,
                                             schedule="constant", eval_every=1, eval_tasks=1, baseline=False,
                                             train_base=False, seed=0)))


def tiny_recipe(second_lr: float = 1e-2) -> Recipe:
    return Recipe(name="tiny-two-stages", description="two tiny stages", minutes=1.5,
                  stages=[tiny_stage("one", seed=11), tiny_stage("two", seed=12, lr=second_lr)])


def meta_tensors(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path).tensors


def test_each_stage_starts_from_the_previous_stage_best(tmp_path):
    # the second stage at a vanishing learning rate ends where it started: at the first stage's best/
    result = run_recipe(tiny_recipe(second_lr=1e-12), tmp_path / "r", say=lambda m: None)
    assert result.checkpoint == tmp_path / "r" / "two" / "best"
    assert [s["name"] for s in result.stages] == ["one", "two"] and all(s["steps"] == 2 for s in result.stages)
    config = json.loads((tmp_path / "r" / "two" / "config.json").read_text())
    assert config["train"]["init_from"] == str(tmp_path / "r" / "one" / "best")
    assert config["task"] == str(tmp_path / "r" / "data" / "two")
    first, second = meta_tensors(tmp_path / "r" / "one" / "best"), meta_tensors(result.checkpoint)
    fresh = meta_tensors(tmp_path / "r" / "one" / "last")  # trained: differs from best unless best is last
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(second[key], first[key], atol=1e-8, rtol=0)
    # and the first stage did train: its tensors moved from a fresh initialisation
    from perk_cli.training.meta_train import build_runtime

    torch.manual_seed(0)
    init = build_runtime(tiny_stage("one", 11).config).state_tensors()
    assert max(float((init[k] - fresh[k]).abs().max()) for k in init if init[k].is_floating_point()) > 1e-3
    # each stage's tasks are its own: prepared with its seed
    for name, seed in (("one", 11), ("two", 12)):
        assert json.loads((tmp_path / "r" / "data" / name / "prepare.json").read_text())["settings"]["seed"] == seed


def test_a_stopped_recipe_continues_where_it_stopped_and_ends_as_an_uninterrupted_one(tmp_path):
    whole = run_recipe(tiny_recipe(), tmp_path / "whole", say=lambda m: None)

    def stop_in_stage_two(stage, step, total, metrics):
        if stage == "two" and step == 1:
            raise KeyboardInterrupt

    from perk_cli.training.meta_train import Interrupted

    with pytest.raises(Interrupted):
        run_recipe(tiny_recipe(), tmp_path / "split", say=lambda m: None, on_step=stop_in_stage_two)
    assert (tmp_path / "split" / "one" / "done.json").is_file() and not (tmp_path / "split" / "two" / "done.json").exists()
    said = []
    resumed = run_recipe(tiny_recipe(), tmp_path / "split", say=said.append)
    assert any("stage 1/2 (one): done before" in m for m in said)
    assert any("stage 2/2 (two): continuing" in m for m in said)
    steps = [json.loads(line)["step"] for line in (tmp_path / "split" / "two" / "metrics.jsonl").open()]
    assert steps == [1, 2]  # no step trained twice
    assert resumed.stages == whole.stages
    a, b = meta_tensors(whole.checkpoint), meta_tensors(resumed.checkpoint)
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=0)
    # done: a third call trains nothing
    said.clear()
    run_recipe(tiny_recipe(), tmp_path / "split", say=said.append)
    assert not any("meta-training" in m or "continuing" in m for m in said)


def test_a_directory_of_another_recipe_or_of_anything_else_is_refused(tmp_path):
    run_recipe(tiny_recipe(), tmp_path / "r", say=lambda m: None)
    with pytest.raises(PerkError, match="another recipe"):
        run_recipe(tiny_recipe(second_lr=3e-3), tmp_path / "r", say=lambda m: None)
    # a new description or time estimate of the same stages is the same recipe: nothing is retrained
    said = []
    run_recipe(tiny_recipe().model_copy(update={"minutes": 5.0, "description": "re-measured"}), tmp_path / "r",
               say=said.append)
    assert sum("done before" in m for m in said) == 2
    assert Recipe.model_validate_json((tmp_path / "r" / "recipe.json").read_text()).minutes == 5.0
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(PerkError, match="no recipe.json"):
        run_recipe(tiny_recipe(), tmp_path / "mine", say=lambda m: None)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    with pytest.raises(ValueError, match="distinct"):
        Recipe(name="x", description="x", minutes=1, stages=[tiny_stage("one", 1), tiny_stage("one", 2)])


def reading_stage(name: str = "reader", seed: int = 21, lr: float = 1e-3) -> ReadingBaseStage:
    return ReadingBaseStage(
        name=name,
        data=PrepareSettings(task="babi", subtask="qa1", facts=4, length=64, segment_tokens=32, model="tiny", train=4,
                             validation=2, test=0, seed=seed, out="-"),
        reading_base=ReadingBaseSettings(model="tiny", steps=2, tasks_per_step=2, lr=lr, bf16=False))


def test_a_reading_base_stage_fine_tunes_the_base_the_later_stages_run_over(tmp_path):
    from perk_cli.models.base import load_base

    recipe = Recipe(name="reader-then-perk", description="a reading base, then PERK over it", minutes=1.0,
                    stages=[reading_stage(), tiny_stage("perk", seed=11)])
    said = []
    result = run_recipe(recipe, tmp_path / "r", say=said.append)
    reader = tmp_path / "r" / "reader"
    assert result.checkpoint == tmp_path / "r" / "perk" / "best"
    assert result.stages[0]["name"] == "reader" and result.stages[0]["steps"] == 2
    gate = result.stages[0]["gate"]  # gated on its own data's validation split
    assert list(gate) and all(0.0 <= em <= 1.0 for em in gate.values())
    config = json.loads((tmp_path / "r" / "perk" / "config.json").read_text())
    assert config["model"]["name"] == str(reader / "model")
    assert config["train"]["init_from"] is None  # the first meta-training stage, with no init_from of its own
    # the base really moved: the saved reading base differs from the tiny preset it started from
    tuned, _ = load_base(ModelSettings(name=str(reader / "model"), dtype="float32"))
    fresh, _ = load_base(ModelSettings(name="tiny", dtype="float32"))
    moved = max(float((a - b).abs().max()) for a, b in zip(tuned.state_dict().values(), fresh.state_dict().values()))
    assert moved > 1e-6
    # run again: nothing is retrained; a reading base stopped before it finished starts again
    said.clear()
    again = run_recipe(recipe, tmp_path / "r", say=said.append)
    assert any("stage 1/2 (reader): done before" in m for m in said) and again.stages == result.stages
    (reader / "done.json").unlink()
    said.clear()
    run_recipe(recipe, tmp_path / "r", say=said.append)
    assert any("stage 1/2 (reader): fine-tuning the reading base" in m for m in said)
    assert any("stage 2/2 (perk): done before" in m for m in said)


def _ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def test_a_stage_of_several_parts_trains_on_their_mixture_and_keeps_the_parts(tmp_path):
    stage = tiny_stage("mixed", seed=11)
    qa1 = stage.data
    stage.data = [qa1, qa1.model_copy(update={"subtask": "qa2", "facts": 3, "seed": 12})]
    recipe = Recipe(name="mixture", description="two subtasks", minutes=1.0, stages=[stage])
    said = []
    run_recipe(recipe, tmp_path / "r", say=said.append)
    data, parts = tmp_path / "r" / "data" / "mixed", tmp_path / "r" / "data" / "mixed.parts"
    assert any("preparing 8 training tasks" in m for m in said)
    assert sorted(p.name for p in parts.iterdir()) == ["0-qa1", "1-qa2"]
    assert json.loads((parts / "1-qa2" / "prepare.json").read_text())["settings"]["seed"] == 12
    assert _ids(data / "train.jsonl") == [f"{sub}-train-{i:05d}" for i in range(4) for sub in ("qa1", "qa2")]
    assert json.loads((tmp_path / "r" / "mixed" / "config.json").read_text())["task"] == str(data)
    # a recipe stopped after its parts were prepared mixes them without preparing them again
    before = (parts / "0-qa1" / "train.jsonl").stat().st_mtime_ns
    for path in (data, tmp_path / "r" / "mixed"):
        shutil.rmtree(path)
    run_recipe(recipe, tmp_path / "r", say=lambda m: None)
    assert (parts / "0-qa1" / "train.jsonl").stat().st_mtime_ns == before and (data / "prepare.json").is_file()


def test_a_second_reading_base_stage_continues_the_first(tmp_path):
    from perk_cli.training.recipe import reading_base_settings

    recipe = Recipe(name="two-readers", description="a reading base continued", minutes=1.0,
                    stages=[reading_stage("r1"), reading_stage("r2", seed=22), tiny_stage("perk", seed=11)])
    planned = reading_base_settings(recipe, tmp_path / "r")
    assert planned["r1"].model == "tiny" and planned["r2"].model == str(tmp_path / "r" / "r1" / "model")
    run_recipe(recipe, tmp_path / "r", say=lambda m: None)
    ran = json.loads((tmp_path / "r" / "r2" / "reading_base.json").read_text())["recipe"]
    assert ran["model"] == str(tmp_path / "r" / "r1" / "model") and ran["task"] == str(tmp_path / "r" / "data" / "r2")
    config = json.loads((tmp_path / "r" / "perk" / "config.json").read_text())
    assert config["model"]["name"] == str(tmp_path / "r" / "r2" / "model")


def test_a_first_stage_starts_from_its_own_init_from(tmp_path):
    first = run_recipe(tiny_recipe(), tmp_path / "first", say=lambda m: None)
    stage = tiny_stage("from-there", seed=13, lr=1e-12)
    stage.config.train.init_from = str(first.checkpoint)
    result = run_recipe(Recipe(name="continued", description="from a checkpoint", minutes=1.0, stages=[stage]),
                        tmp_path / "second", say=lambda m: None)
    config = json.loads((tmp_path / "second" / "from-there" / "config.json").read_text())
    assert config["train"]["init_from"] == str(first.checkpoint)
    a, b = meta_tensors(first.checkpoint), meta_tensors(result.checkpoint)
    for key in a:  # a vanishing learning rate: it ends where it started, at the given checkpoint
        torch.testing.assert_close(b[key], a[key], atol=1e-8, rtol=0)


def test_a_recipe_of_reading_bases_alone_is_refused():
    with pytest.raises(ValueError, match="at least one meta-training stage"):
        Recipe(name="x", description="x", minutes=1, stages=[reading_stage()])


def test_reproduce_refuses_a_recipe_with_a_reading_base_stage_in_one_line(tmp_path, capsys):
    recipe = Recipe(name="reader-then-perk", description="x", minutes=1.0,
                    stages=[reading_stage(), tiny_stage("perk", seed=11)])
    path = tmp_path / "recipe.json"
    path.write_text(recipe.model_dump_json())
    code, out, err = run_cli(["reproduce", "--recipe", str(path), "-o", str(tmp_path / "out")], capsys)
    assert code != 0 and "has a reading-base stage" in err and "Traceback" not in err

    mixed = tiny_stage("mixed", seed=11)
    mixed.data = [mixed.data, mixed.data.model_copy(update={"subtask": "qa2", "seed": 12})]
    path.write_text(Recipe(name="mixture", description="x", minutes=1.0, stages=[mixed]).model_dump_json())
    code, out, err = run_cli(["reproduce", "--recipe", str(path), "-o", str(tmp_path / "out2")], capsys)
    assert code != 0 and "its first stage trains on a mixture" in err and len(err.strip().splitlines()) == 1


# The recipe of the shipped checkpoint against the configs its three stages recorded when they first ran
# (the first two on the full reading base, runs/reading-base-2/model, of which smollm2-reader is the delta).
SHIPPED_STAGES = {
    "1-qa1-128": REPO / "experiments/results/perk-reading-base-2/checkpoint-top8-step110",
    "2-curriculum": REPO / "experiments/results/perk-reading-base-2/checkpoint-top8-curriculum-step70",
    "3-curriculum-low-lr": REPO / "perk_cli/shipped/qa1-reader",
}


def _comparable(config: dict) -> dict:
    config = {k: v for k, v in config.items() if k not in ("task", "perk_version")}
    config["model"] = {k: v for k, v in config["model"].items() if k != "name"}
    config["train"] = {k: v for k, v in config["train"].items() if k not in ("init_from", "max_steps")}
    return config


def test_the_shipped_recipe_is_what_made_the_shipped_checkpoint():
    recipe = qa1_reader_recipe()
    assert [s.name for s in recipe.stages] == list(SHIPPED_STAGES)
    for stage in recipe.stages:
        # read as a checkpoint is read: a setting added after the checkpoint was made takes its default
        # (the first two stages' weights left the tree; their config.json stayed beside their figures)
        saved = json.loads((SHIPPED_STAGES[stage.name] / "config.json").read_text())
        recorded = RunConfig.model_validate(upgrade_config(saved)).model_dump(mode="json")
        assert _comparable(stage.config.model_dump(mode="json")) == _comparable(recorded), stage.name
        assert stage.config.model.name == "smollm2-reader"
    # the steps each stage ran: best/ of the first two was at 110 of 120 and 70 of 80; the third's at 50 of 50
    assert [s.config.train.max_steps for s in recipe.stages] == [120, 80, 50]
    state = json.loads((SHIPPED_STAGES["3-curriculum-low-lr"] / "trainer_state.json").read_text())
    assert state["step"] == 50
    # the tasks: 1,000 of 128 tokens (seed 301), 300 of the curriculum (seed 501), 600 fresh ones (seed 511)
    assert [(s.data.length, s.data.train, s.data.seed) for s in recipe.stages] == [
        (128, 1000, 301), ([128, 512, 1024], 300, 501), ([128, 512, 1024], 600, 511)]


def test_perk_demo_retrain_runs_the_recipe_then_evaluates_what_it_made(tmp_path, capsys, monkeypatch):
    import perk_cli.demo
    import perk_cli.training.recipe

    monkeypatch.setattr(perk_cli.training.recipe, "qa1_open_recipe", tiny_recipe)  # the real one takes hours
    out = tmp_path / "demo"
    code, stdout, err = run_cli(["demo", "--retrain", "--out", str(out), "--test-tasks", "1", "--json"], capsys)
    assert code == 0, err
    result = json.loads(stdout)
    assert result["checkpoint"] == str(out / "retrain" / "two" / "best")
    assert [s["name"] for s in result["retrained"]] == ["one", "two"]
    assert result["trained_here"] is False and result["lengths"] == [128, 1024]  # as the shipped checkpoint
    report = json.loads((out / "eval-1024" / "metrics.json").read_text())
    assert report["settings"]["checkpoint"] == result["checkpoint"]
    assert report["settings"]["plain_lr"] == perk_cli.demo.SHIPPED_PLAIN_LR
    # rerun: the recipe is done, only the evaluation runs again
    code, stdout, err = run_cli(["demo", "--retrain", "--out", str(out), "--test-tasks", "1"], capsys)
    assert code == 0, err
    assert "About 2 minutes on 2 CPU cores" in err  # the cost, said before any work
    assert "done before" in err and "retrained two: 2 steps" in stdout
    code, _, err = run_cli(["demo", "--retrain", "--train-here", "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "choose one" in err


def test_perk_recipe_runs_a_recipe_file_and_continues_it(tmp_path, capsys):
    recipe = Recipe(name="reader-then-perk", description="a reading base, then PERK over it", minutes=1.0,
                    stages=[reading_stage(), tiny_stage("perk", seed=11)])
    path = tmp_path / "recipe.json"
    path.write_text(recipe.model_dump_json())
    code, out, err = run_cli(["recipe", str(path), "-o", str(tmp_path / "r"), "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["checkpoint"] == str(tmp_path / "r" / "perk" / "best")
    assert [stage["name"] for stage in report["stages"]] == ["reader", "perk"]
    assert "gate" in report["stages"][0] and report["stages"][1]["steps"] == 2
    code, out, err = run_cli(["recipe", str(path), "-o", str(tmp_path / "r")], capsys)  # done: the table again
    assert code == 0 and "reading base" in out and "meta-training" in out and "done before" in err


def test_perk_recipe_lists_the_recipes_and_refuses_bad_arguments_in_one_line(tmp_path, capsys):
    code, out, _ = run_cli(["recipe", "--json"], capsys)
    listed = json.loads(out)
    assert code == 0 and {"qa1-reader", "qa1-open"} <= set(listed)
    assert [stage["name"] for stage in listed["qa1-open"]["stages"]] == ["1-open-qa1", "2-reading-base",
                                                                         "3-open-qa1-reader", "4-open-qa1-recency"]
    for args, message in ((["recipe", "qa9"], "NAME qa9: not a recipe name"),
                          (["recipe", "qa1-open"], "--out: where recipe qa1-open writes its stages")):
        code, _, err = run_cli(args, capsys)
        assert code != 0 and message in err and "Traceback" not in err


GENERAL = REPO / "experiments" / "results" / "general-qa1"


def test_the_qa1_open_recipe_is_what_ran():
    """Its stages against the configs and data settings the runs of experiments/LOG.md recorded."""
    from perk_cli.training.recipe import qa1_open_recipe

    recipe = qa1_open_recipe()
    first, reader, over, recency = recipe.stages
    for stage, config_file in ((first, "meta-train-config.json"), (over, "over-reader-config.json"),
                               (recency, "order/recency-config.json")):
        recorded = RunConfig.model_validate(upgrade_config(json.loads((GENERAL / config_file).read_text())))
        assert _comparable(stage.config.model_dump(mode="json")) == _comparable(recorded.model_dump(mode="json"))
        assert recorded.train.max_steps >= stage.config.train.max_steps  # ran (or was stopped at) its steps
    for stage, prepared in ((first, "qa1-train-prepare.json"), (reader, "reading-base-data-prepare.json"),
                            (over, "qa1-train-prepare.json"), (recency, "order/qa1-train2-prepare.json")):
        settings = json.loads((GENERAL / prepared).read_text())["settings"]
        assert {k: v for k, v in stage.data.model_dump(mode="json").items() if k != "out"} == \
               {k: v for k, v in settings.items() if k != "out"}, stage.name
    ran = json.loads((GENERAL / "reading-base-open.json").read_text())["recipe"]
    mine = reader.reading_base.model_dump(mode="json")
    assert {k: ran[k] for k in mine if k not in ("out", "task")} == {k: v for k, v in mine.items()
                                                                     if k not in ("out", "task")}


def test_the_open_mix_recipe_is_what_ran():
    """Its two added stages against the data settings, reading base and run config that the runs of
    experiments/LOG.md ("several kinds of question in one memory") recorded."""
    from perk_cli.training.recipe import open_mix_recipe, qa1_open_recipe

    mix = REPO / "experiments" / "results" / "open-mix"
    recipe = open_mix_recipe()
    assert recipe.stages[:4] == qa1_open_recipe().stages
    reader, perk = recipe.stages[4:]
    for stage, prefix in ((reader, "rbmix"), (perk, "mtmix")):
        assert [part.subtask for part in stage.data] == ["qa1", "qa2", "qa3", "recall"]
        for part in stage.data:
            settings = json.loads((mix / "data" / f"{prefix}-{part.subtask}-prepare.json").read_text())["settings"]
            assert {k: v for k, v in part.model_dump(mode="json").items() if k != "out"} == \
                   {k: v for k, v in settings.items() if k != "out"}, (stage.name, part.subtask)
    ran = json.loads((mix / "reading-base.json").read_text())["recipe"]
    mine = reader.reading_base.model_dump(mode="json")
    # the model is the previous reading base's, filled in when the recipe runs (it ran from qa1-open's)
    assert {k: ran[k] for k in mine if k not in ("out", "task", "model")} == \
           {k: v for k, v in mine.items() if k not in ("out", "task", "model")}
    recorded = RunConfig.model_validate(upgrade_config(json.loads((mix / "meta-train-config.json").read_text())))
    assert _comparable(perk.config.model_dump(mode="json")) == _comparable(recorded.model_dump(mode="json"))
    assert recorded.train.max_steps >= perk.config.train.max_steps
