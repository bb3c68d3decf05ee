"""Meta-gradients of the outer loss: second-order against finite differences; first-order and truncated
against what they must be."""

import pytest
import torch

from perk_cli.config import InnerLoopSettings
from perk_cli.engine.inner_loop import optimizer_for
from perk_cli.engine.losses import functional_model_call
from perk_cli.engine.meta import MetaLearner


def _meta(peft_model, **overrides):
    settings = dict(steps=3, optimizer="sgd", lr_init=0.5, lr_max=None, unroll="second-order")
    settings.update(overrides)
    torch.manual_seed(7)
    meta = MetaLearner(peft_model, InnerLoopSettings(**settings))
    with torch.no_grad():  # a non-zero output layer makes the token weights matter
        meta.weighter.net[2].weight.normal_(0, 0.5)
        meta.step_sizes.parameter.add_(torch.linspace(-0.3, 0.3, meta.step_sizes.parameter.numel()).view_as(meta.step_sizes.parameter))
    return meta


def _meta_grads(meta, task):
    loss, _ = meta.meta_loss(task)
    lora = list(meta.lora_init().values())
    return torch.autograd.grad(loss, [*lora, meta.step_sizes.parameter, *meta.weighter.parameters()], allow_unused=True)


def _central_difference(meta, task, tensor, index, eps=1e-6):
    with torch.no_grad():
        original = tensor[index].item()
        tensor[index] = original + eps
        plus = float(meta.meta_loss(task)[0])
        tensor[index] = original - eps
        minus = float(meta.meta_loss(task)[0])
        tensor[index] = original
    return (plus - minus) / (2 * eps)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_second_order_matches_finite_differences(micro_peft, micro_task, optimizer):
    meta = _meta(micro_peft, optimizer=optimizer, lr_init=0.5 if optimizer == "sgd" else 0.02,
                 weight_decay=0.01)
    grads = _meta_grads(meta, micro_task)
    lora = list(meta.lora_init().values())
    checks = [(lora[0], (0, 1), grads[0]), (lora[1], (3, 1), grads[1]), (lora[-1], (5, 0), grads[len(lora) - 1]),
              (meta.step_sizes.parameter, (0, 2), grads[len(lora)]), (meta.step_sizes.parameter, (2, 5), grads[len(lora)]),
              (meta.weighter.net[0].weight, (4, 7), grads[len(lora) + 1])]
    for tensor, index, grad in checks:
        numeric = _central_difference(meta, micro_task, tensor, index)
        assert grad[index].item() == pytest.approx(numeric, rel=1e-6, abs=1e-9)


def test_first_order_differs_and_gives_the_weighter_no_gradient(micro_peft, micro_task):
    second = _meta_grads(_meta(micro_peft), micro_task)
    first = _meta_grads(_meta(micro_peft, unroll="first-order"), micro_task)
    relative = (first[0] - second[0]).norm() / second[0].norm()
    assert relative > 1e-3  # measurably different ...
    assert torch.isfinite(first[0]).all() and first[0].norm() > 0  # ... but phi_0 still learns
    assert first[-4] is None or float(first[-4].abs().sum()) == 0.0  # w only learns through 2nd order


