"""Cut a plain document into segments of at most N tokens on token boundaries, preferring sentence ends."""

from __future__ import annotations

import bisect
import re

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n\s*")


def sentence_boundaries(text: str) -> list[int]:
    """Character offsets where a new sentence (or line) starts."""
    return [m.end() for m in _SENTENCE_END.finditer(text)]


def split_sentences(text: str) -> list[str]:
    starts = [0, *sentence_boundaries(text), len(text)]
    return [text[a:b].strip() for a, b in zip(starts, starts[1:]) if text[a:b].strip()]


def segment_text(text: str, tokenizer, max_tokens: int) -> list[str]:
    """Segments of at most `max_tokens` tokens (as counted on the whole text), in order.

    Each cut falls at the last sentence end within the budget; a sentence longer than the budget is
    cut on a token boundary. Needs a fast tokenizer (offset mapping).
    """
    if max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoding["offset_mapping"]
    if not offsets:
        return [text.strip()] if text.strip() else []
    starts = [s for s, _ in offsets]
    # Token indices at which a sentence starts (cutting there keeps sentences whole).
    sentence_tokens = sorted({bisect.bisect_right(starts, b) - 1 for b in sentence_boundaries(text)})
    segments, first, n = [], 0, len(offsets)
    while first < n:
        limit = min(first + max_tokens, n)
        cut = limit
        if limit < n:
            k = bisect.bisect_right(sentence_tokens, limit) - 1
            if k >= 0 and sentence_tokens[k] > first:
                cut = sentence_tokens[k]
        piece = text[offsets[first][0]: offsets[cut - 1][1]].strip()
        if piece:
            segments.append(piece)
        first = cut
    return segments
