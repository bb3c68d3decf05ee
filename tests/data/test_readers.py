"""Task records read exactly from every published layout: our own small fixtures (tests/fixtures, in
every clone) and the official samples (../shared/reference-data, where present)."""

import json
from pathlib import Path

import pytest

from perk_cli.data.readers import make_segmenter, read_source
from perk_cli.errors import PerkError
from perk_cli.models.tiny import build_tiny_tokenizer
from tests.conftest import REFERENCE, needs_reference

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="module")
def segmenter():
    return make_segmenter(build_tiny_tokenizer(), 256)


def test_babilong_pretty_printed_object(segmenter):
    path = FIXTURES / "babilong" / "qa2.json"
    (task,) = read_source("babilong", path, segmenter, "test")["test"]
    raw = json.loads(path.read_text())
    assert task.context == raw["context"] and len(task.context) == 3
    assert (task.question, task.answer, task.support) == ("Where is the football?", "kitchen", raw["support"])
    assert task.meta.family == "babilong/qa2" and task.id == "qa2-1"
    text = " ".join(raw["context"])  # the first supporting fact's character offset, by hand
    assert task.meta.position == round(text.index("John Event 2") / len(text), 4)


def test_babilong_directory_of_objects_and_jsonl_splits_agree(segmenter):
    from_dir = read_source("babilong", FIXTURES / "babilong", segmenter, "validation")
    assert list(from_dir) == ["validation"] and [t.answer for t in from_dir["validation"]] == ["bathroom", "kitchen"]
    splits = read_source("babilong", FIXTURES / "jsonl", segmenter, "validation")  # split files keep their splits
    assert sorted(splits) == ["test", "train"] and [t.answer for t in splits["train"]] == ["kitchen"]
    assert [t.model_dump(exclude={"id", "meta"}) for t in splits["test"]] == \
           [t.model_dump(exclude={"id", "meta"}) for t in from_dir["validation"]]
    assert [t.id for t in splits["test"]] == ["test-1", "test-2"]  # line numbers name JSON Lines records
    assert splits["test"][0].meta.family == "babilong/jsonl"


def test_student_records_database_and_placeholders(segmenter):
    tasks = read_source("student-records", FIXTURES / "student_records" / "recall.json", segmenter, "test")["test"]
    assert len(tasks) == 2  # the trailing "..." question is skipped
    assert tasks[0].context == [
        "Student 1000001, Name: Ada Moss, Year: Junior, School: School of Engineering, Major: Civil Engineering, Grade: 81",
        "Student 1000002, Name: Ben Ortiz, Year: Freshman, School: School of Arts and Humanities, Major: History, "
        "Grade: 64",
        "Student 1000003, Name: Cleo Park, Year: Senior, School: School of Engineering, Major: Mechanical Engineering, "
        "Grade: 93",
    ]  # and the "..." database entry too
    assert [(t.question, t.answer) for t in tasks] == [
        ("What is the name of the student with ID 1000002?", "Ben Ortiz"),
        ("What is the grade of the student with ID 1000003?", "93")]  # a number answer becomes text
    assert [t.id for t in tasks] == ["recall-1-q0", "recall-1-q1"]
    assert all(t.meta.family == "student-records/recall" for t in tasks)
    agg = read_source("student-records", FIXTURES / "student_records" / "allgregation.json", segmenter, "test")["test"]
    assert agg[0].meta.family == "student-records/aggregation"  # the upstream misspelling mapped
    grades = [int(segment.rsplit("Grade: ", 1)[1]) for segment in agg[0].context]
    assert [t.answer for t in agg] == [str(max(grades)), f"{sum(grades) / len(grades):.1f}"]


def test_longgorilla_api_entries(segmenter):
    (task,) = read_source("longgorilla", FIXTURES / "longgorilla" / "api.json", segmenter, "test")["test"]
    assert len(task.context) == 3 and all(s.startswith("<api>") for s in task.context)
    assert task.answer == "AutoTokenizer.from_pretrained('gpt2')"
    assert task.question == "Instruction: Write code that tokenizes text for GPT-2."
    assert task.meta.location == "post" and task.meta.family == "longgorilla/api"


@pytest.mark.parametrize("reader, record, expected", [
    ("babilong", {"context": ["a"], "question": "q"}, "field 'answer': missing"),
    ("student-records", {"database": [{"Student Id": "1"}], "questions": []}, "a record lacks 'Student Name'"),
    ("longgorilla", {"context": [], "question": "q", "answer": "a"}, "field 'context': empty context"),
])
def test_a_broken_record_names_its_file_and_line(segmenter, tmp_path, reader, record, expected):
    path = tmp_path / "bad.jsonl"
    fine = ({"database": json.loads((FIXTURES / "student_records" / "recall.json").read_text())["database"][:1],
             "questions": []} if reader == "student-records" else {"context": ["fine"], "question": "q", "answer": "a"})
    path.write_text(json.dumps(fine) + "\n" + json.dumps(record) + "\n")  # line 1 reads; line 2 is named
    with pytest.raises(PerkError) as error:
        read_source(reader, path, segmenter, "test")
    assert str(error.value).startswith(f"{path}:2: ") and expected in str(error.value)


