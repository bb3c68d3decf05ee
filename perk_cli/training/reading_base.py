"""`perk reading-base`: stage 1, a base that answers from its prompt (the reading base).

PERK moves a context from the prompt into a LoRA, so it presupposes a base that answers when the context
*is* in the prompt; SmolLM2-135M-Instruct does not (qa1 in-context EM 0.00-0.13 zero-shot). This
fine-tunes all of a base's parameters on the project's in-context format (the context's segments, then
the question prompt; loss on the answer tokens and eos only) over generated stories, clean and hidden in
filler, saves a transformers directory that `--model DIR` loads, and measures the gate: in-context EM on
held-out tasks (fresh seeds) at each length, decoded as every method is.

`recite_share` lays that share of the bAbI training tasks out as PERK's recite format reads them: the
question prompt, the story's events one a line, the question prompt again, then the answer (the recital
is the memory's to write, the base's to read); those come from sets in one-sentence segments, and the
gate then also scores the base reading the gold events in that layout (teacher-forced answer tokens).
`pool` N draws the training stories from fresh seeds; `hard_share` draws that share of each step's
stories from the qa2 stories whose object was put down before its dropper moved elsewhere.

Writes OUT/model (config.json, model.safetensors, tokenizer), OUT/reading_base.json (the settings, the
loss curve, held-out EM by set) and OUT/data (the task sets); with `delta_rank`, OUT/reader-rR.safetensors,
the base as a low-rank difference from `delta_from` (models.delta), scored on the same held-out sets.
"""

from __future__ import annotations

import json
import random
import re
import statistics
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch

from perk_cli.config import BABI_FACTS, GENERATOR_LAYOUT, ModelSettings, PrepareSettings, PromptSettings, ReadingBaseSettings, TrainSettings
from perk_cli.data.babi import event_support
from perk_cli.data.schema import Task, read_split
from perk_cli.data.vocab import DROP_VERBS, MOVE_VERBS, TAKE_VERBS
from perk_cli.engine.batches import TokenBatch
from perk_cli.engine.losses import answer_loss, answer_scores
from perk_cli.errors import PerkError
from perk_cli.models.base import load_base, names_a_delta
from perk_cli.models.delta import make_delta, save_delta
from perk_cli.prepare import prepare
from perk_cli.prompts import encode_question
from perk_cli.training.in_context import in_context_batch, validate_in_context

StepCallback = Callable[[int, int, float], None]  # step, steps, answer loss
Say = Callable[[str], None]

TRAIN_LENGTHS = (None, 128)  # None: a clean story (no filler)
TEST_LENGTHS = (128, 256)


# Seeds of each subtask's sets: qa1 keeps the first attempt's (201-202 train, 211-212 test).
SEEDS = {"qa1": (201, 211), "qa2": (221, 231), "qa3": (241, 251), "recall": (261, 271)}
FACTS = BABI_FACTS
# recall (student records, one record a segment) is sized by its records: trained on databases of 3
# and 6, tested on 6 (reproduce.py's 1x) and 12.
RECORDS = {"train": (3, 6), "test": (6, 12)}


def _sizes(subtask: str, split: str) -> tuple:
    if subtask == "recall":
        return RECORDS[split]
    return TRAIN_LENGTHS if split == "train" else TEST_LENGTHS


def _label(subtask: str, size: int | None) -> str:
    if size is None:
        return "clean"
    return f"{size}rec" if subtask == "recall" else str(size)


RECITE_SEED_OFFSET = 5  # the recite layout's sets: a subtask's seeds + 5 (qa2: 226-227 train, 236-237 test)
RECITE = PromptSettings(answer_format="recite", max_answer_tokens=512)


def _settings(subtask: str, size: int | None, segment_tokens: int = 64, **fields) -> PrepareSettings:
    if subtask == "recall":
        return PrepareSettings(task="records", subtask="recall", records=size, **GENERATOR_LAYOUT, **fields)
    return PrepareSettings(task="babi", subtask=subtask, facts=FACTS[subtask], length=size,
                           segment_tokens=segment_tokens, **GENERATOR_LAYOUT, **fields)


def is_recite(key) -> bool:
    """Whether a task_sets key names a set in the recite layout."""
    return str(key).endswith("-recite")


_EVENT = re.compile(r"Event (\d+): (\w+) (.+?) the (\w+)(?: there)?\.")


