"""The GGUF cache: convert once, load the safetensors entry afterwards, rebuild a damaged entry."""

import json

import pytest
import torch

from perk_cli.models import gguf_cache
from perk_cli.config import ModelSettings
from perk_cli.models.base import _from_pretrained
from tests.conftest import micro_llama


@pytest.fixture
def gguf(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + bytes(range(256)) * 64)  # stands for the file; the converter below reads it
    return path


class Converter:
    """The GGUF load, faked: a micro Llama (tied embeddings) and the tiny tokenizer, counted."""

    def __init__(self):
        self.calls = 0

    def __call__(self):
        from perk_cli.models.base import load_tokenizer

        self.calls += 1
        model = micro_llama(dtype=torch.float32, seed=4)
        model.config.tie_word_embeddings = True
        model.tie_weights()
        model.config.quantization_config = {"quant_method": "gguf"}
        return model, load_tokenizer("tiny")


def _load(entry):
    return _from_pretrained(entry, ModelSettings(name=entry))


def test_the_first_load_converts_and_later_loads_read_the_cache(gguf, tmp_path):
    convert = Converter()
    model, tokenizer, how = gguf_cache.load_cached(gguf, tmp_path / "cache", convert, _load)
    assert how == "converted" and convert.calls == 1
    entry = gguf_cache.entry_for(gguf, tmp_path / "cache")
    assert (entry / gguf_cache.MARKER).is_file() and entry.parent == tmp_path / "cache" / "gguf"
    assert "quantization_config" not in json.loads((entry / "config.json").read_text())
    cached, cached_tokenizer, how = gguf_cache.load_cached(gguf, tmp_path / "cache", convert, _load)
    assert how == "cache" and convert.calls == 1
    reference = dict(model.named_parameters())
    for name, param in cached.named_parameters():
        assert torch.equal(param, reference[name]), name
    ids = torch.tensor([[1, 5, 9, 3]])
    torch.testing.assert_close(cached(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)
    text = "Event 0: Mary went to the kitchen."
    assert cached_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]


def test_a_changed_file_is_a_new_entry(gguf, tmp_path):
    first = gguf_cache.entry_for(gguf, tmp_path)
    gguf.write_bytes(gguf.read_bytes() + b"!")
    assert gguf_cache.entry_for(gguf, tmp_path) != first


def test_a_damaged_or_unfinished_entry_is_rebuilt(gguf, tmp_path):
    convert = Converter()
    gguf_cache.load_cached(gguf, tmp_path, convert, _load)
    entry = gguf_cache.entry_for(gguf, tmp_path)
    weights = entry / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    model, _, how = gguf_cache.load_cached(gguf, tmp_path, convert, _load)
    assert how == "rebuilt" and convert.calls == 2
    assert gguf_cache.load_cached(gguf, tmp_path, convert, _load)[2] == "cache"
    (entry / gguf_cache.MARKER).unlink()  # as if the process died before the rename
    assert gguf_cache.load_cached(gguf, tmp_path, convert, _load)[2] == "converted" and convert.calls == 3
    assert not [p for p in entry.parent.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_a_failed_conversion_leaves_no_entry(gguf, tmp_path):
    def broken():
        raise RuntimeError("bad file")

    with pytest.raises(RuntimeError):
        gguf_cache.load_cached(gguf, tmp_path, broken, _load)
    assert not (tmp_path / "gguf").exists() or not any((tmp_path / "gguf").iterdir())


def test_load_base_reads_a_gguf_through_the_cache_in_cache_dir(gguf, tmp_path, monkeypatch):
    import perk_cli.models.base as models

    convert = Converter()
    real = models._from_pretrained

    def from_pretrained(source, settings, **extra):
        if "gguf_file" in extra:  # the GGUF load itself, faked; the cache entry loads for real
            assert extra["gguf_file"] == gguf.name and settings.dtype == "float32"
            return convert()
        return real(source, settings, **extra)

    monkeypatch.setattr(models, "_from_pretrained", from_pretrained)
    settings = ModelSettings(name=str(gguf), cache_dir=str(tmp_path / "mine"))
    first, _ = models.load_base(settings)
    second, _ = models.load_base(settings)
    assert convert.calls == 1 and (gguf_cache.entry_for(gguf, tmp_path / "mine") / gguf_cache.MARKER).is_file()
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters()))
    assert not any(p.requires_grad for p in second.parameters())


def test_load_tokenizer_reads_a_converted_entry_instead_of_parsing_the_gguf(gguf, tmp_path, monkeypatch):
    """The file here is not a real GGUF: only the cache entry can give its tokenizer."""
    from perk_cli.errors import PerkError
    from perk_cli.models.base import load_tokenizer
    from perk_cli.models.tiny import build_tiny_tokenizer

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    with pytest.raises(PerkError, match="cannot load its tokenizer"):
        load_tokenizer(str(gguf))  # no entry yet: the GGUF parse fails on these bytes
    entry = gguf_cache.entry_for(gguf, None)
    assert entry.parent.parent == tmp_path / "xdg" / "perk"
    entry.mkdir(parents=True)
    build_tiny_tokenizer().save_pretrained(str(entry))
    with pytest.raises(PerkError):
        load_tokenizer(str(gguf))  # an entry without its marker never finished: not trusted
    (entry / gguf_cache.MARKER).write_text("{}")
    assert load_tokenizer(str(gguf)).get_vocab() == build_tiny_tokenizer().get_vocab()
