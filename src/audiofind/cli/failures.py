"""How the library commands end: one line on stderr and an exit status on failure, never a traceback;
a quick exit when a search has answered.

Status 1 for what the data or the environment did (a missing index, a model mismatch, an undecodable file),
2 for bad usage. The library's error types are imported when a command runs, not when the CLI loads.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
    import sqlite3

    from ..library import LibraryError, damaged_message
    from ..library.queries import QueryError

    try:
        yield
    except (UsageError, QueryError) as e:
        raise fail(str(e), 2) from None
    except (LibraryError, FileNotFoundError, ValueError) as e:  # AudioDecodeError is a ValueError
        raise fail(str(e), getattr(e, "exit_code", 1)) from None
    except KeyError as e:
        raise fail(str(e.args[0]) if e.args else "not found", 1) from None
    except sqlite3.DatabaseError as e:  # damaged pages, found only when a query reaches them
        raise fail(damaged_message(e), 1) from None


def exit_quickly() -> None:
    """Skip the interpreter's teardown (0.1-0.6 s of a cold search with numpy, FAISS and BLAS threads loaded,
    BENCHMARKS.md) once a command has closed its index and written its output; only in the `audiofind`
    process itself, never where the app runs inside another program (tests, notebooks, scripts)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if Path(sys.argv[0]).name != "audiofind" and not (spec and spec.name.startswith("audiofind.cli")):
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe: the normal shutdown reports it
        return
    os._exit(0)
