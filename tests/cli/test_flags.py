"""Flags are built from the settings they fill and collected back into them: every flag declared with
setting() reaches its field, no field has two flags in one command, and every command that declares
such flags collects them with given_settings (so a flag cannot be declared and never forwarded)."""

import inspect
from pathlib import Path

import pytest
from pydantic import BaseModel

from perk_cli.cli.app import app
from perk_cli.cli.options import given_settings, setting_of
from perk_cli.config import RunConfig

COMMANDS = {info.callback.__name__: info.callback for info in app.registered_commands}


def _setting_params(command) -> dict[str, tuple]:
    return {name: setting_of(p) for name, p in inspect.signature(command).parameters.items() if setting_of(p)}


def _collected(command) -> type[BaseModel]:
    """The settings class a command collects its flags into, read from its given_settings call."""
    import re

    import perk_cli.config as config

    found = re.search(rf"given_settings\({command.__name__}, locals\(\),\s*(\w+)\)", inspect.getsource(command))
    assert found, f"{command.__name__} does not collect its flags with given_settings"
    return getattr(config, found[1])


@pytest.mark.parametrize("name", [n for n, c in COMMANDS.items() if _setting_params(c)])
def test_every_setting_flag_reaches_its_field(name):
    command = COMMANDS[name]
    params = _setting_params(command)
    model = _collected(command)
    values = {n: None for n in inspect.signature(command).parameters}
    for param, (owner, field, convert) in params.items():
        values[param] = Path("/x") if convert is None and "Path" in str(inspect.signature(command).parameters[param].annotation) \
            else "a,b" if convert is not None else f"<{param}>"
    flags = given_settings(command, values, model)
    for param, (owner, field, convert) in params.items():
        expected = convert("a,b") if convert else "/x" if isinstance(values[param], Path) else f"<{param}>"
        got = flags[field] if owner is model else flags[next(k for k, f in model.model_fields.items()
                                                             if f.annotation is owner)][field]
        assert got == expected, (name, param)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_no_field_has_two_flags_in_one_command(name):
    targets = [(owner, field) for owner, field, _ in _setting_params(COMMANDS[name]).values()]
    assert len(targets) == len(set(targets))


def test_the_commands_that_fill_settings_collect_their_flags():
    filling = {n for n, c in COMMANDS.items() if _setting_params(c)}
    assert {"prepare", "meta_train_command", "eval_command", "reading_base_command", "reproduce"} <= filling
    for name in filling:
        assert _collected(COMMANDS[name]) is not None


def test_a_flag_of_a_settings_class_outside_the_model_is_an_error(monkeypatch):
    from perk_cli.cli import options
    from perk_cli.config import EvalSettings
    from perk_cli.cli.options import setting

    monkeypatch.setattr(options, "FLAGS", dict(options.FLAGS))  # this flag is the test's, not --lora-rank's

    def command(rank=setting(RunConfig.model_fields["lora"].annotation, "rank", "--rank")):
        pass

    with pytest.raises(TypeError, match="not part of EvalSettings"):
        given_settings(command, {"rank": 4}, EvalSettings)
    assert given_settings(command, {"rank": 4}, RunConfig) == {"lora": {"rank": 4}}
