"""The inner (weighted context) loss and the outer (answer) loss, over a model called functionally.

A `ModelCall` runs the model with given keyword arguments, e.g. `functional_call(model, lora, (), kw)`
for the func engine or a `higher` patched module for the higher engine.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from perk_cli.engine.batches import TokenBatch
from perk_cli.engine.weighting import TokenWeighter

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


def inner_loss(call: ModelCall, batch: TokenBatch, weighter: TokenWeighter | None,
               normaliser: int) -> torch.Tensor:
    """sum over target tokens of w(token) * CE(token) / normaliser (the task's real target count).

    The weight of token j+1 comes from the last hidden state at position j (the one predicting it).
    That state depends on the LoRA too and is not detached, so the inner loss is one differentiable
    function of phi and its meta-gradient is exact (checked against finite differences).
    """
    out = call(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
               output_hidden_states=weighter is not None)
    nll = token_nll(out.logits, batch)
    if weighter is not None:
        nll = nll * weighter(out.hidden_states[-1][:, :-1]).to(nll.dtype)
    return nll.sum() / max(normaliser, 1)


def answer_loss(call: ModelCall, batch: TokenBatch) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens (the outer loss)."""
    out = call(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    return token_nll(out.logits, batch).sum() / max(batch.n_targets, 1)