def dropped_then_moved(task: Task) -> bool:
    """A qa2 story whose object was last put down, and whose dropper then moved on elsewhere: the answer is
    where it was dropped, not where the person who last held it is. Read from the story's events alone (not the
    gold support, which event_support replaces). The reading bases missed this case most (0 of 9 held out, against
    0.95 on the rest: experiments/LOG.md); about 6% of qa2 stories."""
    asked = re.fullmatch(r"Where is the (\w+)\?", task.question)
    if asked is None:
        return False
    events = sorted((int(n), who, verb, what) for n, who, verb, what in _EVENT.findall(" ".join(task.context)))
    last = None  # (event, person, a drop?) of the last take or drop of the object asked about
    for n, who, verb, what in events:
        if what == asked[1] and verb in (*TAKE_VERBS, *DROP_VERBS):
            last = (n, who, verb in DROP_VERBS)
    if last is None or not last[2]:
        return False
    moves = [(n, what) for n, who, verb, what in events if who == last[1] and verb in MOVE_VERBS]
    return bool(moves) and moves[-1][0] > last[0] and moves[-1][1] != task.answer


def step_tasks(rng: random.Random, pool: list[Task], recite_pool: list[Task], n: int, n_recite: int,
               hard_share: float = 0.0, hard_pools: tuple[list[Task], list[Task]] = ([], [])) -> list[tuple[Task, bool]]:
    """One step's (task, laid out as the recital?) draws: n - n_recite in context, then n_recite recited.
    With n_recite 0 the draw is rng.sample(pool, n), the batches of runs made before --recite-share.
    `hard_share` of each layout's draws (rounded) come from its dropped_then_moved stories (`hard_pools`:
    those of pool and of recite_pool, found once by the caller), the rest from the whole pool; with 0 the
    draws are those of runs made before --hard-share."""
    def draw(tasks: list[Task], hard: list[Task], k: int) -> list[Task]:
        k_hard = round(hard_share * k)
        return rng.sample(tasks, k - k_hard) + (rng.sample(hard, k_hard) if k_hard else [])

    return ([(t, False) for t in draw(pool, hard_pools[0], n - n_recite)]
            + [(t, True) for t in draw(recite_pool, hard_pools[1], n_recite)])


def recite_batch(tokenizer, task: Task, with_eos: bool = True) -> TokenBatch:
    """`task` as PERK's recite target lays it out, its recital the story's events (one-sentence segments:
    an event is a segment): the targets are the answer's tokens, and eos with `with_eos`."""
    events = event_support(task).support
    batch = encode_question(tokenizer, task.question, len(task.context), RECITE, task.answer, events)
    target = batch.answer_mask.clone()
    target[:, -1] |= with_eos
    return TokenBatch(batch.input_ids, batch.attention_mask, target, batch.answer_mask)


@torch.no_grad()
def recite_reading(model, tokenizer, tasks: list[Task]) -> dict:
    """The base reading the gold events in the recite layout: teacher-forced answer-token EM and loss."""
    call = lambda **kwargs: model(**kwargs)  # noqa: E731
    scores = [answer_scores(call, recite_batch(tokenizer, task, with_eos=False)) for task in tasks]
    return {"answer_em": sum(bool(exact.all()) for _, exact in scores) / len(scores),
            "answer_loss": sum(float(loss) for loss, _ in scores) / len(scores), "n": len(scores)}


POOL_SEED_STRIDE = 1000  # --pool N draws the training sets from seeds + 1000 N (qa2: 1221-1222, 1226-1227)


def task_sets(out: Path, train_tasks: int, test_tasks: int, model: str,
              subtasks: tuple[str, ...] = ("qa1",), recite: bool = False, pool: int = 0) -> tuple[dict, dict]:
    """Training sets per (subtask, size) and held-out test sets per (subtask, size), never trained on.
    Keys are lengths for qa1 alone (the first attempts' layout), else "qa2-128", "recall-6rec" and so on.
    With `recite`, each bAbI subtask also gets sets in one-sentence segments, keyed "<key>-recite".
    `pool` N > 0 draws fresh training sets (seeds + 1000 N, directories "...-poolN"); the test sets stay."""
    train, test = {}, {}
    for subtask in subtasks:
        train_seed, test_seed = SEEDS[subtask]
        train_seed += POOL_SEED_STRIDE * pool
        layouts = [("", "", 0, 64)]  # (key suffix, directory suffix, seed offset, segment tokens)
        if recite and subtask in FACTS:
            layouts.append(("-recite", "-s16", RECITE_SEED_OFFSET, 16))
        for suffix, dir_suffix, offset, segment_tokens in layouts:
            for split, n, seed, into in (("train", train_tasks, train_seed, train),
                                         ("test", test_tasks, test_seed, test)):
                for index, size in enumerate(_sizes(subtask, split)):
                    pool_suffix = f"-pool{pool}" if pool and split == "train" else ""
                    directory = out / "data" / f"{subtask}-{split}-{_label(subtask, size)}{dir_suffix}{pool_suffix}"
                    if not (directory / "prepare.json").is_file():
                        prepare(_settings(subtask, size, segment_tokens, model=model,
                                          train=n if split == "train" else 0, validation=0,
                                          test=n if split == "test" else 0, seed=seed + offset + index,
                                          out=str(directory)))
                    key = size if subtasks == ("qa1",) and not suffix else f"{subtask}-{_label(subtask, size)}{suffix}"
                    into[key] = read_split(directory, split)
    return train, test


