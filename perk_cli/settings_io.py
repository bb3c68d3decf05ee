"""Build a pydantic settings object from an optional --config file (YAML or JSON) plus CLI flags.

Flags given on the command line override the file; validation errors become one-line PerkErrors
that name the option.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from perk_cli.data.schema import read_text
from perk_cli.errors import PerkError

S = TypeVar("S", bound=BaseModel)


def read_config_file(path: Path) -> dict:
    text = read_text(path)
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # yaml and json raise different types; one line either way
        raise PerkError(f"--config {path}: cannot parse ({str(exc).splitlines()[0]})")
    if not isinstance(data, dict):
        raise PerkError(f"--config {path}: expected a mapping of settings")
    return data


def build_settings(model: type[S], config: Path | None, flags: dict) -> S:
    values = read_config_file(config) if config else {}
    values.update({k: v for k, v in flags.items() if v is not None})
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        option = option_name(tuple(str(p) for p in first["loc"]))
        message = first["msg"].removeprefix("Value error, ")
        raise PerkError(f"{option}: {message}" if option else message)


# Nested RunConfig fields whose command-line flag is not simply --<section>-<field>.
_ALIASES = {("model", "name"): "--model", ("inner", "lr_init"): "--inner-lr", ("inner", "steps"): "--inner-steps",
            ("inner", "optimizer"): "--inner-optimizer"}


def option_name(loc: tuple[str, ...]) -> str:
    """The flag a validation error location corresponds to (('lora', 'rank') -> '--lora-rank')."""
    if not loc:
        return ""
    if loc[:2] in _ALIASES:
        return _ALIASES[loc[:2]]
    if loc[0] in ("train", "prompt", "model", "inner") and len(loc) > 1:
        loc = loc[1:]  # their flags carry no section prefix (--max-steps, --segment-tokens, --unroll)
    return "--" + "-".join(p for p in loc if not p.isdigit()).replace("_", "-")
