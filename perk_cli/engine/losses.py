"""The inner (weighted context) loss and the outer (answer) loss, over a model called functionally.

A `ModelCall` runs the model with given keyword arguments, e.g. `functional_call(model, lora, (), kw)`
for the func engine or a `higher` patched module for the higher engine.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from perk_cli.engine.batches import TokenBatch
from perk_cli.engine.learned import TokenWeighter

ModelCall = Callable[..., object]


def functional_model_call(model: torch.nn.Module, params: dict[str, torch.Tensor]) -> ModelCall:
    from torch.func import functional_call

    return lambda **kwargs: functional_call(model, params, (), kwargs)


def token_nll(logits: torch.Tensor, batch: TokenBatch) -> torch.Tensor:
    """[B, T-1] negative log-likelihood of token j+1 given the prefix, zero where it is not a target."""
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()  # half-precision logits lose too much in the softmax
    nll = F.cross_entropy(
        logits[:, :-1].flatten(0, 1), batch.input_ids[:, 1:].flatten(), reduction="none"
    ).view(logits.shape[0], -1)
    return nll * batch.target_mask[:, 1:]


def weighted_token_nll(call: ModelCall, batch: TokenBatch, weighter: TokenWeighter | None,
                       legacy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, T-1] NLL of token j+1, [B, T-1] its weight), both zero where token j+1 is not a target.

    Without a weighter every target weighs 1. With one, the weight of token j+1 is read from the last
    hidden state at position j+1, the state that has read that token (`legacy`: from position j, the
    state that predicts it and has not seen it). The weights keep their graph (to the weighter and,
    through the hidden state, to phi); the inner loop decides what to differentiate.
    """
    out = call(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
               output_hidden_states=weighter is not None)
    nll = token_nll(out.logits, batch)
    mask = batch.target_mask[:, 1:].to(nll.dtype)
    if weighter is None:
        return nll, mask
    hidden = out.hidden_states[-1]
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


def answer_loss(call: ModelCall, batch: TokenBatch) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens (the outer loss)."""
    out = call(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    return token_nll(out.logits, batch).sum() / max(batch.n_targets, 1)