def save_base(model, tokenizer, directory: Path) -> None:
    """A transformers directory: weights in safetensors (tied embedding handled), config without the
    GGUF quantization entry (save_pretrained refuses a GGUF-loaded model), tokenizer."""
    from safetensors.torch import save_model

    directory.mkdir(parents=True, exist_ok=True)
    save_model(model, str(directory / "model.safetensors"))
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tokenizer.save_pretrained(str(directory))


def in_context_runtime(model, tokenizer) -> SimpleNamespace:
    """What validate_in_context needs of a runtime, for a bare base (no LoRA, the default prompt)."""
    # train: validate_in_context reads train.eval_decode (the default: a base is scored by decoding)
    return SimpleNamespace(model=model, tokenizer=tokenizer,
                           config=SimpleNamespace(prompt=PromptSettings(), train=TrainSettings()),
                           device=torch.device("cpu"), max_positions=model.config.max_position_embeddings)


def held_out_scores(runtime, tasks: list[Task], recite: bool = False) -> dict:
    """The gate's figures on `tasks`: decoded in-context EM and loss (with `recite`: the teacher-forced
    reading of the gold events in the recite layout), the task count "n", and, where the set has
    dropped_then_moved stories, the same figure on those alone under "dropped_then_moved" ({"em", "n"})."""
    def scores(subset: list[Task]) -> dict:
        if recite:
            return recite_reading(runtime.model, runtime.tokenizer, subset)
        return validate_in_context(runtime, subset, budget=8)

    result = {**scores(tasks), "n": len(tasks)}
    hard = [task for task in tasks if dropped_then_moved(task)]
    if hard:
        result["dropped_then_moved"] = {"em": scores(hard)["answer_em" if recite else "val_em"], "n": len(hard)}
    return result


def evaluate_saved(out: Path, tasks_dir: Path, recite: bool = False) -> dict:
    """Score the saved base in context on a task directory's test split (with `recite`: its reading of
    the gold events in the recite layout); the result is returned and recorded in <out>/reading_base.json
    under held_out_in_context[<tasks dir>] (with `recite`, [<tasks dir> (recite layout)])."""
    if not (out / "model" / "config.json").is_file():
        raise PerkError(f"--out {out}: no saved base (model/config.json) to evaluate; train one first")
    model, tokenizer = load_base(ModelSettings(name=str(out / "model"), dtype="float32"))
    tasks = read_split(tasks_dir, "test")
    try:
        if recite:
            for task in tasks:
                event_support(task)
    except ValueError as exc:
        raise PerkError(f"--evaluate {tasks_dir}: {exc}")
    result = held_out_scores(in_context_runtime(model, tokenizer), tasks, recite)
    write_report(out, held_out={f"{tasks_dir} (recite layout)" if recite else str(tasks_dir): result})
    return {"base": str(out / "model"), "tasks": str(tasks_dir), "layout": "recite" if recite else "in context",
            **result}


def write_report(out: Path, held_out: dict | None = None, **fields) -> None:
    """Merge `fields` (and held-out results, by key) into <out>/reading_base.json."""
    path = out / "reading_base.json"
    report = json.loads(path.read_text()) if path.is_file() else {}
    report.update(fields)
    report.setdefault("held_out_in_context", {}).update(held_out or {})
    path.write_text(json.dumps(report, indent=2) + "\n")


