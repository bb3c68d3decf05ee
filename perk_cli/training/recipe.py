"""Multi-stage meta-training recipes: the commands that made a shipped checkpoint, as one resumable run.

A recipe is a list of stages. Each stage prepares its own generated tasks (a seed of its own) and
meta-trains on them; every meta-training stage after the first starts from the previous one's best/
checkpoint (`--init-from`: its meta-parameters, a fresh outer optimiser); the first starts from its
own `init_from` (a checkpoint, `shipped:NAME`) or from scratch. A reading-base stage fine-tunes a base on its
tasks (`perk reading-base --task`), and every meta-training stage after it runs over that base.
`run_recipe` lays a recipe out as

    OUT/recipe.json            the recipe, validated; a recipe with other stages in OUT is refused
    OUT/data/<stage>/          the stage's tasks (perk prepare)
    OUT/<stage>/               the stage's run (perk meta-train or perk reading-base), done.json once finished

and skips whatever is already there, so a run stopped at any moment continues where it stopped
(a meta-training stage with a last/ checkpoint is resumed; one stopped before its first checkpoint, and a
reading base stopped before it finished, start again).

`qa1_reader_recipe()` is the recipe of perk_cli/shipped/qa1-reader and `qa1_open_recipe()` that of the
default perk_cli/shipped/qa1-open (experiments/LOG.md has each stage as the perk commands that first ran
it); `perk recipe NAME` runs either, `perk demo --retrain` the default's.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pydantic import BaseModel, ConfigDict, Field, model_validator

from perk_cli import __version__
from perk_cli.config import GENERATOR_LAYOUT, InnerLoopSettings, LoraSettings, ModelSettings, PrepareSettings, PromptSettings, \
    ReadingBaseSettings, RunConfig, TrainSettings
from perk_cli.errors import PerkError

StageCallback = Callable[[str, int, int, dict], None]  # stage name, step, total steps, metrics


STAGE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class RecipeStage(BaseModel):
    """A meta-training stage: the tasks it trains on and the run's settings (task, init_from after the first
    meta-training stage, and the model after a reading-base stage are filled in)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=STAGE_NAME, description="Directory name of the stage.")
    data: PrepareSettings | list[PrepareSettings] = Field(
        description="Its tasks; `out` is replaced by OUT/data/<name> (a list: each part prepared, then mixed).")
    config: RunConfig = Field(description="Its run; from the second stage on it starts from the previous best/.")


