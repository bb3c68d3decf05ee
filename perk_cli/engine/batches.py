"""Token batches the engine consumes: padded ids, attention mask, and which tokens are loss targets."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TokenBatch:
    """Right-padded sequences. `target_mask[b, j]` is True where predicting token j counts in a loss
    (context text for the inner loss; answer tokens for the outer loss). Column 0 is never a target."""

    input_ids: torch.Tensor  # [B, T] long
    attention_mask: torch.Tensor  # [B, T] long
    target_mask: torch.Tensor  # [B, T] bool

    def __post_init__(self) -> None:
        if not (self.input_ids.shape == self.attention_mask.shape == self.target_mask.shape):
            raise ValueError("input_ids, attention_mask and target_mask must share one shape")
        self.target_mask = self.target_mask.bool() & self.attention_mask.bool()

    @property
    def n_targets(self) -> int:
        return int(self.target_mask[:, 1:].sum())

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def to(self, device: torch.device | str) -> "TokenBatch":
        return TokenBatch(self.input_ids.to(device), self.attention_mask.to(device), self.target_mask.to(device))

    def rows(self, start: int, stop: int) -> "TokenBatch":
        """Rows [start, stop), with trailing all-padding columns trimmed."""
        mask = self.attention_mask[start:stop]
        width = max(int(mask.sum(dim=1).max()), 1)
        return TokenBatch(
            self.input_ids[start:stop, :width], mask[:, :width], self.target_mask[start:stop, :width]
        )

    def split(self, max_tokens: int | None) -> list["TokenBatch"]:
        """Consecutive groups of rows whose padded size (rows x longest row) stays within `max_tokens`.

        A single row longer than `max_tokens` forms a group of its own. `None` keeps one group.
        """
        n_rows = self.input_ids.shape[0]
        if max_tokens is None:
            return [self.rows(0, n_rows)]
        lengths = self.attention_mask.sum(dim=1).tolist()
        groups, start, longest = [], 0, 0
        for i, length in enumerate(lengths):
            new_longest = max(longest, int(length))
            if i > start and new_longest * (i - start + 1) > max_tokens:
                groups.append(self.rows(start, i))
                start, new_longest = i, int(length)
            longest = new_longest
        groups.append(self.rows(start, n_rows))
        return groups


@dataclass
class MetaTask:
    """One meta-training example: context segments to memorise and a question/answer to score."""

    context: TokenBatch
    question: TokenBatch

    def to(self, device: torch.device | str) -> "MetaTask":
        return MetaTask(self.context.to(device), self.question.to(device))
