"""The default layout of generated tasks: open vocabulary split by part, real prose split by source, no
order tags; and the held-out splits never reuse what the training split reads."""

from __future__ import annotations

import json
import re

import pytest

from perk_cli.config import PrepareSettings
from perk_cli.data import prose, vocab
from perk_cli.data.open_vocab import PARTS, closed_vocabulary, open_vocabulary, part_of
from perk_cli.data.segment import split_sentences
from perk_cli.evaluation.references import events
from perk_cli.prepare import prepare
from tests.data.test_generators import _read_facts, solve_babi, solve_records


def _splits(out, **kwargs) -> dict[str, list[dict]]:
    prepare(PrepareSettings(out=str(out), **kwargs))
    return {split: [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]
            for split in PARTS if (out / f"{split}.jsonl").exists()}


def test_open_vocabulary_parts_are_large_and_disjoint():
    parts = {p: open_vocabulary(p) for p in PARTS}
    for field in ("people", "towns", "objects", "surnames"):
        sizes = {p: len(getattr(v, field)) for p, v in parts.items()}
        assert sizes["train"] > 5 * sizes["test"] and sizes["test"] >= 100, (field, sizes)
        seen: set[str] = set()
        for v in parts.values():
            words = set(getattr(v, field))
            assert not words & seen, field
            seen |= words
    assert all(len(v.nouns) >= 4 for v in parts.values())
    # The closed vocabulary is the shipped checkpoint's: none of it is held out.
    closed = closed_vocabulary()
    for part in ("validation", "test"):
        v = parts[part]
        assert not set(closed.people) & set(v.people) and not set(closed.nouns) & set(v.nouns)
        assert not set(closed.objects) & set(v.objects)
    assert set(closed.people) <= set(parts["train"].people)


def test_a_words_part_depends_on_the_word_alone():
    assert part_of("Brasschaat") == part_of("brasschaat")
    shares = [part_of(f"w{i}") for i in range(3000)]
    assert 0.77 < shares.count("train") / 3000 < 0.83
    assert abs(shares.count("validation") - shares.count("test")) < 120


@pytest.mark.parametrize("subtask, facts", [("qa1", 6), ("qa2", 8), ("qa3", 10)])
def test_untagged_stories_in_prose_answer_by_reading_order(tmp_path, subtask, facts):
    splits = _splits(tmp_path / "d", task="babi", subtask=subtask, facts=facts, length=300, segment_tokens=48,
                     train=30, validation=10, test=10, seed=2)
    for split, tasks in splits.items():
        for task in tasks:
            text = " ".join(task["context"])
            assert "Event " not in text
            assert solve_babi(task["context"], task["question"]) == task["answer"], task["id"]
            assert all(s in text for s in task["support"])


def test_each_split_names_people_and_places_of_its_own_part(tmp_path):
    splits = _splits(tmp_path / "d", task="babi", subtask="qa1", facts=4, length=200, train=40, validation=20,
                     test=20, seed=4)
    for split, tasks in splits.items():
        words = open_vocabulary(split)
        for task in tasks:
            story = _read_facts(task["context"])
            assert story and all(who in words.people for _, who, _, _ in story), task["id"]
            assert task["answer"] in words.nouns + words.towns
    answers = {t["answer"] for t in splits["test"]}
    assert len(answers) >= 10 and not answers & set(vocab.LOCATIONS)


def test_a_held_out_haystack_is_made_of_held_out_sources(tmp_path):
    splits = _splits(tmp_path / "d", task="babi", subtask="qa1", facts=2, length=400, train=5, validation=5,
                     test=5, seed=6)
    for split, tasks in splits.items():
        mine = set(prose.sentences(split))
        others = {s for part in PARTS if part != split for s in prose.sentences(part)}
        for task in tasks:
            filler = [s for s in split_sentences(" ".join(task["context"])) if not _read_facts([s])]
            assert len(filler) > 5
            assert all(s in mine for s in filler), task["id"]
            assert not any(s in others for s in filler)
    summary = json.loads((tmp_path / "d" / "prepare.json").read_text())
    assert summary["python"] and summary["settings"]["filler"] == "prose"


def test_prose_sources_split_disjointly_and_keep_plain_sentences():
    sources = prose.sources()
    assert len(sources) > 100
    counts = {p: len(prose.sentences(p)) for p in PARTS}
    assert counts["train"] > 5000 and counts["validation"] > 300 and counts["test"] > 300, counts
    for sentence in prose.sentences("test")[:500]:
        assert sentence[0].isupper() and sentence.endswith(".") and not re.search(r"[`_=<>{}\[\]]", sentence)


def test_filler_never_names_a_story_person(tmp_path):
    people = open_vocabulary("train").people
    hay = tmp_path / "hay.txt"
    hay.write_text(" ".join(f"{name} wrote a long letter home." for name in people[:4000])
                   + " The river was calm that morning." * 50)
    splits = _splits(tmp_path / "d", task="babi", subtask="qa1", facts=3, length=400, filler=str(hay), train=20,
                     validation=0, test=0, seed=8)
    for task in splits["train"]:
        named = {who for _, who, _, _ in _read_facts(task["context"])}
        letters = {m[1] for m in re.finditer(r"([A-Z][a-z]+) wrote a long letter", " ".join(task["context"]))}
        assert not named & letters, task["id"]


def test_event_tags_number_the_facts_when_asked(tmp_path):
    splits = _splits(tmp_path / "d", task="babi", subtask="qa2", facts=6, length=250, order_tags="event", train=10,
                     validation=0, test=0, seed=9)
    for task in splits["train"]:
        numbers = [int(n) for n in re.findall(r"Event (\d+): ", " ".join(task["context"]))]
        assert numbers == list(range(6))


def test_records_name_students_from_the_splits_part(tmp_path):
    splits = _splits(tmp_path / "d", task="records", subtask="recall", records=6, train=10, validation=0, test=10,
                     seed=3)
    for split, tasks in splits.items():
        words = open_vocabulary(split)
        for task in tasks:
            assert solve_records(task["context"], task["question"]) == task["answer"]
            for name in re.findall(r"Name: (\w+) (\w+),", " ".join(task["context"])):
                assert name[0] in words.people and name[1] in words.surnames


def test_closed_records_keep_the_record_name_lists(tmp_path):
    splits = _splits(tmp_path / "d", task="records", subtask="recall", records=12, vocab="closed", train=10,
                     validation=0, test=0, seed=3)
    names = [n for t in splits["train"] for n in re.findall(r"Name: (\w+) (\w+),", " ".join(t["context"]))]
    assert len(names) == 120
    assert all(first in vocab.FIRST_NAMES and last in vocab.LAST_NAMES for first, last in names)


def test_references_read_untagged_moves_in_story_order():
    task = {"context": ["Odalys went to the port. Some prose here.", "Antoon journeyed to Gougnies.",
                        "Odalys moved to Schladming."], "question": "Where is Odalys?"}
    assert events(task) == [(0, "Odalys", "port"), (1, "Antoon", "Gougnies"), (2, "Odalys", "Schladming")]
    tagged = {"context": ["Event 1: Mary went to the kitchen.", "Event 0: John moved to the garden."]}
    assert events(tagged) == [(0, "John", "garden"), (1, "Mary", "kitchen")]
