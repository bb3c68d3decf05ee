"""experiments/token_weights.py: which tokens of a context row are the story's facts."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "experiments"))

from token_weights import fact_flags  # noqa: E402

from perk_cli.config import PromptSettings  # noqa: E402
from perk_cli.models.tiny import build_tiny_tokenizer  # noqa: E402
from perk_cli.prompts import encode_context  # noqa: E402


def test_fact_flags_mark_exactly_the_event_sentences_of_a_prefixed_row():
    tokenizer = build_tiny_tokenizer()
    segment = "The council met. Event 3: Mary went back to the kitchen. A historian wrote a list."
    batch = encode_context(tokenizer, [segment], PromptSettings())  # the row starts with its "doc_0: " prefix
    ids = batch.input_ids[0][batch.attention_mask[0].bool()].tolist()
    flags = fact_flags(tokenizer, ids, segment)
    marked = tokenizer.decode([i for i, flag in zip(ids, flags) if flag])
    unmarked = tokenizer.decode([i for i, flag in zip(ids, flags) if not flag])
    assert marked == " Event 3: Mary went back to the kitchen."  # the fact, and nothing else
    assert unmarked == "doc_0: The council met. A historian wrote a list." + tokenizer.eos_token
