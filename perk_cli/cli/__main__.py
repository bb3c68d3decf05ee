"""`python -m perk_cli.cli` (what torchrun launches): the `perk` command."""

from perk_cli.cli.app import main

main()
