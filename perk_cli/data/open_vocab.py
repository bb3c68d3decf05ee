"""Vocabularies for the generators: the closed one of `vocab.py`, or an open one split into parts.

The open vocabulary draws first names and surnames from every locale of the Faker package that
writes them in plain ASCII letters, places from real town names (Faker's address lists) and from
English place nouns ("bridge", "harbor"), and objects from Faker's English noun list. Each word falls
in one part, `train`, `validation` or `test`, by a hash of the word itself, so the parts are disjoint
and a word keeps its part whatever else the package adds; the closed vocabulary's words are all put
in `train`, so a held-out task never uses a name the shipped checkpoint was trained on.

    open_vocabulary("test").people[:3]
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import pkgutil
import re
from dataclasses import dataclass

from perk_cli.data import vocab
from perk_cli.errors import PerkError

PARTS = ("train", "validation", "test")
_WORD = re.compile(r"^[A-Z][a-z]{2,11}$")  # one plain word: no spaces, accents or apostrophes
_NOUN = re.compile(r"^[a-z]{3,12}$")
# English place nouns: those of Faker's street suffixes and of its noun list that read as somewhere a
# person can go (the rest of the noun list are objects).
_PLACE_NOUNS = (
    "airport", "apartment", "bank", "bar", "beach", "building", "church", "classroom", "college", "farm",
    "garage", "hall", "hospital", "hotel", "house", "lab", "library", "mall", "market", "pool",
    "restaurant", "shop", "store", "studio", "supermarket", "tower", "university", "yard",
    "alley", "avenue", "bridge", "brook", "camp", "canyon", "cape", "causeway", "center", "cliff", "club",
    "corner", "court", "cove", "creek", "crescent", "crossing", "dam", "estate", "ferry", "field", "forest",
    "forge", "fort", "garden", "gateway", "glen", "green", "grove", "harbor", "haven", "heights", "hill",
    "hollow", "inlet", "island", "junction", "lake", "landing", "lane", "lodge", "meadow", "mill",
    "mission", "mount", "mountain", "orchard", "pass", "pike", "pine", "plain", "plaza", "point", "port",
    "prairie", "ranch", "rapids", "ridge", "river", "square", "station", "stream", "summit", "terrace",
    "trail", "tunnel", "valley", "viaduct", "village", "ville", "vista", "well",
)


@dataclass(frozen=True)
class Vocabulary:
    """Who, where and what a generated story may name: `nouns` are places that take "the" ("the
    bridge"), `towns` are named places ("Brasschaat")."""

    people: tuple[str, ...]
    nouns: tuple[str, ...]
    towns: tuple[str, ...]
    objects: tuple[str, ...]
    surnames: tuple[str, ...]

    def story_places(self, rng, k: int = 8) -> list[str]:
        """The places one story uses: all the nouns of a closed vocabulary, else k, half of them towns."""
        if not self.towns:
            return list(self.nouns)
        nouns = min(len(self.nouns), k - k // 2)
        return rng.sample(self.nouns, nouns) + rng.sample(self.towns, k - nouns)

    @staticmethod
    def place_phrase(place: str) -> str:
        return place if place[0].isupper() else f"the {place}"


def part_of(word: str, train_share: float = 0.8) -> str:
    """Which part a word belongs to, by a hash of the word: `train_share` of them train, the rest
    halved between validation and test."""
    share = int(hashlib.sha256(word.lower().encode()).hexdigest(), 16) % 1000 / 1000
    return "train" if share < train_share else "validation" if share < (1 + train_share) / 2 else "test"


def closed_vocabulary() -> Vocabulary:
    """The generator's own ten people, nine rooms and eight objects (the shipped checkpoint's vocabulary)."""
    return Vocabulary(tuple(vocab.PEOPLE), tuple(vocab.LOCATIONS), (), tuple(vocab.OBJECTS), tuple(vocab.LAST_NAMES))


@functools.lru_cache(maxsize=None)
def _faker_words() -> tuple[set[str], set[str], set[str], set[str]]:
    try:
        import faker.providers.address as address
        import faker.providers.person as person
        from faker.providers.lorem.en_US import Provider as Lorem
    except ImportError:
        raise PerkError("--vocab open needs the faker package: pip install faker")
    first, last, towns = set(), set(), set()
    for module in pkgutil.iter_modules(person.__path__):
        provider = importlib.import_module(f"{person.__name__}.{module.name}").Provider
        for names, into in (("first_names", first), ("last_names", last)):
            value = provider.__dict__.get(names, ())
            into.update(n for n in (value if isinstance(value, (list, tuple, dict, set)) else ()) if _WORD.match(n))
    for module in pkgutil.iter_modules(address.__path__):
        provider = importlib.import_module(f"{address.__name__}.{module.name}").Provider
        for names in ("cities", "city_names"):
            value = provider.__dict__.get(names, ())
            towns.update(n for n in (value if isinstance(value, (list, tuple, set)) else ()) if _WORD.match(n))
    nouns = {n for n in Lorem.parts_of_speech["noun"] if _NOUN.match(n)}
    return first, last, towns, nouns


def _closed_words() -> set[str]:
    return {w.lower() for w in (*vocab.PEOPLE, *vocab.LOCATIONS, *vocab.OBJECTS, *vocab.FIRST_NAMES,
                                *vocab.LAST_NAMES)}


@functools.lru_cache(maxsize=None)
def open_vocabulary(part: str) -> Vocabulary:
    """The open vocabulary's `part` (train | validation | test), sorted, disjoint from the other parts."""
    if part not in PARTS:
        raise ValueError(f"vocabulary part must be one of {', '.join(PARTS)}, got {part!r}")
    first, last, towns, nouns = _faker_words()
    closed = _closed_words()
    # A word is one kind only: a town that is also a first name is dropped from the towns, and so on.
    towns = towns - first - last
    objects = nouns - set(_PLACE_NOUNS) - set(vocab.LOCATIONS)
    last = last - first

    def mine(words: set[str]) -> tuple[str, ...]:
        keep = (w for w in words if (part == "train" if w.lower() in closed else part_of(w) == part))
        return tuple(sorted(keep))

    # The closed words always count as train (see the module docstring), and train holds them.
    extra = closed_vocabulary() if part == "train" else None
    return Vocabulary(
        people=tuple(sorted(set(mine(first)) | set(extra.people if extra else ()))),
        nouns=tuple(sorted(set(mine(set(_PLACE_NOUNS))) | set(extra.nouns if extra else ()))),
        towns=mine(towns),
        objects=tuple(sorted(set(mine(objects)) | set(extra.objects if extra else ()))),
        surnames=tuple(sorted(set(mine(last)) | set(extra.surnames if extra else ()))),
    )


def vocabulary(kind: str, part: str) -> Vocabulary:
    """`kind` closed | open; `part` picks the open vocabulary's part (the closed one has no parts)."""
    return closed_vocabulary() if kind == "closed" else open_vocabulary(part)