class ReadingBaseStage(BaseModel):
    """A reading-base stage: a base fine-tuned to answer from its prompt on the stage's tasks (train split),
    gated on their validation split; the meta-training stages after it run over OUT/<name>/model."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=STAGE_NAME, description="Directory name of the stage.")
    data: PrepareSettings | list[PrepareSettings] = Field(
        description="Its tasks; `out` is replaced by OUT/data/<name> (a list: each part prepared, then mixed).")
    reading_base: ReadingBaseSettings = Field(description="Its settings; `task` and `out` are filled in (after "
                                                          "another reading-base stage, `model` too: it continues it).")


class Recipe(BaseModel):
    name: str
    description: str
    minutes: float = Field(gt=0, description="Measured wall time of the whole recipe on 2 CPU cores.")
    stages: list[RecipeStage | ReadingBaseStage] = Field(min_length=1)

    @model_validator(mode="after")
    def _distinct_names(self) -> "Recipe":
        names = [stage.name for stage in self.stages]
        if len(set(names)) != len(names) or "data" in names:
            raise ValueError(f"stage names must be distinct and not 'data': {names}")
        if not self.meta_stages():
            raise ValueError("a recipe needs at least one meta-training stage")
        return self

    def meta_stages(self) -> list[RecipeStage]:
        return [stage for stage in self.stages if isinstance(stage, RecipeStage)]

    def base_model(self) -> str:
        """The --model spec the first stage starts from."""
        first = self.stages[0]
        return first.reading_base.model if isinstance(first, ReadingBaseStage) else first.config.model.name


@dataclass
class RecipeResult:
    out: Path
    checkpoint: Path  # the last stage's best/
    stages: list[dict] = field(default_factory=list)  # name, steps, best (validation EM, loss, step)


def stage_configs(recipe: Recipe, out: Path) -> list[tuple[RecipeStage, Path, RunConfig]]:
    """Each meta-training stage with its data directory and its run config as `run_recipe` trains it."""
    from perk_cli.checkpoint import resolve_checkpoint

    planned, previous, reader = [], None, None
    for stage in recipe.stages:
        data_dir = out / "data" / stage.name
        if isinstance(stage, ReadingBaseStage):
            reader = str(out / stage.name / "model")
            continue
        first_init = stage.config.train.init_from
        init_from = str(out / previous / "best") if previous else (
            str(resolve_checkpoint(Path(first_init), f"recipe stage {stage.name}: init_from")) if first_init else None)
        train = stage.config.train.model_copy(update={"init_from": init_from})
        model = stage.config.model.model_copy(update={"name": reader}) if reader else stage.config.model
        planned.append((stage, data_dir, stage.config.model_copy(update={"task": str(data_dir), "train": train,
                                                                         "model": model})))
        previous = stage.name
    return planned


def stage_parts(data: PrepareSettings | list[PrepareSettings], data_dir: Path) -> list[PrepareSettings]:
    """A stage's prepare settings with their output directories: one part into `data_dir`, or each of a
    list into OUT/data/<stage>.parts/<i>-<subtask>, mixed into `data_dir` afterwards."""
    if isinstance(data, PrepareSettings):
        return [data.model_copy(update={"out": str(data_dir)})]
    parts = data_dir.parent / f"{data_dir.name}.parts"
    return [part.model_copy(update={"out": str(parts / f"{i}-{part.subtask}")}) for i, part in enumerate(data)]


def prepare_stage_data(data: PrepareSettings | list[PrepareSettings], data_dir: Path) -> None:
    """Prepare a stage's tasks into `data_dir`, skipping every part already prepared (a stopped recipe
    continues); a list of parts is mixed task by task (`perk prepare --task mix`)."""
    from perk_cli.prepare import prepare

    parts = stage_parts(data, data_dir)
    for part in parts:
        if not (Path(part.out) / "prepare.json").is_file():
            prepare(part)
    if len(parts) > 1 and not (data_dir / "prepare.json").is_file():
        prepare(PrepareSettings(task="mix", input=",".join(part.out for part in parts), model=parts[0].model,
                                out=str(data_dir)))


def _training_tasks(data: PrepareSettings | list[PrepareSettings]) -> int:
    return data.train if isinstance(data, PrepareSettings) else sum(part.train for part in data)


def reading_base_settings(recipe: Recipe, out: Path) -> dict[str, ReadingBaseSettings]:
    """Each reading-base stage's settings as `run_recipe` trains it: a stage after another reading-base
    stage starts from that one's model (OUT/<previous>/model)."""
    settings, previous = {}, None
    for stage in recipe.stages:
        if isinstance(stage, ReadingBaseStage):
            update = {"task": str(out / "data" / stage.name), "out": str(out / stage.name)}
            if previous:
                update["model"] = str(out / previous / "model")
            settings[stage.name] = stage.reading_base.model_copy(update=update)
            previous = stage.name
    return settings


def run_reading_base_stage(stage: ReadingBaseStage, data_dir: Path, run_dir: Path, say: Callable[[str], None] = print,
                           header: str = "", on_step: Callable[[int, int, dict], None] | None = None,
                           settings: ReadingBaseSettings | None = None) -> tuple[dict, bool]:
    """Fine-tune the stage's reading base into `run_dir` (OUT/<stage>/model), or read back the finished one
    (done.json); one stopped before it finished starts again. `settings` replaces the stage's own (as
    `reading_base_settings` fills them in). Returns ({"steps", "gate"}, done before)."""
    from perk_cli.training.reading_base import train_reading_base

    done = run_dir / "done.json"
    if done.is_file():
        return json.loads(done.read_text()), True
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a reading base saves nothing to continue from before it finishes
    settings = (settings or stage.reading_base).model_copy(update={"task": str(data_dir), "out": str(run_dir)})
    say(f"{header + ': ' if header else ''}fine-tuning the reading base for {settings.steps} steps into {run_dir}")
    report = train_reading_base(settings, say=lambda line: say(f"{header}: {line}" if header else line),
                                on_step=(lambda step, total, loss: on_step(step, total, {"answer_loss": loss}))
                                if on_step else None)
    gate = {key: result.get("val_em") for key, result in report.get("held_out_in_context", {}).items()}
    summary = {"steps": settings.steps, "gate": gate}
    done.write_text(json.dumps(summary) + "\n")
    return summary, False


