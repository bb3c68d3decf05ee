"""perk reading-base (perk_cli.training.reading_base): which task sets --subtasks makes (names, seeds, facts),
what a step draws, the gate, the delta it saves, and its one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from perk_cli.training.reading_base import task_sets

COMMAND = [sys.executable, "-m", "perk_cli.cli", "reading-base"]


def _prepared(directory: Path) -> dict:
    return json.loads((directory / "prepare.json").read_text())["settings"]


def test_qa1_alone_keeps_the_first_attempts_sets_and_keys(tmp_path):
    train, test = task_sets(tmp_path, 2, 3, "tiny")
    assert list(train) == [None, 128] and list(test) == [128, 256]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        "qa1-test-128", "qa1-test-256", "qa1-train-128", "qa1-train-clean"]
    settings = _prepared(tmp_path / "data" / "qa1-test-256")
    assert (settings["seed"], settings["facts"], settings["subtask"]) == (212, 4, "qa1")
    assert _prepared(tmp_path / "data" / "qa1-train-clean")["seed"] == 201
    assert len(test[256]) == 3 and len(train[None]) == 2


def test_two_subtasks_make_each_its_own_seeded_sets(tmp_path):
    train, test = task_sets(tmp_path, 2, 2, "tiny", ("qa1", "qa2"))
    assert list(train) == ["qa1-clean", "qa1-128", "qa2-clean", "qa2-128"]
    assert list(test) == ["qa1-128", "qa1-256", "qa2-128", "qa2-256"]
    qa2 = _prepared(tmp_path / "data" / "qa2-train-128")
    assert (qa2["seed"], qa2["facts"], qa2["subtask"], qa2["length"]) == (222, 6, "qa2", 128)
    assert _prepared(tmp_path / "data" / "qa2-test-128")["seed"] == 231
    assert all(t.question.startswith("Where is the ") for t in test["qa2-256"])


def test_recall_is_sized_by_records_with_sets_of_its_own(tmp_path):
    train, test = task_sets(tmp_path, 2, 2, "tiny", ("qa1", "recall"))
    assert list(train) == ["qa1-clean", "qa1-128", "recall-3rec", "recall-6rec"]
    assert list(test) == ["qa1-128", "qa1-256", "recall-6rec", "recall-12rec"]
    held_out = _prepared(tmp_path / "data" / "recall-test-12rec")
    assert (held_out["task"], held_out["subtask"], held_out["records"], held_out["seed"]) == (
        "records", "recall", 12, 272)
    assert _prepared(tmp_path / "data" / "recall-train-3rec")["seed"] == 261
    for key, records in (("recall-3rec", 3), ("recall-6rec", 6)):
        assert all(len(t.context) == records and t.context[0].startswith("Student ") for t in train[key])
    assert all(t.question.startswith("What is the ") and len(t.context) == 12 for t in test["recall-12rec"])


def test_an_unknown_subtask_is_one_line_naming_the_option(tmp_path):
    done = subprocess.run(COMMAND + ["--out", str(tmp_path),
                           "--model", "tiny", "--subtasks", "qa1,qa9"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--subtasks: expected a comma list of qa1, qa2, qa3, recall" in done.stderr
    assert "Traceback" not in done.stderr


def test_evaluate_saved_scores_a_saved_base_by_decoding(tmp_path, tmp_path_factory):
    """`--evaluate` (and the gate after training) on a saved base directory: decoded in-context EM, as
    perk eval's `base` reads it, recorded in the report."""
    from perk_cli.config import ModelSettings
    from perk_cli.scores import exact_match
    from perk_cli.models.base import load_base
    from perk_cli.training.in_context import answer_in_context
    from perk_cli.training.reading_base import evaluate_saved, in_context_runtime
    from tests.conftest import prepared_qa1

    data = prepared_qa1(tmp_path_factory, train=0, validation=0, test=3, seed=5)
    model, tokenizer = load_base(ModelSettings(name="tiny", dtype="float32"))
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    evaluate_saved(tmp_path, data)
    result = json.loads((tmp_path / "reading_base.json").read_text())["held_out_in_context"][str(data)]
    saved, saved_tokenizer = load_base(ModelSettings(name=str(tmp_path / "model"), dtype="float32"))
    runtime = in_context_runtime(saved, saved_tokenizer)
    from perk_cli.data.schema import read_split
    answers = [answer_in_context(runtime, task, 8)[0] for task in read_split(data, "test")]
    expected = sum(exact_match(a, t.answer) for a, t in zip(answers, read_split(data, "test"))) / 3
    assert result["n"] == 3 and result["val_em"] == expected and result["val_loss"] > 0


