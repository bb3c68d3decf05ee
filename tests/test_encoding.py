"""Tasks to token batches: segment prefixes encoded with their text, masks by character offsets."""

import pytest

from perk_cli.config import PromptSettings
from perk_cli.encoding import encode_context
from perk_cli.models import load_tokenizer


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


def test_truncation_to_the_models_positions(tokenizer):
    batch = encode_context(tokenizer, ["word " * 50], PromptSettings(), max_len=12)
    assert batch.input_ids.shape == (1, 12) and batch.target_mask[0, :4].sum() == 0
