"""Generated tasks checked by independent solvers (replay the facts; query the database), plus length
control and determinism."""

import json
import random
import re

import pytest

from perk_cli.config import GENERATOR_LAYOUT, PrepareSettings
from perk_cli.data import vocab
from perk_cli.prepare import prepare

_VERBS = "|".join(vocab.MOVE_VERBS + vocab.TAKE_VERBS + vocab.DROP_VERBS)
_FACT = re.compile(rf"(?:Event (\d+): )?\b([A-Z][a-z]+) ({_VERBS}) (?:the ([a-z]+)|([A-Z][a-z]+))( there)?\.")
_PLACE = r"(?:the ([a-z]+)|([A-Z][a-z]+))"


def _read_facts(texts: list[str]) -> list[tuple[int, str, str, str]]:
    """(order, who, verb, what) of every fact: numbered facts by their number, others by where they sit."""
    found = [m for s in texts for m in _FACT.finditer(s)]
    return sorted((int(m[1]) if m[1] else i, m[2], m[3], m[4] or m[5]) for i, m in enumerate(found))


def solve_babi(context: list[str], question: str) -> str:
    """Replay the facts in story order: numbered ones whatever order the segments come in, others in
    the order they are read."""
    facts = _read_facts(context)
    assert [f[0] for f in facts] == list(range(len(facts))), "events must be numbered 0..n-1 exactly once"
    at, holder, place_of, trail = {}, {}, {}, {}

    def touch(obj):
        where = at[holder[obj]] if obj in holder else place_of.get(obj)
        if where is not None and (not trail.get(obj) or trail[obj][-1] != where):
            trail.setdefault(obj, []).append(where)

    for _, who, verb, what in facts:
        if verb in vocab.MOVE_VERBS:
            at[who] = what
            for obj, person in holder.items():
                if person == who:
                    touch(obj)
        elif verb in vocab.TAKE_VERBS:
            holder[what] = who
            place_of.pop(what, None)
            touch(what)
        elif verb in vocab.DROP_VERBS:
            del holder[what]
            place_of[what] = at[who]
        else:
            raise AssertionError(f"unknown verb {verb!r}")
    if m := re.fullmatch(r"Where is (\w+)\?", question):
        return at[m[1]]
    if m := re.fullmatch(r"Where is the (\w+)\?", question):
        return at[holder[m[1]]] if m[1] in holder else place_of[m[1]]
    m = re.fullmatch(rf"Where was the (\w+) before {_PLACE}\?", question)
    places, before = trail[m[1]], m[2] or m[3]
    assert places.count(before) == 1
    return places[places.index(before) - 1]


def _parse_students(context):
    pattern = re.compile(r"Student (\d+), Name: (.+), Year: (\w+), School: (.+), Major: (.+), Grade: (\d+)")
    return [dict(zip(["id", "name", "year", "school", "major", "grade"], pattern.fullmatch(s).groups()))
            for s in context]


def solve_records(context: list[str], question: str) -> str:
    db = _parse_students(context)
    by_id = {s["id"]: s for s in db}
    if m := re.fullmatch(r"What is the (\w+) of student (\d+)\?", question):
        return by_id[m[2]][m[1]]
    if m := re.fullmatch(r"Does student (\d+) have a higher grade than student (\d+)\?", question):
        return "Yes" if int(by_id[m[1]]["grade"]) > int(by_id[m[2]]["grade"]) else "No"
    if m := re.fullmatch(r"Do student (\d+) and student (\d+) (study the same major|attend the same school|"
                         r"study in the same year)\?", question):
        key = {"study the same major": "major", "attend the same school": "school",
               "study in the same year": "year"}[m[3]]
        return "Yes" if by_id[m[1]][key] == by_id[m[2]][key] else "No"
    m = re.fullmatch(r"What is the (highest|lowest|average) grade among (.+)\?", question)
    scope = m[2]
    if scope == "all students":
        members = db
    elif scope.startswith("students in the "):
        members = [s for s in db if s["school"] == scope.removeprefix("students in the ")]
    elif scope.startswith("students majoring in "):
        members = [s for s in db if s["major"] == scope.removeprefix("students majoring in ")]
    else:
        members = [s for s in db if s["year"] == scope.removesuffix(" students")]
    grades = [int(s["grade"]) for s in members]
    return {"highest": str(max(grades)), "lowest": str(min(grades)),
            "average": str(round(sum(grades) / len(grades) + 1e-9, 1))}[m[1]]


