"""An evaluation's folder, written as it goes so that a stopped `perk eval` keeps its work and resumes.

    folder = EvalFolder.open(out, identity, resume=True)   # refuses a folder holding another evaluation
    folder.save_state(plain_ttt=..., notes=...)           # before the first task: an unwritable folder fails here
    for task in folder.remaining(tasks): ... folder.append(rows)   # one task's rows, flushed to disk
    folder.finish(report)                                   # metrics.json (the plot is the caller's)

`eval.json` records what the evaluation is (its settings less the output folder, the checkpoint's
fingerprint, the ids of its tasks in order) and what was chosen before the first task (plain TTT's
learning rate, the notes), so a resumed run scores the remaining tasks exactly as the first would have
and reuses those choices. `predictions.jsonl` gets each task's rows in one write, flushed and synced;
on resume a task counts as scored only when all its rows are there (a torn last line is dropped), and
the file is rewritten with those tasks before the next row is appended.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from perk_cli.errors import PerkError, os_error_line
from perk_cli.files import staged_file

STATE, ROWS, METRICS, PLOT = "eval.json", "predictions.jsonl", "metrics.json", "accuracy_vs_length.png"
PACKAGE = Path(__file__).resolve().parents[1]


def _inside_package(path: Path) -> bool:
    resolved = path.resolve()
    return resolved == PACKAGE or PACKAGE in resolved.parents


def _write_json(path: Path, data: dict) -> None:
    try:
        with staged_file(path) as tmp:
            tmp.write_text(json.dumps(data, indent=2) + "\n")
    except OSError as exc:
        raise PerkError(f"--out {path.parent}: cannot write {path.name} ({os_error_line(exc)})")


def _read_rows(path: Path) -> list[dict]:
    """The rows of a predictions file; a last line cut by a stop mid-write is dropped."""
    rows = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break  # torn by the stop
            raise PerkError(f"{path}:{number}: not a JSON row; the evaluation's predictions were edited, "
                            "so it cannot be resumed: pass --overwrite to start again")
    return rows


def _first_difference(saved: dict, now: dict, prefix: str = "") -> str | None:
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = _first_difference(a, b, f"{prefix}{key}.")
            if found:
                return found
        elif a != b:
            return f"{prefix}{key} (then {a!r}, now {b!r})"
    return None


@dataclass
class EvalFolder:
    """The output folder of one evaluation: its identity, the rows scored so far, and their file."""

    path: Path
    identity: dict  # settings (less the folder), checkpoint fingerprint, task ids in order
    methods: int  # rows a scored task has
    rows: list[dict] = field(default_factory=list)  # of the tasks already scored, in task order
    state: dict = field(default_factory=dict)  # what was chosen before the first task (plain TTT, notes)

    @classmethod
    def open(cls, path: Path, identity: dict, methods: int, resume: bool = False,
             overwrite: bool = False) -> "EvalFolder":
        """The folder, checked before any work: inside the installed package, or holding another
        evaluation (or this one, without --resume), it is refused; with `overwrite` its files go."""
        if _inside_package(path):
            raise PerkError(f"--out {path}: inside the installed perk package; choose a folder outside it "
                            "(the default is under runs/)")
        if path.exists() and not path.is_dir():
            raise PerkError(f"--out {path}: is a file; give a folder")
        files = [path / name for name in (STATE, ROWS, METRICS, PLOT)]
        held = [f for f in files if f.exists()]
        folder = cls(path, identity, methods)
        if held and overwrite:
            for f in held:
                f.unlink()
        elif held and not resume:
            scored = len(_read_rows(path / ROWS)) // max(1, methods) if (path / ROWS).is_file() else 0
            raise PerkError(f"--out {path}: holds an evaluation ({scored} tasks scored); pass --resume to continue "
                            "it, --overwrite to start again, or another --out")
        elif held:
            folder._load_previous()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PerkError(f"--out {path}: cannot create the folder ({os_error_line(exc)})")
        return folder

    def _load_previous(self) -> None:
        if not (self.path / STATE).is_file():
            raise PerkError(f"--out {self.path}: holds predictions but no {STATE} (an evaluation by an older perk, "
                            "or edited), so it cannot be resumed; pass --overwrite to start again")
        try:
            saved = json.loads((self.path / STATE).read_text(encoding="utf-8"))
            identity = saved["identity"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise PerkError(f"{self.path / STATE}: not an evaluation state file; pass --overwrite to start again")
        difference = _first_difference(identity, self.identity)
        if difference:
            raise PerkError(f"--resume: the evaluation in {self.path} differs in {difference}; rerun it with the "
                            "same settings, or choose another --out")
        self.state = saved.get("state", {})
        rows = _read_rows(self.path / ROWS) if (self.path / ROWS).is_file() else []
        by_task: dict[str, list[dict]] = {}
        for row in rows:
            by_task.setdefault(row.get("id"), []).append(row)
        kept = []
        for task_id in identity["task_ids"]:  # scored tasks form a prefix of the task order
            if len(by_task.get(task_id, [])) != self.methods:
                break
            kept += by_task[task_id]
        self.rows = kept
        self._rewrite_rows()

    def _rewrite_rows(self) -> None:
        try:
            with staged_file(self.path / ROWS) as tmp:
                tmp.write_text("".join(json.dumps(row) + "\n" for row in self.rows), encoding="utf-8")
        except OSError as exc:
            raise PerkError(f"--out {self.path}: cannot write {ROWS} ({os_error_line(exc)})")

    @property
    def scored(self) -> int:
        return len(self.rows) // max(1, self.methods)

    def save_state(self, **state) -> None:
        """Record the evaluation and what was chosen before its first task; also the write test of --out."""
        self.state = {**self.state, **state}
        _write_json(self.path / STATE, {"identity": self.identity, "state": self.state})

    def append(self, rows: list[dict]) -> None:
        """One task's rows, in one write, flushed and synced: a stop after this keeps them."""
        text = "".join(json.dumps(row) + "\n" for row in rows)
        try:
            with open(self.path / ROWS, "a", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise PerkError(f"--out {self.path}: cannot append to {ROWS} ({os_error_line(exc)}); the tasks scored "
                            "before are kept: free the space, then rerun with --resume")
        self.rows += rows

    def finish(self, report: dict) -> None:
        _write_json(self.path / METRICS, report)
