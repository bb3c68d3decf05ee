"""`perk prepare`: turn published task formats, generic JSONL, Hub datasets or generated tasks into
one validated task directory (train/validation/test.jsonl + prepare.json).

    perk prepare --task babi --subtask qa1 --length 512 -o data/qa1-512
"""

from __future__ import annotations

import platform
import random
import re
import statistics
import time
from pathlib import Path
from typing import Callable

from pydantic import ValidationError

from perk_cli import __version__
from perk_cli.config import MIX, SUBTASKS, TASK_NAMES, PrepareSettings
from perk_cli.data import babi, records
from perk_cli.data.filler import Filler
from perk_cli.data.mix import mix_directories
from perk_cli.data.open_vocab import Vocabulary, vocabulary
from perk_cli.data.readers import babilong, make_segmenter, read_source
from perk_cli.data.schema import SPLITS, Task, TaskMeta, write_prepared
from perk_cli.data.segment import segment_text
from perk_cli.errors import PerkError
from perk_cli.models.base import hub_reachable, load_tokenizer

Progress = Callable[[int, int], None]  # (done, total)


def _count(tokenizer, texts: list[str]) -> list[int]:
    if not texts:
        return []
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _babi_task(settings: PrepareSettings, tokenizer, rng: random.Random, filler: Filler, ident: str,
               length: int | None, words: Vocabulary) -> Task:
    n_facts = settings.facts or babi.DEFAULT_FACTS[settings.subtask]
    story = babi.make_story(settings.subtask, n_facts, rng, words, settings.order_tags)
    if filler.sentences is not None:  # real text may name a story's person: such a sentence is skipped
        filler = _Avoiding(filler, story.people)
    n_filler = settings.distractors
    if length is not None:
        total = sum(_count(tokenizer, story.facts))
        pool: list[str] = []
        n_filler = 0
        while total < length:
            batch = [filler.next() for _ in range(64)]
            for sentence, count in zip(batch, _count(tokenizer, batch)):
                if total + count / 2 >= length:  # stop at whichever side is closer
                    total = length
                    break
                pool.append(sentence)
                total += count
        n_filler = len(pool)
        filler = _Replay(pool)
    sentences, first_support = babi.lay_out(story, filler, n_filler, settings.position, rng)
    text = " ".join(sentences)
    segments = segment_text(text, tokenizer, settings.segment_tokens)
    offset = len(" ".join(sentences[:first_support])) + (1 if first_support else 0)
    return Task(
        id=ident, context=segments, question=story.question, answer=story.answer,
        support=[story.facts[i] for i in story.support],
        meta=TaskMeta(family=f"babi/{settings.subtask}", length_tokens=sum(_count(tokenizer, segments)),
                      position=round(offset / max(len(text), 1), 4), facts=n_facts),
    )


class _Avoiding:
    """A filler that skips sentences naming any of `people` (so filler never places a story's person)."""

    def __init__(self, filler: Filler, people: list[str]):
        self.filler = filler
        self.names = re.compile(r"\b(" + "|".join(map(re.escape, people)) + r")\b")

    def next(self) -> str:
        for _ in range(1000):
            sentence = self.filler.next()
            if not self.names.search(sentence):
                return sentence
        raise PerkError(f"the filler names {self.names.pattern} in 1,000 sentences running; use another --filler")


class _Replay:
    """A filler that hands out a precomputed list (so length control counts exactly what is used)."""

    def __init__(self, sentences: list[str]):
        self.sentences, self.index = sentences, 0

    def next(self) -> str:
        self.index += 1
        return self.sentences[self.index - 1]


def _records_task(settings: PrepareSettings, tokenizer, rng: random.Random, per_record: float, ident: str,
                  length: int | None, words: Vocabulary) -> Task:
    n = settings.records or (max(2, round(length / per_record)) if length else 20)
    # The closed layout keeps the records' own name lists (vocab.FIRST_NAMES), not the bAbI people.
    db = records.make_database(n, rng, words if settings.vocab == "open" else None)
    question, answer, relevant = records.make_question(settings.subtask, db, rng)
    segments = [s.record() for s in db]
    return Task(
        id=ident, context=segments, question=question, answer=answer,
        support=[segments[i] for i in relevant] if len(relevant) <= 2 else None,
        meta=TaskMeta(family=f"records/{settings.subtask}", length_tokens=sum(_count(tokenizer, segments)),
                      position=round(min(relevant) / max(n - 1, 1), 4), records=n),
    )


