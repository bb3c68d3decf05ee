"""A generator of bAbI-style tasks (qa1, qa2, qa3) hidden in a haystack of filler, of a chosen length.

Facts appear in story order. With `order_tags="event"` (the PERK paper's layout) each also carries
its number ("Event 7: Mary went to the kitchen."), so the answer is determined by the set of segments
whatever order they are presented in; with `"none"` (BABILong's layout, the default) the order is
only where a fact sits. People, places and objects come from a `Vocabulary` (`open_vocab.py`).

  qa1  single supporting fact   "Where is Mary?"            last place Mary moved to
  qa2  two supporting facts     "Where is the apple?"       where its holder is, or where it was dropped
  qa3  three supporting facts   "Where was the apple before the kitchen?"

Every supporting fact set contains the sentence that names the answer place (a fact like "Mary
took the apple there." places nothing by itself). qa2 lists its two facts in the order a reader
uses them, which is also the order the support answer format recites them in: first the fact keyed
by the question's object (its latest take, or its drop), then the move that put that person where
the object is. qa1 and qa3 list theirs in event order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from perk_cli.data import vocab
from perk_cli.data.filler import Filler
from perk_cli.data.open_vocab import Vocabulary, closed_vocabulary
from perk_cli.data.schema import Task

DEFAULT_FACTS = {"qa1": 6, "qa2": 10, "qa3": 12}
ORDER_TAGS = ("none", "event")

_REGION = {"uniform": (0.0, 1.0), "early": (0.0, 1 / 3), "middle": (1 / 3, 2 / 3), "late": (2 / 3, 1.0)}


@dataclass
class Story:
    facts: list[str]
    question: str
    answer: str
    support: list[int]  # indices into facts
    people: list[str] = field(default_factory=list)  # everyone the story names


@dataclass
class _World:
    """Who is where and who holds what; each change records the event that caused it."""

    person_at: dict[str, tuple[str, int]] = field(default_factory=dict)  # person -> (place, event)
    holder: dict[str, tuple[str, int]] = field(default_factory=dict)  # object -> (person, take event)
    # object -> (place, drop event, the move event that put the dropper there)
    dropped: dict[str, tuple[str, int, int]] = field(default_factory=dict)
    # object -> [(place, event it got there, the move event that names that place)]
    history: dict[str, list[tuple[str, int, int]]] = field(default_factory=dict)
    takes: dict[str, list[int]] = field(default_factory=dict)  # object -> events that picked it up

    def place_of(self, obj: str) -> str | None:
        if obj in self.holder:
            return self.person_at[self.holder[obj][0]][0]
        return self.dropped.get(obj, (None,))[0]

    def note(self, obj: str, event: int) -> None:
        """Called while `obj` is held: on its holder's moves and when it is taken."""
        place, named_by = self.person_at[self.holder[obj][0]]
        trail = self.history.setdefault(obj, [])
        if not trail or trail[-1][0] != place:
            trail.append((place, event, named_by))


def _simulate(subtask: str, n_facts: int, rng: random.Random, words: Vocabulary) -> tuple[list[str], _World, list[str]]:
    people = rng.sample(words.people, k=2 if subtask == "qa1" and n_facts < 4 else 3)
    objects = rng.sample(words.objects, k=2)
    places = words.story_places(rng)
    world, facts = _World(), []
    while len(facts) < n_facts:
        event = len(facts)
        choices = ["move"]
        if subtask != "qa1":
            free = [o for o in objects if o not in world.holder]
            takers = [(p, o) for p in people if p in world.person_at for o in free
                      if o not in world.dropped or world.dropped[o][0] == world.person_at[p][0]]
            if takers:
                choices += ["take"] * 2
            if world.holder:
                choices.append("drop")
        action = rng.choice(choices)
        if action == "move":
            person = rng.choice(people)
            here = world.person_at.get(person, (None,))[0]
            place = rng.choice([p for p in places if p != here])
            world.person_at[person] = (place, event)
            text = f"{person} {rng.choice(vocab.MOVE_VERBS)} {words.place_phrase(place)}."
            for obj, (who, _) in world.holder.items():
                if who == person:
                    world.note(obj, event)
        elif action == "take":
            person, obj = rng.choice(takers)
            world.holder[obj] = (person, event)
            world.dropped.pop(obj, None)
            world.takes.setdefault(obj, []).append(event)
            world.note(obj, event)
            text = f"{person} {rng.choice(vocab.TAKE_VERBS)} the {obj} there."
        else:
            obj = rng.choice(sorted(world.holder))
            person, _ = world.holder.pop(obj)
            place, named_by = world.person_at[person]
            world.dropped[obj] = (place, event, named_by)
            text = f"{person} {rng.choice(vocab.DROP_VERBS)} the {obj}."
        facts.append(text)
    return facts, world, people


