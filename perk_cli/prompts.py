"""The prompt format, both ways: tasks to token batches (as the SPEC fixes them) and greedy
generations back to answers, the same for PERK and every baseline.

Each segment becomes `"doc_{i}: " + segment + eos`, the prefix masked out of the inner loss; ids are a
fresh random permutation a task in meta-training (or, with segment_ids "ordered", story order from a
random offset) and 0..N-1 at test time. The question becomes
`"You have memorized {N} documents.\n{question}\nAnswer:"` with target `" {answer}" + eos` (or the
`<support>...</support>\n<output>...</output>` form). The in-context baseline reads the same
question prompt after the context's segments, one a line.
"""

from __future__ import annotations

import random
import re
from contextlib import nullcontext

import torch

from perk_cli.config import PromptSettings, recite_marker
from perk_cli.engine.batches import MetaTask, TokenBatch
from perk_cli.engine.lora import lora_values


def pad_rows(rows: list[tuple[list[int], list[bool]]], pad_id: int,
             answers: list[list[bool]] | None = None, places: list[float] | None = None) -> TokenBatch:
    """Rows of (ids, target flags) right-padded into a batch; `answers`: each row's answer-token flags;
    `places`: each row's place in its document (0 first to 1 last)."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    targets = torch.zeros((len(rows), width), dtype=torch.bool)
    answer_mask = None if answers is None else torch.zeros((len(rows), width), dtype=torch.bool)
    for r, (row_ids, row_targets) in enumerate(rows):
        ids[r, : len(row_ids)] = torch.tensor(row_ids)
        attention[r, : len(row_ids)] = 1
        targets[r, : len(row_ids)] = torch.tensor(row_targets)
        if answer_mask is not None:
            answer_mask[r, : len(answers[r])] = torch.tensor(answers[r], dtype=torch.bool)
    row_place = None if places is None else torch.tensor(places, dtype=torch.float32)
    return TokenBatch(ids, attention, targets, answer_mask, row_place)


def _prefixed_rows(tokenizer, prefixes: list[str], segments: list[str]) -> list[tuple[list[int], int]]:
    """(ids of prefix + segment encoded as one string, how many leading tokens belong to the prefix alone).

    Encoding the two apart would end the prefix in a lone space token and take the leading space off
    the segment's first word (`' ', 'Event'` where the text reads `' Event'`). A token is the prefix's
    when it holds no character of the segment (by offsets; without offsets, by the longest run of
    leading ids the joint encoding shares with the prefix's own).
    """
    texts = [prefix + segment for prefix, segment in zip(prefixes, segments)]
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        rows = []
        for prefix, ids, offsets in zip(prefixes, encoded["input_ids"], encoded["offset_mapping"]):
            rows.append((ids, sum(1 for _, end in offsets if end <= len(prefix))))
        return rows
    joint = tokenizer(texts, add_special_tokens=False)["input_ids"]
    alone = tokenizer(prefixes, add_special_tokens=False)["input_ids"]
    rows = []
    for ids, prefix_ids in zip(joint, alone):
        shared = 0
        while shared < min(len(ids), len(prefix_ids)) and ids[shared] == prefix_ids[shared]:
            shared += 1
        rows.append((ids, shared))
    return rows


def encode_context(tokenizer, segments: list[str], settings: PromptSettings, doc_ids: list[int] | None = None,
                   max_len: int | None = None) -> TokenBatch:
    """One row a segment: masked prefix, segment tokens (targets), eos (target); each row's place in the
    document (k / (N - 1), whatever the ids) rides along for a recency-weighted inner loss."""
    doc_ids = list(range(len(segments))) if doc_ids is None else doc_ids
    eos = tokenizer.eos_token_id
    prefixes = [settings.segment_prefix.format(i=i) for i in doc_ids]
    rows = []
    for ids, n_prefix in _prefixed_rows(tokenizer, prefixes, segments):
        ids = ids + [eos]
        mask = [False] * n_prefix + [True] * (len(ids) - n_prefix)
        if max_len is not None and len(ids) > max_len:
            ids, mask = ids[:max_len], mask[:max_len]
        rows.append((ids, mask))
    last = max(len(rows) - 1, 1)
    return pad_rows(rows, tokenizer.pad_token_id, places=[k / last for k in range(len(rows))])


def question_prompt(question: str, n_segments: int, settings: PromptSettings) -> str:
    return settings.question_template.format(n=n_segments, question=question)


def _recital(support: list[str] | None, asked: str) -> str:
    """The recite format's target before the answer: the facts one a line, as the in-context reader sees
    its context (`context_text`), then the question prompt `asked` again."""
    return "\n" + context_text(support or []) + asked


def answer_target(answer: str, support: list[str] | None, settings: PromptSettings, asked: str = "") -> str:
    """The target after the question prompt `asked` (which the recite format repeats, so needs)."""
    if settings.answer_format == "recite" and not asked:
        raise ValueError("the recite format repeats the question prompt: pass it as `asked`")
    if settings.answer_format == "support":
        return f"<support>{' '.join(support or [])}</support>\n<output>{answer}</output>"
    if settings.answer_format == "recite":
        return f"{_recital(support, asked)} {answer}"
    return f" {answer}"


def answer_span(answer: str, support: list[str] | None, settings: PromptSettings, asked: str = "") -> tuple[int, int]:
    """[start, end) of the answer's own characters in `answer_target` (not the facts, tags or space)."""
    if settings.answer_format == "support":
        start = len(f"<support>{' '.join(support or [])}</support>\n<output>")
    elif settings.answer_format == "recite":
        start = len(_recital(support, asked)) + 1
    else:
        start = 1
    return start, start + len(answer)


def _encode_marking_span(tokenizer, text: str, start: int, end: int) -> tuple[list[int], list[bool]]:
    """(the encoding of `text`, which of its tokens hold a character of text[start:end]): by offsets;
    without offsets, by the tokens the encodings of text[:start] and text[:end] share with it."""
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return encoded["input_ids"], [a < end and b > start for a, b in encoded["offset_mapping"]]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]

    def shared(prefix: str) -> tuple[int, bool]:
        """(leading tokens `ids` shares with the encoding of `prefix`, whether that is all of it)."""
        alone = tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
        n = 0
        while n < min(len(ids), len(alone)) and ids[n] == alone[n]:
            n += 1
        return n, n == len(alone)

    before, _ = shared(text[:start])  # where they part, token `before` straddles start: it is the answer's
    through, whole = shared(text[:end])
    through += not whole  # ... and a token straddling end holds answer characters too
    return ids, [before <= i < through for i in range(len(ids))]


