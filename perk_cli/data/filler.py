"""Haystack filler: distractor sentences around the facts that matter.

The built-in source is procedural (templates over neutral words: no person, place or object of the
task vocabulary, so filler never answers or contradicts a question). `--filler PATH` takes the
sentences of a user's text file, or of every *.txt file in a directory, in a seeded rotation.
"""

from __future__ import annotations

import random
from pathlib import Path

from perk_cli.data.segment import split_sentences
from perk_cli.errors import PerkError
from perk_cli.files import read_text

_SUBJECTS = ["The committee", "A local historian", "The city council", "Our research team", "The museum",
             "An old newspaper", "The weather service", "A small bakery", "The orchestra", "The survey"]
_VERBS = ["reviewed", "described", "announced", "questioned", "celebrated", "documented", "postponed",
          "summarised", "published", "examined"]
_OBJECTS = ["the annual report", "a new policy on water use", "the history of the bridge",
            "plans for the harvest festival", "the results of the long study", "a list of rare birds",
            "the price of winter coal", "an essay on mountain roads", "the schedule for the ferry",
            "records of the northern railway"]
_TAILS = ["last spring", "after a long debate", "with some surprise", "for the third time",
          "in great detail", "before the holidays", "without comment", "at the town hall"]


class Filler:
    """An endless, deterministic stream of filler sentences."""

    def __init__(self, rng: random.Random, path: Path | None = None):
        self.rng = rng
        self.sentences: list[str] | None = None
        if path is not None:
            self.sentences = _load_sentences(path)
            self.index = rng.randrange(len(self.sentences))

    def next(self) -> str:
        if self.sentences is None:
            r = self.rng
            return f"{r.choice(_SUBJECTS)} {r.choice(_VERBS)} {r.choice(_OBJECTS)} {r.choice(_TAILS)}."
        sentence = self.sentences[self.index % len(self.sentences)]
        self.index += 1
        return sentence


def _load_sentences(path: Path) -> list[str]:
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise PerkError(f"--filler {path}: directory has no .txt files")
    elif path.exists():
        files = [path]
    else:
        raise PerkError(f"--filler {path}: no such file or directory")
    sentences = [s for f in files for s in split_sentences(read_text(f))]
    if not sentences:
        raise PerkError(f"--filler {path}: no sentences found")
    return sentences
