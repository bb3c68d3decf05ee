"""Frozen-prefix caching: compute the hidden states below the lowest LoRA layer once per context group.

With LoRA on the top k layers only and a frozen base, the blocks below the lowest adapted layer see
the same input at every inner step (nothing in them depends on the memory). Their output is computed
once per group; every later call replaces those blocks by pass-throughs and hands the cached state to
the first adapted block. Embeddings, masks and position ids are still built by the model itself, so
the result is the uncached computation to rounding (checked in tests/engine/test_prefix_cache.py).

Needs decoder blocks that take the hidden state as their first argument and return a tensor (every
transformers 5 decoder: GPT-2, Llama, Qwen2/3, Mistral, SmolLM3). Not used when the base is trained
(the blocks below would need their graph) or when a LoRA reaches the first block (nothing to cache).
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from perk_cli.engine.batches import TokenBatch
from perk_cli.engine.forwards import replaced_forwards


class _PrefixDone(Exception):
    """Raised by the capture hook: the blocks above are not needed while building the cache."""


@dataclass
class FrozenPrefix:
    """Where the cache cuts the model: `blocks[:first_adapted]` are frozen and skipped."""

    blocks: nn.ModuleList
    first_adapted: int

    def hidden(self, model: nn.Module, batch: TokenBatch) -> torch.Tensor:
        """The output of block `first_adapted - 1` for `batch` (no graph: nothing below requires grad)."""
        captured: list[torch.Tensor] = []

        def capture(_module, _args, output):
            captured.append(output[0] if isinstance(output, tuple) else output)
            raise _PrefixDone

        handle = self.blocks[self.first_adapted - 1].register_forward_hook(capture)
        try:
            with torch.no_grad():
                model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        except _PrefixDone:
            pass
        finally:
            handle.remove()
        return captured[0]

    @contextmanager
    def reuse(self, hidden: torch.Tensor):
        """Within the block, the frozen blocks return `hidden` without computing anything."""
        lower = self.blocks[: self.first_adapted]

        def passthrough(hidden_states, *args, **kwargs):
            return hidden_states

        def cached(hidden_states, *args, **kwargs):
            if hidden_states.shape != hidden.shape:
                raise RuntimeError(f"prefix cache holds {tuple(hidden.shape)}, the call has "
                                   f"{tuple(hidden_states.shape)}")
            return hidden

        with replaced_forwards([(block, passthrough) for block in lower[:-1]] + [(lower[-1], cached)]):
            yield


def _decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The ModuleList of decoder blocks: the longest ModuleList whose entries all share one class."""
    best = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) and len({type(m) for m in module}) == 1:
            if best is None or len(module) > len(best[1]):
                best = (name, module)
    return best


def find_frozen_prefix(model: nn.Module, lora_names: list[str]) -> FrozenPrefix | None:
    """The cut below the lowest LoRA block, or None when caching is impossible or useless."""
    found = _decoder_blocks(model)
    if found is None:
        return None
    blocks_name, blocks = found
    pattern = re.compile(re.escape(blocks_name) + r"\.(\d+)\.")
    indices = []
    for name in lora_names:
        match = pattern.match(name)
        if match is None:  # a LoRA outside the decoder blocks (e.g. on an embedding): no cache
            return None
        indices.append(int(match.group(1)))
    first = min(indices)
    if first == 0:
        return None
    # A trained base would need the graph of the skipped blocks: no cache then.
    lora = set(lora_names)
    if any(param.requires_grad for name, param in model.named_parameters() if name not in lora):
        return None
    return FrozenPrefix(blocks, first)
