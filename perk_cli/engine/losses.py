"""The inner (weighted context) loss and the outer (answer) loss, over a model called functionally.

A `ModelCall` runs the model with given keyword arguments: a `FunctionalCall` (the func engine) or a
`higher` patched module (the higher engine).

Only the positions a loss scores need logits. Where a model's logits are exactly its output
projection of the last hidden state (`FunctionalCall.head`), the losses ask the model for one
position's logits and project only the scored positions: the vocabulary-wide work (the projection,
the softmax and their backward passes) then covers the target tokens alone, not the padding, the
segment prefixes, the question prompt or the last position of every row.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from perk_cli.engine.batches import TokenBatch
from perk_cli.engine.learned import TokenWeighter

ModelCall = Callable[..., object]

# Families whose logits are lm_head(last hidden state), with no soft-capping or scaling after it.
PLAIN_HEAD_MODEL_TYPES = frozenset({"gpt2", "llama", "qwen2", "qwen3", "mistral", "smollm3"})


def plain_output_head(model: torch.nn.Module) -> torch.nn.Linear | None:
    """The model's output projection when logits are exactly that projection of the last hidden state
    (a known family, a plain Linear head with no LoRA on it); else None."""
    config = getattr(model, "config", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if getattr(config, "model_type", None) in PLAIN_HEAD_MODEL_TYPES and type(head) is torch.nn.Linear:
        return head
    return None


class FunctionalCall:
    """`model` run with `params` in place of its own tensors (torch.func.functional_call); `head` is
    its output projection where losses may project the scored positions themselves (None: they use
    the model's logits)."""

    def __init__(self, model: torch.nn.Module, params: dict[str, torch.Tensor]):
        self.model, self.params = model, params
        self.head = plain_output_head(model)

    def __call__(self, **kwargs):
        from torch.func import functional_call

        return functional_call(self.model, self.params, (), kwargs)


def functional_model_call(model: torch.nn.Module, params: dict[str, torch.Tensor]) -> FunctionalCall:
    return FunctionalCall(model, params)


def _scored(call: ModelCall, batch: TokenBatch, with_hidden: bool):
    """(logits [N, V] at the N positions that predict a target, the last hidden state [B, T, H] or None)."""
    mask = batch.target_mask[:, 1:]
    head = getattr(call, "head", None)
    if head is not None:
        # logits_to_keep=1: the model projects one position a row; the scored ones are projected here.
        out = call(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True,
                   logits_to_keep=1)
        hidden = out.hidden_states[-1]
        return head(hidden[:, :-1][mask]), hidden if with_hidden else None
    out = call(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=with_hidden)
    return out.logits[:, :-1][mask], out.hidden_states[-1] if with_hidden else None


def _nll(logits: torch.Tensor, batch: TokenBatch) -> torch.Tensor:
    """[B, T-1] NLL of token j+1 from the logits at the scored positions, zero elsewhere."""
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()  # half-precision logits lose too much in the softmax
    mask = batch.target_mask[:, 1:]
    nll = F.cross_entropy(logits, batch.input_ids[:, 1:][mask], reduction="none")
    return nll.new_zeros(mask.shape).masked_scatter(mask, nll)


def weighted_token_nll(call: ModelCall, batch: TokenBatch, weighter: TokenWeighter | None,
                       legacy: bool = False, recency: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, T-1] NLL of token j+1, [B, T-1] its weight), both zero where token j+1 is not a target.

    Without a weighter every target weighs 1. With one, the weight of token j+1 is read from the last
    hidden state at position j+1, the state that has read that token (`legacy`: from position j, the
    state that predicts it and has not seen it). The weights keep their graph (to the weighter and,
    through the hidden state, to phi); the inner loop decides what to differentiate. With `recency`, a
    row's weights are multiplied by exp(recency * (its place - 1/2)) (`batch.row_place`, 0 to 1).
    """
    logits, hidden = _scored(call, batch, with_hidden=weighter is not None)
    nll = _nll(logits, batch)
    mask = batch.target_mask[:, 1:].to(nll.dtype)
    if recency:
        if batch.row_place is None:
            raise ValueError("a recency-weighted inner loss needs each row's place (TokenBatch.row_place)")
        mask = mask * torch.exp(recency * (batch.row_place.to(nll.dtype) - 0.5))[:, None]
    if weighter is None:
        return nll, mask
    return nll, weighter(hidden[:, :-1] if legacy else hidden[:, 1:]).to(nll.dtype) * mask


def inner_loss(call: ModelCall, batch: TokenBatch, weighter: TokenWeighter | None,
               normaliser: int) -> torch.Tensor:
    """The legacy inner loss, sum_j w_j * CE_j / normaliser, as one function to differentiate whole.

    Its gradient holds a term CE_j * grad w_j that lowers the weights instead of the loss; the default
    inner loop (`weighting_mode="coefficients"`) does not use it. Kept for the `higher` engine (the
    official code's rule) and for ablations.
    """
    nll, weights = weighted_token_nll(call, batch, weighter, legacy=True)
    return (nll * weights).sum() / max(normaliser, 1)


def answer_loss(call: ModelCall, batch: TokenBatch, answer_weight: float = 1.0) -> torch.Tensor:
    """Cross-entropy over the target tokens, their weighted mean (the outer loss): see answer_scores."""
    return answer_scores(call, batch, answer_weight)[0]


def answer_scores(call: ModelCall, batch: TokenBatch, answer_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(the answer loss, [B] bool: every target token of the row is the model's top token given the
    targets before it). The second is teacher-forced exact match: true exactly when greedy decoding
    from the row's prompt reproduces its whole target, the closing eos included.

    The loss is the mean over target tokens, the answer's own tokens (`batch.answer_mask`) counting
    `answer_weight` times: sum_j a_j CE_j / sum_j a_j. At 1 it is the plain mean."""
    logits, _ = _scored(call, batch, with_hidden=False)
    nll = _nll(logits, batch)
    weights = batch.target_weights(answer_weight).to(nll.dtype)
    loss = (nll * weights).sum() / weights.sum().clamp_min(1.0)
    mask = batch.target_mask[:, 1:]
    missed = logits.argmax(-1) != batch.input_ids[:, 1:][mask]
    missed_rows = mask.new_zeros(mask.shape).masked_scatter(mask, missed).any(1)
    return loss, mask.any(1) & ~missed_rows
