"""Token weights: coefficients of the inner step (not a quantity it lowers), normalised, read from
the token they weigh, and (with recency) weighed up by their segment's place."""

import pytest
import torch
from torch import nn

from perk_cli.config import InnerLoopSettings
from perk_cli.engine.batches import TokenBatch
from perk_cli.engine.inner_loop import run_inner_loop
from perk_cli.engine.learned import TokenWeighter
from perk_cli.engine.losses import functional_model_call, weighted_token_nll
from tests.conftest import random_batch
from tests.engine.test_losses import reference_nll


class Scaled(nn.Module):
    """A weighter times a constant: normalised weights make the constant irrelevant."""

    def __init__(self, weighter: TokenWeighter, scale: float):
        super().__init__()
        self.weighter, self.scale = weighter, scale

    def forward(self, hidden):
        return self.scale * self.weighter(hidden)


def _weighter(hidden_size: int) -> TokenWeighter:
    torch.manual_seed(3)
    weighter = TokenWeighter(hidden_size).double()
    with torch.no_grad():
        weighter.net[2].weight.normal_(0, 0.5)
    return weighter


def _one_sgd_step(peft, weighter, mode="coefficients", lr=0.5):
    context = random_batch(4, 10, seed=2, pad_first=3)
    params0 = {n: p for n, p in peft.named_parameters() if ".lora_" in n}
    settings = InnerLoopSettings(steps=1, optimizer="sgd", lr_init=lr, lr_max=None, weighting_mode=mode)
    steps = torch.full((1, len(params0)), lr, dtype=torch.float64)
    return run_inner_loop(peft, params0, [context], steps, weighter, settings, differentiable=False), params0, context


def test_the_inner_step_descends_the_weighted_loss_with_the_weights_held_fixed(micro_peft):
    weighter = _weighter(micro_peft.config.hidden_size)
    result, params0, context = _one_sgd_step(micro_peft, weighter)
    names, leaves = list(params0), [p.detach().requires_grad_() for p in params0.values()]
    nll, weights = weighted_token_nll(functional_model_call(micro_peft, dict(zip(names, leaves))), context, weighter)
    weights = weights.detach()
    grads = torch.autograd.grad((weights * nll).sum() / weights.sum(), leaves)
    for name, leaf, grad in zip(names, leaves, grads):
        torch.testing.assert_close(result.params[name], leaf.detach() - 0.5 * grad, rtol=1e-12, atol=1e-14)
    # The logged loss is the weighted mean cross-entropy.
    assert result.losses[0] == pytest.approx(float((weights * nll.detach()).sum() / weights.sum()), rel=1e-12)
    # The former rule lets the step lower the weights too: a different step.
    legacy, _, _ = _one_sgd_step(micro_peft, weighter, mode="legacy")
    name = names[0]
    assert (legacy.params[name] - result.params[name]).norm() > 1e-3 * (result.params[name] - leaves[0]).norm()


def test_the_weights_overall_scale_does_not_change_the_step(micro_peft):
    weighter = _weighter(micro_peft.config.hidden_size)
    one, _, _ = _one_sgd_step(micro_peft, Scaled(weighter, 1.0))
    seven, _, _ = _one_sgd_step(micro_peft, Scaled(weighter, 7.0))
    for name in one.params:
        torch.testing.assert_close(one.params[name], seven.params[name], rtol=1e-12, atol=1e-14)
    assert one.losses == pytest.approx(seven.losses, rel=1e-12)
    legacy_one, _, _ = _one_sgd_step(micro_peft, Scaled(weighter, 1.0), mode="legacy")
    legacy_seven, _, _ = _one_sgd_step(micro_peft, Scaled(weighter, 7.0), mode="legacy")
    assert legacy_seven.losses[0] == pytest.approx(7 * legacy_one.losses[0], rel=1e-12)  # unnormalised before


