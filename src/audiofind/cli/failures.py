"""How the library commands fail: one line on stderr and an exit status, never a traceback.

Status 1 for what the data or the environment did (a missing index, a model mismatch, an undecodable file),
2 for bad usage. The library's error types are imported when a command runs, not when the CLI loads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer

from ..paths import terminal_text


class UsageError(Exception):
    """Wrong arguments: reported with exit status 2."""


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one line on stderr and return the Exit to raise."""
    typer.echo(f"audiofind: {terminal_text(message)}", err=True)
    return typer.Exit(code)


@contextmanager
def errors() -> Iterator[None]:
    """Turn the failures a user can cause into one line on stderr, instead of a traceback."""
    from ..library import LibraryError
    from ..library.queries import QueryError

    try:
        yield
    except (UsageError, QueryError) as e:
        raise fail(str(e), 2) from None
    except (LibraryError, FileNotFoundError, ValueError) as e:  # AudioDecodeError is a ValueError
        raise fail(str(e), 1) from None
    except KeyError as e:
        raise fail(str(e.args[0]) if e.args else "not found", 1) from None
