"""The `perk` command line: the commands, registered in the order `perk --help` lists them, and `main`, which
turns every refusal into one line and an exit code (2 for bad input, 130 for an interrupt)."""

from __future__ import annotations

import sys

from perk_cli.cli.common import app, err
from perk_cli.errors import Interrupted, PerkError, os_error_line

# Each module registers its commands on `app` as it is imported; the order is the help's.
from perk_cli.cli import data_commands, train_commands, eval_commands, memory_commands, demo_command

COMMAND_MODULES = (data_commands, train_commands, eval_commands, memory_commands, demo_command)

__all__ = ["app", "main"]


def main() -> None:
    try:
        app()
    except Interrupted as exc:
        err.print(str(exc), markup=False, highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except PerkError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except OSError as exc:  # a read or write the command did not expect to fail: the file and the reason
        err.print(f"error: {os_error_line(exc)}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted; nothing was saved that was not already complete", markup=False)
        sys.exit(130)


if __name__ == "__main__":
    main()
