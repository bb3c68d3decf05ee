"""Several prepared task directories joined into one (`perk prepare --task mix --input A,B,...`).

Each split interleaves its sources task by task (A0, B0, C0, A1, B1, ...; a source that runs out drops
out), so any prefix of a split, and any batch a trainer draws from it, holds every kind of question.
"""

from __future__ import annotations

import json
from pathlib import Path

from perk_cli.data.schema import SPLITS, Task, read_split
from perk_cli.errors import PerkError


def source_settings(directory: Path) -> dict:
    """A prepared directory's settings (its prepare.json), or a one-line error naming it."""
    info = directory / "prepare.json"
    if not directory.is_dir() or not info.is_file():
        raise PerkError(f"--input {directory}: not a task directory from `perk prepare` (no prepare.json)")
    try:
        return json.loads(info.read_text(encoding="utf-8")).get("settings", {})
    except json.JSONDecodeError as exc:
        raise PerkError(f"{info}: not valid JSON ({exc.msg}); prepare the directory again")


def interleave(sources: list[list[Task]]) -> list[Task]:
    """Task i of every source in turn, until all are spent."""
    longest = max((len(tasks) for tasks in sources), default=0)
    return [tasks[i] for i in range(longest) for tasks in sources if i < len(tasks)]


def mix_directories(directories: list[Path]) -> tuple[dict[str, list[Task]], dict[str, dict]]:
    """(every split present in any source, interleaved; each source's settings by directory). Refuses
    sources cut by different tokenizers; where two sources share task ids (two seeds of one subtask), every
    id is prefixed by its directory's name."""
    settings = {str(d): source_settings(d) for d in directories}
    models = {d: one.get("model") for d, one in settings.items()}
    if len(set(models.values())) > 1:
        listed = ", ".join(f"{d} ({m})" for d, m in models.items())
        raise PerkError(f"--input: the directories were prepared with different --model tokenizers ({listed}); "
                        "prepare them with one")
    read = {split: [read_split(d, split) if (d / f"{split}.jsonl").is_file() else [] for d in directories]
            for split in SPLITS}
    ids = [task.id for per_source in read.values() for tasks in per_source for task in tasks]
    if len(set(ids)) < len(ids):  # e.g. two seeds of one subtask: name each task by its directory too
        names = [d.name for d in directories]
        if len(set(names)) < len(names):
            raise PerkError("--input: the directories share task ids and folder names; give them distinct names")
        for per_source in read.values():
            for directory, tasks in zip(directories, per_source):
                for task in tasks:
                    task.id = f"{directory.name}/{task.id}"
    splits = {split: interleave(per_source) for split, per_source in read.items() if any(per_source)}
    if not splits:
        raise PerkError("--input: none of the directories has a train, validation or test split")
    return splits, settings