def decode_budget(tokenizer, tasks, prompt: PromptSettings) -> int:
    """New tokens that validation decodes: the longest target of `tasks` in the run's answer format (the
    support format needs its facts and tags, not just the answer), within the target cap, plus 4."""
    longest = max(len(tokenizer(_task_target(t, prompt)[0], add_special_tokens=False)["input_ids"]) for t in tasks)
    return min(longest, prompt.max_answer_tokens) + 4


def _task_target(task, prompt: PromptSettings) -> tuple[str, int]:
    """(a task's target text in the run's format, where its answer's characters end)."""
    asked = question_prompt(task.question, len(task.context), prompt)
    return (answer_target(task.answer, task.support, prompt, asked),
            answer_span(task.answer, task.support, prompt, asked)[1])


def answer_lengths(tokenizer, tasks, prompt: PromptSettings) -> list[int]:
    """Per task, how many target tokens it takes to reach the end of the answer in the run's format (the
    facts, tags or restated question before it included): more than prompt.max_answer_tokens, and the
    target is cut before the answer is whole."""
    return [len(tokenizer(target[:end], add_special_tokens=False)["input_ids"])
            for target, end in (_task_target(task, prompt) for task in tasks)]


def context_text(segments: list[str]) -> str:
    """The context as the in-context baseline reads it: its segments, one a line."""
    return "\n".join(segments) + "\n"


def encode_question(tokenizer, question: str, n_segments: int, settings: PromptSettings,
                    answer: str | None = None, support: list[str] | None = None,
                    context: list[str] | None = None) -> TokenBatch:
    """The question prompt (after the context's text, for the in-context baseline), plus the target
    tokens (answer + eos) when an answer is given; only the target tokens are targets."""
    text = question_prompt(question, n_segments, settings)
    if context is not None:
        text = context_text(context) + text
    prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
    target: list[int] = []
    in_answer: list[bool] = []
    if answer is not None:
        asked = question_prompt(question, n_segments, settings)
        target, in_answer = _encode_marking_span(tokenizer, answer_target(answer, support, settings, asked),
                                                 *answer_span(answer, support, settings, asked))
        target = target[: settings.max_answer_tokens] + [tokenizer.eos_token_id]
        in_answer = in_answer[: settings.max_answer_tokens] + [False]
    return pad_rows([(prompt + target, [False] * len(prompt) + [True] * len(target))], tokenizer.pad_token_id,
                    answers=[[False] * len(prompt) + in_answer])


