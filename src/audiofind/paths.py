"""Printing file paths whose names are not valid UTF-8 (common in old sound libraries) without crashing."""

from __future__ import annotations

import os


def printable_path(path: str | bytes | os.PathLike) -> str:
    """For messages: undecodable bytes shown as \\xNN escapes, so the user can still find the file."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def display_path(path: str | bytes | os.PathLike) -> str:
    """For JSON and tables: undecodable bytes become U+FFFD instead of breaking the output."""
    return os.fsencode(path).decode("utf-8", "replace")
