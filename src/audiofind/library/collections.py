"""What a sound browser keeps beside the index: favourites and named collections, and clip formats.

Collections live in the index's own `library.sqlite`, in two tables this module creates when it is first
opened (CREATE TABLE IF NOT EXISTS, so an older index gains them and no schema version changes):

  collections       name, created_at (the built-in "favourites" always exists and cannot be deleted)
  collection_items  one row per (collection, content hash, path): a clip is remembered by what it is and
                    where it was, so it survives a re-index that gives it a new id, a move (found again by
                    its hash) and an edit in place (found again by its path)

Every write is one `store.transaction`, so a crash leaves a collection as it was before or after the
change. Writes here never bump the index generation: the vectors do not change.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..paths import display_path
from .store import now_iso, transaction

FAVOURITES = "favourites"
MAX_NAME_CHARS = 80
_BAD_NAME = re.compile(r"[\x00-\x1f\x7f/\\]")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS collections (name TEXT PRIMARY KEY, created_at TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS collection_items (
        collection TEXT NOT NULL REFERENCES collections(name) ON DELETE CASCADE,
        content_hash TEXT NOT NULL,
        path_bytes BLOB NOT NULL,
        path TEXT NOT NULL,
        added_at TEXT NOT NULL,
        PRIMARY KEY (collection, content_hash, path_bytes))""",
    "CREATE INDEX IF NOT EXISTS collection_items_hash ON collection_items(content_hash)",
    "CREATE INDEX IF NOT EXISTS collection_items_path ON collection_items(path_bytes)",
)

# the clip an item points at now: same path and content, else the content moved, else the path edited
_RESOLVE = """
COALESCE(
    (SELECT f.id FROM files f WHERE f.path_bytes = ci.path_bytes AND f.content_hash = ci.content_hash),
    (SELECT f.id FROM files f WHERE f.content_hash = ci.content_hash ORDER BY f.id LIMIT 1),
    (SELECT f.id FROM files f WHERE f.path_bytes = ci.path_bytes))
"""


class CollectionError(ValueError):
    """A bad collection name, a missing collection, or an attempt to delete the built-in one."""

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


@dataclass
class CollectionItem:
    """One remembered clip: where it is now (`clip_id` None when neither its path nor content is indexed)."""

    clip_id: int | None
    path: str  # os.fsdecode of the current (or remembered) path
    content_hash: str
    added_at: str
    duration: float | None = None
    sample_rate: int | None = None
    channels: int | None = None