def run_stage(config: RunConfig, data_dir: Path, run_dir: Path, say: Callable[[str], None] = print,
              header: str = "", on_step: Callable[[int, int, dict], None] | None = None) -> tuple[dict, bool]:
    """Meta-train `config` on `data_dir` into `run_dir`, or continue it: a finished run (done.json) is
    read back, one with a last/ checkpoint resumed, one stopped before its first checkpoint started
    again. Returns ({"steps", "best"}, whether it was done before)."""
    from perk_cli.training.meta_train import meta_train

    done = run_dir / "done.json"
    if done.is_file():
        return json.loads(done.read_text()), True
    resume = (run_dir / "last").is_dir()
    if not resume and run_dir.exists():
        shutil.rmtree(run_dir)  # stopped before its first checkpoint: nothing to continue from
    say(f"{header + ': ' if header else ''}{'continuing' if resume else 'meta-training'} for "
        f"{config.train.max_steps} steps into {run_dir}")
    trained = meta_train(config, data_dir, run_dir, resume=resume, on_step=on_step, on_event=say)
    summary = {"steps": trained.step, "best": trained.best}
    done.write_text(json.dumps(summary) + "\n")
    return summary, False


def run_recipe(recipe: Recipe, out: Path, say: Callable[[str], None] = print,
               on_step: StageCallback | None = None) -> RecipeResult:
    """Run (or continue) every stage of `recipe` in `out`; returns the last stage's best/ checkpoint."""
    recipe_file = out / "recipe.json"
    if recipe_file.is_file():
        try:
            existing = Recipe.model_validate_json(recipe_file.read_text())
        except ValueError:
            raise PerkError(f"{recipe_file}: not a perk recipe; choose another output directory")
        # what it trains decides, not its description or time estimate
        if [st.model_dump() for st in existing.stages] != [st.model_dump() for st in recipe.stages]:
            raise PerkError(f"{out}: holds the run of another recipe ({existing.name}, {recipe_file}); choose another "
                            "output directory")
    elif out.exists() and any(p.name != "data" for p in out.iterdir()):
        raise PerkError(f"{out}: not empty and holds no recipe.json; choose another output directory")
    out.mkdir(parents=True, exist_ok=True)
    recipe_file.write_text(recipe.model_dump_json(indent=2) + "\n")
    result = RecipeResult(out=out, checkpoint=out / recipe.meta_stages()[-1].name / "best")
    configs = {stage.name: config for stage, _, config in stage_configs(recipe, out)}
    bases = reading_base_settings(recipe, out)
    for index, stage in enumerate(recipe.stages, start=1):
        run_dir, data_dir = out / stage.name, out / "data" / stage.name
        header = f"stage {index}/{len(recipe.stages)} ({stage.name})"
        if not (data_dir / "prepare.json").is_file():
            say(f"{header}: preparing {_training_tasks(stage.data)} training tasks in {data_dir}")
            prepare_stage_data(stage.data, data_dir)
        if isinstance(stage, ReadingBaseStage):
            summary, before = run_reading_base_stage(
                stage, data_dir, run_dir, say, header,
                (lambda s, t, m, name=stage.name: on_step(name, s, t, m)) if on_step else None, bases[stage.name])
            if before:
                say(f"{header}: done before ({summary['steps']} steps)")
        else:
            summary, before = run_stage(configs[stage.name], data_dir, run_dir, say, header,
                                        (lambda s, t, m, name=stage.name: on_step(name, s, t, m)) if on_step else None)
            if before:
                say(f"{header}: done before ({summary['steps']} steps, best at step {summary['best']['step']})")
        result.stages.append({"name": stage.name, **summary})
    return result


