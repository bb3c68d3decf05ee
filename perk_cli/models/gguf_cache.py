"""Convert a .gguf base once into a safetensors directory in the user's cache; load that afterwards.

transformers dequantizes a GGUF file at every load (SmolLM2-135M's Q4_1: 17-40 s on 2 CPU cores);
the same weights from safetensors load in a second or two. The cache entry is keyed by the sha256
of the GGUF file's bytes (a changed file is a new entry), holds the dequantized weights exactly as
the GGUF load produced them (float32, so numbers do not change), the config without its GGUF
quantization entry, and the tokenizer. It is written into a staging directory and renamed into
place, so an interrupted conversion leaves nothing half-written; an entry that fails to load is
removed and rebuilt from the GGUF.

Location: `ModelSettings.cache_dir`, else $XDG_CACHE_HOME/perk, else ~/.cache/perk; entries live in
`<cache>/gguf/<hash>/`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Callable

from perk_cli.files import cache_dir, staged_directory

FORMAT = "perk-gguf-cache/1"
MARKER = "perk-cache.json"  # written last: an entry without it is incomplete


def default_cache_dir() -> Path:
    return cache_dir()


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def entry_for(gguf: Path, cache_dir: Path | None) -> Path:
    return (cache_dir or default_cache_dir()) / "gguf" / file_sha256(gguf)[:32]


def write_entry(entry: Path, model, tokenizer, source: Path) -> None:
    """Save the converted model atomically: weights (tied tensors once), config, tokenizer, marker."""
    from safetensors.torch import save_model

    with staged_directory(entry) as staging:
        save_model(model, str(staging / "model.safetensors"))
        config = model.config.to_dict()
        config.pop("quantization_config", None)  # the weights are no longer quantized
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        tokenizer.save_pretrained(str(staging))
        (staging / MARKER).write_text(json.dumps({"format": FORMAT, "source": str(source),
                                                  "source_bytes": source.stat().st_size}) + "\n")


def load_cached(gguf: Path, cache_dir: Path | None, convert: Callable[[], tuple], load: Callable[[str], tuple]):
    """(model, tokenizer, how): from the cache entry of `gguf` when it is complete and loads, else from
    `convert()` (the GGUF load), writing the entry for next time. `how` is 'cache', 'converted' or
    'rebuilt' (an entry that failed to load was replaced)."""
    entry = entry_for(gguf, cache_dir)
    how = "converted"
    if (entry / MARKER).is_file():
        try:
            model, tokenizer = load(str(entry))
            return model, tokenizer, "cache"
        except Exception:  # a damaged entry (truncated weights, edited config): rebuild it from the GGUF
            shutil.rmtree(entry, ignore_errors=True)
            how = "rebuilt"
    elif entry.exists():
        shutil.rmtree(entry, ignore_errors=True)  # an entry without its marker never finished
    model, tokenizer = convert()
    try:
        write_entry(entry, model, tokenizer, gguf)
    except OSError:
        how = "not cached"  # a read-only or full cache never stops a load
    return model, tokenizer, how