class Collections:
    """Favourites and named collections of one index; thread-safe under the library's lock."""

    def __init__(self, conn: sqlite3.Connection, lock: threading.RLock) -> None:
        self.conn, self.lock = conn, lock
        with self.lock, transaction(conn):
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute("INSERT OR IGNORE INTO collections VALUES (?, ?)", (FAVOURITES, now_iso()))

    # ------------------------------------------------------------ collections

    def list(self) -> list[dict[str, Any]]:
        """Every collection with its item count, favourites first."""
        with self.lock:
            rows = self.conn.execute(
                "SELECT c.name, c.created_at, COUNT(ci.collection) FROM collections c "
                "LEFT JOIN collection_items ci ON ci.collection = c.name GROUP BY c.name "
                "ORDER BY c.name != ?, c.name COLLATE NOCASE", (FAVOURITES,)).fetchall()
        return [{"name": n, "created_at": t, "count": c, "builtin": n == FAVOURITES} for n, t, c in rows]

    def create(self, name: str) -> dict[str, Any]:
        """Make a collection (no error when it exists)."""
        name = check_name(name)
        with self.lock, transaction(self.conn):
            self.conn.execute("INSERT OR IGNORE INTO collections VALUES (?, ?)", (name, now_iso()))
        return next(c for c in self.list() if c["name"] == name)

    def delete(self, name: str) -> None:
        """Forget a collection and its items; the built-in favourites cannot be deleted."""
        name = check_name(name)
        if name == FAVOURITES:
            raise CollectionError("the favourites collection is built in and cannot be deleted")
        with self.lock, transaction(self.conn):
            self._require(name)
            self.conn.execute("DELETE FROM collection_items WHERE collection = ?", (name,))
            self.conn.execute("DELETE FROM collections WHERE name = ?", (name,))

    def _require(self, name: str) -> None:
        if self.conn.execute("SELECT 1 FROM collections WHERE name = ?", (name,)).fetchone() is None:
            raise CollectionError(f"no collection named {name!r}", missing=True)

    # ------------------------------------------------------------ items

    def add(self, name: str, clip_ids: Iterable[int], *, create: bool = False) -> int:
        """Remember clips (by content hash and path) in `name`; returns how many were new there.

        Raises KeyError for an id that is not indexed (and adds nothing then).
        """
        name = check_name(name)
        ids = [int(i) for i in clip_ids]
        with self.lock, transaction(self.conn):
            if create:
                self.conn.execute("INSERT OR IGNORE INTO collections VALUES (?, ?)", (name, now_iso()))
            self._require(name)
            rows = self._clip_rows(ids)
            before = self.conn.total_changes
            now = now_iso()
            self.conn.executemany(
                "INSERT OR IGNORE INTO collection_items VALUES (?, ?, ?, ?, ?)",
                [(name, digest, path_b, path, now) for digest, path_b, path in rows])
            return self.conn.total_changes - before

    def remove(self, name: str, clip_ids: Iterable[int]) -> int:
        """Forget clips from `name` (every item that resolves to them); returns how many items went."""
        name = check_name(name)
        ids = {int(i) for i in clip_ids}
        with self.lock, transaction(self.conn):
            self._require(name)
            rows = self.conn.execute(
                f"SELECT ci.rowid, {_RESOLVE} FROM collection_items ci WHERE ci.collection = ?",
                (name,)).fetchall()
            gone = [(rowid,) for rowid, clip_id in rows if clip_id in ids]
            self.conn.executemany("DELETE FROM collection_items WHERE rowid = ?", gone)
        return len(gone)

    def items(self, name: str) -> list[CollectionItem]:
        """The clips in `name`, oldest first, each resolved to where it is indexed now."""
        name = check_name(name)
        with self.lock, transaction(self.conn, "DEFERRED"):
            self._require(name)
            rows = self.conn.execute(
                f"SELECT ci.path_bytes, ci.content_hash, ci.added_at, f.id, f.path_bytes, f.duration, "
                f"f.sample_rate, f.channels FROM collection_items ci LEFT JOIN files f ON f.id = {_RESOLVE} "
                f"WHERE ci.collection = ? ORDER BY ci.added_at, ci.rowid", (name,)).fetchall()
        out = []
        for path_b, digest, added, clip_id, now_b, duration, rate, channels in rows:
            path = os.fsdecode(bytes(now_b if now_b is not None else path_b))
            out.append(CollectionItem(clip_id, path, digest, added, duration, rate, channels))
        return out

    def containing(self, clip_ids: Iterable[int]) -> dict[int, list[str]]:
        """For each given clip id, the collections holding it (ids in none are left out)."""
        ids = sorted({int(i) for i in clip_ids})
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        with self.lock:
            rows = self.conn.execute(
                f"SELECT f.id, ci.collection FROM files f JOIN collection_items ci "
                f"ON ci.content_hash = f.content_hash WHERE f.id IN ({marks}) UNION "
                f"SELECT f.id, ci.collection FROM files f JOIN collection_items ci "
                f"ON ci.path_bytes = f.path_bytes WHERE f.id IN ({marks})", ids + ids).fetchall()
        out: dict[int, list[str]] = {}
        for clip_id, name in sorted(rows):
            out.setdefault(clip_id, []).append(name)
        return out

    def _clip_rows(self, ids: list[int]) -> list[tuple[str, bytes, str]]:
        rows = []
        for clip_id in ids:
            row = self.conn.execute(
                "SELECT content_hash, path_bytes FROM files WHERE id = ?", (clip_id,)).fetchone()
            if row is None:
                raise KeyError(clip_id)
            rows.append((row[0], bytes(row[1]), display_path(bytes(row[1]))))
        return rows

    # ------------------------------------------------------------ formats, for the browser's filters

    def formats(self, clip_ids: Iterable[int]) -> dict[int, tuple[int, int]]:
        """(sample rate, channels) of each given clip id that is indexed."""
        ids = sorted({int(i) for i in clip_ids})
        out: dict[int, tuple[int, int]] = {}
        with self.lock:
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                rows = self.conn.execute(
                    "SELECT id, sample_rate, channels FROM files WHERE id IN "
                    f"({','.join('?' * len(chunk))})", chunk).fetchall()
                out.update({i: (rate, channels) for i, rate, channels in rows})
        return out

    def format_counts(self) -> dict[str, list[dict[str, int]]]:
        """The sample rates and channel counts in the library, with how many clips have each."""
        with self.lock:
            rates = self.conn.execute(
                "SELECT sample_rate, COUNT(*) FROM files GROUP BY sample_rate ORDER BY 1").fetchall()
            chans = self.conn.execute(
                "SELECT channels, COUNT(*) FROM files GROUP BY channels ORDER BY 1").fetchall()
        return {"sample_rates": [{"value": v, "clips": n} for v, n in rates],
                "channels": [{"value": v, "clips": n} for v, n in chans]}


def check_name(name: str) -> str:
    """A collection name, stripped: 1 to 80 characters, no control characters or slashes."""
    if not isinstance(name, str):
        raise CollectionError("a collection name is text")
    name = name.strip()
    if not name or len(name) > MAX_NAME_CHARS or _BAD_NAME.search(name):
        raise CollectionError(
            f"a collection name has 1 to {MAX_NAME_CHARS} characters, "
            "none of them a slash or control character")
    return name