def test_a_tokens_weight_is_read_from_that_token(micro_peft):
    weighter = _weighter(micro_peft.config.hidden_size)
    batch = random_batch(1, 10, seed=5)
    changed = random_batch(1, 10, seed=5)
    changed.input_ids[0, 6] = (changed.input_ids[0, 6] + 1) % 60 + 1
    call = functional_model_call(micro_peft, {})
    for legacy, sees in ((False, True), (True, False)):
        _, before = weighted_token_nll(call, batch, weighter, legacy=legacy)
        _, after = weighted_token_nll(call, changed, weighter, legacy=legacy)
        # column j weighs token j + 1: column 5 is token 6, the one changed
        assert (abs(float((after[0, 5] - before[0, 5]).detach())) > 1e-9) == sees
        torch.testing.assert_close(after[0, :5].detach(), before[0, :5].detach())  # earlier tokens never see token 6


def test_without_a_weighter_every_target_weighs_one(micro_peft):
    batch = random_batch(3, 8, seed=1, pad_first=2)
    call = functional_model_call(micro_peft, {})
    nll, weights = weighted_token_nll(call, batch, None)
    assert torch.equal(weights, batch.target_mask[:, 1:].double())
    out = call(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    torch.testing.assert_close(nll, reference_nll(out.logits, batch))


def _placed(batch):
    """The batch with row k of N at place k / (N - 1), as encode_context lays a document out."""
    rows = batch.input_ids.shape[0]
    return TokenBatch(batch.input_ids, batch.attention_mask, batch.target_mask,
                      row_place=torch.arange(rows, dtype=torch.float32) / (rows - 1))


def test_recency_multiplies_each_segments_weights_by_its_place(micro_peft):
    weighter = _weighter(micro_peft.config.hidden_size)
    batch = _placed(random_batch(4, 10, seed=2, pad_first=3))
    call = functional_model_call(micro_peft, {})
    nll, plain = weighted_token_nll(call, batch, weighter)
    again, recent = weighted_token_nll(call, batch, weighter, recency=2.0)
    torch.testing.assert_close(again, nll)
    factor = torch.exp(2.0 * (torch.tensor([0, 1, 2, 3], dtype=torch.float64) / 3 - 0.5))
    torch.testing.assert_close(recent, plain * factor[:, None])
    recent = recent.detach()
    assert float(recent[3].sum() / recent[3].count_nonzero()) > float(recent[0].sum() / recent[0].count_nonzero())
    with pytest.raises(ValueError, match="row_place"):
        weighted_token_nll(call, random_batch(4, 10, seed=2), weighter, recency=2.0)


def test_a_recency_weighted_step_descends_the_place_weighted_loss(micro_peft):
    weighter = _weighter(micro_peft.config.hidden_size)
    context = _placed(random_batch(4, 10, seed=2, pad_first=3))
    params0 = {n: p for n, p in micro_peft.named_parameters() if ".lora_" in n}
    settings = InnerLoopSettings(steps=1, optimizer="sgd", lr_init=0.5, lr_max=None, recency=3.0)
    steps = torch.full((1, len(params0)), 0.5, dtype=torch.float64)
    result = run_inner_loop(micro_peft, params0, [context], steps, weighter, settings, differentiable=False)
    plain = run_inner_loop(micro_peft, params0, [context], steps, weighter, settings.model_copy(update={"recency": 0.0}),
                           differentiable=False)
    names, leaves = list(params0), [p.detach().requires_grad_() for p in params0.values()]
    nll, weights = weighted_token_nll(functional_model_call(micro_peft, dict(zip(names, leaves))), context, weighter)
    weights = weights.detach() * torch.exp(3.0 * (context.row_place.double() - 0.5))[:, None]
    grads = torch.autograd.grad((weights * nll).sum() / weights.sum(), leaves)
    for name, leaf, grad in zip(names, leaves, grads):
        torch.testing.assert_close(result.params[name], leaf.detach() - 0.5 * grad, rtol=1e-12, atol=1e-14)
    assert (result.params[names[0]] - plain.params[names[0]]).norm() > 1e-3 * (plain.params[names[0]] - leaves[0]).norm()


def test_recency_is_refused_where_the_step_is_not_a_coefficient_step():
    from pydantic import ValidationError

    for other in ({"weighting_mode": "legacy"}, {"engine": "higher", "unroll": "second-order", "weighting": False}):
        with pytest.raises(ValidationError, match="recency"):
            InnerLoopSettings(recency=1.0, **other)
