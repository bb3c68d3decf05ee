"""Files every stage reads and writes: atomic writes (a directory or one file), UTF-8 text, config files.

An atomic write fills a staging path beside the target and renames it into place: a failure leaves
the previous target (if any) untouched and removes the staging path.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from perk_cli.errors import PerkError


def recover_directory(target: Path) -> None:
    """Put back the previous `target` of a staged_directory replacement stopped between its two renames
    (target moved aside, the new one not yet in place): a kill there must not lose the checkpoint."""
    target = Path(target)
    if target.exists() or not target.parent.is_dir():
        return
    aside = sorted(target.parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if aside:
        aside[-1].rename(target)


@contextmanager
def staged_directory(target: Path):
    """Yield an empty staging directory; on success it replaces `target`."""
    target = target.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            target.rename(old)
            staging.rename(target)
            shutil.rmtree(old)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def cache_dir() -> Path:
    """Where perk keeps what it assembles or converts once: $XDG_CACHE_HOME/perk, else ~/.cache/perk."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "perk"


@contextmanager
def staged_file(target: Path):
    """Yield a temporary path in `target`'s directory; on success it replaces `target` (os.replace)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_text(path: Path) -> str:
    """UTF-8 text of a file, or a one-line PerkError naming the file."""
    if not path.exists():
        raise PerkError(f"{path}: no such file")
    if path.is_dir():
        raise PerkError(f"{path}: is a directory, expected a file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise PerkError(f"{path}:{line}: not valid UTF-8 (byte offset {exc.start}); re-encode the file as UTF-8")
    if "\x00" in text:
        raise PerkError(f"{path}: contains NUL bytes; is it a binary file?")
    if not text.strip():
        raise PerkError(f"{path}: file is empty")
    return text.removeprefix("\ufeff")


def read_config_file(path: Path) -> dict:
    """A YAML (.yaml/.yml) or JSON mapping of settings, or a one-line PerkError naming --config."""
    text = read_text(path)
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # yaml and json raise different types; one line either way
        raise PerkError(f"--config {path}: cannot parse ({str(exc).splitlines()[0]})")
    if not isinstance(data, dict):
        raise PerkError(f"--config {path}: expected a mapping of settings")
    return data
