"""The SQLite side of an index: schema, connection, transactions and the upgrades of older indexes.

SQLite is the source of truth. Every write transaction bumps the meta `generation`, so a FAISS file or
an in-memory index knows whether it still reflects the rows, and a `kill -9` at any moment leaves an
index that opens.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .codecs import vector_blob
from .records import LibraryError

INDEX_ENV = "AUDIOFIND_INDEX"
DB_NAME = "library.sqlite"
FAISS_NAME = "vectors.faiss"
NAMES_FAISS_NAME = "names.faiss"  # the sentence vectors of the clips' names, for dense name search
SCHEMA_VERSION = 4  # 2: a text record per clip (files.text) mirrored into the FTS5 table clip_text;
#                    3: vectors stored as float16 (half the bytes; results equal to float16 precision);
#                    4: name vectors stored as int8 directions (a quarter of float32's bytes), and
#                       no `path` column (it repeated path_bytes for display: paths.display_path does that),
#                       and a contentless FTS5 table (its columns are in files.text already)
PAGE_SIZE = 16_384  # new databases: a ~2.4 KB row fits in a page instead of overflowing a 4 KB one
MMAP_BYTES = 1 << 40  # read pages through a memory map (SQLite caps it at its build's limit, 2 GB in
#                       Debian's): re-scoring 200 random rows costs 0.4 ms instead of 1.1 ms at 10^5 clips
CACHE_KIB = 65_536  # SQLite's own page cache, 64 MB (its default is 2 MB)
MIGRATE_BATCH = 5_000  # rows converted per transaction when an index moves to compact vectors
COMMIT_EVERY_FILES = 64  # a crash loses at most this many files' work ...
COMMIT_EVERY_SECONDS = 2.0  # ... or this much time's


def default_index_dir() -> Path:
    """$AUDIOFIND_INDEX, else the per-user data folder, so `audiofind search` works from anywhere."""
    env = os.environ.get(INDEX_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("audiofind")) / "index"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    path_bytes BLOB NOT NULL UNIQUE,  -- os.fsencode(absolute path): exact, whatever the encoding
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    content_hash TEXT NOT NULL,       -- blake2b-128 of the file bytes
    duration REAL NOT NULL,
    sample_rate INTEGER NOT NULL,
    channels INTEGER NOT NULL,
    tags TEXT NOT NULL,               -- JSON [[label, prob], ...], best first
    model_id TEXT NOT NULL,
    vector BLOB NOT NULL,             -- float16 little-endian, L2-normalised (float32 before schema 3)
    indexed_at REAL NOT NULL,
    text TEXT,                        -- JSON {"words", "fts"} from library.metadata; NULL: not built yet
    name_vector BLOB                  -- int8 sentence vector of the name words (empty: none; NULL: to do)
);
CREATE TABLE IF NOT EXISTS failures (  -- undecodable files, not retried until their (size, mtime) change
    path_bytes BLOB PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS roots (path_bytes BLOB PRIMARY KEY, path TEXT NOT NULL, added_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS files_hash ON files(content_hash);
CREATE INDEX IF NOT EXISTS files_duration ON files(duration);
"""

# The BM25 side: one FTS5 row per clip (rowid = files.id), kept in step with `files.text` by triggers, so
# text and vectors change in the same transaction and a crash can never leave them apart. A changed text
# also clears the name vector, which the next update recomputes (NULL means "to do"). The table is
# contentless (schema 4): it keeps only the token index, the columns being json_extract()s of files.text,
# so a row leaves it through FTS5's 'delete' command given the same values it went in with.
_FTS_VALUES = """json_extract({row}.text, '$.fts.name'), json_extract({row}.text, '$.fts.folders'),
        json_extract({row}.text, '$.fts.ucs_category'), json_extract({row}.text, '$.fts.metadata')"""
