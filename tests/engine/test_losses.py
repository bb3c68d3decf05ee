"""The losses project only the scored positions, and that changes no number: losses, weights, inner
gradients and meta-gradients equal the full-logits computation (float64, GPT-2 and Llama)."""

import pytest
import torch
import torch.nn.functional as F

from perk_cli.config import LoraSettings
from perk_cli.engine.learned import TokenWeighter
from perk_cli.engine.losses import answer_loss, functional_model_call, plain_output_head, weighted_token_nll
from perk_cli.models.lora import attach_lora
from tests.conftest import micro_gpt2, micro_llama, random_batch, randomise_lora_b, seeded_meta


def reference_nll(logits: torch.Tensor, batch) -> torch.Tensor:
    """The former computation: every position's logits, the loss masked afterwards."""
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch.input_ids[:, 1:].flatten(), reduction="none")
    return nll.view(logits.shape[0], -1) * batch.target_mask[:, 1:]


def full_logits_call(model, params):
    call = functional_model_call(model, params)
    call.head = None  # what a model without a plain head gets: the model's own logits
    return call


@pytest.fixture(params=["gpt2", "llama"])
def peft(request):
    model = micro_gpt2() if request.param == "gpt2" else micro_llama()
    peft_model = attach_lora(model, LoraSettings(rank=2, alpha=4.0))
    randomise_lora_b(peft_model)
    return peft_model


def test_both_micro_families_have_a_plain_head(peft):
    assert plain_output_head(peft) is peft.get_output_embeddings()


def test_the_head_projects_only_the_target_positions(peft):
    batch = random_batch(3, 10, seed=1, pad_first=4, prefix=3)
    rows = []
    handle = peft.get_output_embeddings().register_forward_hook(lambda m, a, o: rows.append(a[0].shape))
    try:
        weighted_token_nll(functional_model_call(peft, {}), batch, None)
    finally:
        handle.remove()
    # the model's own call projects one position a row (logits_to_keep=1); ours the 18 targets
    assert rows == [torch.Size([3, 1, 16]), torch.Size([batch.n_targets, 16])]
    assert batch.n_targets == 3 * 7 - 4


def test_scored_positions_equal_the_full_logits(peft):
    batch = random_batch(3, 10, seed=1, pad_first=4, prefix=3)
    torch.manual_seed(3)
    weighter = TokenWeighter(peft.config.hidden_size).double()
    with torch.no_grad():
        weighter.net[2].weight.normal_(0, 0.5)
    params = {n: p for n, p in peft.named_parameters() if ".lora_" in n}
    names, leaves = list(params), list(params.values())

    def grads(call_for):
        nll, weights = weighted_token_nll(call_for(peft, dict(zip(names, leaves))), batch, weighter)
        inner = torch.autograd.grad(nll, leaves, grad_outputs=weights, create_graph=True)
        second = torch.autograd.grad(sum((g * g).sum() for g in inner), [*leaves, *weighter.parameters()])
        return nll, weights, inner, second

    fast, full = grads(functional_model_call), grads(full_logits_call)
    out = full_logits_call(peft, {})(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    torch.testing.assert_close(full[0], reference_nll(out.logits, batch), rtol=1e-12, atol=1e-12)
    for a, b in zip(fast, full):
        for x, y in zip(a if isinstance(a, tuple) else [a], b if isinstance(b, tuple) else [b]):
            torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)
    question = random_batch(2, 7, seed=3, prefix=4)
    torch.testing.assert_close(answer_loss(functional_model_call(peft, {}), question),
                               answer_loss(full_logits_call(peft, {}), question), rtol=1e-12, atol=1e-12)


