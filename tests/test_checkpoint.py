"""Checkpoints written before the learning fixes still load, and run under the rules they were trained with."""

from pathlib import Path

import torch
import torch.nn.functional as F

from perk_cli.engine.learned import LearnedStepSizes
from perk_cli.training.checkpoint import read_checkpoint

COMMITTED = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "recall-smollm2-r3" / "checkpoint"


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
    from perk_cli.training.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "c", RunConfig(perk_version=__version__), {"x": torch.zeros(1)})
    assert read_checkpoint(tmp_path / "c").config.inner.weighting_mode == "coefficients"