def directory_sets(directory: Path) -> tuple[dict, dict]:
    """A prepared task directory's train split to train on and, as the gate's held-out set, its validation
    split (so choosing a recipe by the gate leaves the test split unread), or its test split if it has none."""
    if not (directory / "prepare.json").is_file() and not (directory / "train.jsonl").is_file():
        raise PerkError(f"--task {directory}: not a task directory (no prepare.json or train.jsonl); make one with "
                        "perk prepare")
    train = read_split(directory, "train")
    gate_split = "validation" if (directory / "validation.jsonl").is_file() else "test"
    gate = read_split(directory, gate_split) if (directory / f"{gate_split}.jsonl").is_file() else []
    for split, tasks in (("train", train), ("validation or test", gate)):
        if not tasks:
            raise PerkError(f"--task {directory}: its {split} split is empty; the reading base trains on train and is "
                            "gated on validation (or test)")
    return {directory.name: train}, {f"{directory.name}-{gate_split}": gate}


def _check_pools(settings: ReadingBaseSettings, train: dict, test: dict) -> tuple[list, list, tuple, dict, int]:
    """The two training pools and their hard stories, refused in one line where a step cannot be drawn."""
    try:  # every recite task's events one a segment, before any training
        for key, tasks in [*train.items(), *test.items()]:
            for task in tasks if is_recite(key) else []:
                event_support(task)
    except ValueError as exc:
        raise PerkError(f"--recite-share: {exc} (the recite sets are; with --model {settings.model} they are not one "
                        "sentence each)")
    pool = [t for key, tasks in train.items() if not is_recite(key) for t in tasks]
    recite_pool = [t for key, tasks in train.items() if is_recite(key) for t in tasks]
    n_recite = round(settings.recite_share * settings.tasks_per_step)
    hard_pools = ([t for t in pool if dropped_then_moved(t)], [t for t in recite_pool if dropped_then_moved(t)])
    hard_counts = {"in_context": len(hard_pools[0]), "recite": len(hard_pools[1])}
    for (layout, count), k in zip(hard_counts.items(), (settings.tasks_per_step - n_recite, n_recite)):
        if count < round(settings.hard_share * k):
            raise PerkError(f"--hard-share {settings.hard_share}: the {layout} pool holds {count} dropped-then-moved "
                            "stories, fewer than a step draws; raise --train-tasks")
    return pool, recite_pool, hard_pools, hard_counts, n_recite


def _recipe(settings: ReadingBaseSettings, hard_counts: dict) -> dict:
    """What reading_base.json records of the run: the settings and the seeds of every set it drew."""
    subtasks, stride = settings.subtasks, POOL_SEED_STRIDE * settings.pool
    recite = settings.recite_share > 0
    if settings.task is not None:
        return {**settings.model_dump(mode="json"), "trainable": "all parameters", "loss": "answer tokens + eos",
                "dtype": "float32 weights, bf16 autocast" if settings.bf16 else "float32"}
    return {**settings.model_dump(mode="json"),
            "train_lengths": [length or "clean" for length in TRAIN_LENGTHS],
            "facts": {sub: FACTS[sub] for sub in subtasks if sub in FACTS},
            "records": {sub: RECORDS for sub in subtasks if sub == "recall"},
            "hard_tasks_in_pool": hard_counts if settings.hard_share else None,
            "trainable": "all parameters", "loss": "answer tokens + eos",
            "train_seeds": {sub: [SEEDS[sub][0] + stride + i for i in range(len(_sizes(sub, "train")))]
                            for sub in subtasks},
            "recite_seeds": ({sub: {split: [seed + (stride if split == "train" else 0) + RECITE_SEED_OFFSET + i
                                            for i in range(len(_sizes(sub, split)))]
                                    for split, seed in zip(("train", "test"), SEEDS[sub])}
                              for sub in subtasks if sub in FACTS} if recite else None),
            "dtype": "float32 weights, bf16 autocast" if settings.bf16 else "float32"}


def gate_line(key, result: dict) -> str:
    """One held-out set's figure (held_out_scores's) as the command prints it."""
    hard = result.get("dropped_then_moved")
    hard_text = f"; dropped then moved: {hard['em']:.3f} of {hard['n']}" if hard else ""
    if is_recite(key):
        return (f"held-out reading of the gold events in the recite layout, {key}: {result['answer_em']:.3f} "
                f"(answer loss {result['answer_loss']:.4f}, {result['n']} tasks{hard_text})")
    return (f"held-out in-context EM, {key}{' tokens' if isinstance(key, int) else ''}: {result['val_em']:.3f} "
            f"(answer loss {result['val_loss']:.4f}, {result['n']} tasks{hard_text})")


