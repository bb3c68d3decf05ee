"""Flags are made from the settings' fields, and a validation error names the flag that was typed."""

import pytest

from perk_cli.cli import app
from perk_cli.cli.options import FLAGS, build_settings, option_name
from perk_cli.config import EvalSettings, PrepareSettings, RunConfig
from perk_cli.errors import PerkError


@pytest.mark.parametrize("model, loc, flag", [
    (RunConfig, ("lora", "rank"), "--lora-rank"),
    (RunConfig, ("inner", "lr_init"), "--inner-lr"),
    (RunConfig, ("inner", "steps"), "--inner-steps"),
    (RunConfig, ("inner", "unroll_start"), "--unroll-start"),
    (RunConfig, ("inner", "weighting"), "--weighting"),
    (RunConfig, ("model", "name"), "--model"),
    (RunConfig, ("train", "max_steps"), "--max-steps"),
    (RunConfig, ("inner", "betas", 0), "--config inner.betas"),  # no flag: only a config file sets it
    (RunConfig, ("inner",), ""),  # a rule across fields: the message names them itself
    (PrepareSettings, ("out",), "--out"),
    (EvalSettings, ("max_tokens_per_group",), "--max-tokens-per-group"),
])
def test_option_names_come_from_the_declared_flags(model, loc, flag):
    assert app.registered_commands and len(FLAGS) > 40  # declaring the commands recorded their flags
    assert option_name(model, loc) == flag


def test_build_settings_merges_a_config_section_with_the_flags_given():
    base = {"perk_version": "x", "lora": {"rank": 2, "alpha": 8.0}, "train": {"max_steps": 5}}
    config = build_settings(RunConfig, None, {"perk_version": "x", "lora": {"rank": 4, "alpha": None}}, base=base)
    assert (config.lora.rank, config.lora.alpha, config.train.max_steps) == (4, 8.0, 5)
    with pytest.raises(PerkError, match=r"^--lora-rank: Input should be greater than or equal to 1$"):
        build_settings(RunConfig, None, {"perk_version": "x", "lora": {"rank": 0}})
    with pytest.raises(PerkError, match=r"^--config inner.betas: "):
        build_settings(RunConfig, None, {"perk_version": "x", "inner": {"betas": "no"}})