def test_the_recite_layout_gets_sets_of_its_own_in_sentence_segments(tmp_path):
    train, test = task_sets(tmp_path, 2, 2, "tiny", ("qa2", "recall"), recite=True)
    assert list(train) == ["qa2-clean", "qa2-128", "qa2-clean-recite", "qa2-128-recite", "recall-3rec", "recall-6rec"]
    assert list(test) == ["qa2-128", "qa2-256", "qa2-128-recite", "qa2-256-recite", "recall-6rec", "recall-12rec"]
    for name, seed in (("qa2-train-clean-s16", 226), ("qa2-train-128-s16", 227), ("qa2-test-128-s16", 236),
                       ("qa2-test-256-s16", 237)):
        settings = _prepared(tmp_path / "data" / name)
        assert (settings["seed"], settings["segment_tokens"], settings["facts"]) == (seed, 16, 6)
    assert _prepared(tmp_path / "data" / "qa2-train-128")["segment_tokens"] == 64  # the in-context sets unchanged
    assert len(test["qa2-256-recite"]) == 2 and len(train["qa2-clean-recite"]) == 2


def test_a_fresh_pool_draws_new_training_seeds_and_keeps_the_test_sets(tmp_path):
    train, test = task_sets(tmp_path, 2, 2, "tiny", ("qa2",), recite=True, pool=1)
    for name, seed in (("qa2-train-clean-pool1", 1221), ("qa2-train-128-pool1", 1222),
                       ("qa2-train-clean-s16-pool1", 1226), ("qa2-train-128-s16-pool1", 1227),
                       ("qa2-test-128", 231), ("qa2-test-256", 232), ("qa2-test-128-s16", 236), ("qa2-test-256-s16", 237)):
        assert _prepared(tmp_path / "data" / name)["seed"] == seed, name
    first, _ = task_sets(tmp_path / "first", 2, 2, "tiny", ("qa2",))
    assert [t.context for t in train["qa2-128"]] != [t.context for t in first["qa2-128"]]
    assert list(train) == ["qa2-clean", "qa2-128", "qa2-clean-recite", "qa2-128-recite"]


