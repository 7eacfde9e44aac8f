"""Printing file paths whose names are not valid UTF-8 (common in old sound libraries) without crashing."""

from __future__ import annotations

import os
import re


def printable_path(path: str | bytes | os.PathLike) -> str:
    """For messages: undecodable bytes shown as \\xNN escapes, so the user can still find the file."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def display_path(path: str | bytes | os.PathLike) -> str:
    """For JSON and tables: undecodable bytes become U+FFFD instead of breaking the output."""
    return os.fsencode(path).decode("utf-8", "replace")


# bidirectional overrides and isolates: they reorder what follows them on a terminal line
_BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_UNSAFE = re.compile(f"[\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029{_BIDI}]")


def terminal_text(text: str) -> str:
    """For a terminal: control characters (ESC sequences, newlines, tabs, bidi overrides) shown as escapes.

    A file name holding ESC[2J would clear the screen and a newline would break a table; this keeps each
    name on its line and visible: "a\\x1b[2J.wav", "two\\nlines.wav".
    """
    if not _UNSAFE.search(text):
        return text
    return _UNSAFE.sub(_escape, text)


def _escape(m: re.Match[str]) -> str:
    c = m.group()
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    if c in named:
        return named[c]
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