def _question(subtask: str, world: _World, rng: random.Random):
    """(question, answer, support event indices) or None if this story has no good question."""
    if subtask == "qa1":
        person = rng.choice(sorted(world.person_at))
        place, event = world.person_at[person]
        return f"Where is {person}?", place, [event]
    placed = sorted(o for o in world.history if world.place_of(o) is not None)
    if not placed:
        return None
    if subtask == "qa2":
        obj = rng.choice(placed)
        if obj in world.holder:
            person, take = world.holder[obj]
            support = [take, world.person_at[person][1]]
        else:
            _, drop, named_by = world.dropped[obj]
            support = [drop, named_by]
        return f"Where is the {obj}?", world.place_of(obj), support
    candidates = []
    for obj in placed:
        trail = world.history[obj]
        places = [p for p, _, _ in trail]
        for i in range(1, len(trail)):
            if places.count(places[i]) == 1:
                candidates.append((obj, i))
    if not candidates:
        return None
    obj, i = rng.choice(candidates)
    trail = world.history[obj]
    take = max(e for e in world.takes[obj] if e <= trail[i][1])  # who carried it there
    return (f"Where was the {obj} before {Vocabulary.place_phrase(trail[i][0])}?", trail[i - 1][0],
            sorted({trail[i - 1][2], take, trail[i][2]}))


def make_story(subtask: str, n_facts: int, rng: random.Random, words: Vocabulary | None = None,
               order_tags: str = "event", max_tries: int = 1000) -> Story:
    words = words or closed_vocabulary()
    if order_tags not in ORDER_TAGS:
        raise ValueError(f"order_tags must be one of {', '.join(ORDER_TAGS)}, got {order_tags!r}")
    if subtask not in DEFAULT_FACTS:
        raise ValueError(f"unknown bAbI subtask {subtask!r}")
    minimum = {"qa1": 1, "qa2": 2, "qa3": 4}[subtask]
    if n_facts < minimum:
        raise ValueError(f"{subtask} needs at least {minimum} facts")
    for _ in range(max_tries):
        facts, world, people = _simulate(subtask, n_facts, rng, words)
        q = _question(subtask, world, rng)
        if q is not None:
            if order_tags == "event":
                facts = [f"Event {i}: {fact}" for i, fact in enumerate(facts)]
            return Story(facts, q[0], q[1], q[2], people)
    raise ValueError(f"could not generate a {subtask} story with {n_facts} facts; use more facts")


def lay_out(story: Story, filler: Filler, n_filler: int, position: str, rng: random.Random) -> tuple[list[str], int]:
    """Sentences of the document (facts in order, filler around them) and the index of the first
    supporting fact's sentence."""
    lo, hi = _REGION[position]
    gaps = list(range(int(round(lo * n_filler)), int(round(hi * n_filler)) + 1))
    slots = sorted(rng.choice(gaps) for _ in story.facts)
    sentences, fact_at, f = [], {}, 0
    for gap in range(n_filler + 1):
        while f < len(slots) and slots[f] == gap:
            fact_at[f] = len(sentences)
            sentences.append(story.facts[f])
            f += 1
        if gap < n_filler:
            sentences.append(filler.next())
    return sentences, fact_at[min(story.support)]


def event_support(task: Task) -> Task:
    """`task` with its support replaced by every event of its story, in order (the recite layout's recital).
    Needs segments of one sentence each (prepare with --segment-tokens 16), so that an event is a segment."""
    events = [segment for segment in task.context if "Event " in segment]
    if not events or any(not (s.startswith("Event ") and s.endswith(".") and s.count("Event ") == 1) for s in events):
        raise ValueError(f"task {task.id}: its events are not one a segment; prepare with --order-tags event "
                         "--segment-tokens 16")
    return task.model_copy(update={"support": events})
