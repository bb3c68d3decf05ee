"""A generator of student-records tasks in the "Drops in the Ocean" style: every distractor record looks
exactly like the relevant one, one record a segment.

  recall     "What is the major of student 3109998?"              an attribute of one id
  relation   "Does student A have a higher grade than student B?"  Yes/No, balanced
  aggregate  "What is the highest grade among students in the School of Business?"  over a subset
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from perk_cli.data import vocab
from perk_cli.data.open_vocab import Vocabulary

ATTRIBUTES = {"name": "Name", "year": "Year", "school": "School", "major": "Major", "grade": "Grade"}


@dataclass(frozen=True)
class Student:
    id: str
    name: str
    year: str
    school: str
    major: str
    grade: int

    def record(self) -> str:
        return (f"Student {self.id}, Name: {self.name}, Year: {self.year}, School: {self.school}, "
                f"Major: {self.major}, Grade: {self.grade}")

    def value(self, attribute: str) -> str:
        return str(getattr(self, attribute))


def make_database(n: int, rng: random.Random, words: Vocabulary | None = None) -> list[Student]:
    """`n` students; names from `words` (its people and surnames), else the closed name lists."""
    first = words.people if words else vocab.FIRST_NAMES
    last = words.surnames if words else vocab.LAST_NAMES
    ids = rng.sample(range(1_000_000, 10_000_000), n)
    students = []
    for sid in ids:
        school = rng.choice(sorted(vocab.SCHOOLS_MAJORS))
        students.append(Student(
            id=str(sid),
            name=f"{rng.choice(first)} {rng.choice(last)}",
            year=rng.choice(vocab.YEARS),
            school=school,
            major=rng.choice(vocab.SCHOOLS_MAJORS[school]),
            grade=rng.randint(0, 100),
        ))
    return students


def format_average(values: list[int]) -> str:
    """Mean to one decimal, halves rounded up (58.25 -> 58.3), computed exactly."""
    mean = Decimal(sum(values)) / Decimal(len(values))
    return str(mean.quantize(Decimal("0.1"), rounding=ROUND_HALF_UP))


def make_question(subtask: str, db: list[Student], rng: random.Random) -> tuple[str, str, list[int]]:
    """(question, answer, indices of the records it depends on)."""
    if subtask == "recall":
        i = rng.randrange(len(db))
        attribute = rng.choice(sorted(ATTRIBUTES))
        label = "the name" if attribute == "name" else f"the {attribute}"
        return f"What is {label} of student {db[i].id}?", db[i].value(attribute), [i]
    if subtask == "relation":
        if len(db) < 2:
            raise ValueError("relation questions need at least 2 records")
        i, j = rng.sample(range(len(db)), 2)
        a, b = db[i], db[j]
        if rng.random() < 0.5:
            return (f"Does student {a.id} have a higher grade than student {b.id}?",
                    "Yes" if a.grade > b.grade else "No", [i, j])
        attribute = rng.choice(["major", "school", "year"])
        want_same = rng.random() < 0.5
        same = [k for k, s in enumerate(db) if k != i and s.value(attribute) == a.value(attribute)]
        if want_same and same:
            j = rng.choice(same)
        b = db[j]
        verb = {"major": "study the same major", "school": "attend the same school", "year": "study in the same year"}
        return (f"Do student {a.id} and student {b.id} {verb[attribute]}?",
                "Yes" if a.value(attribute) == b.value(attribute) else "No", sorted({i, j}))
    kind = rng.choice(["highest", "lowest", "average"])
    scope = rng.choice(["all", "school", "major", "year"])
    if scope == "all":
        members, phrase = list(range(len(db))), "all students"
    else:
        pivot = db[rng.randrange(len(db))]
        value = pivot.value(scope)
        members = [k for k, s in enumerate(db) if s.value(scope) == value]
        phrase = {"school": f"students in the {value}", "major": f"students majoring in {value}",
                  "year": f"{value} students"}[scope]
    grades = [db[k].grade for k in members]
    answer = {"highest": str(max(grades)), "lowest": str(min(grades)), "average": format_average(grades)}[kind]
    return f"What is the {kind} grade among {phrase}?", answer, members
