"""The folder of memory files a server serves: ids, listing, reading one's metadata, deleting.

A memory's id is its file name without `.safetensors`: letters, digits, `-`, `_` and `.` (not first), at
most 64, so an id can never name a path outside the folder. Files are written by `Memory.save` (a hidden
staging file renamed into place), so a server killed mid-write leaves only a hidden `.ID.safetensors.*`
file, never a partial memory; `MemoryStore` removes those when it opens the folder. A memory file copied
into the folder is served as it is; a served memory is an ordinary file that `perk ask` reads.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

from safetensors import SafetensorError, safe_open

from perk_cli.errors import PerkError

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
SUFFIX = ".safetensors"


class UnknownMemory(KeyError):
    """No memory of that id in the store."""


class BadMemoryId(ValueError):
    """An id that is not a plain name (a path, `..`, too long, odd characters)."""


def check_id(memory_id: str) -> str:
    if not ID_PATTERN.fullmatch(memory_id) or ".." in memory_id:
        raise BadMemoryId(f"memory id {memory_id!r}: use letters, digits, '-', '_' and '.' (not first, no '..'), "
                          "at most 64")
    return memory_id


class MemoryStore:
    """A folder of `<id>.safetensors` memory files."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PerkError(f"--store {folder}: cannot create the folder ({exc.strerror or exc})")
        if not self.folder.is_dir():
            raise PerkError(f"--store {folder}: not a folder")
        for stale in self.folder.glob(f".*{SUFFIX}.*"):  # staging files of a write that never finished
            stale.unlink(missing_ok=True)

    def path(self, memory_id: str) -> Path:
        return self.folder / f"{check_id(memory_id)}{SUFFIX}"

    def existing(self, memory_id: str) -> Path:
        path = self.path(memory_id)
        if not path.is_file():
            raise UnknownMemory(memory_id)
        return path

    def ids(self) -> list[str]:
        return sorted(p.name[: -len(SUFFIX)] for p in self.folder.glob(f"*{SUFFIX}")
                      if not p.name.startswith(".") and ID_PATTERN.fullmatch(p.name[: -len(SUFFIX)]))

    def metadata(self, memory_id: str) -> dict[str, str]:
        """The file's metadata, read from its header only (no tensor is loaded)."""
        path = self.existing(memory_id)
        try:
            with safe_open(str(path), framework="pt") as f:
                return dict(f.metadata() or {})
        except (SafetensorError, OSError, ValueError) as exc:
            raise PerkError(f"{path}: not a readable memory ({str(exc).splitlines()[0]})")

    def delete(self, memory_id: str) -> None:
        self.existing(memory_id).unlink()

    def new_id(self) -> str:
        while True:
            memory_id = "m-" + secrets.token_hex(6)
            if not self.path(memory_id).exists():
                return memory_id
