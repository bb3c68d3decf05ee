"""Learned step sizes: log space, learning speed under the default outer optimiser, old checkpoints."""

import math

import pytest
import torch
import torch.nn.functional as F

from perk_cli.config import InnerLoopSettings, TrainSettings
from perk_cli.engine.learned import LearnedStepSizes, inverse_softplus
from perk_cli.engine.meta import MetaLearner
from perk_cli.engine.optim import FunctionalOptimizer


def _toy_meta_training(meta: MetaLearner, train: TrainSettings, best: float, steps: int) -> float:
    """Meta-train only the step sizes on a quadratic whose best one-step SGD step size is `best`.

    Inner loss 0.5 h ||phi - c||^2 with h = 1/best: one SGD step of size eta from phi = 0 lands on
    (eta h) c, and the outer loss 0.5 ||phi_1 - c||^2 is smallest at eta = best. The outer optimiser is
    built exactly as meta-training builds it (MetaLearner.parameter_groups, TrainSettings' lrs).
    """
    groups = meta.parameter_groups(train.weight_decay, train.step_size_lr)
    groups = [g for g in groups if any(p is meta.step_sizes.parameter for p in g["params"])]
    optimizer = torch.optim.AdamW(groups, lr=train.lr, betas=train.betas)
    inner = FunctionalOptimizer("sgd")
    c = torch.linspace(-1, 1, 8, dtype=torch.float64)
    for _ in range(steps):
        eta = meta.step_sizes()[0, 0]
        phi0 = torch.zeros_like(c)
        grad = (phi0 - c) / best
        (phi1,), _ = inner.step([phi0], [grad], [eta], inner.init_state([phi0]))
        loss = 0.5 * ((phi1 - c) ** 2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return float(meta.step_sizes().detach()[0, 0])


def test_step_sizes_learn_a_tenfold_step_in_a_few_hundred_outer_steps(micro_peft):
    lr_init, best = 1e-3, 1e-2
    settings = InnerLoopSettings(steps=1, optimizer="sgd", lr_init=lr_init, weighting=False)
    learned = _toy_meta_training(MetaLearner(micro_peft, settings), TrainSettings(), best, steps=300)
    assert best / 2 <= learned <= 2 * best
    # The former parameterisation at the LoRA's outer lr barely moves in the same budget.
    old = MetaLearner(micro_peft, settings.model_copy(update={"step_size_space": "softplus"}))
    stuck = _toy_meta_training(old, TrainSettings(step_size_lr=None), best, steps=300)
    assert stuck < 1.1 * lr_init


def test_log_space_values_cap_and_gradient():
    steps = LearnedStepSizes(2, 3, lr_init=0.01, lr_max=0.05).double()
    assert torch.allclose(steps(), torch.full((2, 3), 0.01, dtype=torch.float64))
    assert steps.parameter is steps.log_eta
    steps().sum().backward()
    torch.testing.assert_close(steps.log_eta.grad, torch.full((2, 3), 0.01, dtype=torch.float64))  # d exp = exp
    with torch.no_grad():
        steps.log_eta[0, 0] = math.log(0.2)
    assert float(steps().detach()[0, 0]) == pytest.approx(0.05)  # capped at lr_max


def test_a_softplus_checkpoint_loads_as_the_same_step_sizes():
    old = LearnedStepSizes(2, 3, lr_init=3e-3, space="softplus").double()
    with torch.no_grad():
        old.raw.add_(torch.linspace(-0.5, 0.5, 6, dtype=torch.float64).view(2, 3))
    assert set(old.state_dict()) == {"raw"}
    new = LearnedStepSizes(2, 3, lr_init=1e-3).double()
    new.load_state_dict(old.state_dict())
    torch.testing.assert_close(new(), old(), rtol=1e-12, atol=0)
    assert float(F.softplus(torch.tensor(inverse_softplus(3e-3), dtype=torch.float64))) == pytest.approx(3e-3)
