"""Token batches the engine consumes: padded ids, attention mask, and which tokens are loss targets."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TokenBatch:
    """Right-padded sequences. `target_mask[b, j]` is True where predicting token j counts in a loss
    (context text for the inner loss; answer tokens for the outer loss). Column 0 is never a target.
    `answer_mask` (question batches) marks the targets that hold the answer's own characters, the ones
    `answer_weight` weighs up in the outer loss (in the support format, not the facts or the tags).
    `row_place` (context batches) is each row's place in its document, 0 for the first segment to 1 for
    the last: what a recency-weighted inner loss reads (InnerLoopSettings.recency)."""

    input_ids: torch.Tensor  # [B, T] long
    attention_mask: torch.Tensor  # [B, T] long
    target_mask: torch.Tensor  # [B, T] bool
    answer_mask: torch.Tensor | None = None  # [B, T] bool, within target_mask
    row_place: torch.Tensor | None = None  # [B] float in [0, 1]

    def __post_init__(self) -> None:
        if not (self.input_ids.shape == self.attention_mask.shape == self.target_mask.shape):
            raise ValueError("input_ids, attention_mask and target_mask must share one shape")
        self.target_mask = self.target_mask.bool() & self.attention_mask.bool()
        if self.answer_mask is not None:
            if self.answer_mask.shape != self.target_mask.shape:
                raise ValueError("answer_mask must have the shape of target_mask")
            self.answer_mask = self.answer_mask.bool() & self.target_mask
        if self.row_place is not None and self.row_place.shape != self.input_ids.shape[:1]:
            raise ValueError("row_place must hold one place a row")

    def target_weights(self, answer_weight: float = 1.0) -> torch.Tensor:
        """[B, T-1] the weight of predicting token j+1 in the answer loss: 1 on a target, `answer_weight`
        on an answer token, 0 elsewhere."""
        weights = self.target_mask[:, 1:].float()
        if answer_weight != 1.0 and self.answer_mask is not None:
            weights = weights + (answer_weight - 1.0) * self.answer_mask[:, 1:].float()
        return weights

    @property
    def n_targets(self) -> int:
        return int(self.target_mask[:, 1:].sum())

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def to(self, device: torch.device | str) -> "TokenBatch":
        answers = None if self.answer_mask is None else self.answer_mask.to(device)
        place = None if self.row_place is None else self.row_place.to(device)
        return TokenBatch(self.input_ids.to(device), self.attention_mask.to(device), self.target_mask.to(device),
                          answers, place)

    def rows(self, start: int, stop: int) -> "TokenBatch":
        """Rows [start, stop), with trailing all-padding columns trimmed."""
        mask = self.attention_mask[start:stop]
        width = max(int(mask.sum(dim=1).max()), 1)
        answers = None if self.answer_mask is None else self.answer_mask[start:stop, :width]
        place = None if self.row_place is None else self.row_place[start:stop]
        return TokenBatch(
            self.input_ids[start:stop, :width], mask[:, :width], self.target_mask[start:stop, :width], answers, place
        )

    def as_document(self) -> "TokenBatch":
        """The same rows as a document of their own: places 0 (first row) to 1 (last), as `encode_context`
        gives a document written alone (a memory grown by it sees it so)."""
        n = self.input_ids.shape[0]
        place = torch.arange(n, dtype=torch.float32, device=self.input_ids.device) / max(n - 1, 1)
        return TokenBatch(self.input_ids, self.attention_mask, self.target_mask, self.answer_mask, place)

    def split(self, max_tokens: int | None) -> list["TokenBatch"]:
        """Consecutive groups of rows whose padded size (rows x longest row) stays within `max_tokens`.

        A single row longer than `max_tokens` forms a group of its own. `None` keeps one group.
        """
        return [self.rows(start, stop) for start, stop in self.split_bounds(max_tokens)]

    def split_bounds(self, max_tokens: int | None) -> list[tuple[int, int]]:
        """The [start, stop) row ranges of `split`."""
        n_rows = self.input_ids.shape[0]
        if max_tokens is None:
            return [(0, n_rows)]
        lengths = self.attention_mask.sum(dim=1).tolist()
        bounds, start, longest = [], 0, 0
        for i, length in enumerate(lengths):
            new_longest = max(longest, int(length))
            if i > start and new_longest * (i - start + 1) > max_tokens:
                bounds.append((start, i))
                start, new_longest = i, int(length)
            longest = new_longest
        bounds.append((start, n_rows))
        return bounds

    @staticmethod
    def concat(batches: list["TokenBatch"]) -> "TokenBatch":
        """The rows of all batches, in order, right-padded to the widest."""
        width = max(b.input_ids.shape[1] for b in batches)

        def pad(t: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.pad(t, (0, width - t.shape[1]))

        answers = None
        if any(b.answer_mask is not None for b in batches):  # a batch without one marks no answer
            answers = torch.cat([pad(b.answer_mask if b.answer_mask is not None else torch.zeros_like(b.target_mask))
                                 for b in batches])
        places = None
        if all(b.row_place is not None for b in batches):  # each task's rows keep their places in its document
            places = torch.cat([b.row_place for b in batches])
        return TokenBatch(torch.cat([pad(b.input_ids) for b in batches]),
                          torch.cat([pad(b.attention_mask) for b in batches]),
                          torch.cat([pad(b.target_mask) for b in batches]), answers, places)


def task_of_rows(rows_per_task: torch.Tensor) -> torch.Tensor:
    """The task index of every row when task i contributes `rows_per_task[i]` consecutive rows."""
    return torch.repeat_interleave(torch.arange(len(rows_per_task), device=rows_per_task.device), rows_per_task)


@dataclass
class MetaTask:
    """One meta-training example: context segments to memorise and a question/answer to score.

    With `first_write` the context is written in two calls, as a memory grows: rows [0, first_write), then
    the rest starting from the memory the first call left, its step sizes times `grow_scale`."""

    context: TokenBatch
    question: TokenBatch
    first_write: int | None = None
    grow_scale: float = 1.0

    def __post_init__(self) -> None:
        rows = self.context.input_ids.shape[0]
        if self.first_write is not None and not 0 < self.first_write < rows:
            raise ValueError(f"first_write must leave rows for both writes (1..{rows - 1}), got {self.first_write}")

    def to(self, device: torch.device | str) -> "MetaTask":
        return MetaTask(self.context.to(device), self.question.to(device), self.first_write, self.grow_scale)
