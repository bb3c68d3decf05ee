"""Haystack filler: distractor sentences around the facts that matter.

Three sources (`--filler`): `prose` (the default), the plain sentences of Python's own documentation
in the split's part (`data/prose.py`: a held-out split reads documents the training never saw);
`template`, procedural sentences over neutral words (no person, place or object of the closed
vocabulary, so filler never answers or contradicts a question); or a PATH, the sentences of a user's
text file or of every *.txt file in a directory. Sentences come in a seeded rotation.
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

    def __init__(self, rng: random.Random, source: str = "template", part: str = "train"):
        self.rng = rng
        self.sentences: list[str] | tuple[str, ...] | None = None
        if source == "prose":
            from perk_cli.data.prose import sentences

            self.sentences = sentences(part)
        elif source != "template":
            self.sentences = _load_sentences(Path(source))
        if self.sentences is not None:
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