@pytest.mark.parametrize("name, n_segments, question, answer, support", [
    ("qa1", 4, "Where is Daniel?", "garden", ["Daniel Event 4: Daniel went back to the garden."]),
    ("qa2", 4, "Where is the apple?", "hallway", None),
    ("qa3", 3, "Where was the milk before the bedroom?", "office",
     ["Daniel Event 12: Daniel went back to the office.", "Daniel Event 13: Daniel went back to the bedroom.",
      "Daniel Event 14: Daniel left the milk."]),
])
@needs_reference
def test_babilong_samples(segmenter, name, n_segments, question, answer, support):
    path = REFERENCE / "babilong" / f"{name}.json"
    (task,) = read_source("babilong", path, segmenter, "test")["test"]
    raw = json.loads(path.read_text())
    assert task.context == raw["context"] and len(task.context) == n_segments
    assert (task.question, task.answer) == (question, answer)
    assert task.support == (support or raw["support"])
    assert task.meta.family == f"babilong/{name}"
    first = min(" ".join(task.context).find(s) for s in task.support)
    assert 0 <= task.meta.position <= 1 and first > 0


@needs_reference
def test_babilong_directory_and_jsonl_shapes_agree(segmenter, tmp_path):
    from_dir = read_source("babilong", REFERENCE / "babilong", segmenter, "validation")["validation"]
    assert [t.answer for t in from_dir] == ["garden", "hallway", "office"]
    lines = [json.dumps(json.loads((REFERENCE / "babilong" / f"qa{i}.json").read_text())) for i in (1, 2, 3)]
    (tmp_path / "test.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "train.jsonl").write_text(lines[0] + "\n")
    splits = read_source("babilong", tmp_path, segmenter, "test")
    assert sorted(splits) == ["test", "train"]
    assert [t.model_dump(exclude={"id", "meta"}) for t in splits["test"]] == \
           [t.model_dump(exclude={"id", "meta"}) for t in from_dir]


@needs_reference
@pytest.mark.parametrize("name, family, n_tasks", [
    ("recall", "recall", 5), ("relation", "relation", 4), ("allgregation", "aggregation", 3)])
def test_student_records_samples(segmenter, name, family, n_tasks):
    tasks = read_source("student-records", REFERENCE / "student_records" / f"{name}.json", segmenter, "test")["test"]
    assert len(tasks) == n_tasks  # the trailing "..." placeholder is skipped
    assert all(t.meta.family == f"student-records/{family}" for t in tasks)
    context = tasks[0].context
    assert len(context) == 26
    assert context[0] == ("Student 3109998, Name: Alison Keith, Year: Sophomore, School: School of Computer "
                          "Information and Data Sciences, Major: Computer Science, Grade: 72")
    assert "..." not in context


@needs_reference
def test_student_records_answers_agree_with_their_database(segmenter):
    recall = read_source("student-records", REFERENCE / "student_records" / "recall.json", segmenter, "test")["test"]
    assert (recall[0].question, recall[0].answer) == ("What is the name of the student with ID 3109998?",
                                                      "Alison Keith")
    agg = read_source("student-records", REFERENCE / "student_records" / "allgregation.json", segmenter, "test")["test"]
    grades = [int(segment.rsplit("Grade: ", 1)[1]) for segment in agg[0].context]
    assert [t.answer for t in agg] == [str(max(grades)), str(min(grades)), f"{sum(grades) / len(grades):.1f}"]


@needs_reference
def test_longgorilla_sample(segmenter):
    (task,) = read_source("longgorilla", REFERENCE / "longgorilla" / "huggingface_api.json", segmenter, "test")["test"]
    assert len(task.context) == 14 and all(s.startswith("<api>") for s in task.context)
    assert task.answer == "AutoModel.from_pretrained('YituTech/conv-bert-base')"
    assert task.question.startswith("Instruction: Write an API implementation")
    assert task.meta.location == "pre" and task.meta.family == "longgorilla/huggingface_api"


def test_generic_jsonl_string_context_is_segmented(segmenter, tmp_path):
    tokenizer = build_tiny_tokenizer()
    text = " ".join(f"Sentence number {i} is about the kitchen." for i in range(200))
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"context": text, "question": "q?", "answer": 7}) + "\n"
                    + json.dumps({"id": "b", "context": ["one", "two"], "question": "q2", "answer": "a"}) + "\n")
    first, second = read_source("jsonl", path, make_segmenter(tokenizer, 32), "test")["test"]
    assert len(first.context) > 10 and first.answer == "7" and first.id == "docs-1"
    assert all(len(tokenizer(s)["input_ids"]) <= 32 for s in first.context)
    assert all(s.endswith(".") for s in first.context)  # cuts fall at sentence ends
    assert " ".join(first.context) == text
    assert second.id == "b" and second.context == ["one", "two"]
