"""User-facing errors: one line that names the file or option and what to do; the CLI exits 2 with it.

`Interrupted` is the one-line ending of a long job stopped by Ctrl-C or SIGTERM: what was kept and the
command that continues it; the CLI exits 130 with it.
"""


class PerkError(Exception):
    """An error caused by the user's input or environment, shown as one line without a traceback."""

    exit_code = 2


class Interrupted(PerkError):
    """A long job stopped by the user (Ctrl-C, SIGTERM) after saving what it had: one line, exit 130."""

    exit_code = 130


def os_error_line(exc: OSError, what: str = "") -> str:
    """One line for an OSError (permission denied, disk full, a directory where a file was expected):
    the file, the reason, and `what` was being done."""
    name = exc.filename if exc.filename is not None else what or "file"
    reason = exc.strerror or str(exc)
    return f"{name}: {reason}" + (f" ({what})" if what and exc.filename is not None else "")
