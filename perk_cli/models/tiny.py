"""The built-in `tiny` preset: a small GPT-2-style model and a byte-level BPE tokenizer made locally.

Nothing is downloaded. The tokenizer is trained deterministically on a procedural corpus of the task
vocabulary, so it encodes task text compactly; being byte-level, it also encodes any UTF-8 text.
"""

from __future__ import annotations

import itertools

from perk_cli.data import vocab

TINY_VOCAB_SIZE = 2048
TINY_POSITIONS = 1024
EOS = "<|endoftext|>"


def tiny_model_config(vocab_size: int, eos_id: int, n_layer: int = 2, n_embd: int = 128):
    """The GPT-2 config of the tiny preset (2 layers, 128 wide, 4 heads, 1024 positions)."""
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=TINY_POSITIONS,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=4,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        tie_word_embeddings=True,
    )


def _corpus() -> list[str]:
    """Template sentences over the task vocabulary, in a fixed order (the tokenizer is deterministic)."""
    lines: list[str] = []
    for person, verb, place in itertools.product(vocab.PEOPLE, vocab.MOVE_VERBS, vocab.LOCATIONS):
        lines.append(f"{person} {verb} the {place}.")
    for person, verb, obj in itertools.product(vocab.PEOPLE, vocab.TAKE_VERBS + vocab.DROP_VERBS, vocab.OBJECTS):
        lines.append(f"{person} {verb} the {obj} there.")
    for person, place in itertools.product(vocab.PEOPLE, vocab.LOCATIONS):
        lines.append(f"Where is {person}? Answer: {place}. Where was the {vocab.OBJECTS[len(place) % 8]} before the {place}?")
    for first, last in itertools.product(vocab.FIRST_NAMES, vocab.LAST_NAMES):
        lines.append(f"Student Name: {first} {last}, Year: {vocab.YEARS[len(last) % 4]}")
    for school, majors in vocab.SCHOOLS_MAJORS.items():
        for major in majors:
            lines.append(f"School: {school}, Major: {major}, Grade: {len(major) * 3}")
    lines.append(" ".join(vocab.COMMON_WORDS))
    lines.extend(f"doc_{i}: Event {i}: {i} {i * 7 % 100} {i * 1234567 % 9999999}" for i in range(200))
    lines.append("You have memorized 12 documents.\nWhere is Mary?\nAnswer: <support> </support> <output> </output>")
    return lines


def build_tiny_tokenizer():
    """A byte-level BPE tokenizer (vocab 2048) wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=EOS, unk_token=None
    )
