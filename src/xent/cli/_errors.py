"""The one exception the commands raise for bad input; `xent.cli.main` turns it into one line."""

from __future__ import annotations

import importlib.util


class CLIError(Exception):
    """Bad input to a command: printed as ``xent: error: <message>``, exit status 2.

    The message says what is wrong and where (file, row, column) and what was expected.
    """


def missing_extra(module: str) -> CLIError:
    """The error for an optional dependency that is not installed."""
    return CLIError(
        f"this command needs the Python package {module!r}, which is not installed; "
        "pip install 'xent[cli]'"
    )


def require(*modules: str) -> None:
    """Raise `missing_extra` for the first of ``modules`` that is not installed (not imported)."""
    for name in modules:
        if importlib.util.find_spec(name) is None:
            raise missing_extra(name)
