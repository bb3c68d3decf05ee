"""A memory: the adapted LoRA tensors of one document, in one safetensors file with string metadata.

Loading needs no code execution (no pickle). `export_peft` writes adapter_config.json +
adapter_model.safetensors that `peft.PeftModel.from_pretrained(base, DIR)` loads in any program.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from perk_cli.errors import PerkError

FORMAT = "perk-memory/1"
REQUIRED = ("format", "base_model", "lora", "prompt", "segments", "steps", "perk_version")


@dataclass
class Memory:
    lora: dict[str, torch.Tensor]  # adapted LoRA tensors by PEFT parameter name
    metadata: dict[str, str]
    base: dict[str, torch.Tensor] = field(default_factory=dict)  # only for a base that exists nowhere else

    def save(self, path: Path) -> None:
        """Atomic write: a temporary file in the same directory, then os.replace."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"lora.{k}": v for k, v in self.lora.items()}
        tensors.update({f"base.{k}": v for k, v in self.base.items()})
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata={k: str(v) for k, v in self.metadata.items()})
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> "Memory":
        path = Path(path)
        if not path.is_file():
            raise PerkError(f"{path}: no such memory file")
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise PerkError(f"{path}: not a readable safetensors memory ({str(exc).splitlines()[0]}); "
                            "is it truncated? re-run `perk adapt`")
        if metadata.get("format") != FORMAT:
            raise PerkError(f"{path}: not a perk memory (format {metadata.get('format')!r}, expected {FORMAT})")
        missing = [k for k in REQUIRED if k not in metadata]
        if missing:
            raise PerkError(f"{path}: memory metadata lacks '{missing[0]}'")
        lora = {k.removeprefix("lora."): v for k, v in tensors.items() if k.startswith("lora.")}
        base = {k.removeprefix("base."): v for k, v in tensors.items() if k.startswith("base.")}
        if not lora:
            raise PerkError(f"{path}: memory holds no LoRA tensors")
        return cls(lora, metadata, base)

    @property
    def lora_settings(self) -> dict:
        return json.loads(self.metadata["lora"])

    @property
    def prompt_settings(self) -> dict:
        return json.loads(self.metadata["prompt"])


def plain_base_names(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PEFT-wrapped parameter names to the plain transformers names of the base model."""
    return {k.removeprefix("base_model.model.").replace(".base_layer.", "."): v for k, v in tensors.items()}


def export_peft(peft_model, memory: Memory, directory: Path) -> None:
    """Write the memory as a standard PEFT adapter directory (config + safetensors weights).

    A memory that carries its base (the tiny preset) also gets `base_model.safetensors` there, in plain
    transformers names, since that base exists nowhere else.
    """
    params = dict(peft_model.named_parameters())
    saved = {n: params[n].detach().clone() for n in memory.lora}
    try:
        with torch.no_grad():
            for name, value in memory.lora.items():
                params[name].copy_(value)
        peft_model.save_pretrained(str(directory), safe_serialization=True)
        if memory.base:
            base = {k: v.detach().to("cpu").contiguous() for k, v in plain_base_names(memory.base).items()}
            save_file(base, str(Path(directory) / "base_model.safetensors"))
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)