def encode_task(tokenizer, task, settings: PromptSettings, rng: random.Random | None = None,
                max_len: int | None = None) -> MetaTask:
    """A Task record as a MetaTask; `rng` draws the training ids (settings.segment_ids: a random permutation,
    or story order from a random offset in 0..N), None = 0..N-1."""
    n = len(task.context)
    doc_ids = None
    if rng is not None and settings.segment_ids == "ordered":
        start = rng.randint(0, n)
        doc_ids = list(range(start, start + n))
    elif rng is not None:
        doc_ids = rng.sample(range(n), n)
    return MetaTask(
        encode_context(tokenizer, task.context, settings, doc_ids, max_len),
        encode_question(tokenizer, task.question, n, settings, task.answer, task.support),
    )


_OUTPUT = re.compile(r"<output>(.*?)(?:</output>|$)", re.S)


def cut_output(raw: str, settings: PromptSettings) -> str:
    """Decoded text up to the support format's closing tag, or the end of the line the recite format
    answers on (unchanged for the plain format)."""
    if settings.answer_format == "support" and "</output>" in raw:
        return raw[: raw.index("</output>") + len("</output>")]
    restated = recite_marker(settings.question_template)  # '\nAnswer:' by default
    if settings.answer_format == "recite" and restated in raw:
        start = raw.index(restated) + len(restated)
        end = raw.find("\n", start)
        return raw if end < 0 else raw[:end]
    return raw


def extract_answer(text: str, settings: PromptSettings) -> str:
    """The answer inside <output> tags (support format), after the restated question (recite format), or
    the text up to the first newline (plain)."""
    if settings.answer_format == "support":
        match = _OUTPUT.search(text)
        return match.group(1).strip() if match else ""
    if settings.answer_format == "recite":
        restated = recite_marker(settings.question_template)  # '\nAnswer:' by default
        if restated not in text:
            return ""
        text = text[text.index(restated) + len(restated):]
    return text.strip().split("\n", 1)[0].strip()


def ending_tokens(model, tokenizer) -> list[int]:
    """Token ids that would end an answer before it starts: eos (the tokenizer's and the model's
    generation config's), pad, and every other special token (an Instruct model's end-of-turn)."""
    ids = set(tokenizer.all_special_ids)
    for value in (tokenizer.eos_token_id, tokenizer.pad_token_id,
                  getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        ids.update(value if isinstance(value, list) else [value] if value is not None else [])
    return sorted(ids)


@torch.no_grad()
def generate_text(model, tokenizer, prompt_ids: torch.Tensor, max_new_tokens: int) -> str:
    """Greedy continuation of `prompt_ids`. The first new token may not end the answer, for every
    method alike: an Instruct base answers `Answer:` with its end-of-turn token before any training."""
    device = next(model.parameters()).device
    prompt_ids = prompt_ids.to(device)
    generated = model.generate(input_ids=prompt_ids, attention_mask=torch.ones_like(prompt_ids),
                               max_new_tokens=max_new_tokens, do_sample=False,
                               begin_suppress_tokens=ending_tokens(model, tokenizer),
                               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(generated[0, prompt_ids.shape[1]:], skip_special_tokens=True)


def answer_question(model, tokenizer, question: str, n_segments: int, prompt: PromptSettings,
                    lora: dict[str, torch.Tensor] | None = None, max_new_tokens: int | None = None,
                    context: list[str] | None = None) -> tuple[str, str]:
    """(answer, raw) decoded greedily from the question prompt, with the LoRA values `lora` in the model
    for the call (PERK, plain TTT), or with `context` before the prompt (the in-context baseline)."""
    ids = encode_question(tokenizer, question, n_segments, prompt, context=context).input_ids
    with lora_values(model, lora) if lora else nullcontext():
        raw = generate_text(model, tokenizer, ids, max_new_tokens or prompt.max_answer_tokens)
    raw = cut_output(raw, prompt)
    return extract_answer(raw, prompt), raw
