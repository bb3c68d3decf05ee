"""Checkpoints written before the learning fixes still load, and run under the rules they were trained with."""

from pathlib import Path

import torch
import torch.nn.functional as F

from perk_cli.engine.learned import LearnedStepSizes
from perk_cli.checkpoint import read_checkpoint

# a checkpoint made before the weighting fix and log-space step sizes: its config and step-size table only
COMMITTED = Path(__file__).resolve().parent / "fixtures" / "legacy-checkpoint"


def test_a_pre_fix_checkpoint_keeps_its_weighting_rule_and_step_sizes():
    files = read_checkpoint(COMMITTED)
    assert files.config.inner.weighting_mode == "legacy"  # its weighter learnt under the former rule
    raw = files.tensors["step_sizes.raw"]
    steps = LearnedStepSizes(*raw.shape, lr_init=1e-3, lr_max=files.config.inner.lr_max)
    steps.load_state_dict({"raw": raw})
    torch.testing.assert_close(steps().detach(), F.softplus(raw).clamp(max=files.config.inner.lr_max))


def test_a_new_checkpoint_keeps_the_default_rule(tmp_path):
    from perk_cli import __version__
    from perk_cli.config import RunConfig
    from perk_cli.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "c", RunConfig(perk_version=__version__), {"x": torch.zeros(1)})
    assert read_checkpoint(tmp_path / "c").config.inner.weighting_mode == "coefficients"


def test_fit_step_sizes_keeps_the_trained_rows_and_starts_new_ones_at_lr_init():
    import math

    import pytest

    from perk_cli.engine.learned import inverse_softplus
    from perk_cli.checkpoint import fit_step_sizes

    table = torch.arange(6.0).reshape(3, 2)  # 3 inner steps x 2 LoRA tensors, in log space
    tensors = {"step_sizes.log_eta": table, "lora_init.x": torch.ones(2)}
    longer = fit_step_sizes(tensors, 5, lr_init=1e-3)["step_sizes.log_eta"]
    new = math.log(1e-3)
    torch.testing.assert_close(longer, torch.tensor([[0, 1], [2, 3], [4, 5], [new, new], [new, new]]))
    assert fit_step_sizes(tensors, 2, lr_init=1e-3)["step_sizes.log_eta"].tolist() == [[0, 1], [2, 3]]
    assert fit_step_sizes(tensors, 3, 1e-3) is tensors
    assert fit_step_sizes(tensors, 5, 1e-3)["lora_init.x"] is tensors["lora_init.x"]
    shorter = fit_step_sizes(tensors, 2, 1e-3)["step_sizes.log_eta"]
    shorter[0, 0] = 99.0  # a copy, not a view of the checkpoint's table
    assert table[0, 0] == 0.0
    # a pre-log-space checkpoint's `raw` table: new rows in its own space, softplus(raw) = lr_init
    files = read_checkpoint(COMMITTED)
    raw = files.tensors["step_sizes.raw"]
    fitted = fit_step_sizes(files.tensors, raw.shape[0] + 1, lr_init=2e-3)["step_sizes.raw"]
    assert torch.equal(fitted[:-1], raw)
    torch.testing.assert_close(F.softplus(fitted[-1]), torch.full_like(raw[-1], 2e-3))
    assert abs(inverse_softplus(2e-3) - float(fitted[-1, 0])) < 1e-6
    with pytest.raises(ValueError, match="at least 1"):
        fit_step_sizes(tensors, 0, 1e-3)
