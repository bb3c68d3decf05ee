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
        field = str(first["loc"][0]) if first["loc"] else ""
        where = f"--{field.replace('_', '-')}: " if field else ""
        message = first["msg"].removeprefix("Value error, ")
        raise PerkError(f"{where}{message}")