_FTS_COLUMNS = "name, folders, ucs_category, metadata"
_TEXT_TRIGGERS = ("files_text_insert", "files_text_update", "files_text_delete")
_TEXT_SCHEMA = f"""
CREATE VIRTUAL TABLE IF NOT EXISTS clip_text USING fts5({_FTS_COLUMNS}, content = '', tokenize = 'unicode61');
CREATE TRIGGER IF NOT EXISTS files_text_insert AFTER INSERT ON files WHEN new.text IS NOT NULL BEGIN
    INSERT INTO clip_text(rowid, {_FTS_COLUMNS}) VALUES (new.id, {_FTS_VALUES.format(row="new")});
END;
CREATE TRIGGER IF NOT EXISTS files_text_update AFTER UPDATE OF text ON files BEGIN
    UPDATE files SET name_vector = NULL WHERE id = new.id;
    INSERT INTO clip_text(clip_text, rowid, {_FTS_COLUMNS}) SELECT 'delete', old.id,
        {_FTS_VALUES.format(row="old")} WHERE old.text IS NOT NULL;
    INSERT INTO clip_text(rowid, {_FTS_COLUMNS}) SELECT new.id, {_FTS_VALUES.format(row="new")}
        WHERE new.text IS NOT NULL;
END;
CREATE TRIGGER IF NOT EXISTS files_text_delete AFTER DELETE ON files WHEN old.text IS NOT NULL BEGIN
    INSERT INTO clip_text(clip_text, rowid, {_FTS_COLUMNS}) VALUES ('delete', old.id,
        {_FTS_VALUES.format(row="old")});
END;
"""


def rebuild_text_index(conn: sqlite3.Connection) -> None:
    """Replace the FTS5 table and its triggers with today's (an older index kept a copy of every text
    column), filled from files.text; inside the caller's transaction. With the triggers gone, the text
    records are minified too (older ones were spaced JSON) without touching their name vectors."""
    for trigger in _TEXT_TRIGGERS:
        conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    conn.execute("DROP TABLE IF EXISTS clip_text")
    conn.execute("UPDATE files SET text = json(text) WHERE text IS NOT NULL")
    for statement in _statements(_TEXT_SCHEMA):
        conn.execute(statement)
    conn.execute(f"INSERT INTO clip_text(rowid, {_FTS_COLUMNS}) SELECT id, {_FTS_VALUES.format(row='files')} "
                 "FROM files WHERE text IS NOT NULL")


UPSERT = """
INSERT INTO files (path_bytes, size, mtime_ns, content_hash, duration, sample_rate, channels,
                   tags, model_id, vector, indexed_at, text)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(path_bytes) DO UPDATE SET
    size=excluded.size, mtime_ns=excluded.mtime_ns, content_hash=excluded.content_hash,
    duration=excluded.duration, sample_rate=excluded.sample_rate, channels=excluded.channels,
    tags=excluded.tags, model_id=excluded.model_id, vector=excluded.vector, indexed_at=excluded.indexed_at,
    text=excluded.text
"""

