"""Base model loading, the tiny preset, and LoRA attachment."""

import math
import time

import pytest
import torch

from perk_cli.config import LoraSettings, ModelSettings
from perk_cli.engine.lora import lora_parameters
from perk_cli.errors import PerkError
from perk_cli.models.base import load_base
from perk_cli.models.lora import attach_lora
from perk_cli.models.tiny import build_tiny_tokenizer
from tests.conftest import micro_gpt2, micro_llama


def _targeted_modules(peft_model):
    return sorted({n.split(".lora_")[0] for n in lora_parameters(peft_model)})


def test_gpt2_targets_every_attention_and_mlp_projection():
    peft_model = attach_lora(micro_gpt2(), LoraSettings(rank=4, alpha=8))
    modules = _targeted_modules(peft_model)
    suffixes = sorted({m.split("transformer.h.")[1].split(".", 1)[1] for m in modules})
    assert suffixes == ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
    assert len(modules) == 2 * 4


def test_llama_targets_and_top_k_layers():
    peft_model = attach_lora(micro_llama(n_layer=3), LoraSettings(rank=4, alpha=8, top_layers=1))
    modules = _targeted_modules(peft_model)
    assert all(".layers.2." in m for m in modules)
    assert sorted(m.rsplit(".", 1)[1] for m in modules) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


def test_rslora_scaling_zero_dropout_and_only_lora_trainable():
    peft_model = attach_lora(micro_gpt2(), LoraSettings(rank=4, alpha=8))
    layer = peft_model.base_model.model.transformer.h[0].attn.c_attn
    assert layer.scaling["default"] == pytest.approx(8 / math.sqrt(4))
    assert isinstance(layer.lora_dropout["default"], torch.nn.Identity)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable == set(lora_parameters(peft_model))


def test_top_layers_beyond_the_model_is_a_clear_error():
    with pytest.raises(PerkError, match="only 2 layers"):
        attach_lora(micro_gpt2(), LoraSettings(top_layers=5))


def test_unknown_architecture_asks_for_targets():
    model = micro_gpt2()
    model.config.model_type = "mystery"
    with pytest.raises(PerkError, match="--lora-targets"):
        attach_lora(model, LoraSettings())


def test_tiny_preset_is_deterministic_eager_and_encodes_any_utf8():
    model, tokenizer = load_base(ModelSettings(name="tiny"))
    again, _ = load_base(ModelSettings(name="tiny"))
    assert model.config._attn_implementation == "eager"
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert not any(p.requires_grad for p in model.parameters())
    assert build_tiny_tokenizer().get_vocab() == tokenizer.get_vocab()
    for text in ["Mary went back to the kitchen.", "Grüße, 世界! 🙂 \x00\t\n", "Student 3109998, Grade: 72"]:
        assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    short = len(tokenizer("Daniel journeyed to the bathroom.")["input_ids"])
    assert short <= 8  # task vocabulary is compact, not byte-by-byte


def test_tiny_preset_loads_trained_weights(tmp_path):
    from safetensors.torch import save_file

    model, _ = load_base(ModelSettings(name="tiny"))
    with torch.no_grad():
        model.transformer.wte.weight.add_(1.0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"},
              str(tmp_path / "base.safetensors"))
    loaded, _ = load_base(ModelSettings(name="tiny"), tiny_weights=tmp_path / "base.safetensors")
    assert torch.equal(loaded.transformer.wte.weight, model.transformer.wte.weight)
    save_file({"nonsense": torch.zeros(2)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(PerkError, match="bad.safetensors"):
        load_base(ModelSettings(name="tiny"), tiny_weights=tmp_path / "bad.safetensors")


def test_local_directory_round_trip(tmp_path):
    model, tokenizer = load_base(ModelSettings(name="tiny"))
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    loaded, loaded_tok = load_base(ModelSettings(name=str(tmp_path / "m")))
    ids = torch.tensor([loaded_tok("Where is Mary?")["input_ids"]])
    torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


@pytest.mark.parametrize("name, message", [
    ("./missing.gguf", "no such .gguf file"),
    ("./no/such/dir", "no such file or directory"),
])
def test_bad_model_paths_are_one_line_errors(name, message):
    with pytest.raises(PerkError, match=message):
        load_base(ModelSettings(name=name))


def test_directory_without_config(tmp_path):
    with pytest.raises(PerkError, match="no config.json"):
        load_base(ModelSettings(name=str(tmp_path)))


def test_offline_hub_id_fails_fast_with_a_suggestion(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    start = time.monotonic()
    with pytest.raises(PerkError) as info:
        load_base(ModelSettings(name="perk-test/not-a-cached-model"))
    assert time.monotonic() - start < 30
    message = str(info.value)
    assert "perk-test/not-a-cached-model" in message and "local directory" in message and "\n" not in message
