"""The LoRA tensors of a PEFT model, by name: listing them, and copying values in for a while.

The engine never copies or patches the base model; values computed functionally (an adapted
memory, a fresh initialisation) reach the real parameters only through these helpers.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


def lora_parameters(peft_model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The LoRA tensors of a PEFT model, by their full parameter name, in a fixed order."""
    return {n: p for n, p in peft_model.named_parameters() if ".lora_A." in n or ".lora_B." in n}


@torch.no_grad()
def copy_into(model: torch.nn.Module, values: dict[str, torch.Tensor]) -> None:
    """Copy `values` into the model's parameters of those names (cast to each parameter's dtype)."""
    params = dict(model.named_parameters())
    for name, value in values.items():
        params[name].copy_(value.to(params[name].dtype))


@contextmanager
def lora_values(model: torch.nn.Module, values: dict[str, torch.Tensor]):
    """Within the block the parameters named in `values` hold them; afterwards their own values again."""
    params = dict(model.named_parameters())
    saved = {n: params[n].detach().clone() for n in values}
    try:
        copy_into(model, values)
        yield model
    finally:
        copy_into(model, saved)
