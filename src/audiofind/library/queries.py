"""One set of rules for what a search may ask, shared by the Python API, the CLI and the server.

`Library.search*` and `Library.similar` call these, so a blank query, k < 1, or a negative or inverted
duration range is a clear `ValueError` wherever it comes from; the CLI shows it as a usage error (exit 2),
the server as a documented 400/422. The server's OpenAPI constraints (`QUERY_PATTERN`, `PATH_PREFIX_PATTERN`)
say the same thing in JSON Schema, so a schema-valid request is never refused.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence
from typing import Any

MAX_ID = 2**53 - 1  # the largest clip id JSON numbers (and the page's JavaScript) carry exactly
# "has a character str.strip() keeps": Python's whitespace is Unicode White_Space plus \x1c-\x1f
QUERY_PATTERN = r"[^\s\x1c-\x1f]"
PATH_PREFIX_PATTERN = r"^/[^\x00]*$"


class QueryError(ValueError):
    """A search request the library refuses; the message says what to change."""


def check_query(query: str) -> str:
    """The query, stripped; blank or non-text queries are refused (they would match arbitrary clips)."""
    if not isinstance(query, str):
        raise QueryError(f"a query is text, not {type(query).__name__}")
    text = query.strip()
    if not text:
        raise QueryError("the query is empty: describe the sound, e.g. 'door slams'")
    return text


def check_k(k: int) -> int:
    """How many results: an integer of at least 1."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise QueryError(f"k (how many results) must be an integer, not {k!r}")
    if k < 1:
        raise QueryError(f"k (how many results) must be at least 1, not {k}")
    return int(k)


def check_filters(min_duration: float | None = None, max_duration: float | None = None,
                  path_prefix: str | os.PathLike[str] | None = None, **others: Any) -> dict[str, Any]:
    """The search filters, checked: durations finite and >= 0, min <= max, no NUL in the folder."""
    for name, value in (("min_duration", min_duration), ("max_duration", max_duration)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise QueryError(f"{name} must be a number of seconds, not {value!r}")
        if value < 0:
            raise QueryError(f"{name} must not be negative (got {value:g})")
    if min_duration is not None and max_duration is not None and min_duration > max_duration:
        raise QueryError(f"min_duration ({min_duration:g} s) is larger than "
                         f"max_duration ({max_duration:g} s)")
    if path_prefix is not None and "\x00" in os.fsdecode(path_prefix):
        raise QueryError("path_prefix contains a NUL character")
    return {"min_duration": min_duration, "max_duration": max_duration, "path_prefix": path_prefix, **others}


def check_search(queries: Sequence[str], k: int, filters: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """(stripped queries, checked filters) for a search of `k` results; the first broken rule raises."""
    texts = [check_query(q) for q in queries]
    check_k(k)
    return texts, check_filters(**filters)
