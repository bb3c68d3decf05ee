"""The task record every command reads, and JSON Lines reading/writing with line-numbered errors.

A split file holds one `Task` a line. A prepared directory holds `train.jsonl`, `validation.jsonl`,
`test.jsonl` (any may be absent) and `prepare.json` describing how it was made.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from perk_cli.errors import PerkError
from perk_cli.files import read_text, staged_directory

SPLITS = ("train", "validation", "test")


class TaskMeta(BaseModel):
    model_config = ConfigDict(extra="allow")

    family: str | None = Field(None, description="e.g. babi/qa1, records/recall, babilong/qa2.")
    length_tokens: int | None = Field(None, ge=0, description="Context length in tokens of the tokenizer used.")
    position: float | None = Field(
        None, ge=0, le=1, description="Where the first supporting fact sits: 0 = start, 1 = end."
    )


class Task(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    context: list[str] = Field(min_length=1, description="Segments of the document, in order.")
    question: str = Field(min_length=1)
    answer: str
    support: list[str] | None = None
    meta: TaskMeta | None = None

    @field_validator("context")
    @classmethod
    def _no_empty_segments(cls, value: list[str]) -> list[str]:
        if any(not s.strip() for s in value):
            raise ValueError("context segments must not be empty")
        return value


def describe_validation_error(error: ValidationError) -> str:
    first = error.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "record"
    return f"field '{field}': {first['msg'].lower()}"


def iter_json_records(path: Path):
    """(line number, object) for a JSON Lines file, or the whole file if it is one JSON value.

    A file holding one pretty-printed object (as the official samples are) yields it once with line 1;
    a file holding a JSON list yields each element.
    """
    text = read_text(path)
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = None  # not one JSON document: read it as JSON Lines
        if isinstance(value, list):
            for item in value:
                yield 1, item
            return
        if value is not None:
            yield 1, value
            return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            raise PerkError(f"{path}:{number}: not valid JSON ({exc.msg}, column {exc.colno})")


def read_tasks(path: Path) -> list[Task]:
    tasks = []
    for number, record in iter_json_records(path):
        if not isinstance(record, dict):
            raise PerkError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        try:
            tasks.append(Task.model_validate(record))
        except ValidationError as exc:
            raise PerkError(f"{path}:{number}: {describe_validation_error(exc)}")
    return tasks


def read_split(directory: Path, split: str) -> list[Task]:
    """Tasks of one split of a prepared directory."""
    if not directory.is_dir():
        raise PerkError(f"--task {directory}: no such task directory; run `perk prepare` first")
    path = directory / f"{split}.jsonl"
    if not path.is_file():
        present = ", ".join(s for s in SPLITS if (directory / f"{s}.jsonl").is_file()) or "none"
        raise PerkError(f"{path}: split '{split}' not found (splits present: {present})")
    return read_tasks(path)


def write_prepared(out: Path, splits: dict[str, list[Task]], info: dict) -> None:
    """Write split files and prepare.json atomically: a temporary directory renamed into place.

    An existing output directory is replaced only once the new one is complete.
    """
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and not out.is_dir():
        raise PerkError(f"--out {out}: exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not (out / "prepare.json").is_file():
        raise PerkError(f"--out {out}: directory is not empty and was not made by `perk prepare`; "
                        "choose a new directory")
    with staged_directory(out) as staging:
        for split, tasks in splits.items():
            with open(staging / f"{split}.jsonl", "w", encoding="utf-8") as f:
                for task in tasks:
                    f.write(task.model_dump_json(exclude_none=True) + "\n")
        (staging / "prepare.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
