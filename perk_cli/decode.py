"""Greedy answers from a PEFT model with given LoRA values (swapped in for the call, then restored)."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from perk_cli.config import PromptSettings
from perk_cli.encoding import cut_output, encode_question, extract_answer


@contextmanager
def swapped_lora(model: torch.nn.Module, values: dict[str, torch.Tensor] | None):
    """Temporarily copy `values` into the model's parameters of those names (no-op for None)."""
    if not values:
        yield model
        return
    params = dict(model.named_parameters())
    saved = {n: params[n].detach().clone() for n in values}
    try:
        with torch.no_grad():
            for name, value in values.items():
                params[name].copy_(value)
        yield model
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)


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
                    context_prefix: str = "") -> tuple[str, str]:
    """(answer, raw) for the question prompt (optionally preceded by the context, for in-context)."""
    batch = encode_question(tokenizer, question, n_segments, prompt)
    ids = batch.input_ids
    if context_prefix:
        prefix = tokenizer(context_prefix, add_special_tokens=False, return_tensors="pt")["input_ids"]
        ids = torch.cat([prefix, ids], dim=1)
    with swapped_lora(model, lora):
        raw = generate_text(model, tokenizer, ids, max_new_tokens or prompt.max_answer_tokens)
    raw = cut_output(raw, prompt)
    return extract_answer(raw, prompt), raw
