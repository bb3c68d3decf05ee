"""Accumulation groups equal the unsplit step (recency-weighted too); the func and higher engines agree."""

import pytest
import torch

from perk_cli.engine.batches import MetaTask, TokenBatch
from tests.conftest import meta_grads, random_batch, seeded_meta


def _meta(peft_model, **overrides):
    return seeded_meta(peft_model, dict(steps=3, optimizer="adamw", lr_init=0.05, unroll="second-order"),
                       **overrides)


_grads = meta_grads


def test_groups_split_rows_within_the_token_budget():
    batch = random_batch(6, 10, seed=0, pad_first=4)
    groups = batch.split(20)
    assert [g.input_ids.shape[0] for g in groups] == [2, 2, 2]
    assert sum(g.n_targets for g in groups) == batch.n_targets
    assert all(g.input_ids.numel() <= 20 for g in groups)
    assert len(batch.split(None)) == 1 and len(batch.split(1)) == 6


@pytest.mark.parametrize("unroll", ["second-order", "truncated", "first-order"])
def test_accumulation_groups_equal_the_unsplit_loop(micro_peft, unroll):
    task = MetaTask(random_batch(6, 12, seed=4, pad_first=5), random_batch(1, 7, seed=3, prefix=4))
    whole = _grads(_meta(micro_peft, unroll=unroll), task)
    split = _grads(_meta(micro_peft, unroll=unroll, max_tokens_per_group=24), task)
    assert len(task.context.split(24)) == 3
    assert split[0] == pytest.approx(whole[0], rel=1e-12)
    for a, b in zip(whole[2], split[2]):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_accumulation_groups_keep_each_segments_place_under_recency(micro_peft):
    batch = random_batch(6, 12, seed=4, pad_first=5)
    placed = TokenBatch(batch.input_ids, batch.attention_mask, batch.target_mask,
                        row_place=torch.linspace(0, 1, 6))
    task = MetaTask(placed, random_batch(1, 7, seed=3, prefix=4))
    whole = _grads(_meta(micro_peft, unroll="truncated", recency=2.0), task)
    split = _grads(_meta(micro_peft, unroll="truncated", recency=2.0, max_tokens_per_group=24), task)
    groups = placed.split(24)
    assert [len(g.row_place) for g in groups] == [2, 2, 2]
    assert torch.cat([g.row_place for g in groups]).tolist() == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert split[0] == pytest.approx(whole[0], rel=1e-12)
    for a, b in zip(whole[2], split[2]):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    plain = _grads(_meta(micro_peft, unroll="truncated"), task)
    assert whole[0] != pytest.approx(plain[0], rel=1e-6)  # the places did change the memory


def test_test_time_path_equals_the_differentiable_values_and_keeps_no_graph(micro_peft):
    context = random_batch(6, 12, seed=4, pad_first=5)
    meta = _meta(micro_peft, unroll="truncated", max_tokens_per_group=24)
    adapted = meta.adapt(context)
    reference = meta.inner_loop(context, differentiable=True)
    assert adapted.losses == pytest.approx(reference.losses, rel=1e-12)
    for name, value in adapted.params.items():
        assert value.grad_fn is None and not value.requires_grad
        torch.testing.assert_close(value, reference.params[name].detach(), rtol=1e-12, atol=1e-14)
    assert adapted.losses[-1] < adapted.losses[0]  # the inner loop does learn the context


@pytest.mark.parametrize("optimizer, lr", [("sgd", 0.5), ("adam", 0.02)])
def test_func_and_higher_engines_give_the_same_meta_gradients(micro_peft, micro_task, optimizer, lr):
    # higher's Adam adds eps before its bias correction (torch.optim after it). With a tiny eps the
    # values agree to 1e-8; the derivative of m / (sqrt(v) + eps) at near-zero gradients still feels
    # the eps placement, so Adam's meta-gradients are compared by relative norm (a bug gives O(1)).
    # higher differentiates the weighted loss whole (the official rule): compare on that rule.
    legacy = dict(optimizer=optimizer, lr_init=lr, eps=1e-12, weighting_mode="legacy")
    func = _grads(_meta(micro_peft, **legacy), micro_task)
    high = _grads(_meta(micro_peft, **legacy, engine="higher"), micro_task)
    assert high[1].losses == pytest.approx(func[1].losses, rel=1e-8)
    assert high[0] == pytest.approx(func[0], rel=1e-8)
    compared = 0
    for a, b in zip(func[2], high[2]):
        if a is None:
            continue
        if optimizer == "sgd":
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-13)
        else:
            assert float((a - b).norm() / a.norm().clamp_min(1e-30)) < 1e-5
        compared += 1
    assert compared >= 10
