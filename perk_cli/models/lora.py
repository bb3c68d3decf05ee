"""Attach a PEFT LoRA to a base model (rsLoRA scaling, dropout 0, per-architecture targets, top-k
layers), and draw PEFT's own initialisation for plain test-time training.

    peft_model = attach_lora(model, LoraSettings(rank=16, top_layers=2))
"""

from __future__ import annotations

import warnings

import torch

from perk_cli.config import LoraSettings
from perk_cli.engine.lora import lora_parameters, lora_values
from perk_cli.errors import PerkError

# Projections of every attention and MLP block, per architecture family (config.model_type).
_GPT2_TARGETS = ["c_attn", "c_proj", "c_fc"]
_LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TARGETS_BY_MODEL_TYPE = {
    "gpt2": _GPT2_TARGETS,
    "llama": _LLAMA_TARGETS,
    "qwen2": _LLAMA_TARGETS,
    "qwen3": _LLAMA_TARGETS,
    "mistral": _LLAMA_TARGETS,
    "smollm3": _LLAMA_TARGETS,
}
# The name of the ModuleList holding the decoder blocks (PEFT's `layers_pattern`).
_LAYERS_PATTERN = {"gpt2": "h"}


def num_layers(config) -> int:
    for key in ("num_hidden_layers", "n_layer"):
        if getattr(config, key, None):
            return int(getattr(config, key))
    raise PerkError(f"model type {config.model_type!r}: cannot tell its number of layers for --lora-top-layers")


def resolve_targets(model, settings: LoraSettings) -> list[str]:
    if settings.targets:
        return list(settings.targets)
    model_type = model.config.model_type
    if model_type not in TARGETS_BY_MODEL_TYPE:
        known = ", ".join(sorted(TARGETS_BY_MODEL_TYPE))
        raise PerkError(f"model type {model_type!r} has no default LoRA targets (known: {known}); pass --lora-targets")
    return TARGETS_BY_MODEL_TYPE[model_type]


def attach_lora(model, settings: LoraSettings, adapter_name: str = "default"):
    """Wrap `model` in a PEFT LoRA (rsLoRA scaling, dropout 0); only LoRA tensors require grad."""
    from peft import LoraConfig, get_peft_model

    model_type = model.config.model_type
    kwargs = {}
    if settings.top_layers is not None:
        total = num_layers(model.config)
        if settings.top_layers > total:
            raise PerkError(f"--lora-top-layers {settings.top_layers}: the model has only {total} layers")
        kwargs["layers_to_transform"] = list(range(total - settings.top_layers, total))
        kwargs["layers_pattern"] = _LAYERS_PATTERN.get(model_type, "layers")
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        use_rslora=True,
        lora_dropout=0.0,
        target_modules=resolve_targets(model, settings),
        fan_in_fan_out=model_type == "gpt2",  # GPT-2 stores its projections as Conv1D (in, out)
        bias="none",
        **kwargs,
    )
    with warnings.catch_warnings():  # PEFT calls a transformers API deprecated in v5; not ours to fix
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = get_peft_model(model, config, adapter_name=adapter_name)
    for name, param in peft_model.named_parameters():
        param.requires_grad_(".lora_" in name)
    return peft_model


def peft_init(peft_model, seed: int = 0) -> dict[str, torch.Tensor]:
    """PEFT's initialisation of every LoRA tensor (A kaiming-uniform, B zero), drawn from `seed`, as
    values: the model's own LoRA tensors (a meta-learned init, say) are left as they were."""
    from peft.tuners.lora import LoraLayer

    lora = lora_parameters(peft_model)
    with lora_values(peft_model, lora), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in peft_model.modules():
            if isinstance(module, LoraLayer):
                for adapter in module.lora_A:
                    module.reset_lora_parameters(adapter, True)
        return {n: p.detach().clone() for n, p in lora.items()}
