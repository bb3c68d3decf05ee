"""Plain test-time training is defined once: PEFT's initialisation, a fixed learning rate, no token
weights; `perk adapt --model` and the evaluation baseline compute the same memory."""

import torch

from perk_cli.engine.lora import lora_parameters
from perk_cli.memory import adapting_runtime, plain_ttt
from perk_cli.models.lora import peft_init
from perk_cli.prompts import encode_context

DOC = ["Event 0: Mary went to the kitchen.", "Event 1: John moved to the garden.", "Event 2: Mary went to the office."]


def test_peft_init_is_pefts_own_drawn_from_a_seed_and_leaves_the_model_alone():
    runtime, _ = adapting_runtime(model="tiny", plain_steps=2, plain_lr=1e-2)
    before = {n: p.detach().clone() for n, p in lora_parameters(runtime.model).items()}
    first, again, other = (peft_init(runtime.model, seed) for seed in (3, 3, 4))
    assert all(torch.equal(p, before[n]) for n, p in lora_parameters(runtime.model).items())
    for name, value in first.items():
        assert torch.equal(value, again[name])
        if ".lora_B." in name:
            assert not value.any()
        else:  # kaiming_uniform(a=sqrt(5)) on an (r, in) matrix: U(-1/sqrt(in), 1/sqrt(in))
            bound = 1 / value.shape[1] ** 0.5
            assert value.abs().max() <= bound and value.abs().max() > 0.5 * bound
            assert not torch.equal(value, other[name])


def test_plain_adapt_and_the_evaluation_baseline_are_one_computation():
    runtime, origin = adapting_runtime(model="tiny", plain_steps=2, plain_lr=1e-2)
    assert origin.kind == "plain-ttt" and runtime.meta.weighter is None
    assert torch.equal(runtime.meta.step_sizes(), torch.full((2, len(runtime.meta.lora_names)), 1e-2))
    init = peft_init(runtime.model, seed=0)
    assert all(torch.equal(p, init[n]) for n, p in lora_parameters(runtime.model).items())  # adapt starts there
    context = encode_context(runtime.tokenizer, DOC, runtime.config.prompt)
    adapted = runtime.meta.adapt(context).params
    baseline = plain_ttt(runtime, context, init, 1e-2).params
    for name, value in adapted.items():
        torch.testing.assert_close(value, baseline[name], rtol=0, atol=0)
        if ".lora_B." in name:
            assert value.abs().max() > 1e-4  # the steps did move B off PEFT's zero
