"""Real prose for haystacks: the English documentation that ships with Python, split by source.

The corpus is assembled at first use from what every Python installation carries: the language
reference topics of `pydoc_data` (one source a topic) and the docstrings of the standard library (one
source a top-level module or package). Only plain sentences are kept (a capital first, a full stop
last, 6 to 40 words, no code characters). Each source falls in one part, `train`, `validation` or
`test` (70 / 15 / 15%), by a hash of its name, so a held-out haystack is made of documents the training never read.
The sentences depend on the Python version; prepare.json records it. The corpus is assembled once a
Python version (about 8 s) and kept in the cache directory (`prose-<version>.json`).

    sentences("test")[:3]
"""

from __future__ import annotations

import ast
import functools
import json
import platform
import re
import sysconfig
from pathlib import Path

from perk_cli.data.open_vocab import PARTS, part_of
from perk_cli.data.segment import split_sentences
from perk_cli.files import cache_dir, staged_file

FORMAT = "perk-prose/1"

_PLAIN = re.compile(r"^[A-Z][A-Za-z0-9 ,;:'\"()\-]+\.$")
TRAIN_SHARE = 0.7
_SKIP_DIRS = {"test", "tests", "site-packages", "idlelib", "lib2to3", "turtledemo", "__pycache__", "__phello__"}


def _plain(text: str) -> list[str]:
    return [s for s in split_sentences(" ".join(text.split())) if _PLAIN.match(s) and 6 <= len(s.split()) <= 40]


@functools.lru_cache(maxsize=None)
def sources() -> dict[str, tuple[str, ...]]:
    """Every source's plain sentences, in a fixed order: {"topic:<name>" | "module:<name>": sentences}."""
    path = cache_dir() / f"prose-{platform.python_version()}.json"
    try:
        cached = json.loads(path.read_text())
        if cached.get("format") == FORMAT:
            return {name: tuple(found) for name, found in cached["sources"].items()}
    except (OSError, ValueError, AttributeError):
        pass  # absent or unreadable: assemble it again
    found = _assemble()
    try:
        with staged_file(path) as staging:
            staging.write_text(json.dumps({"format": FORMAT, "sources": found}))
    except OSError:
        pass  # a read-only cache only costs the next process the assembly
    return found


def _assemble() -> dict[str, tuple[str, ...]]:
    import pydoc_data.topics

    found: dict[str, list[str]] = {f"topic:{name}": _plain(text) for name, text in sorted(pydoc_data.topics.topics.items())}
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if _SKIP_DIRS & set(relative.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
        docs = [ast.get_docstring(node) for node in ast.walk(tree) if isinstance(node, kinds)]
        name = f"module:{relative.parts[0].removesuffix('.py')}"
        found.setdefault(name, []).extend(s for doc in docs if doc for s in _plain(doc))
    return {name: tuple(dict.fromkeys(found[name])) for name in sorted(found) if found[name]}


@functools.lru_cache(maxsize=None)
def sentences(part: str) -> tuple[str, ...]:
    """The plain sentences of the sources in `part` (train | validation | test), in source order."""
    if part not in PARTS:
        raise ValueError(f"prose part must be one of {', '.join(PARTS)}, got {part!r}")
    return tuple(s for name, found in sources().items() if part_of(name, TRAIN_SHARE) == part for s in found)