def test_meta_gradients_are_unchanged(micro_task):
    peft = attach_lora(micro_llama(), LoraSettings(rank=2, alpha=4.0))
    randomise_lora_b(peft)
    settings = dict(steps=2, unroll="second-order", optimizer="adamw", lr_init=0.02)
    meta = seeded_meta(peft, settings)
    targets = [*meta.lora_init().values(), meta.step_sizes.parameter, *meta.weighter.parameters()]
    fast = torch.autograd.grad(meta.meta_loss(micro_task)[0], targets)
    import perk_cli.engine.losses as losses

    original = losses.plain_output_head
    losses.plain_output_head = lambda model: None
    try:
        full = torch.autograd.grad(meta.meta_loss(micro_task)[0], targets)
    finally:
        losses.plain_output_head = original
    for a, b in zip(fast, full):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_the_frozen_prefix_path_projects_only_the_targets_too(micro_task):
    peft = attach_lora(micro_llama(), LoraSettings(rank=2, alpha=4.0, top_layers=1))
    meta = seeded_meta(peft, dict(steps=2, unroll="truncated", unroll_start=1))
    assert meta.frozen_prefix() is not None
    rows = []
    handle = peft.get_output_embeddings().register_forward_hook(lambda m, a, o: rows.append(a[0].shape[0]))
    try:
        meta.meta_loss(micro_task)
    finally:
        handle.remove()
    # per call: one row per sequence from the model (logits_to_keep=1), then the targets alone
    context, question = micro_task.context, micro_task.question
    assert rows == [context.input_ids.shape[0], context.n_targets] * 2 + [1, question.n_targets]


def _greedy(model, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


def test_teacher_forced_exact_match_is_true_exactly_when_greedy_decoding_reproduces_the_target(peft):
    from perk_cli.engine.losses import answer_scores
    from perk_cli.prompts import pad_rows

    prompt = [3, 9, 4, 11, 2]
    greedy = _greedy(peft, prompt, 5)
    wrong_last = greedy[:-1] + [(greedy[-1] + 1) % 16]
    wrong_first = [(greedy[0] + 1) % 16] + greedy[1:]
    rows = [(prompt + target, [False] * len(prompt) + [True] * len(target))
            for target in (greedy, wrong_last, greedy[:2], wrong_first)]
    batch = pad_rows(rows, 0)  # the third row is shorter: padded, and its padding never scored
    call = functional_model_call(peft, {})
    loss, exact = answer_scores(call, batch)
    assert exact.tolist() == [True, False, True, False]
    torch.testing.assert_close(loss, answer_loss(call, batch), rtol=0, atol=0)
    # one row alone scores as it does in the batch
    assert answer_scores(call, pad_rows(rows[1:2], 0))[1].tolist() == [False]


def test_the_answer_weight_makes_the_loss_a_weighted_mean_over_targets(peft):
    from perk_cli.engine.batches import TokenBatch

    batch = random_batch(2, 9, seed=4, pad_first=2, prefix=3)
    answers = torch.zeros_like(batch.target_mask)
    answers[0, 5:7] = True
    answers[1, 4] = True
    answers[1, 0] = True  # not a target: never weighed
    batch = TokenBatch(batch.input_ids, batch.attention_mask, batch.target_mask, answers)
    call = functional_model_call(peft, {})
    with torch.no_grad():
        nll = reference_nll(peft(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits, batch)
    # targets: row 0 tokens 3..6 (4, the last 2 are padding), row 1 tokens 3..8 (6); answers weigh 5
    weights = batch.target_mask[:, 1:].double()
    weights[0, 4:6] = 5.0
    weights[1, 3] = 5.0
    assert float(weights.sum()) == 4 + 6 + 3 * 4
    expected = (nll * weights).sum() / weights.sum()
    with torch.no_grad():
        torch.testing.assert_close(answer_loss(call, batch, answer_weight=5.0), expected)
        torch.testing.assert_close(answer_loss(call, batch, answer_weight=1.0), nll.sum() / batch.n_targets)
        # the same batch without an answer mask: every weight is 1
        plain = TokenBatch(batch.input_ids, batch.attention_mask, batch.target_mask)
        torch.testing.assert_close(answer_loss(call, plain, answer_weight=5.0), nll.sum() / batch.n_targets)
