"""Command-line options made from the settings' pydantic fields, and settings made from the options.

A flag that sets a settings field is declared once, with `setting(Model, "field")`: its help is the field's
description and its default is the field's default (so neither is written twice); the option carries
its field, so `given_settings(command, locals(), Model)` collects every such flag of a command into the
settings' shape (no flag can be declared and not forwarded); and the flag is recorded, so a validation
error names the flag the user typed. Flags left out pass None and the field's default (or the --config
file's value) applies.
"""

from __future__ import annotations

import inspect
import typing
from pathlib import Path
from typing import Any, Callable, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich.markup import escape

from perk_cli.errors import PerkError
from perk_cli.files import read_config_file

S = TypeVar("S", bound=BaseModel)

# (settings class, field name) -> the flag that sets it, filled as the commands are declared.
FLAGS: dict[tuple[type[BaseModel], str], str] = {}


def _shown(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def setting(model: type[BaseModel], field: str, *decls: str, help: str | None = None, shown: str | None = None,
            convert: Callable[[Any], Any] | None = None, **kwargs) -> Any:
    """A typer option for `model.field`: help from the field's description (or `help`), the field's
    default shown as [default: X] (or `shown`, where the default depends on something else). `decls`
    are the flag names (default --<field>); `convert` turns a given value into the field's (a Path
    becomes its string without one)."""
    info = model.model_fields[field]
    decls = decls or ("--" + field.replace("_", "-"),)
    FLAGS[(model, field)] = next(d for d in decls if d.startswith("--")).split("/")[0]  # the long name
    text = escape(help or info.description or "")  # rich would read [...] as markup and drop it
    shown = "required" if info.is_required() else shown or _shown(info.get_default(call_default_factory=True))
    if shown is not None:
        text = f"{text} " + escape(f"[{shown}]" if shown == "required" else f"[default: {shown}]")
    option = typer.Option(None, *decls, help=text, show_default=False, **kwargs)
    option.perk_setting = (model, field, convert)
    return option


def setting_of(parameter: inspect.Parameter) -> tuple[type[BaseModel], str, Callable | None] | None:
    """(settings class, field, convert) of a command parameter declared with setting(), else None."""
    return getattr(parameter.default, "perk_setting", None)


def given_settings(command: Callable, values: dict, model: type[BaseModel]) -> dict:
    """The values of `command`'s setting() flags (`values`: its locals()), shaped as `model` reads them:
    {field: value} for its own fields, {section: {field: value}} for a section's (RunConfig.lora ...).
    Flags left out stay None, so build_settings keeps the --config file's value or the default."""
    sections = {_nested(info.annotation): name for name, info in model.model_fields.items()
                if _nested(info.annotation) is not None}
    flags: dict = {}
    for name, parameter in inspect.signature(command).parameters.items():
        target = setting_of(parameter)
        if target is None:
            continue
        owner, field, convert = target
        value = values[name]
        if value is not None:
            value = convert(value) if convert else str(value) if isinstance(value, Path) else value
        if owner is model:
            flags[field] = value
        elif owner in sections:
            flags.setdefault(sections[owner], {})[field] = value
        else:
            raise TypeError(f"{command.__name__}: --{name} sets {owner.__name__}.{field}, not part of {model.__name__}")
    return flags


def _nested(annotation) -> type[BaseModel] | None:
    """The settings class a field holds (RunConfig.lora -> LoraSettings), if any."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def option_name(model: type[BaseModel], loc: tuple) -> str:
    """The flag (or the --config key) a validation error at `loc` is about; '' for the whole model."""
    owner, field = model, None
    for index, part in enumerate(loc):
        if not isinstance(part, str) or part not in owner.model_fields:
            break
        field = part
        inner = _nested(owner.model_fields[part].annotation)
        if inner is None or index == len(loc) - 1:
            break
        owner = inner
    if field is None or _nested(owner.model_fields[field].annotation) is not None:
        return ""
    if (owner, field) in FLAGS:
        return FLAGS[(owner, field)]
    return "--config " + ".".join(p for p in loc if isinstance(p, str))  # a key only a config file sets


def check_sections(model: type[BaseModel], values: dict, config: Path | None) -> dict:
    """`values` (a --config file's) with every section that holds settings (lora, train, ...) a mapping;
    anything else is one line naming the file and the section."""
    for key, field in model.model_fields.items():
        if key in values and _nested(field.annotation) is not None and not isinstance(values[key], dict):
            raise PerkError(f"--config {config}: '{key}' must be a mapping of {key} settings ({key}: {{name: value, "
                            f"...}}), not {values[key]!r}")
    return values


def build_settings(model: type[S], config: Path | None, flags: dict, base: dict | None = None) -> S:
    """Settings from a --config file (or `base`, already read) overridden by the flags that were given;
    a validation error becomes one PerkError line naming the flag."""
    values = dict(base) if base is not None else (read_config_file(config) if config else {})
    check_sections(model, values, config)
    for key, value in flags.items():
        if isinstance(value, dict):
            values[key] = {**values.get(key, {}), **{k: v for k, v in value.items() if v is not None}}
        elif value is not None:
            values[key] = value
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        option = option_name(model, tuple(first["loc"]))
        message = first["msg"].removeprefix("Value error, ")
        raise PerkError(f"{option}: {message}" if option else message)
