"""Readers of the task formats the PERK authors published, and of generic JSON Lines.

Each reader takes one record (a dict) and returns Task records; `read_source` walks a file or a
directory, accepting both shapes the official data comes in: one pretty-printed object a file, and
JSON Lines of the same records. Errors name the file, the line and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from pydantic import ValidationError

from perk_cli.data.schema import SPLITS, Task, TaskMeta, describe_validation_error, iter_json_records
from perk_cli.data.segment import segment_text
from perk_cli.errors import PerkError

PLACEHOLDER = "..."
STUDENT_FIELDS = ("Student Id", "Student Name", "Year", "School", "Major", "Grade")


class RecordError(ValueError):
    """A problem with one record; the caller adds the file and line."""


def _require(record: dict, key: str, kinds=(str,)):
    if key not in record:
        raise RecordError(f"field '{key}': missing")
    value = record[key]
    if not isinstance(value, kinds):
        raise RecordError(f"field '{key}': expected {' or '.join(k.__name__ for k in kinds)}")
    return value


def _context(record: dict, key: str, segmenter: Callable[[str], list[str]]) -> list[str]:
    value = _require(record, key, (str, list))
    segments = segmenter(value) if isinstance(value, str) else value
    if not all(isinstance(s, str) for s in segments):
        raise RecordError(f"field '{key}': every segment must be a string")
    segments = [s for s in segments if s.strip()]
    if not segments:
        raise RecordError(f"field '{key}': empty context")
    return segments


def _support(record: dict) -> list[str] | None:
    support = record.get("support")
    if support is not None and not (isinstance(support, list) and all(isinstance(s, str) for s in support)):
        raise RecordError("field 'support': expected a list of strings (the supporting facts)")
    return support


def _position(segments: list[str], support: list[str] | None) -> float | None:
    if not support:
        return None
    text = " ".join(segments)
    found = [text.find(s) for s in support if s and text.find(s) >= 0]
    return round(min(found) / max(len(text), 1), 4) if found else None


def babilong(record: dict, ident: str, family: str, segmenter) -> list[Task]:
    segments = _context(record, "context" if "context" in record else "input", segmenter)
    answer = record.get("answer", record.get("target"))
    if not isinstance(answer, str):
        raise RecordError("field 'answer': missing")
    support = _support(record)
    return [Task(id=str(record.get("id", ident)), context=segments, question=_require(record, "question"),
                 answer=answer, support=support, meta=TaskMeta(family=family, position=_position(segments, support)))]


def student_record_segment(entry: dict) -> str:
    missing = [f for f in STUDENT_FIELDS if f not in entry]
    if missing:
        raise RecordError(f"field 'database': a record lacks '{missing[0]}'")
    return (f"Student {entry['Student Id']}, Name: {entry['Student Name']}, Year: {entry['Year']}, "
            f"School: {entry['School']}, Major: {entry['Major']}, Grade: {entry['Grade']}")


def student_records(record: dict, ident: str, family: str, segmenter) -> list[Task]:
    database = _require(record, "database", (list,))
    wrong = next((e for e in database if e != PLACEHOLDER and not isinstance(e, dict)), None)
    if wrong is not None:
        raise RecordError(f"field 'database': entries must be student objects ({', '.join(STUDENT_FIELDS)}), "
                          f"got {wrong!r}")
    segments = [student_record_segment(e) for e in database if e != PLACEHOLDER]
    if not segments:
        raise RecordError("field 'database': empty context")
    tasks = []
    for k, item in enumerate(_require(record, "questions", (list,))):
        if item == PLACEHOLDER:
            continue
        if not isinstance(item, dict):
            raise RecordError(f"field 'questions.{k}': expected an object")
        tasks.append(Task(id=f"{record.get('id', ident)}-q{k}", context=segments,
                          question=_require(item, "question"), answer=str(_require(item, "answer", (str, int, float))),
                          meta=TaskMeta(family=family)))
    return tasks


def longgorilla(record: dict, ident: str, family: str, segmenter) -> list[Task]:
    segments = _context(record, "context", segmenter)
    meta = TaskMeta(family=family)
    if isinstance(record.get("location"), str):
        meta.location = record["location"]
    return [Task(id=str(record.get("id", ident)), context=segments, question=_require(record, "question"),
                 answer=_require(record, "answer"), meta=meta)]


def generic(record: dict, ident: str, family: str, segmenter) -> list[Task]:
    segments = _context(record, "context", segmenter)
    support = _support(record)
    return [Task(id=str(record.get("id", ident)), context=segments, question=_require(record, "question"),
                 answer=str(_require(record, "answer", (str, int, float))), support=support,
                 meta=TaskMeta(family=record.get("family", family), position=_position(segments, support)))]


READERS = {"babilong": babilong, "student-records": student_records, "longgorilla": longgorilla,
           "jsonl": generic}


def _family(task: str, path: Path) -> str:
    stem = path.stem.replace("allgregation", "aggregation")  # misspelt upstream
    if stem in SPLITS:
        stem = path.parent.name
    return f"{task}/{stem}"


def read_file(task: str, path: Path, segmenter) -> list[Task]:
    reader = READERS[task]
    tasks = []
    for number, record in iter_json_records(path):
        if not isinstance(record, dict):
            raise PerkError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        try:
            tasks.extend(reader(record, f"{path.stem}-{number}", _family(task, path), segmenter))
        except RecordError as exc:
            raise PerkError(f"{path}:{number}: {exc}")
        except ValidationError as exc:
            raise PerkError(f"{path}:{number}: {describe_validation_error(exc)}")
    if not tasks:
        raise PerkError(f"{path}: no tasks found")
    return tasks


def read_source(task: str, path: Path, segmenter, split: str) -> dict[str, list[Task]]:
    """Tasks by split: a directory with train/validation/test.jsonl keeps its splits; any other file
    or directory of *.json / *.jsonl files becomes the split `split`."""
    if not path.exists():
        raise PerkError(f"--input {path}: no such file or directory")
    if path.is_file():
        return {split: read_file(task, path, segmenter)}
    split_files = {s: path / f"{s}.jsonl" for s in SPLITS if (path / f"{s}.jsonl").is_file()}
    if split_files:
        return {s: read_file(task, f, segmenter) for s, f in split_files.items()}
    files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl") and p.is_file())
    if not files:
        raise PerkError(f"--input {path}: directory has no .json or .jsonl files")
    return {split: [t for f in files for t in read_file(task, f, segmenter)]}


def make_segmenter(tokenizer, segment_tokens: int):
    return lambda text: segment_text(text, tokenizer, segment_tokens)