def _qa1_data(length: int | list[int], train: int, seed: int) -> PrepareSettings:
    return PrepareSettings(task="babi", subtask="qa1", facts=4, length=length, segment_tokens=64,
                           model="smollm2-reader", train=train, validation=16, test=0, seed=seed, out="-",
                           **GENERATOR_LAYOUT)


def _reader_config(max_steps: int, lr: float, step_size_lr: float, warmup_steps: int) -> RunConfig:
    return RunConfig(
        perk_version=__version__,
        model=ModelSettings(name="smollm2-reader"),
        lora=LoraSettings(rank=16, alpha=32, top_layers=8),
        inner=InnerLoopSettings(steps=2, optimizer="adamw", lr_init=3e-3, lr_max=1.0, unroll="truncated",
                                unroll_start=1),
        prompt=PromptSettings(segment_tokens=64),
        train=TrainSettings(max_steps=max_steps, tasks_per_batch=4, tasks_per_forward=4, lr=lr,
                            step_size_lr=step_size_lr, warmup_steps=warmup_steps, schedule="constant",
                            eval_every=10, eval_tasks=16, train_base=False, baseline=False, seed=0),
    )


def qa1_reader_recipe() -> Recipe:
    """perk_cli/shipped/qa1-reader's three stages on the shipped reading base, frozen."""
    return Recipe(
        name="qa1-reader",
        description="PERK on qa1 over smollm2-reader: 120 steps on 128-token stories, 80 on a curriculum of "
                    "128/512/1,024 tokens, 50 more on fresh curriculum tasks at a third of the learning rate",
        minutes=70,  # measured: 18 + 31 + 20 minutes here (experiments/LOG.md, "Retrained from its recipe")
        stages=[
            RecipeStage(name="1-qa1-128", data=_qa1_data(128, 1000, 301),
                        config=_reader_config(120, lr=1e-3, step_size_lr=1e-2, warmup_steps=5)),
            RecipeStage(name="2-curriculum", data=_qa1_data([128, 512, 1024], 300, 501),
                        config=_reader_config(80, lr=1e-3, step_size_lr=1e-2, warmup_steps=5)),
            RecipeStage(name="3-curriculum-low-lr", data=_qa1_data([128, 512, 1024], 600, 511),
                        config=_reader_config(50, lr=3e-4, step_size_lr=3e-3, warmup_steps=3)),
        ],
    )


def _open_qa1_data(train: int, validation: int, seed: int) -> PrepareSettings:
    """qa1 in prepare's default layout: held-out names and towns, Python's documentation as the haystack,
    no order tags."""
    return PrepareSettings(task="babi", subtask="qa1", facts=4, length=[128, 512, 1024], segment_tokens=64,
                           model="smollm2-reader", train=train, validation=validation, test=0, seed=seed, out="-")


def _open_config() -> RunConfig:
    config = _reader_config(40, lr=1e-3, step_size_lr=1e-2, warmup_steps=3)
    train = config.train.model_copy(update={"tasks_per_batch": 8, "tasks_per_forward": 1,
                                            "init_from": "shipped:qa1-reader"})
    return config.model_copy(update={"train": train})


def _recency_config() -> RunConfig:
    """The fourth stage: the inner step weighs later segments up (recency 2), at a continuation's lower rate."""
    config = _open_config()
    return config.model_copy(update={
        "inner": config.inner.model_copy(update={"recency": 2.0}),
        "train": config.train.model_copy(update={"max_steps": 60, "lr": 3e-4, "warmup_steps": 5})})