def _generate(settings: PrepareSettings, tokenizer, progress: Progress | None) -> dict[str, list[Task]]:
    counts = {"train": settings.train, "validation": settings.validation, "test": settings.test}
    total, done = sum(counts.values()), 0
    per_record = 0.0
    if settings.task == "records":
        sample = records.make_database(50, random.Random(0))
        per_record = statistics.mean(_count(tokenizer, [s.record() for s in sample]))
    splits: dict[str, list[Task]] = {}
    for split, n in counts.items():
        if n == 0:
            continue
        # One independent stream a split: changing --test never changes the training set.
        rng = random.Random(f"{settings.seed}/{settings.task}/{settings.subtask}/{split}")
        filler = Filler(random.Random(f"{settings.seed}/filler/{split}"), settings.filler, split)
        words = vocabulary(settings.vocab, split)
        tasks = []
        for i in range(n):
            ident = f"{settings.subtask}-{split}-{i:05d}"
            if settings.task == "babi":
                tasks.append(_babi_task(settings, tokenizer, rng, filler, ident, settings.length_of(i), words))
            else:
                tasks.append(_records_task(settings, tokenizer, rng, per_record, ident, settings.length_of(i), words))
            done += 1
            if progress:
                progress(done, total)
        splits[split] = tasks
    return splits


def _read_hub(settings: PrepareSettings, segmenter) -> dict[str, list[Task]]:
    if not hub_reachable():
        raise PerkError(f"--hub {settings.hub}: the Hugging Face Hub is unreachable (offline?); download the "
                        "dataset elsewhere and pass the files with --input")
    import datasets

    try:
        rows = datasets.load_dataset(settings.hub, settings.hub_config, split=settings.hub_split)
    except Exception as exc:  # datasets raises many types; the user needs the first line only
        raise PerkError(f"--hub {settings.hub}: cannot load ({str(exc).splitlines()[0]})")
    family = f"babilong/{settings.hub_split or settings.hub_config or 'hub'}"
    tasks = [t for i, row in enumerate(rows) for t in babilong(dict(row), f"hub-{i}", family, segmenter)]
    return {settings.split: tasks}


def _lengths(tasks: list[Task], tokenizer) -> list[int]:
    missing = [t for t in tasks if t.meta is None or t.meta.length_tokens is None]
    for task in missing:
        task.meta = task.meta or TaskMeta()
        task.meta.length_tokens = sum(_count(tokenizer, task.context))
    return [t.meta.length_tokens for t in tasks]


def prepare(settings: PrepareSettings, progress: Progress | None = None) -> dict:
    """Build and write the task directory; return the summary written to prepare.json."""
    tokenizer = load_tokenizer(settings.model)
    if settings.task in ("babi", "records"):
        splits = _generate(settings, tokenizer, progress)
        source = f"generator:{settings.task}/{settings.subtask}"
    elif settings.task == MIX:
        directories = [Path(p.strip()) for p in settings.input.split(",") if p.strip()]
        splits, sources = mix_directories(directories)
        source = f"mix:{','.join(map(str, directories))}"
    elif settings.hub is not None:
        splits = _read_hub(settings, make_segmenter(tokenizer, settings.segment_tokens))
        source = f"hub:{settings.hub}"
    else:
        splits = read_source(settings.task, Path(settings.input), make_segmenter(tokenizer, settings.segment_tokens),
                             settings.split)
        source = f"file:{settings.input}"
    summary = {"perk_version": __version__, "source": source, "settings": settings.model_dump(mode="json"),
               "counts": {}, "length_tokens": {}}
    if settings.task in ("babi", "records") and settings.filler == "prose":
        summary["python"] = platform.python_version()  # the prose corpus is this Python's documentation
    if settings.task == MIX:
        summary["sources"] = sources
    for split in SPLITS:
        if split in splits:
            lengths = _lengths(splits[split], tokenizer)
            summary["counts"][split] = len(splits[split])
            summary["length_tokens"][split] = {"min": min(lengths), "mean": round(statistics.mean(lengths), 1),
                                               "max": max(lengths)}
    write_prepared(Path(settings.out), splits, summary)
    return summary


def task_directory(task: str, out: Path, model: str, seed: int, rank: int = 0) -> Path:
    """A prepared directory, or a task name ('babi', 'babi:qa2', 'records:relation') generated into out/data."""
    path = Path(task)
    if path.is_dir():
        return path
    family, _, subtask = task.partition(":")
    if family not in SUBTASKS or (path.suffix or "/" in task):
        if path.exists() or "/" in task or path.suffix:
            raise PerkError(f"--task {task}: not a task directory (prepare one with `perk prepare`)")
        raise PerkError(f"--task {task}: unknown task; give a directory from `perk prepare` or one of "
                        f"{', '.join(TASK_NAMES)}")
    subtask = subtask or SUBTASKS[family][0]
    data = out / "data"
    try:
        settings = PrepareSettings(task=family, subtask=subtask, out=str(data), model=model, seed=seed)
    except ValidationError as exc:
        raise PerkError(f"--task {task}: {exc.errors()[0]['msg'].removeprefix('Value error, ')}")
    if rank != 0:  # under torchrun rank 0 generates; the others wait for its atomic rename
        for _ in range(6000):
            if (data / "prepare.json").is_file():
                break
            time.sleep(0.1)
    elif not (data / "prepare.json").is_file():
        prepare(settings)
    return data