def _tasks(tmp_path, **kwargs):
    """Tasks in the generator's own layout (numbered facts, closed vocabulary, template filler) unless
    kwargs say otherwise."""
    out = tmp_path / "out"
    prepare(PrepareSettings(out=str(out), **{**GENERATOR_LAYOUT, **kwargs}))
    return [json.loads(line) for split in ("train", "validation", "test")
            if (out / f"{split}.jsonl").exists() for line in (out / f"{split}.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("subtask, facts", [("qa1", 6), ("qa2", 10), ("qa3", 12), ("qa1", 2), ("qa3", 25)])
def test_babi_answers_match_an_independent_replay(tmp_path, subtask, facts):
    tasks = _tasks(tmp_path, task="babi", subtask=subtask, facts=facts, distractors=5, segment_tokens=48,
                   train=150, validation=25, test=25, seed=3)
    assert len(tasks) == 200
    rng = random.Random(0)
    for task in tasks:
        shuffled = rng.sample(task["context"], len(task["context"]))
        assert solve_babi(shuffled, task["question"]) == task["answer"], task["id"]
        assert all(s in " ".join(task["context"]) for s in task["support"])
    answers = {t["answer"] for t in tasks}
    assert len(answers) >= 5  # answers vary; no constant shortcut


def _facts(texts: list[str]) -> list[tuple[int, str, str, str]]:
    return _read_facts(texts)


@pytest.mark.parametrize("subtask, facts", [("qa1", 6), ("qa2", 6), ("qa2", 10), ("qa3", 12)])
def test_babi_support_names_the_answer_place(tmp_path, subtask, facts):
    # A "took the apple there" fact places nothing: the support must hold the move that names the
    # answer place (and, for qa3, the place the question names).
    tasks = _tasks(tmp_path, task="babi", subtask=subtask, facts=facts, train=150, validation=0, test=0, seed=5)
    for task in tasks:
        moves_to = {what for _, _, verb, what in _facts(task["support"]) if verb in vocab.MOVE_VERBS}
        assert task["answer"] in moves_to, (task["id"], task["support"])
        if subtask == "qa3":
            before = re.search(rf"before {_PLACE}\?", task["question"])
            assert (before[1] or before[2]) in moves_to, task["id"]


def test_qa2_support_comes_in_reading_order(tmp_path):
    # First the fact keyed by the question's object (its latest take, or its drop), then the move
    # that put that person where the object is: their last move, or their last one before the drop.
    tasks = _tasks(tmp_path, task="babi", subtask="qa2", facts=8, train=200, validation=0, test=0, seed=6)
    cases = set()
    for task in tasks:
        obj = re.fullmatch(r"Where is the (\w+)\?", task["question"])[1]
        story = _facts(task["context"])
        (e1, who, verb, what), (e2, mover, verb2, place) = [_facts([s])[0] for s in task["support"]]
        assert what == obj and mover == who and verb2 in vocab.MOVE_VERBS, task["support"]
        last_about_obj = max(e for e, _, v, w in story if w == obj and v not in vocab.MOVE_VERBS)
        assert e1 == last_about_obj
        held = verb in vocab.TAKE_VERBS
        cases.add(held)
        until = len(story) if held else e1
        assert e2 == max(e for e, p, v, _ in story if p == who and v in vocab.MOVE_VERBS and e < until)
    assert cases == {True, False}  # both the held and the dropped case occur


@pytest.mark.parametrize("subtask", ["recall", "relation", "aggregate"])
def test_records_answers_match_a_database_query(tmp_path, subtask):
    tasks = _tasks(tmp_path, task="records", subtask=subtask, records=15, train=200, validation=50, test=50)
    for task in tasks:
        assert len(task["context"]) == 15  # one record a segment
        assert solve_records(task["context"], task["question"]) == task["answer"], task["id"]
    if subtask == "relation":
        yes = sum(t["answer"] == "Yes" for t in tasks) / len(tasks)
        assert 0.3 < yes < 0.7


@pytest.mark.parametrize("kwargs", [
    dict(task="babi", subtask="qa1", length=256), dict(task="babi", subtask="qa2", length=2048),
    dict(task="babi", subtask="qa3", length=1024, position="late"),
    dict(task="records", subtask="recall", length=512), dict(task="records", subtask="aggregate", length=2000),
])
def test_length_control_within_ten_percent(tmp_path, kwargs):
    tasks = _tasks(tmp_path, train=10, validation=0, test=10, **kwargs)
    for task in tasks:
        assert abs(task["meta"]["length_tokens"] - kwargs["length"]) <= 0.1 * kwargs["length"], task["id"]


def test_position_places_the_supporting_facts(tmp_path):
    # Facts go into the first, middle or last third of the filler; the facts' own text shifts the
    # measured character fraction a little, hence the margins.
    bounds = {"early": (0.0, 0.45), "middle": (0.28, 0.72), "late": (0.55, 1.0)}
    means = {}
    for position, (lo, hi) in bounds.items():
        tasks = _tasks(tmp_path / position, task="babi", subtask="qa1", length=800, position=position, train=30,
                       validation=0, test=0)
        where = [t["meta"]["position"] for t in tasks]
        assert all(lo <= p <= hi for p in where), (position, where)
        means[position] = sum(where) / len(where)
    assert means["early"] < 0.33 < means["middle"] < 0.67 < means["late"]


def test_user_filler_is_used(tmp_path):
    filler = tmp_path / "hay.txt"
    filler.write_text("Quartz clocks tick quietly. Zebras graze at dawn. " * 20)
    tasks = _tasks(tmp_path, task="babi", subtask="qa1", length=300, filler=str(filler), train=5, validation=0,
                   test=0)
    assert all("Zebras graze at dawn." in " ".join(t["context"]) for t in tasks)


def test_same_seed_gives_byte_identical_output(tmp_path):
    files = []
    for attempt in range(2):
        out = tmp_path / "same"
        prepare(PrepareSettings(task="babi", subtask="qa2", length=300, out=str(out), train=20, validation=5,
                                test=5, seed=11))
        files.append({p.name: p.read_bytes() for p in sorted(out.iterdir())})
    assert files[0] == files[1]
    prepare(PrepareSettings(task="babi", subtask="qa2", length=300, out=str(tmp_path / "other"), train=20,
                            validation=5, test=5, seed=12))
    assert (tmp_path / "other" / "train.jsonl").read_bytes() != files[0]["train.jsonl"]


def test_procedural_filler_never_mentions_task_entities(tmp_path):
    tasks = _tasks(tmp_path, task="babi", subtask="qa1", distractors=200, facts=1, train=3, validation=0, test=0)
    for task in tasks:
        text = " ".join(task["context"])
        mentioned = {w for w in vocab.PEOPLE + vocab.LOCATIONS + vocab.OBJECTS if re.search(rf"\b{w}\b", text)}
        assert len(mentioned) <= 2  # only the single fact's person and place


@pytest.mark.parametrize("kwargs", [dict(task="babi", subtask="qa1"), dict(task="records", subtask="recall")])
def test_a_comma_list_of_lengths_is_a_mixture_cycling_over_each_split(tmp_path, kwargs):
    from perk_cli.config import PrepareSettings

    lengths = [128, 512, 1024]
    tasks = _tasks(tmp_path / "mix", train=7, validation=0, test=4, length="128,512,1024", **kwargs)
    train = [t for t in tasks if "-train-" in t["id"]]
    test = [t for t in tasks if "-test-" in t["id"]]
    for split in (train, test):
        for i, task in enumerate(split):
            target = lengths[i % 3]
            assert abs(task["meta"]["length_tokens"] - target) <= 0.1 * target, (task["id"], target)
    assert PrepareSettings(task="babi", subtask="qa1", out="x", length="512").length == 512  # one length stays an int
    assert PrepareSettings(task="babi", subtask="qa1", out="x", length=[512]).length == 512
    single = _tasks(tmp_path / "single", train=3, validation=0, test=0, length=512, **kwargs)
    assert _tasks(tmp_path / "listed", train=3, validation=0, test=0, length=[512], **kwargs) == single


@pytest.mark.parametrize("value", ["12,x", "0", "128,-5", ""])
def test_bad_length_lists_are_one_line_naming_the_flag(tmp_path, capsys, value):
    from tests.conftest import run_cli

    code, _, err = run_cli(["prepare", "--task", "babi", "--subtask", "qa1", "--length", value, "-o",
                            str(tmp_path / "out"), "-q"], capsys)
    assert code == 2 and "--length" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