RECORD_COLUMNS = ("id, path_bytes, size, mtime_ns, content_hash, duration, sample_rate, channels, tags, "
                  "model_id, indexed_at, vector, text")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def prefix_range(prefix: bytes) -> tuple[bytes, bytes | None]:
    """[lo, hi) such that a BLOB starts with `prefix` iff lo <= blob < hi (hi None = unbounded)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return prefix, None
    return prefix, stripped[:-1] + bytes([stripped[-1] + 1])


def abspath(path: str | os.PathLike[str] | bytes) -> str:
    """Absolute, user-expanded, with a trailing separator kept (it matters for prefix filters)."""
    text = os.fsdecode(path)
    full = os.path.abspath(os.path.expanduser(text))
    if text.endswith(os.sep) and not full.endswith(os.sep):
        full += os.sep
    return full


class Writer:
    """Queues row changes and commits them in small transactions, each bumping the generation."""

    def __init__(self, conn: sqlite3.Connection, lock: threading.RLock) -> None:
        self.conn = conn
        self.lock = lock
        self.ops: list[tuple[str, tuple]] = []
        self.last = time.monotonic()
        self.commits = 0

    def add(self, sql: str, args: tuple) -> None:
        self.ops.append((sql, args))
        if len(self.ops) >= COMMIT_EVERY_FILES or time.monotonic() - self.last >= COMMIT_EVERY_SECONDS:
            self.flush()

    def flush(self) -> None:
        self.last = time.monotonic()
        if not self.ops:
            return
        with self.lock, transaction(self.conn):
            for sql, args in self.ops:
                self.conn.execute(sql, args)
            bump_generation(self.conn)
        self.ops.clear()
        self.commits += 1


class transaction:
    """BEGIN ... COMMIT, rolled back on error (the connection runs in autocommit mode).

    IMMEDIATE takes the write lock up front; DEFERRED gives reads one consistent snapshot.
    """

    def __init__(self, conn: sqlite3.Connection, mode: str = "IMMEDIATE") -> None:
        self.conn = conn
        self.mode = mode

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute(f"BEGIN {self.mode}")
        return self.conn

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


def bump_generation(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('updated_at', ?)", (now_iso(),))


@dataclass
class KnownFile:
    id: int
    size: int
    mtime_ns: int
    content_hash: str
    has_text: bool = True  # False when the row has no text record or one from older word rules: rebuilt


# ---------------------------------------------------------------- the library


def read_meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def _statements(script: str) -> Iterator[str]:
    """The complete SQL statements of a script (trigger bodies hold semicolons of their own)."""
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                yield pending.strip()
            pending = ""


def connect(db_path: Path, read_only: bool = False) -> sqlite3.Connection:
    """Open in WAL mode and autocommit, creating the schema; 'not a database' becomes a clear error.

    `read_only` opens without writing anything (no schema, no WAL switch), for an index in a folder this
    process may not write: searching works, indexing does not.
    """
    if read_only:
        return _connect_read_only(db_path)
    try:
        conn = sqlite3.connect(db_path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")  # only takes effect on a new, empty database
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        tune_reads(conn)
        with transaction(conn):
            for statement in _statements(_SCHEMA):
                conn.execute(statement)
            version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if version is not None and version[0] == "1":  # add the text side; rows get their text on update
                columns = {row[1] for row in conn.execute("PRAGMA table_info(files)")}
                for column, kind in (("text", "TEXT"), ("name_vector", "BLOB")):
                    if column not in columns:
                        conn.execute(f"ALTER TABLE files ADD COLUMN {column} {kind}")
                conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
                version = ("2",)
            for statement in _statements(_TEXT_SCHEMA):
                conn.execute(statement)
            if version is None:
                now = now_iso()
                conn.executemany("INSERT INTO meta VALUES (?, ?)", [
                    ("schema_version", str(SCHEMA_VERSION)), ("generation", "0"),
                    ("created_at", now), ("updated_at", now), ("build_seconds", "0")])
            elif version[0] not in ("2", "3", str(SCHEMA_VERSION)):
                raise LibraryError(f"{db_path}: index schema version {version[0]} is not supported (this "
                                   f"audiofind reads version {SCHEMA_VERSION}); re-index into a new folder")
        if version is not None and version[0] in ("2", "3"):
            migrate_vectors(conn)
        if conn.execute("PRAGMA page_size").fetchone()[0] < PAGE_SIZE:  # an index made before schema 3
            repack(conn)
    except sqlite3.DatabaseError as e:
        raise LibraryError(f"{db_path} is not a readable audiofind index: {e}; restore a backup of its "
                           "folder, or build a new one with: audiofind index PATH --index NEW_FOLDER") from e
    return conn


def tune_reads(conn: sqlite3.Connection) -> None:
    """Reads of random rows (re-scoring candidates, result records) straight from the page cache."""
    conn.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
    conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")


def migrate_vectors(conn: sqlite3.Connection) -> None:
    """Schema 2 or 3 -> 4: rewrite every row's vectors in today's CODECS, a batch per transaction.

    The meta key `vectors_done` (the last converted id) moves in the same transaction as its batch, so a
    crash resumes where it stopped and never converts a row twice; the schema changes only at the end.
    Schema 3 rows are float16; schema 2 rows float32, except those up to `float16_done`, which an
    interrupted conversion to schema 3 (audiofind before int8 names) had already made float16.
    """
    while True:
        with transaction(conn):
            version = read_meta(conn, "schema_version")
            if version not in ("2", "3"):
                return  # another process finished it
            done = int(read_meta(conn, "vectors_done") or 0)
            half_until = int(read_meta(conn, "float16_done") or 0) if version == "2" else None
            rows = conn.execute("SELECT id, vector, name_vector FROM files WHERE id > ? ORDER BY id LIMIT ?",
                                (done, MIGRATE_BATCH)).fetchall()
            conn.executemany("UPDATE files SET vector = ?, name_vector = ? WHERE id = ?", [
                (_recode(vec, "vector", half), _recode(name, "name_vector", half) if name else name, clip_id)
                for clip_id, vec, name in rows
                for half in [half_until is None or clip_id <= half_until]])
            if rows:
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('vectors_done', ?)", (str(rows[-1][0]),))
                continue
            conn.execute("DELETE FROM meta WHERE key IN ('vectors_done', 'float16_done')")
            if "path" in {row[1] for row in conn.execute("PRAGMA table_info(files)")}:
                conn.execute("ALTER TABLE files DROP COLUMN path")
            conn.execute("UPDATE files SET tags = json(tags)")  # minified, as codecs.tags_json writes them
            rebuild_text_index(conn)
            conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
            bump_generation(conn)  # the FAISS files were built from the old values: rebuild them
            break
    repack(conn, always=True)  # give back the bytes the smaller blobs freed


def _recode(blob: bytes, column: str, half: bool) -> bytes:
    """A blob of an older schema (float16 if `half`, else float32) in the column's current codec."""
    return vector_blob(np.frombuffer(blob, dtype="<f2" if half else "<f4"), column)


