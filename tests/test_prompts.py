"""The prompt format: segment prefixes encoded with their text (masks by character offsets), the
question with or without the context before it."""

import pytest

from perk_cli.config import PromptSettings
from perk_cli.models.base import load_tokenizer
from perk_cli.prompts import encode_context


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("tiny")


class SlowView:
    """The same tokenizer seen as one without offsets (the fallback path)."""

    def __init__(self, tokenizer):
        self._tokenizer, self.is_fast = tokenizer, False

    def __call__(self, texts, **kwargs):
        kwargs.pop("return_offsets_mapping", None)
        return self._tokenizer(texts, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


@pytest.mark.parametrize("view", ["fast", "slow"])
def test_a_segment_keeps_its_leading_space_and_only_the_prefix_is_masked(tokenizer, view):
    segments = ["Event 0: Mary went to the kitchen.", "Event 1: John moved to the garden."]
    encoder = tokenizer if view == "fast" else SlowView(tokenizer)
    batch = encode_context(encoder, segments, PromptSettings(), doc_ids=[3, 0])
    for row, (doc_id, segment) in enumerate(zip([3, 0], segments)):
        length = int(batch.attention_mask[row].sum())
        ids = batch.input_ids[row, :length].tolist()
        assert ids[:-1] == tokenizer(f"doc_{doc_id}: {segment}", add_special_tokens=False)["input_ids"]
        assert ids[-1] == tokenizer.eos_token_id
        targets = [i for i, t in zip(ids, batch.target_mask[row, :length].tolist()) if t]
        assert tokenizer.decode(targets[:-1]) == " " + segment  # the first word keeps its space
        prefix = [i for i, t in zip(ids, batch.target_mask[row, :length].tolist()) if not t]
        assert tokenizer.decode(prefix) == f"doc_{doc_id}:"
        assert " " not in [tokenizer.decode([i]) for i in ids]  # no lone space token between them


def test_training_ids_are_a_permutation_or_story_order_from_a_random_offset_and_test_ids_count_from_zero(tokenizer):
    import random

    from perk_cli.data.schema import Task
    from perk_cli.prompts import encode_task

    n = 6
    task = Task(id="t", context=[f"Segment {k} of the story." for k in range(n)], question="Where?", answer="here")

    def ids(settings, rng):
        batch = encode_task(tokenizer, task, settings, rng).context
        return [int(tokenizer.decode(row[~target & (row != tokenizer.pad_token_id)].tolist())[4:-1])
                for row, target in zip(batch.input_ids, batch.target_mask)]

    assert ids(PromptSettings(segment_ids="ordered"), None) == ids(PromptSettings(), None) == list(range(n))
    ordered = [ids(PromptSettings(segment_ids="ordered"), random.Random(seed)) for seed in range(40)]
    assert all(d == list(range(d[0], d[0] + n)) for d in ordered)  # consecutive, in the story's order
    assert {d[0] for d in ordered} == set(range(n + 1))  # from every offset 0..N, so never "where it starts"
    shuffled = [ids(PromptSettings(), random.Random(seed)) for seed in range(40)]
    assert all(sorted(d) == list(range(n)) for d in shuffled) and sum(d != sorted(d) for d in shuffled) >= 35


def test_each_segment_row_carries_its_place_in_the_document(tokenizer):
    batch = encode_context(tokenizer, ["One.", "Two.", "Three.", "Four.", "Five."], PromptSettings(), doc_ids=[4, 0, 3, 1, 2])
    assert batch.row_place.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]  # story order, whatever the ids
    assert encode_context(tokenizer, ["Alone."], PromptSettings()).row_place.tolist() == [0.0]
    assert batch.rows(1, 3).row_place.tolist() == [0.25, 0.5]


def test_truncation_to_the_models_positions(tokenizer):
    batch = encode_context(tokenizer, ["word " * 50], PromptSettings(), max_len=12)
    assert batch.input_ids.shape == (1, 12) and batch.target_mask[0, :4].sum() == 0


