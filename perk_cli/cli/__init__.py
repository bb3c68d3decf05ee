"""The `perk` command line (a thin layer over the library): `app` holds the commands, `options` makes
their flags from the settings' fields."""

from perk_cli.cli.app import app, main

__all__ = ["app", "main"]