def _per_token_step_direction(call, batch, weighter, create_graph):
    """sum_j w_j grad CE_j / sum_j w_j, built one target token at a time (w_j from token j's own state)."""
    out = call(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
    logp = torch.log_softmax(out.logits[:, :-1], dim=-1)
    weights = weighter(out.hidden_states[-1][:, 1:])
    params = list(call.params.values())
    total, direction = 0.0, [torch.zeros_like(p) for p in params]
    for b, j in batch.target_mask[:, 1:].nonzero().tolist():
        ce = -logp[b, j, batch.input_ids[b, j + 1]]
        grads = torch.autograd.grad(ce, params, retain_graph=True, create_graph=create_graph)
        w = weights[b, j] if create_graph else weights[b, j].detach()
        direction = [d + w * g for d, g in zip(direction, grads)]
        total = total + w
    return [d / total for d in direction]


def test_truncated_equals_hand_built_detached_early_steps(micro_peft, micro_task):
    meta = _meta(micro_peft, steps=4, unroll="truncated", unroll_start=2, optimizer="adamw", lr_init=0.02)
    auto = _meta_grads(meta, micro_task)

    # Hand-built: per-token gradients weighted by hand, steps 0 and 1 without a graph.
    names = list(meta.lora_init())
    params = list(meta.lora_init().values())
    lrs = meta.step_sizes()
    optimizer = optimizer_for(meta.settings)
    state = optimizer.init_state(params)
    for step in range(4):
        leaves = params if step >= 2 else [p.detach().requires_grad_() for p in params]
        call = functional_model_call(micro_peft, dict(zip(names, leaves)))
        grads = _per_token_step_direction(call, micro_task.context, meta.weighter, create_graph=step >= 2)
        if step < 2:
            grads = [g.detach() for g in grads]
        params, state = optimizer.step(params, grads, lrs[step], state)
    outer = meta.answer_loss(dict(zip(names, params)), micro_task.question)
    targets = [*meta.lora_init().values(), meta.step_sizes.parameter, *meta.weighter.parameters()]
    hand = torch.autograd.grad(outer, targets, allow_unused=True)
    for a, b in zip(auto, hand):
        if a is None or b is None:
            assert (a is None or not a.any()) and (b is None or not b.any())
        else:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert hand[-4] is not None and hand[-4].abs().sum() > 0  # the weighter learns through steps 2-3
    second = _meta_grads(_meta(micro_peft, steps=4, unroll="second-order", optimizer="adamw", lr_init=0.02),
                         micro_task)
    assert (auto[0] - second[0]).norm() / second[0].norm() > 1e-4
    # The former rule (the weighted loss differentiated whole) is a different function: this test sees it.
    legacy = _meta_grads(_meta(micro_peft, steps=4, unroll="truncated", unroll_start=2, optimizer="adamw",
                               lr_init=0.02, weighting_mode="legacy"), micro_task)
    assert (legacy[0] - hand[0]).norm() / hand[0].norm() > 1e-3


def _b_gradient_norm(micro_model_seed: int, **settings) -> float:
    from perk_cli.config import LoraSettings
    from perk_cli.engine.batches import MetaTask
    from perk_cli.models.lora import attach_lora
    from tests.conftest import micro_gpt2, random_batch

    task = MetaTask(random_batch(4, 10, seed=2, pad_first=3), random_batch(1, 7, seed=3, prefix=4))
    peft = attach_lora(micro_gpt2(seed=micro_model_seed), LoraSettings(rank=2, alpha=4.0))  # PEFT init: B = 0
    torch.manual_seed(0)
    meta = MetaLearner(peft, InnerLoopSettings(steps=3, optimizer="adamw", lr_init=1e-2, **settings))
    loss, _ = meta.meta_loss(task)
    lora_b = [p for n, p in meta.lora_init().items() if ".lora_B." in n]
    return float(torch.stack([g.norm() for g in torch.autograd.grad(loss, lora_b)]).norm())


def test_unrolling_step_zero_does_not_start_from_zero_b(monkeypatch):
    assert InnerLoopSettings().unroll == "truncated" and InnerLoopSettings().unroll_start == 1
    truncated = _b_gradient_norm(0, unroll="truncated")
    second = _b_gradient_norm(0, unroll="second-order")
    from_zero = _b_gradient_norm(0, unroll="truncated", unroll_start=0)
    assert second < 10 * truncated and from_zero < 10 * truncated  # measured: about 2x
    # From an exactly-zero B (the former behaviour) the same meta-gradient is thousands of times larger.
    monkeypatch.setattr(MetaLearner, "_leave_zero_b", lambda self: None)
    assert _b_gradient_norm(0, unroll="second-order") > 1000 * truncated


def test_zero_b_is_kept_when_step_zero_is_first_order():
    from perk_cli.config import LoraSettings
    from perk_cli.models.lora import attach_lora
    from tests.conftest import micro_gpt2

    for unroll, zero in (("truncated", True), ("first-order", True), ("second-order", False)):
        peft = attach_lora(micro_gpt2(), LoraSettings(rank=2, alpha=4.0))
        meta = MetaLearner(peft, InnerLoopSettings(steps=2, unroll=unroll))
        lora_b = [p for n, p in meta.lora_init().items() if ".lora_B." in n]
        assert all(not p.any() for p in lora_b) == zero
        if not zero:
            spread = float(torch.cat([p.detach().flatten() for p in lora_b]).std())
            assert 0.5e-3 < spread < 2e-3  # N(0, b_init_std = 1e-3)
    peft = attach_lora(micro_gpt2(), LoraSettings(rank=2, alpha=4.0))
    meta = MetaLearner(peft, InnerLoopSettings(steps=2, unroll="second-order", b_init_std=1e-2))
    spread = float(torch.cat([p.detach().flatten() for n, p in meta.lora_init().items() if ".lora_B." in n]).std())
    assert 0.5e-2 < spread < 2e-2


def test_base_receives_no_gradient_and_is_not_copied(micro_peft, micro_task):
    base = {n: p for n, p in micro_peft.named_parameters() if ".lora_" not in n}
    pointers = {n: p.data_ptr() for n, p in base.items()}
    before = {n: p.detach().clone() for n, p in base.items()}
    meta = _meta(micro_peft)
    loss, _ = meta.meta_loss(micro_task)
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in base.values())
    assert {n: p.data_ptr() for n, p in micro_peft.named_parameters() if n in base} == pointers
    assert all(torch.equal(before[n], p) for n, p in base.items())
    assert all(p.grad is not None for p in meta.lora_init().values())
    # Omega holds LoRA init, step sizes and weighter only: never base weights.
    state = meta.trainable_state_dict()
    assert not any(k.startswith("base.") for k in state)
    assert sum(v.numel() for v in state.values()) < sum(p.numel() for p in base.values())


def test_train_base_gives_the_base_a_gradient(micro_peft, micro_task):
    torch.manual_seed(7)
    meta = MetaLearner(micro_peft, InnerLoopSettings(steps=2, optimizer="sgd", lr_init=0.1, unroll="second-order"),
                       train_base=True)
    loss, _ = meta.meta_loss(micro_task)
    loss.backward()
    wte = dict(micro_peft.named_parameters())["base_model.model.transformer.wte.weight"]
    assert wte.grad is not None and wte.grad.abs().sum() > 0
    assert any(k.startswith("base.") for k in meta.trainable_state_dict())
