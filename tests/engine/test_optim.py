"""Functional SGD/Adam/AdamW must equal torch.optim's arithmetic, step for step."""

import pytest
import torch

from perk_cli.engine.optim import FunctionalOptimizer, safe_sqrt


def _tensors(seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(3, 4, generator=gen, dtype=torch.float64), torch.randn(5, generator=gen, dtype=torch.float64)]


@pytest.mark.parametrize(
    "kind, torch_cls, kwargs",
    [
        ("sgd", torch.optim.SGD, {"weight_decay": 0.0}),
        ("sgd", torch.optim.SGD, {"weight_decay": 0.1}),
        ("adam", torch.optim.Adam, {"weight_decay": 0.1, "betas": (0.9, 0.95), "eps": 1e-8}),
        ("adamw", torch.optim.AdamW, {"weight_decay": 0.1, "betas": (0.9, 0.95), "eps": 1e-8}),
        ("adamw", torch.optim.AdamW, {"weight_decay": 0.0, "betas": (0.8, 0.99), "eps": 1e-6}),
    ],
)
def test_functional_steps_equal_torch_optim(kind, torch_cls, kwargs):
    lrs = [0.03, 0.2]  # a different learning rate per tensor, as learned step sizes give
    params = _tensors(0)
    reference = [p.clone().requires_grad_() for p in params]
    torch_opt = torch_cls([{"params": [p], "lr": lr} for p, lr in zip(reference, lrs)], foreach=False, **kwargs)
    functional = FunctionalOptimizer(kind, kwargs.get("betas", (0.9, 0.95)), kwargs.get("eps", 1e-8),
                                     kwargs["weight_decay"])
    state = functional.init_state(params)
    for step in range(3):
        grads = _tensors(10 + step)
        for p, g in zip(reference, grads):
            p.grad = g.clone()
        torch_opt.step()
        params, state = functional.step(params, grads, [torch.tensor(lr, dtype=torch.float64) for lr in lrs], state)
        for ours, theirs in zip(params, reference):
            torch.testing.assert_close(ours, theirs.detach(), rtol=1e-13, atol=1e-14)
    assert state.step == 3


def test_adam_update_is_differentiable_in_lr_and_params():
    params = [p.requires_grad_() for p in _tensors(0)]
    lr = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    opt = FunctionalOptimizer("adamw", weight_decay=0.01)
    new, _ = opt.step(params, _tensors(1), [lr, lr], opt.init_state(params))
    grads = torch.autograd.grad(sum(n.sum() for n in new), [lr, *params])
    assert all(torch.isfinite(g).all() for g in grads)
    assert float(grads[0].abs()) > 0


def test_safe_sqrt_has_zero_gradient_at_zero():
    x = torch.tensor([0.0, 4.0], dtype=torch.float64, requires_grad=True)
    y = safe_sqrt(x)
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert y.tolist() == [0.0, 2.0]
    assert grad.tolist() == [0.0, 0.25]