def train_reading_base(settings: ReadingBaseSettings, say: Say = print, on_step: StepCallback | None = None) -> dict:
    """Fine-tune `settings.model` into a reading base under `settings.out` and gate it (see the module's
    docstring); returns the report reading_base.json holds."""
    out = Path(settings.out)
    if settings.delta_rank is not None and names_a_delta(settings.delta_from):  # refused before minutes of work
        raise PerkError(f"--delta-from {settings.delta_from}: is itself a delta, and a delta must name a full base; "
                        "pass the base that one applies to (e.g. smollm2)")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    subtasks, recite = tuple(settings.subtasks), settings.recite_share > 0
    if settings.task is not None:
        train, test = directory_sets(Path(settings.task))
    else:
        train, test = task_sets(out, settings.train_tasks, settings.test_tasks, settings.model, subtasks, recite,
                                settings.pool)
    pool, recite_pool, hard_pools, hard_counts, n_recite = _check_pools(settings, train, test)
    (out / "reading_base.json").unlink(missing_ok=True)  # a new training run (every check passed): a new report
    model, tokenizer = load_base(ModelSettings(name=settings.model, dtype="float32"))
    runtime = in_context_runtime(model, tokenizer)
    call = lambda **kwargs: model(**kwargs)  # noqa: E731
    model.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)
    rng = random.Random(settings.seed)
    batches = {False: lambda task: in_context_batch(runtime, task), True: lambda task: recite_batch(tokenizer, task)}
    curve, started = [], time.monotonic()
    for step in range(1, settings.steps + 1):
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for task, recited in step_tasks(rng, pool, recite_pool, settings.tasks_per_step, n_recite,
                                        settings.hard_share, hard_pools):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=settings.bf16):
                loss = answer_loss(call, batches[recited](task))
            (loss / settings.tasks_per_step).backward()
            total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        curve.append({"step": step, "answer_loss": total / settings.tasks_per_step,
                      "seconds": round(time.monotonic() - started, 1)})
        if on_step is not None:
            on_step(step, settings.steps, curve[-1]["answer_loss"])
    model.requires_grad_(False)
    save_base(model, tokenizer, out / "model")
    write_report(out, recipe=_recipe(settings, hard_counts), train_seconds=round(time.monotonic() - started),
                 curve=curve)  # kept even if the evaluation fails
    # The gate, measured on the saved directory as `--model DIR` loads it.
    reloaded, reloaded_tokenizer = load_base(ModelSettings(name=str(out / "model"), dtype="float32"))
    runtime.model, runtime.tokenizer = reloaded, reloaded_tokenizer
    for key, tasks in test.items():
        result = held_out_scores(runtime, tasks, is_recite(key))
        say(gate_line(key, result))
        write_report(out, held_out={str(key): result})
    if settings.delta_rank is not None:
        save_reader_delta(settings, reloaded, test, say)
    return json.loads((out / "reading_base.json").read_text())


def save_reader_delta(settings: ReadingBaseSettings, tuned, test: dict, say: Say) -> Path:
    """OUT/reader-rR.safetensors: the tuned base as its rank-R difference from `delta_from`, and its gate on
    the in-context held-out sets beside the full base's (recorded under "delta" in reading_base.json)."""
    out, rank = Path(settings.out), settings.delta_rank
    path = out / f"reader-r{rank}.safetensors"
    source, _ = load_base(ModelSettings(name=settings.delta_from, dtype="float32"))
    tensors, errors = make_delta(source, tuned, rank)
    del source
    save_delta(path, tensors, base=settings.delta_from, rank=rank, report=errors,
               note=f"made by perk reading-base from {out / 'model'}")
    kinds: dict[str, list[float]] = {}
    for name, error in errors.items():
        kinds.setdefault(name.rsplit(".", 2)[-2], []).append(error)
    report = {"file": str(path), "from": settings.delta_from, "rank": rank, "bytes": path.stat().st_size,
              "tensors_changed": len(errors),
              "relative_error": {kind: {"n": len(v), "mean": round(statistics.fmean(v), 4), "max": round(max(v), 4)}
                                 for kind, v in sorted(kinds.items())}, "held_out_in_context": {}}
    say(f"{path}: {report['bytes'] / 1e6:.1f} MB, {len(errors)} changed tensors, rank {rank}")
    model, tokenizer = load_base(ModelSettings(name=str(path), dtype="float32"))
    for key, tasks in test.items():
        if not is_recite(key):
            result = held_out_scores(in_context_runtime(model, tokenizer), tasks)
            report["held_out_in_context"][str(key)] = result
            say("delta: " + gate_line(key, result))
    write_report(out, delta=report)
    return path