def test_a_negative_pool_is_one_line_naming_the_option(tmp_path):
    done = subprocess.run(COMMAND + ["--out", str(tmp_path),
                           "--model", "tiny", "--subtasks", "qa2", "--pool", "-1"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "--pool: Input should be greater than or equal to 0" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "data").exists()


def _sentence_tasks() -> list:
    """qa2 stories in one-sentence segments (what 16-token segments give with SmolLM2's tokenizer)."""
    from perk_cli.data.schema import Task

    return [Task(id=f"t{i}", context=["Event 0: Mary went to the garden.", "The sky was grey that day.",
                                      f"Event 1: Mary picked up the {thing} there.", f"Event 2: Mary moved to the {place}."],
                 question=f"Where is the {thing}?", answer=place)
            for i, (thing, place) in enumerate((("apple", "kitchen"), ("milk", "office"), ("ball", "hallway")))]


def test_recite_batch_is_perks_recite_target_read_at_the_answer():
    """The recite layout as prompts.encode_question writes PERK's recite target, the story's events as its
    recital; the loss is on the answer's tokens (and eos) only, and the reading score counts the answer's
    tokens against the model's own top tokens."""
    import torch

    from perk_cli.config import ModelSettings, PromptSettings
    from perk_cli.models.base import load_base
    from perk_cli.prompts import encode_question, question_prompt
    from perk_cli.training.reading_base import recite_batch, recite_reading

    tasks = _sentence_tasks()
    model, tokenizer = load_base(ModelSettings(name="tiny", dtype="float32"))
    task = tasks[0]
    events = [s for s in task.context if s.startswith("Event ")]
    batch = recite_batch(tokenizer, task)
    asked = question_prompt(task.question, len(task.context), PromptSettings())
    ids = batch.input_ids[0].tolist()
    assert tokenizer.decode(ids[:-1]) == asked + "\n" + "\n".join(events) + "\n" + asked + " " + task.answer
    assert ids[-1] == tokenizer.eos_token_id
    perk = encode_question(tokenizer, task.question, len(task.context),
                           PromptSettings(answer_format="recite", max_answer_tokens=512), task.answer, events)
    assert torch.equal(perk.input_ids, batch.input_ids)
    targets = batch.target_mask[0]
    assert tokenizer.decode(batch.input_ids[0][targets][:-1]).strip() == task.answer and targets[-1]
    assert targets.sum() == batch.answer_mask[0].sum() + 1  # the answer's tokens and eos, no recital
    assert recite_batch(tokenizer, task, with_eos=False).target_mask[0].sum() == batch.answer_mask[0].sum()
    # reading: every answer token the model's top token, counted by hand
    hits = 0
    for t in tasks:
        b = recite_batch(tokenizer, t, with_eos=False)
        with torch.no_grad():
            top = model(input_ids=b.input_ids).logits[0, :-1].argmax(-1)
        answer = b.answer_mask[0, 1:]
        hits += bool((top[answer] == b.input_ids[0, 1:][answer]).all())
    result = recite_reading(model, tokenizer, tasks)
    assert result["n"] == 3 and result["answer_em"] == hits / 3 and result["answer_loss"] > 0


def test_recite_batch_refuses_events_not_one_a_segment():
    import pytest

    from perk_cli.data.schema import Task
    from perk_cli.models.base import load_tokenizer
    from perk_cli.training.reading_base import recite_batch

    task = Task(id="t", context=["Event 0: Mary went to the garden. Event 1: Mary got the apple there."],
                question="Where is the apple?", answer="garden")
    with pytest.raises(ValueError, match="task t: its events are not one a segment"):
        recite_batch(load_tokenizer("tiny"), task)


def test_a_recite_share_out_of_range_or_without_babi_is_one_line(tmp_path):
    for extra, message in ((["--recite-share", "1.5"], "--recite-share: Input should be less than or equal to 1"),
                           (["--subtasks", "recall", "--recite-share", "0.5"], "--recite-share: needs a bAbI subtask")):
        done = subprocess.run(COMMAND + ["--out", str(tmp_path),
                               "--model", "tiny", *extra], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_evaluate_recite_scores_the_saved_base_reading_the_gold_events(tmp_path):
    """`--evaluate DIR --evaluate-recite`: recite_reading on the saved directory, printed and recorded under its
    own key; a set whose events are not one a segment is one line naming --evaluate."""
    from perk_cli.config import ModelSettings
    from perk_cli.data.schema import Task, write_prepared
    from perk_cli.models.base import load_base
    from perk_cli.training.reading_base import recite_reading

    model, tokenizer = load_base(ModelSettings(name="tiny", dtype="float32"))
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    write_prepared(tmp_path / "sets", {"test": _sentence_tasks()}, {})
    script = COMMAND + ["--out", str(tmp_path)]
    done = subprocess.run(script + ["--evaluate", str(tmp_path / "sets"), "--evaluate-recite", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    saved, saved_tokenizer = load_base(ModelSettings(name=str(tmp_path / "model"), dtype="float32"))
    expected = recite_reading(saved, saved_tokenizer, _sentence_tasks())
    report = json.loads((tmp_path / "reading_base.json").read_text())["held_out_in_context"]
    recorded = report[f"{tmp_path / 'sets'} (recite layout)"]  # another process: the loss to float rounding
    assert recorded == {**expected, "answer_loss": pytest.approx(expected["answer_loss"], rel=1e-5)}
    assert json.loads(done.stdout)["answer_em"] == expected["answer_em"]
    done = subprocess.run(script + ["--evaluate", str(tmp_path / "sets"), "--evaluate-recite"], capture_output=True,
                          text=True, timeout=300)
    assert f"held-out reading of the gold events in the recite layout, {tmp_path / 'sets'}-recite: " \
        f"{expected['answer_em']:.3f}" in done.stdout
    joined = Task(id="j", context=["Event 0: Mary went to the garden. Event 1: Mary got the apple there."],
                  question="Where is the apple?", answer="garden")
    write_prepared(tmp_path / "joined", {"test": [joined]}, {})
    done = subprocess.run(script + ["--evaluate", str(tmp_path / "joined"), "--evaluate-recite"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2 and "--evaluate" in done.stderr and "not one a segment" in done.stderr
    assert "Traceback" not in done.stderr
    done = subprocess.run(script + ["--evaluate-recite"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "--evaluate-recite: goes with --evaluate DIR" in done.stderr


def test_recite_sets_whose_events_share_segments_are_refused_before_training(tmp_path):
    """The tiny tokenizer cuts these stories' sentences over 16 tokens: one line naming --recite-share, no
    training (no model directory written)."""
    done = subprocess.run(COMMAND + ["--out", str(tmp_path),
                           "--model", "tiny", "--subtasks", "qa2", "--recite-share", "0.5", "--train-tasks", "2",
                           "--test-tasks", "2", "--steps", "1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--recite-share: task " in done.stderr and "its events are not one a segment" in done.stderr
    assert "with --model tiny they are not one sentence each" in done.stderr
    assert not (tmp_path / "model").exists()


def test_step_tasks_draws_the_recite_share_and_replays_old_runs_without_it():
    import random

    from perk_cli.training.reading_base import step_tasks

    pool, recite_pool = list(range(100)), list(range(1000, 1100))
    drawn = step_tasks(random.Random(7), pool, recite_pool, 8, 3)
    assert [recited for _, recited in drawn] == [False] * 5 + [True] * 3
    assert all(t in pool for t, r in drawn if not r) and all(t in recite_pool for t, r in drawn if r)
    assert len({t for t, _ in drawn}) == 8 and drawn == step_tasks(random.Random(7), pool, recite_pool, 8, 3)
    # no recite share: the very batches a run made before --recite-share existed draws
    assert step_tasks(random.Random(7), pool, [], 8, 0) == [(t, False) for t in random.Random(7).sample(pool, 8)]
    assert [r for _, r in step_tasks(random.Random(7), pool, recite_pool, 8, 8)] == [True] * 8


def _qa2(i: int, events: list[str], support: list[str], answer: str):
    from perk_cli.data.schema import Task

    return Task(id=f"q{i}", context=events, question="Where is the apple?", answer=answer, support=support)


def test_dropped_then_moved_is_the_object_put_down_before_its_dropper_moved_on():
    from perk_cli.training.reading_base import dropped_then_moved

    story = ["Event 0: Mary went to the kitchen.", "Event 1: Mary took the apple there.",
             "Event 2: Mary left the apple.", "Event 3: John went to the garden."]
    moved_on = story + ["Event 4: Mary journeyed to the office."]
    assert dropped_then_moved(_qa2(0, moved_on, [story[2], story[0]], "kitchen"))
    # dropped, but its dropper stayed (only someone else moved): her last place is the answer
    assert not dropped_then_moved(_qa2(1, story, [story[2], story[0]], "kitchen"))
    # held: the answer is where the holder is
    held = story[:2] + ["Event 2: Mary moved to the office."]
    assert not dropped_then_moved(_qa2(2, held, [held[1], held[2]], "office"))
    # a move before the drop does not count; a move in another segment (with filler) does
    before = ["Event 0: Mary went to the kitchen.", "Event 1: Mary took the apple there.",
              "Event 2: Mary went back to the hallway.", "Event 3: Mary put down the apple."]
    assert not dropped_then_moved(_qa2(3, before, [before[3], before[2]], "hallway"))
    filler = ["The sky was grey. " + before[0], before[1] + " " + before[2], before[3], "Rain. Event 4: Mary moved to the park."]
    assert dropped_then_moved(_qa2(4, filler, [before[3], before[2]], "hallway"))
    # read from the events, not the support (event_support.py replaces it by every event)
    assert dropped_then_moved(_qa2(5, moved_on, moved_on, "kitchen"))
    # taken again after the drop: held, not this case
    again = moved_on + ["Event 5: Mary got the apple there."]
    assert not dropped_then_moved(_qa2(6, again, [again[5], again[4]], "office"))
    # moved on, then back to where it was dropped: her last place is still the answer
    back = moved_on + ["Event 5: Mary went back to the kitchen."]
    assert not dropped_then_moved(_qa2(8, back, [back[2], back[0]], "kitchen"))
    # another object dropped: not this case
    other = story[:2] + ["Event 2: Mary left the milk.", "Event 3: Mary moved to the park."]
    assert not dropped_then_moved(_qa2(7, other, [other[1], other[3]], "park"))


def test_step_tasks_draws_the_hard_share_from_dropped_then_moved_stories():
    import random

    from perk_cli.training.reading_base import dropped_then_moved, step_tasks

    story = ["Event 0: Mary went to the kitchen.", "Event 1: Mary took the apple there.", "Event 2: Mary left the apple."]
    hard = [_qa2(i, story + ["Event 3: Mary moved to the park."], [story[2], story[0]], "kitchen") for i in range(10)]
    easy = [_qa2(100 + i, story, [story[2], story[0]], "kitchen") for i in range(90)]
    pool, recite_pool = easy + hard, [t.model_copy(update={"id": "r" + t.id}) for t in easy + hard]
    hard_pools = ([t for t in pool if dropped_then_moved(t)], [t for t in recite_pool if dropped_then_moved(t)])
    assert [len(h) for h in hard_pools] == [10, 10]
    drawn = step_tasks(random.Random(3), pool, recite_pool, 8, 4, hard_share=0.5, hard_pools=hard_pools)
    assert [r for _, r in drawn] == [False] * 4 + [True] * 4
    # two of each layout's four are drawn from its hard stories (after two from the whole pool)
    assert [dropped_then_moved(t) for t, _ in drawn][2:4] == [True, True] == [dropped_then_moved(t) for t, _ in drawn][6:]
    assert all(t.id.startswith("r") for t, r in drawn if r) and all(not t.id.startswith("r") for t, r in drawn if not r)
    # no hard share: the draws of runs made before --hard-share
    assert step_tasks(random.Random(3), pool, recite_pool, 8, 4) == step_tasks(random.Random(3), pool, recite_pool, 8, 4,
                                                                                0.0, hard_pools)
    rng = random.Random(3)
    assert step_tasks(random.Random(3), pool, recite_pool, 8, 4) == (
        [(t, False) for t in rng.sample(pool, 4)] + [(t, True) for t in rng.sample(recite_pool, 4)])


def test_a_hard_share_without_qa2_or_out_of_range_is_one_line(tmp_path):
    script = COMMAND + ["--out", str(tmp_path), "--model", "tiny"]
    (tmp_path / "reading_base.json").write_text("{}")  # an earlier report: not removed by a refused run
    for extra, message in ((["--subtasks", "qa1", "--hard-share", "0.25"],
                            "--hard-share: the dropped-then-moved stories are qa2's; add qa2 to --subtasks qa1"),
                           (["--subtasks", "qa2", "--hard-share", "1.5"], "--hard-share: Input should be less than or equal to 1"),
                           (["--subtasks", "qa2", "--hard-share", "0.5", "--train-tasks", "2", "--test-tasks", "1"],
                            "dropped-then-moved stories, fewer than a step draws; raise --train-tasks")):
        done = subprocess.run(script + extra, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert (tmp_path / "reading_base.json").read_text() == "{}"


def test_held_out_scores_add_the_dropped_then_moved_stories_alone():
    from perk_cli.config import ModelSettings
    from perk_cli.models.base import load_base
    from perk_cli.training.in_context import validate_in_context
    from perk_cli.training.reading_base import held_out_scores, in_context_runtime, recite_reading

    story = ["Event 0: Mary went to the kitchen.", "Event 1: Mary took the apple there.", "Event 2: Mary left the apple.",
             "Event 3: Mary moved to the park."]
    hard = _qa2(0, story, [story[2], story[0]], "kitchen")
    held = _qa2(1, story[:2] + ["Event 2: Mary moved to the park."], [story[1], "Event 2: Mary moved to the park."], "park")
    model, tokenizer = load_base(ModelSettings(name="tiny", dtype="float32"))
    runtime = in_context_runtime(model, tokenizer)
    both = held_out_scores(runtime, [hard, held])
    assert both["val_em"] == validate_in_context(runtime, [hard, held], 8)["val_em"]
    assert both["dropped_then_moved"] == {"em": validate_in_context(runtime, [hard], 8)["val_em"], "n": 1}
    recited = held_out_scores(runtime, [hard, held], recite=True)
    assert recited["answer_loss"] == recite_reading(model, tokenizer, [hard, held])["answer_loss"]
    assert recited["dropped_then_moved"] == {"em": recite_reading(model, tokenizer, [hard])["answer_em"], "n": 1}
    assert "dropped_then_moved" not in held_out_scores(runtime, [held])


def test_perk_reading_base_trains_gates_and_saves_a_delta_that_loads_as_the_base(tmp_path):
    """The whole command on the tiny preset: the base saved under --out changed (it trained), the report holds
    the loss curve and every held-out set's gate, and --delta-rank at full rank stores the difference from
    --delta-from so that `--model reader-r128.safetensors` computes what the saved directory does."""
    import torch

    from perk_cli.config import ModelSettings
    from perk_cli.models.base import load_base

    out = tmp_path / "rb"
    done = subprocess.run(COMMAND + ["--out", str(out), "--model", "tiny", "--delta-from", "tiny", "--delta-rank", "128",
                                     "--steps", "2", "--tasks-per-step", "2", "--train-tasks", "4", "--test-tasks", "2",
                                     "--no-bf16", "--lr", "1e-3"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "reading_base.json").read_text())
    assert [row["step"] for row in report["curve"]] == [1, 2] and report["recipe"]["subtasks"] == ["qa1"]
    assert set(report["held_out_in_context"]) == {"128", "256"}
    assert [r["n"] for r in report["held_out_in_context"].values()] == [2, 2]
    assert "held-out in-context EM, 128 tokens:" in done.stdout
    delta = report["delta"]
    assert delta["file"] == str(out / "reader-r128.safetensors") and delta["from"] == "tiny"
    assert set(delta["held_out_in_context"]) == {"128", "256"}
    tuned, tokenizer = load_base(ModelSettings(name=str(out / "model"), dtype="float32"))
    source, _ = load_base(ModelSettings(name="tiny", dtype="float32"))
    loaded, _ = load_base(ModelSettings(name=delta["file"], dtype="float32"))
    ids = torch.tensor([tokenizer("Mary went to the kitchen. Where is Mary?")["input_ids"]])
    with torch.no_grad():
        want, start, got = (m(input_ids=ids).logits for m in (tuned, source, loaded))
    assert not torch.allclose(want, start, atol=1e-4)  # it trained
    assert torch.allclose(got, want, atol=1e-3)
    assert delta["held_out_in_context"]["128"]["val_em"] == report["held_out_in_context"]["128"]["val_em"]


def test_a_delta_from_a_delta_is_refused_before_any_work(tmp_path):
    done = subprocess.run(COMMAND + ["--out", str(tmp_path), "--model", "tiny", "--delta-rank", "8",
                                     "--delta-from", "smollm2-reader"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--delta-from smollm2-reader: is itself a delta" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "data").exists()


def test_a_task_directory_replaces_the_generated_sets(tmp_path, tmp_path_factory):
    """--task DIR: the base trains on DIR's train split and is gated on its validation split, or on its test
    split when it has none (no generated sets); an empty gate split, or a lever that chooses among generated
    sets, is one line before any training."""
    from tests.conftest import prepared_qa1

    data = prepared_qa1(tmp_path_factory, train=4, validation=0, test=2, seed=9)
    out = tmp_path / "rb"
    done = subprocess.run(COMMAND + ["--out", str(out), "--model", "tiny", "--task", str(data), "--steps", "1",
                                     "--tasks-per-step", "2", "--no-bf16", "--json"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["recipe"]["task"] == str(data) and "train_seeds" not in report["recipe"]
    assert list(report["held_out_in_context"]) == [f"{data.name}-test"]
    assert report["held_out_in_context"][f"{data.name}-test"]["n"] == 2
    assert not (out / "data").exists()  # nothing generated
    with_validation = prepared_qa1(tmp_path_factory, train=4, validation=3, test=2, seed=10)
    done = subprocess.run(COMMAND + ["--out", str(tmp_path / "v"), "--model", "tiny", "--task", str(with_validation),
                                     "--steps", "1", "--tasks-per-step", "2", "--no-bf16", "--json"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    gate = json.loads(done.stdout)["held_out_in_context"]
    assert list(gate) == [f"{with_validation.name}-validation"] and gate[f"{with_validation.name}-validation"]["n"] == 3
    empty = prepared_qa1(tmp_path_factory, train=4, validation=0, test=0, seed=9)
    (empty / "test.jsonl").write_text("")
    done = subprocess.run(COMMAND + ["--out", str(tmp_path / "e"), "--model", "tiny", "--task", str(empty)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "test.jsonl: file is empty" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "e" / "model").exists()
    done = subprocess.run(COMMAND + ["--out", str(tmp_path / "e"), "--model", "tiny", "--task", str(data),
                                     "--recite-share", "0.5"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "--task: trains on that directory's own tasks" in done.stderr
