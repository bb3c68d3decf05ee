"""Build a ready-to-use base model + LoRA + meta-learner from a RunConfig and (optionally) saved tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from perk_cli.config import RunConfig
from perk_cli.engine.meta import MetaLearner
from perk_cli.errors import PerkError
from perk_cli.models import attach_lora, load_base


@dataclass
class Runtime:
    config: RunConfig
    model: torch.nn.Module  # the PEFT-wrapped base
    tokenizer: object
    meta: MetaLearner

    @property
    def device(self) -> torch.device:
        return next(iter(self.meta.lora_init().values())).device

    @property
    def max_positions(self) -> int:
        config = self.model.config
        return int(getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", 2048))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return self.meta.trainable_state_dict(include_base=self.config.model.name == "tiny")


def build_runtime(config: RunConfig, tensors: dict[str, torch.Tensor] | None = None, source: str = "") -> Runtime:
    model, tokenizer = load_base(config.model)
    peft_model = attach_lora(model, config.lora)
    meta = MetaLearner(peft_model, config.inner, train_base=config.train.train_base)
    if tensors is not None:
        try:
            meta.load_trainable_state_dict({k: v.to(meta.step_sizes.parameter.device) for k, v in tensors.items()})
        except (KeyError, RuntimeError) as exc:
            raise PerkError(f"{source or 'checkpoint'}: does not fit model {config.model.name!r} with its LoRA "
                            f"settings ({str(exc).splitlines()[0]})")
    return Runtime(config, peft_model, tokenizer, meta)
