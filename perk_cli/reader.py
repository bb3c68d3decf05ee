"""Answer questions from a memory: load the base model it names, apply its LoRA, decode greedily.

    from perk_cli.reader import Reader
    reader = Reader(Memory.load("mem.safetensors"))
    answer, raw = reader.ask("Where is Mary?")
"""

from __future__ import annotations

from pathlib import Path

import torch

from perk_cli.config import LoraSettings, ModelSettings, PromptSettings
from perk_cli.decode import answer_question
from perk_cli.errors import PerkError
from perk_cli.memory import Memory
from perk_cli.models import attach_lora, load_base


class Reader:
    def __init__(self, memory: Memory, model: str | None = None, device: str = "auto", source: str = "memory"):
        self.memory = memory
        self.prompt = PromptSettings(**memory.prompt_settings)
        name = model or memory.metadata["base_model"]
        base, self.tokenizer = load_base(ModelSettings(name=name, device=device))
        self.model = attach_lora(base, LoraSettings(**memory.lora_settings))
        params = dict(self.model.named_parameters())
        for name_, value in {**memory.lora, **memory.base}.items():
            if name_ not in params or params[name_].shape != value.shape:
                got = tuple(params[name_].shape) if name_ in params else "absent"
                raise PerkError(f"{source}: made for a different base model or LoRA shape ({name_}: memory "
                                f"{tuple(value.shape)}, model {got}); pass --model for the base it was made with")
        missing = [n for n in params if ".lora_" in n and n not in memory.lora]
        if missing:
            raise PerkError(f"{source}: made for a different LoRA layout (no tensor for {missing[0]})")
        with torch.no_grad():
            for name_, value in {**memory.lora, **memory.base}.items():
                params[name_].copy_(value.to(params[name_].dtype))
        self.n_segments = int(memory.metadata["segments"])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def ask(self, question: str, max_new_tokens: int | None = None) -> tuple[str, str]:
        """(answer, raw generated text)."""
        return answer_question(self.model, self.tokenizer, question, self.n_segments, self.prompt,
                               max_new_tokens=max_new_tokens)


def load_reader(path: Path, model: str | None = None, device: str = "auto") -> Reader:
    return Reader(Memory.load(path), model=model, device=device, source=str(path))
