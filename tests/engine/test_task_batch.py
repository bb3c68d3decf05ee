"""Task-batched meta-losses equal one task at a time: losses, memories, logged inner losses and the
meta-gradient (float64), whatever the tasks' row counts and widths, the unroll mode, the groups and
the frozen-prefix cache.

GPT-2 is checked to float64 rounding. Llama's RMSNorm (and its rotary embedding) compute in float32
whatever the model's dtype, with results that differ in the last bit with the batch's shape, so a
float64 Llama is float32-precise: it is checked with SGD to 1e-4 (a wrong task assignment is O(1)),
not with AdamW, whose g / sqrt(v) turns float32 noise on tiny gradient entries into whole steps."""

import pytest
import torch

from perk_cli.config import LoraSettings
from perk_cli.engine.batches import MetaTask, TokenBatch
from perk_cli.engine.lora import per_task_lora
from perk_cli.models.lora import attach_lora
from tests.conftest import micro_gpt2, micro_llama, random_batch, randomise_lora_b, seeded_meta


def tasks(shapes) -> list[MetaTask]:
    """One task per (context rows, width, question width); padded rows and differing widths."""
    return [MetaTask(random_batch(rows, width, seed=10 + i, pad_first=2), random_batch(1, q, seed=20 + i, prefix=q - 3))
            for i, (rows, width, q) in enumerate(shapes)]


def meta_for(family: str, top_layers=None, **settings):
    model = micro_gpt2() if family == "gpt2" else micro_llama()
    peft = attach_lora(model, LoraSettings(rank=2, alpha=4.0, top_layers=top_layers))
    randomise_lora_b(peft)
    return seeded_meta(peft, {"steps": 3, "optimizer": "adamw", "lr_init": 0.02, **settings})


def targets(meta):
    return [*meta.lora_init().values(), meta.step_sizes.parameter, *meta.weighter.parameters()]


def compare(meta, batch: list[MetaTask], rtol: float, answer_weight: float = 1.0):
    """Adam divides by sqrt(v) + 1e-8: a gradient entry at rounding level (1e-18) moves a parameter
    by lr * 1e-10, so AdamW runs agree to ~1e-9 relative, SGD runs to ~1e-12."""
    sequential = [meta.meta_loss(task, answer_weight) for task in batch]
    seq_grads = torch.autograd.grad(sum(loss for loss, _ in sequential), targets(meta), allow_unused=True)
    together = meta.meta_losses(batch, answer_weight)
    grads = torch.autograd.grad(sum(loss for loss, _ in together), targets(meta), allow_unused=True)
    for (loss_a, result_a), (loss_b, result_b) in zip(together, sequential):
        torch.testing.assert_close(loss_a, loss_b, rtol=rtol, atol=rtol)
        assert result_a.losses == pytest.approx(result_b.losses, rel=rtol)
        for name in result_b.params:
            torch.testing.assert_close(result_a.params[name], result_b.params[name], rtol=rtol, atol=rtol)
    for a, b in zip(grads, seq_grads):
        assert (a is None) == (b is None)  # first-order: the weighter gets no gradient either way
        if a is not None:
            torch.testing.assert_close(a, b, rtol=10 * rtol, atol=10 * rtol)
    assert seq_grads[0].abs().sum() > 0


@pytest.mark.parametrize("unroll", ["truncated", "second-order", "first-order"])
@pytest.mark.parametrize("family,optimizer,rtol", [("gpt2", "sgd", 1e-11), ("gpt2", "adamw", 1e-8),
                                                   ("llama", "sgd", 1e-4)])
def test_uneven_tasks_batched_equal_one_by_one(family, unroll, optimizer, rtol):
    meta = meta_for(family, unroll=unroll, unroll_start=1, optimizer=optimizer, lr_init=0.5 if optimizer == "sgd" else 0.02)
    compare(meta, tasks([(4, 10, 7), (2, 7, 9), (3, 12, 6)]), rtol)


def test_equal_row_counts_and_groups_across_tasks():
    # 3 rows each (the reshape path); groups of at most 40 padded tokens cut through tasks.
    meta = meta_for("gpt2", unroll="truncated", unroll_start=1, max_tokens_per_group=40)
    batch = tasks([(3, 10, 7), (3, 10, 8)])
    assert len(TokenBatch.concat([t.context for t in batch]).split(40)) == 2
    compare(meta, batch, 1e-8)


def test_with_the_frozen_prefix_cache():
    meta = meta_for("gpt2", top_layers=1, unroll="truncated", unroll_start=1)
    assert meta.frozen_prefix() is not None
    compare(meta, tasks([(4, 10, 7), (2, 7, 9)]), 1e-8)


def test_with_answer_tokens_weighed_up():
    # each question marks its last two targets as the answer (the first task's question marks none)
    batch = tasks([(4, 10, 7), (2, 7, 9), (3, 12, 6)])
    for i, task in enumerate(batch):
        answers = torch.zeros_like(task.question.target_mask)
        if i:
            answers[:, -2:] = True
        task.question = TokenBatch(task.question.input_ids, task.question.attention_mask,
                                   task.question.target_mask, answers)
    meta = meta_for("gpt2", unroll="truncated", unroll_start=1, optimizer="sgd", lr_init=0.5)
    compare(meta, batch, 1e-11, answer_weight=6.0)
    weighed = [float(loss.detach()) for loss, _ in meta.meta_losses(batch, 6.0)]
    plain = [float(loss.detach()) for loss, _ in meta.meta_losses(batch)]
    assert weighed[0] == pytest.approx(plain[0], rel=1e-12) and weighed[1:] != pytest.approx(plain[1:], rel=1e-3)


def test_with_recency_each_task_keeps_its_own_segments_places():
    batch = tasks([(4, 10, 7), (2, 7, 9), (3, 12, 6)])
    for task in batch:
        rows = task.context.input_ids.shape[0]
        task.context = TokenBatch(task.context.input_ids, task.context.attention_mask, task.context.target_mask,
                                  row_place=torch.arange(rows, dtype=torch.float32) / (rows - 1))
    compare(meta_for("gpt2", unroll="truncated", unroll_start=1, recency=2.0), batch, 1e-8)


def test_legacy_weighting_runs_one_by_one():
    meta = meta_for("gpt2", weighting_mode="legacy")
    batch = tasks([(2, 8, 7), (3, 9, 7)])
    for (a, _), (b, _) in zip(meta.meta_losses(batch), [meta.meta_loss(t) for t in batch]):
        assert float(a.detach()) == float(b.detach())


def test_per_task_lora_applies_each_tasks_matrix_and_restores_the_module():
    meta = meta_for("gpt2")
    name = meta.lora_names[0]
    module = meta.model.get_submodule(name.rsplit(".", 1)[0])
    weight = torch.randn(3, *module.weight.shape, dtype=torch.float64)
    x = torch.randn(5, 4, module.weight.shape[1], dtype=torch.float64)
    counts = torch.tensor([2, 0, 3])
    with per_task_lora(meta.model, [name], counts):
        from torch.func import functional_call

        out = functional_call(module, {"weight": weight}, (x,))
    expected = torch.cat([x[:2] @ weight[0].T, x[2:] @ weight[2].T])
    torch.testing.assert_close(out, expected)
    assert "forward" not in module.__dict__
    own = lambda x: x  # noqa: E731 - a forward the module already had is put back, not deleted
    module.forward = own
    with per_task_lora(meta.model, [name], counts):
        assert module.forward is not own
    assert module.__dict__["forward"] is own
