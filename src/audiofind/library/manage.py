"""Library management: which roots an index refreshes, removing roots or folders, pruning vanished roots.

Roots (the `roots` table in `store`) are stored resolved (`os.path.realpath`), so one folder reached
through two paths (a symlink alias) is one root and its files are stored once; `searcher.filter_clause`
resolves a path prefix too, so `--path-prefix` works with the given and the real path. Rows of an index
written before roots were resolved keep their paths (refreshes use the stored root as it is).

`remove` drops a root (or a file or folder under one) with its records. A folder or file inside a root
that stays is written to the `excluded` table this module creates on first use (CREATE TABLE IF NOT
EXISTS: no schema version change), so refreshes of that root skip it, and so does indexing the root by
name again; indexing the excluded path itself (`update([that path])`) lifts the exclusion.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..paths import display_path
from .records import LibraryError, RemovalReport
from .store import abspath, bump_generation, now_iso, prefix_range, transaction

_SCHEMA = "CREATE TABLE IF NOT EXISTS excluded (path_bytes BLOB PRIMARY KEY, path TEXT NOT NULL, " \
          "added_at TEXT NOT NULL)"


@dataclass
class UpdatePlan:
    """What one `Library.update` walks: existing roots, the known ones that are gone, the exclusions."""

    roots: list[str]
    missing: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)


def resolve_root(path: str | os.PathLike[str]) -> str:
    """The real absolute path with no trailing separator: the one form a root is stored in."""
    real = os.path.realpath(abspath(path))
    return real.rstrip(os.sep) or os.sep


def under(path: str, folder: str) -> bool:
    """Whether `path` lies strictly inside `folder` (as strings: no file system access)."""
    return path.startswith(folder.rstrip(os.sep) + os.sep)


def _at_or_under(column: str = "path_bytes") -> str:
    """A WHERE condition: `column` is the path, or lies under it (arguments from `_at_or_under_args`)."""
    return f"({column} = ? OR ({column} >= ? AND (? IS NULL OR {column} < ?)))"


def _at_or_under_args(path: str) -> list[bytes | None]:
    lo, hi = prefix_range(os.fsencode(path.rstrip(os.sep) + os.sep))
    return [os.fsencode(path), lo, hi, hi]


def ensure_schema(conn: sqlite3.Connection) -> None:
    conn.execute(_SCHEMA)


def stored_roots(conn: sqlite3.Connection) -> list[str]:
    rows = conn.execute("SELECT path_bytes FROM roots ORDER BY path_bytes")
    return [os.fsdecode(bytes(r[0])) for r in rows]


def exclusions(conn: sqlite3.Connection) -> list[str]:
    """Folders and files inside roots that `remove` took out of the library."""
    ensure_schema(conn)
    return [os.fsdecode(bytes(r[0])) for r in conn.execute("SELECT path_bytes FROM excluded "
                                                             "ORDER BY path_bytes")]


def plan_update(conn: sqlite3.Connection, lock: threading.RLock,
                given: Sequence[str | os.PathLike[str]] | None) -> UpdatePlan:
    """The roots an update walks: `given` (recorded as roots; one that was excluded is no more), or, when
    None or empty, every known root (those gone are reported in `missing`, their records kept)."""
    with lock:
        ensure_schema(conn)
        if not given:
            known = stored_roots(conn)
            if not known:
                raise LibraryError("this index has no folders yet: give one, e.g. audiofind index PATH")
            return UpdatePlan([r for r in known if os.path.exists(r)],
                              [r for r in known if not os.path.exists(r)], exclusions(conn))
        for path in given:
            if not os.path.exists(abspath(path)):
                raise FileNotFoundError(f"no such file or folder: {os.fsdecode(path)}")
        roots = list(dict.fromkeys(resolve_root(p) for p in given))
        with transaction(conn):
            conn.executemany("INSERT OR IGNORE INTO roots VALUES (?, ?, ?)",
                             [(os.fsencode(r), display_path(r), now_iso()) for r in roots])
            # indexing an excluded path by name takes it back (indexing its root again does not)
            conn.executemany("DELETE FROM excluded WHERE path_bytes = ?", [(os.fsencode(r),) for r in roots])
        return UpdatePlan(roots, [], exclusions(conn))


def _target(conn: sqlite3.Connection, path: str | os.PathLike[str], roots: list[str]) -> str:
    """The stored form of a path to remove (as given, or resolved), or a clear error if the index has
    nothing at or under it."""
    given = abspath(path).rstrip(os.sep) or os.sep
    for candidate in dict.fromkeys((given, resolve_root(path))):
        if any(r == candidate or under(r, candidate) for r in roots):
            return candidate
        if os.path.lexists(candidate) and any(under(candidate, r) for r in roots):
            return candidate  # inside a root, no records yet: kept out of its refreshes from now on
        if conn.execute(f"SELECT 1 FROM files WHERE {_at_or_under()} LIMIT 1",
                        _at_or_under_args(candidate)).fetchone():
            return candidate
    raise LibraryError(f"{display_path(given)} is not in the index: no indexed folder or file there "
                       f"(see the roots with: audiofind info)")


def remove_paths(conn: sqlite3.Connection, lock: threading.RLock,
                 paths: Sequence[str | os.PathLike[str]]) -> RemovalReport:
    """Drop the records at or under each path in one transaction; roots at or under it stop being
    refreshed, and a path inside a remaining root is excluded from its refreshes. Nothing changes if
    any path is unknown."""
    report = RemovalReport()
    with lock:
        ensure_schema(conn)
        roots = stored_roots(conn)
        targets = list(dict.fromkeys(_target(conn, p, roots) for p in paths))
        with transaction(conn):
            for target in targets:
                args = _at_or_under_args(target)
                report.clips += conn.execute(f"DELETE FROM files WHERE {_at_or_under()}", args).rowcount
                conn.execute(f"DELETE FROM failures WHERE {_at_or_under()}", args)
                conn.execute(f"DELETE FROM excluded WHERE {_at_or_under()}", args)
                gone = [r for r in roots if r == target or under(r, target)]
                conn.executemany("DELETE FROM roots WHERE path_bytes = ?", [(os.fsencode(r),) for r in gone])
                report.roots += [display_path(r) for r in gone]
                roots = [r for r in roots if r not in gone]
                if any(under(target, r) for r in roots):
                    conn.execute("INSERT OR IGNORE INTO excluded VALUES (?, ?, ?)",
                                 (os.fsencode(target), display_path(target), now_iso()))
                    report.excluded.append(display_path(target))
            bump_generation(conn)
    return report


def prune_missing(conn: sqlite3.Connection, lock: threading.RLock) -> RemovalReport:
    """Drop every root that no longer exists, with its records (e.g. a deleted or renamed folder)."""
    with lock:
        missing = [r for r in stored_roots(conn) if not os.path.exists(r)]
    return remove_paths(conn, lock, missing) if missing else RemovalReport()


def root_keys(roots: Sequence[str]) -> dict[tuple[int, int], str]:
    """(dev, inode) -> root for the root folders, so a link inside one root to another is not walked twice."""
    keys: dict[tuple[int, int], str] = {}
    for root in roots:
        try:
            st = os.stat(root)
        except OSError:
            continue
        if os.path.isdir(root):
            keys.setdefault((st.st_dev, st.st_ino), root)
    return keys


def outermost(roots: Sequence[str], excluded: Sequence[str] = ()) -> list[str]:
    """The roots to walk: one inside another is walked with it, unless it lies in an excluded folder."""
    def covered(root: str) -> bool:
        return any(under(root, r) and not any((x == root or under(root, x)) and under(x, r) for x in excluded)
                   for r in roots)
    return [r for r in dict.fromkeys(roots) if not covered(r)]