def repack(conn: sqlite3.Connection, always: bool = False) -> bool:
    """Rewrite the database with PAGE_SIZE pages (VACUUM: atomic, needs no other connection and free disk
    of its size): compact rows then stop overflowing 4 KB pages, and the space freed by smaller blobs goes
    back to the disk. Unless `always`, only a database with smaller pages is rewritten. False (left for
    later) when busy."""
    if not always and conn.execute("PRAGMA page_size").fetchone()[0] >= PAGE_SIZE:
        return True
    try:
        if conn.execute("PRAGMA journal_mode=DELETE").fetchone()[0].lower() != "delete":
            return False  # another connection holds the WAL open
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
        conn.execute("VACUUM")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        conn.execute("PRAGMA journal_mode=WAL")


def _connect_read_only(db_path: Path) -> sqlite3.Connection:
    """mode=ro, or immutable when even the WAL index (-shm) cannot be made; the schema must be current."""
    uri = Path(os.path.abspath(db_path)).as_uri() + "?mode=ro"
    try:
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None, check_same_thread=False)
            version = read_meta(conn, "schema_version")
        except sqlite3.OperationalError:  # a WAL database in a folder where no -shm file can be created
            conn = sqlite3.connect(uri + "&immutable=1", uri=True, isolation_level=None,
                                   check_same_thread=False)
            version = read_meta(conn, "schema_version")
    except sqlite3.DatabaseError as e:
        raise LibraryError(f"{db_path} is not a readable audiofind index: {e}") from e
    tune_reads(conn)
    if version != str(SCHEMA_VERSION):
        conn.close()
        raise LibraryError(f"{db_path}: index schema version {version} cannot be read from a read-only "
                           f"folder (this audiofind reads version {SCHEMA_VERSION}); open it once where it "
                           "is writable to upgrade it")
    return conn


def replace_rows(conn: sqlite3.Connection, staging_db: Path, meta: dict[str, str]) -> None:
    """Replace every clip and failure with a finished staging index's, and set `meta`, in one transaction.

    Readers (WAL snapshots) see the old rows until the commit and the new ones after it, never a mix;
    favourites, collections and roots stay, since they live in other tables.
    """
    conn.execute("ATTACH DATABASE ? AS staging", (os.fspath(staging_db),))
    try:
        columns = ", ".join(row[1] for row in conn.execute("PRAGMA main.table_info(files)"))
        with transaction(conn):
            conn.execute("DELETE FROM main.files")
            conn.execute(f"INSERT INTO main.files ({columns}) SELECT {columns} FROM staging.files")
            conn.execute("DELETE FROM main.failures")
            conn.execute("INSERT INTO main.failures SELECT * FROM staging.failures")
            conn.executemany("INSERT OR REPLACE INTO main.meta VALUES (?, ?)", list(meta.items()))
            bump_generation(conn)
    finally:
        conn.execute("DETACH DATABASE staging")
