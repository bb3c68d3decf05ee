"""Frozen-prefix caching: same numbers as the uncached loop, fewer passes through the frozen blocks."""

import pytest
import torch

from perk_cli.config import InnerLoopSettings, LoraSettings
from perk_cli.engine.batches import MetaTask
from perk_cli.engine.lora import lora_parameters
from perk_cli.engine.meta import MetaLearner
from perk_cli.engine.prefix import find_frozen_prefix
from perk_cli.models.lora import attach_lora
from tests.conftest import meta_grads, micro_gpt2, micro_llama, random_batch, randomise_lora_b, seeded_meta


def _peft(kind: str, top_layers: int | None):
    model = micro_gpt2(n_layer=3) if kind == "gpt2" else micro_llama(n_layer=3)
    peft_model = attach_lora(model, LoraSettings(rank=2, alpha=4.0, top_layers=top_layers))
    randomise_lora_b(peft_model)
    return peft_model


def _meta(peft_model, cache: bool, **overrides):
    return seeded_meta(peft_model, dict(steps=3, optimizer="adamw", lr_init=0.02, lr_max=None,
                                        unroll="second-order", max_tokens_per_group=20, cache_prefix=cache),
                       **overrides)


def _task():
    return MetaTask(random_batch(5, 9, seed=2, pad_first=3), random_batch(1, 7, seed=3, prefix=4))


def _blocks(peft_model):
    return find_frozen_prefix(peft_model, list(lora_parameters(peft_model))).blocks


@pytest.mark.parametrize("kind,top_layers,first", [("gpt2", 1, 2), ("llama", 2, 1)])
def test_cut_is_below_the_lowest_lora_layer(kind, top_layers, first):
    peft_model = _peft(kind, top_layers)
    meta = _meta(peft_model, cache=True)
    prefix = meta.frozen_prefix()
    assert prefix is not None and prefix.first_adapted == first and len(prefix.blocks) == 3


@pytest.mark.parametrize("kind,top_layers", [("gpt2", 1), ("llama", 2)])
@pytest.mark.parametrize("unroll", ["second-order", "truncated", "first-order"])
def test_cached_meta_gradient_equals_uncached(kind, top_layers, unroll):
    peft_model = _peft(kind, top_layers)
    task = _task()
    grads = {}
    for cache in (False, True):
        grads[cache] = meta_grads(_meta(peft_model, cache, unroll=unroll, unroll_start=1), task)
    assert grads[True][0] == pytest.approx(grads[False][0], rel=1e-12)
    assert grads[True][1].losses == pytest.approx(grads[False][1].losses, rel=1e-12)
    for cached, plain in zip(grads[True][2], grads[False][2]):
        if plain is None:
            assert cached is None
        else:
            torch.testing.assert_close(cached, plain, rtol=1e-10, atol=1e-12)


def test_cached_adaptation_equals_uncached_and_skips_the_frozen_blocks():
    peft_model = _peft("llama", 2)
    context = _task().context
    blocks = _blocks(peft_model)
    calls = {"frozen": 0, "adapted": 0}
    blocks[0].mlp.register_forward_hook(lambda *a: calls.__setitem__("frozen", calls["frozen"] + 1))
    blocks[2].mlp.register_forward_hook(lambda *a: calls.__setitem__("adapted", calls["adapted"] + 1))
    adapted, counts = {}, {}
    for cache in (False, True):
        calls.update(frozen=0, adapted=0)
        meta = _meta(peft_model, cache)
        n_groups = len(context.split(meta.settings.max_tokens_per_group))
        adapted[cache] = meta.adapt(context).params
        counts[cache] = dict(calls)
    assert n_groups == 3
    for name, value in adapted[False].items():
        torch.testing.assert_close(adapted[True][name], value, rtol=1e-12, atol=1e-14)
    assert counts[False] == {"frozen": 3 * n_groups, "adapted": 3 * n_groups}  # K=3 steps, every group
    assert counts[True] == {"frozen": n_groups, "adapted": 3 * n_groups}  # the frozen block once a group
    # The pass-throughs are gone afterwards: a plain forward computes every block again.
    assert not any("forward" in block.__dict__ for block in blocks)
    calls.update(frozen=0)
    peft_model(input_ids=context.input_ids[:1])
    assert calls["frozen"] == 1


def test_no_cache_when_lora_reaches_the_first_block_or_the_base_is_trained_or_it_is_off():
    assert _meta(_peft("gpt2", None), cache=True).frozen_prefix() is None
    assert _meta(_peft("gpt2", 1), cache=False).frozen_prefix() is None
    peft_model = _peft("gpt2", 1)
    meta = MetaLearner(peft_model, InnerLoopSettings(cache_prefix=True), train_base=True)
    assert meta.frozen_prefix() is None


def test_reuse_restores_the_blocks_after_an_error_and_checks_the_shape():
    peft_model = _peft("llama", 2)
    prefix = _meta(peft_model, cache=True).frozen_prefix()
    batch = random_batch(2, 6, seed=4)
    hidden = prefix.hidden(peft_model, batch)
    assert hidden.shape == (2, 6, 16)
    with pytest.raises(RuntimeError, match="prefix cache holds"):
        with prefix.reuse(hidden):
            peft_model(input_ids=batch.input_ids[:1], attention_mask=batch.attention_mask[:1])
    assert not any("forward" in block.__dict__ for block in prefix.blocks)
