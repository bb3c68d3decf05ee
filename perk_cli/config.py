"""Pydantic settings for every part of perk: one validated source of truth, saved beside artifacts."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSettings(_Settings):
    """Which base model to load and where to run it."""

    name: str = Field("tiny", description="Hub id, local directory, .gguf file, or 'tiny'.")
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float64"] = "auto"
    attn_implementation: Literal["eager", "sdpa"] = Field(
        "eager", description="eager supports double backward; SDPA does not on CPU."
    )


class LoraSettings(_Settings):
    """The memory's shape: a rank-r LoRA with rsLoRA scaling alpha/sqrt(r)."""

    rank: int = Field(16, ge=1, description="LoRA rank r.")
    alpha: float = Field(32.0, gt=0, description="LoRA alpha; scaling is alpha/sqrt(r) (rsLoRA).")
    targets: list[str] | None = Field(
        None, description="Module names to adapt; None = all attention and MLP projections."
    )
    top_layers: int | None = Field(None, ge=1, description="Adapt only the top k layers.")


class InnerLoopSettings(_Settings):
    """Test-time learning: K steps of a functional optimiser on the weighted context loss."""

    steps: int = Field(4, ge=1, description="Inner steps K.")
    optimizer: Literal["sgd", "adam", "adamw"] = Field(
        "adamw", description="adam = L2 weight decay (torch.optim.Adam); adamw = decoupled."
    )
    lr_init: float = Field(1e-3, gt=0, description="Initial learned step size, every tensor and step.")
    lr_max: float | None = Field(
        1.0, gt=0, description="Cap on a learned step size (guards meta-training); None = no cap."
    )
    learn_lr: bool = Field(True, description="Meta-learn the step sizes (False: fixed lr_init).")
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    unroll: Literal["second-order", "first-order", "truncated"] = "truncated"
    unroll_start: int = Field(2, ge=0, description="Truncated: steps before this are first-order.")
    weighting: bool = Field(True, description="Learn a per-token weight for the inner loss.")
    max_tokens_per_group: int | None = Field(
        None, ge=1, description="Split segments into accumulation groups of at most this many tokens."
    )
    engine: Literal["func", "higher"] = Field(
        "func", description="func: torch.func.functional_call; higher: the official code's library."
    )

    @model_validator(mode="after")
    def _check(self) -> "InnerLoopSettings":
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError("betas must lie in [0, 1)")
        if self.unroll == "truncated" and self.unroll_start > self.steps:
            raise ValueError(f"unroll_start ({self.unroll_start}) must be at most steps ({self.steps})")
        if self.lr_max is not None and self.lr_init > self.lr_max:
            raise ValueError(f"lr_init ({self.lr_init}) exceeds lr_max ({self.lr_max})")
        if self.engine == "higher" and self.unroll != "second-order":
            raise ValueError("engine 'higher' supports only unroll 'second-order'")
        if self.engine == "higher" and self.optimizer == "adamw" and self.weight_decay:
            raise ValueError("engine 'higher' has no AdamW; use optimizer 'adam' or weight_decay 0")
        return self