def qa1_open_recipe() -> Recipe:
    """qa1 for documents the generator's first layout never showed: from the shipped qa1-reader, 40 steps in
    the open layout, a reading base fine-tuned on that layout, 40 more steps over it (experiments/LOG.md,
    2026-12-07, "over a reading base of the open layout"), then 60 under a recency-weighted inner step on
    fresh stories ("later segments weighed up")."""
    return Recipe(
        name="qa1-open",
        description="PERK on qa1 in the open layout (held-out names, real prose, no order tags): 40 steps from "
                    "the shipped qa1-reader, a reading base fine-tuned 40 steps on that layout, 40 steps over it, "
                    "60 more with later segments weighed up (recency 2)",
        minutes=165,  # measured: 37 + 28 + 40 + 60 minutes here (experiments/LOG.md)
        stages=[
            RecipeStage(name="1-open-qa1", data=_open_qa1_data(600, 16, 9101), config=_open_config()),
            ReadingBaseStage(name="2-reading-base", data=_open_qa1_data(800, 40, 9104),
                             reading_base=ReadingBaseSettings(model="smollm2-reader", steps=40, tasks_per_step=8,
                                                              lr=2e-5, bf16=False, delta_rank=16, seed=11)),
            RecipeStage(name="3-open-qa1-reader", data=_open_qa1_data(600, 16, 9101), config=_open_config()),
            RecipeStage(name="4-open-qa1-recency", data=_open_qa1_data(1200, 16, 9106), config=_recency_config()),
        ],
    )


def _open_mix_data(train: int, validation: int, seed: int) -> list[PrepareSettings]:
    """qa1 (4 facts), qa2 (6), qa3 (8) in the open layout at 128/512/1,024 tokens and six-record recall
    databases with open-vocabulary students, seeds seed..seed+3, mixed task by task."""
    babi = [PrepareSettings(task="babi", subtask=subtask, facts=facts, length=[128, 512, 1024], segment_tokens=64,
                            model="smollm2-reader", train=train, validation=validation, test=0, seed=seed + i, out="-")
            for i, (subtask, facts) in enumerate((("qa1", 4), ("qa2", 6), ("qa3", 8)))]
    recall = PrepareSettings(task="records", subtask="recall", records=6, model="smollm2-reader", train=train,
                             validation=validation, test=0, seed=seed + 3, out="-")
    return [*babi, recall]


def open_mix_recipe() -> Recipe:
    """Several kinds of question in one memory: the qa1-open recipe, then its reading base continued on a
    mixture of qa1, qa2, qa3 and recall, and 60 meta-steps on a fresh mixture over that base from the
    qa1-open checkpoint (experiments/LOG.md, 2026-12-07, "several kinds of question in one memory?"). The
    record of an attempt that failed (qa2 / qa3 / recall 0.29 / 0.09 / 0.17 on held-out stories, qa1 0.70),
    kept so it can be rerun and changed; nothing it makes ships."""
    qa1 = qa1_open_recipe()
    return Recipe(
        name="open-mix",
        description="qa1-open's four stages, then its reading base continued 60 steps on a mixture of qa1, qa2, "
                    "qa3 and six-record recall, and 60 meta-steps on a fresh mixture over it (recency 2); not "
                    "shipped: its memory reads qa2, qa3 and recall below chance (docs/results.md)",
        minutes=qa1.minutes + 82,  # measured here: 36 + 41 minutes for the two added stages, about 5 preparing their data
        stages=[
            *qa1.stages,
            ReadingBaseStage(name="5-reading-base-mix", data=_open_mix_data(500, 10, 9411),
                             reading_base=ReadingBaseSettings(model="smollm2-reader", steps=60, tasks_per_step=8,
                                                              lr=3e-5, bf16=False, delta_rank=16, seed=12)),
            RecipeStage(name="6-open-mix", data=_open_mix_data(600, 4, 9421), config=_recency_config()),
        ],
    )


RECIPES: dict[str, Callable[[], Recipe]] = {"qa1-reader": qa1_reader_recipe,  # by name (perk reproduce --recipe)
                                            "qa1-open": qa1_open_recipe, "open-mix": open_mix_recipe}


def load_recipe(value: str, option: str = "--recipe") -> Recipe:
    """A named recipe (RECIPES) or a recipe.json file (as `run_recipe` writes one); errors name `option`."""
    if value in RECIPES:
        return RECIPES[value]()
    path = Path(value)
    if not path.is_file():
        raise PerkError(f"{option} {value}: not a recipe name ({', '.join(RECIPES)}) nor a recipe.json file")
    try:
        return Recipe.model_validate_json(path.read_text())
    except ValueError as exc:
        first = str(exc).splitlines()[0]
        raise PerkError(f"{option} {value}: not a perk recipe ({first})")
