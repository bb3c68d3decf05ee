"""User-facing errors: one line that names the file or option and what to do; the CLI exits 2."""


class PerkError(Exception):
    """An error caused by the user's input or environment, shown as one line without a traceback."""

    exit_code = 2