def test_the_in_context_prompt_is_the_context_and_question_encoded_as_one_string(tokenizer):
    from perk_cli.prompts import context_text, encode_question, question_prompt

    segments = ["Event 0: Mary went to the kitchen.", "Event 1: Mary moved to the garden."]
    prompt = PromptSettings()
    batch = encode_question(tokenizer, "Where is Mary?", 2, prompt, answer="garden", context=segments)
    ids, targets = batch.input_ids[0].tolist(), batch.target_mask[0].tolist()
    text = "Event 0: Mary went to the kitchen.\nEvent 1: Mary moved to the garden.\n" + \
        "You have memorized 2 documents.\nWhere is Mary?\nAnswer:"
    assert context_text(segments) + question_prompt("Where is Mary?", 2, prompt) == text
    n_prompt = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert ids[:n_prompt] == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids[n_prompt:] == tokenizer(" garden", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert targets == [False] * n_prompt + [True] * (len(ids) - n_prompt)  # only the answer and eos are targets
    without = encode_question(tokenizer, "Where is Mary?", 2, prompt, answer="garden").input_ids[0].tolist()
    assert without == tokenizer(question_prompt("Where is Mary?", 2, prompt), add_special_tokens=False)["input_ids"] \
        + ids[n_prompt:]  # PERK's prompt: the same question and target, no context


@pytest.mark.parametrize("view", ["fast", "slow"])
@pytest.mark.parametrize("answer_format,answer", [("support", "kitchen"), ("support", "the hallway"),
                                                  ("plain", "bathroom"), ("plain", "north west"),
                                                  ("recite", "garden"), ("recite", "north west")])
def test_the_answer_mask_marks_exactly_the_answers_own_tokens(tokenizer, view, answer_format, answer):
    from perk_cli.prompts import answer_target, encode_question

    settings = PromptSettings(answer_format=answer_format)
    support = ["Event 2: Mary took the milk there.", "Event 0: Mary went to the kitchen."]
    encoder = tokenizer if view == "fast" else SlowView(tokenizer)
    batch = encode_question(encoder, "Where is the milk?", 3, settings, answer, support)
    ids = batch.input_ids[0].tolist()
    answer_ids = [i for i, flag in zip(ids, batch.answer_mask[0].tolist()) if flag]
    assert tokenizer.decode(answer_ids).strip() == answer
    # the answer's tokens are one run inside the target, followed by the closing tag (support) or eos
    positions = [j for j, flag in enumerate(batch.answer_mask[0].tolist()) if flag]
    assert positions == list(range(positions[0], positions[-1] + 1))
    assert batch.target_mask[0, positions].all()
    after = ids[positions[-1] + 1:]
    if answer_format == "plain":
        target = tokenizer(answer_target(answer, support, settings), add_special_tokens=False)["input_ids"]
        assert after == [tokenizer.eos_token_id] and len(target) == len(answer_ids)
    elif answer_format == "recite":
        assert after == [tokenizer.eos_token_id]
        assert tokenizer.decode(ids[:positions[0]]).endswith("Where is the milk?\nAnswer:")
    else:
        assert tokenizer.decode(after[:-1]) == "</output>"


def test_a_target_cut_before_its_answer_marks_no_answer(tokenizer):
    from perk_cli.prompts import encode_question

    settings = PromptSettings(answer_format="support", max_answer_tokens=4)
    support = ["Event 0: Mary went to the kitchen."]
    batch = encode_question(tokenizer, "Where is the milk?", 3, settings, "kitchen", support)
    assert int(batch.target_mask.sum()) == 5 and not batch.answer_mask.any()


def test_the_recite_target_is_the_in_context_readers_prompt_with_the_facts_as_its_context(tokenizer):
    """Prompt + recite target = the in-context layout (facts one a line, the question prompt, the answer)
    after the question prompt: the base reads the recital as it reads a context."""
    from perk_cli.prompts import context_text, encode_question, question_prompt

    settings = PromptSettings(answer_format="recite")
    support = ["Event 0: Mary went to the kitchen.", "Event 1: Mary took the milk there."]
    asked = question_prompt("Where is the milk?", 5, settings)
    batch = encode_question(tokenizer, "Where is the milk?", 5, settings, "kitchen", support)
    reading = context_text(support) + asked + " kitchen"
    assert tokenizer.decode(batch.input_ids[0].tolist()) == asked + "\n" + reading + tokenizer.eos_token
    n_prompt = len(tokenizer(asked, add_special_tokens=False)["input_ids"])
    assert batch.target_mask[0].tolist() == [False] * n_prompt + [True] * (batch.input_ids.shape[1] - n_prompt)


@pytest.mark.parametrize("raw,answer", [
    ("\nEvent 0: Mary went to the kitchen.\nYou have memorized 5 documents.\nWhere is Mary?\nAnswer: kitchen",
     "kitchen"),
    ("\nEvent 0: Mary went.\nYou have memorized 5 documents.\nWhere is Mary?\nAnswer: the hall\nEvent 1: more\n"
     "Answer: garden", "the hall"),  # the first answer line counts, what follows it is cut
    ("\nEvent 0: Mary went to the kitchen.\nEvent 1: Mary", ""),  # budget spent before the answer: no answer
])
def test_the_recite_answer_is_read_after_the_restated_question(raw, answer):
    from perk_cli.prompts import cut_output, extract_answer

    settings = PromptSettings(answer_format="recite")
    cut = cut_output(raw, settings)
    assert extract_answer(cut, settings) == answer
    assert "\nEvent 1: more" not in cut


def test_the_recite_format_refuses_a_template_with_no_answer_marker():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="ends with a field"):
        PromptSettings(answer_format="recite", question_template="Q: {question}")
    assert PromptSettings(answer_format="recite", question_template="Q: {question} A:")  # ' A:' marks the answer
