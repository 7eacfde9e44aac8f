"""The library index: SQLite holds every clip and its vector; a FAISS file derived from it answers searches.

Layout of an index folder:
  library.sqlite   the source of truth (WAL mode): `files` (one row per audio file, vector included),
                   `meta` (model, dim, generation, timestamps), `failures` (undecodable files, so
                   re-runs skip them until they change) and `roots` (the paths given to `update`)
  vectors.faiss    a search index rebuilt from SQLite whenever its recorded generation is stale

Every write transaction bumps the meta `generation`, so a FAISS file or an in-memory index knows
whether it still reflects the rows, and a `kill -9` at any moment leaves an index that opens.
The FAISS indexes themselves are built in `vector_index`; files are hashed and decoded by
`indexing_workers`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .audio import AUDIO_EXTENSIONS, load_audio
from .indexing_workers import (
    bounded_map,
    decode_file,
    default_workers,
    hash_file,
    limit_model_threads,
    process_pool,
    restore_model_threads,
)
from .paths import display_path
from .vector_index import (
    DEFAULT_NPROBE,
    build_faiss_index,
    choose_index_kind,
    default_nlist,
    faiss_index_kind,
    read_faiss_file,
    search_faiss,
    write_faiss_file,
)

if TYPE_CHECKING:
    import faiss

    from .model import EmbeddingModel

INDEX_ENV = "AUDIOFIND_INDEX"
DB_NAME = "library.sqlite"
FAISS_NAME = "vectors.faiss"
SCHEMA_VERSION = 1
COMMIT_EVERY_FILES = 64  # a crash loses at most this many files' work ...
COMMIT_EVERY_SECONDS = 2.0  # ... or this much time's
BATCH_AUDIO_SECONDS = 600.0  # flush a model batch early once it holds this much audio

Tags = list[tuple[str, float]]
Progress = Callable[[dict[str, Any]], None]


class LibraryError(Exception):
    """An error the CLI and server report as one line, without a traceback."""


class IndexNotFoundError(LibraryError):
    """No index where one was expected."""


class ModelMismatchError(LibraryError):
    """The index holds vectors from another model; mixing spaces would return nonsense."""


# ---------------------------------------------------------------- results


@dataclass
class SearchResult:
    """One hit: enough to show it and to open the file."""

    id: int
    path: str  # os.fsdecode of the stored bytes: opens the file even when the name is not UTF-8
    score: float  # cosine similarity, higher is better
    duration: float
    tags: Tags

    @property
    def display_path(self) -> str:
        return display_path(self.path)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "path": self.display_path,
            "score": round(self.score, 6),
            "duration": round(self.duration, 3),
            "tags": [{"label": label, "prob": round(prob, 4)} for label, prob in self.tags],
        }


@dataclass
class ClipRecord:
    """Everything the index knows about one file."""

    id: int
    path: str
    size: int
    mtime_ns: int
    content_hash: str
    duration: float
    sample_rate: int
    channels: int
    tags: Tags
    model_id: str
    indexed_at: float
    vector: np.ndarray = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        del d["vector"]
        d["path"] = display_path(self.path)
        d["tags"] = [{"label": label, "prob": round(prob, 4)} for label, prob in self.tags]
        return d


@dataclass
class UpdateReport:
    """What one `Library.update` did, for the CLI summary and the server."""

    added: int = 0
    updated: int = 0  # content changed at a known path
    unchanged: int = 0  # includes touched files whose bytes did not change
    moved: int = 0  # a known file found under a new path: its vector was kept
    removed: int = 0
    embedded: int = 0  # files that went through the model (the rest re-used a stored vector)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (display path, reason)
    audio_seconds: float = 0.0  # audio embedded in this run
    wall_seconds: float = 0.0

    @property
    def realtime_factor(self) -> float:
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["skipped"] = [{"path": p, "reason": r} for p, r in self.skipped]
        d["realtime_factor"] = round(self.realtime_factor, 2)
        return d


def default_index_dir() -> Path:
    """$AUDIOFIND_INDEX, else the per-user data folder, so `audiofind search` works from anywhere."""
    env = os.environ.get(INDEX_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("audiofind")) / "index"


# ---------------------------------------------------------------- SQLite helpers

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    path_bytes BLOB NOT NULL UNIQUE,  -- os.fsencode(absolute path): exact, whatever the encoding
    path TEXT NOT NULL,               -- the same path for display (undecodable bytes replaced)
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    content_hash TEXT NOT NULL,       -- blake2b-128 of the file bytes
    duration REAL NOT NULL,
    sample_rate INTEGER NOT NULL,
    channels INTEGER NOT NULL,
    tags TEXT NOT NULL,               -- JSON [[label, prob], ...], best first
    model_id TEXT NOT NULL,
    vector BLOB NOT NULL,             -- float32 little-endian, L2-normalised
    indexed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS failures (  -- undecodable files, not retried until their (size, mtime) change
    path_bytes BLOB PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS roots (path_bytes BLOB PRIMARY KEY, path TEXT NOT NULL, added_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS files_hash ON files(content_hash);
CREATE INDEX IF NOT EXISTS files_duration ON files(duration);
"""

_UPSERT = """
INSERT INTO files (path_bytes, path, size, mtime_ns, content_hash, duration, sample_rate, channels,
                   tags, model_id, vector, indexed_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(path_bytes) DO UPDATE SET
    size=excluded.size, mtime_ns=excluded.mtime_ns, content_hash=excluded.content_hash,
    duration=excluded.duration, sample_rate=excluded.sample_rate, channels=excluded.channels,
    tags=excluded.tags, model_id=excluded.model_id, vector=excluded.vector, indexed_at=excluded.indexed_at
"""

_RECORD_COLUMNS = ("id, path_bytes, size, mtime_ns, content_hash, duration, sample_rate, channels, tags, "
                   "model_id, indexed_at, vector")


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _prefix_range(prefix: bytes) -> tuple[bytes, bytes | None]:
    """[lo, hi) such that a BLOB starts with `prefix` iff lo <= blob < hi (hi None = unbounded)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return prefix, None
    return prefix, stripped[:-1] + bytes([stripped[-1] + 1])


def _abspath(path: str | os.PathLike[str] | bytes) -> str:
    """Absolute, user-expanded, with a trailing separator kept (it matters for prefix filters)."""
    text = os.fsdecode(path)
    full = os.path.abspath(os.path.expanduser(text))
    if text.endswith(os.sep) and not full.endswith(os.sep):
        full += os.sep
    return full


def _tags_json(tags: Iterable[tuple[str, float]]) -> str:
    return json.dumps([[str(label), round(float(prob), 5)] for label, prob in tags])


def _tags_from_json(text: str) -> Tags:
    return [(label, float(prob)) for label, prob in json.loads(text)]


def _vector_blob(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


class _Writer:
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
        with self.lock, _transaction(self.conn):
            for sql, args in self.ops:
                self.conn.execute(sql, args)
            _bump_generation(self.conn)
        self.ops.clear()
        self.commits += 1


class _transaction:
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


def _bump_generation(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('updated_at', ?)", (_now_iso(),))


@dataclass
class _Known:
    id: int
    size: int
    mtime_ns: int
    content_hash: str


# ---------------------------------------------------------------- the library


class Library:
    """A searchable index of sound files: `Library.open`, then `update` to fill it and `search` to query."""

    def __init__(self, index_dir: Path, conn: sqlite3.Connection, index_kind: str, nprobe: int) -> None:
        """Use `Library.open`."""
        self.index_dir = index_dir
        self.index_kind = index_kind
        self.nprobe = nprobe
        self._conn = conn
        self._model: EmbeddingModel | None = None
        self._lock = threading.RLock()
        self._index: faiss.Index | None = None
        self._index_generation = -1

    # ------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        index_dir: str | os.PathLike[str] | None = None,
        model: EmbeddingModel | str | None = None,
        *,
        create: bool = False,
        index_kind: str = "auto",
        nprobe: int = DEFAULT_NPROBE,
        rebuild: bool = False,
    ) -> Library:
        """Open (with `create`, make) the index in `index_dir`; `model` None loads the index's model lazily.

        `model` may be a loaded EmbeddingModel or a name/checkpoint for `load_model`; either must match the
        model the index was built with, unless `rebuild` empties the index first (the next `update`
        re-embeds everything, e.g. after the default model changed). `index_kind` is "auto" (exact
        below vector_index.APPROX_THRESHOLD clips, IVF above), "flat", "ivf" or "hnsw".
        """
        if index_kind not in ("auto", "flat", "ivf", "hnsw"):
            raise ValueError(f"index_kind must be auto, flat, ivf or hnsw, got {index_kind!r}")
        index_dir = Path(index_dir).expanduser() if index_dir is not None else default_index_dir()
        db_path = index_dir / DB_NAME
        if not db_path.exists():
            if not create:
                raise IndexNotFoundError(f"no audiofind index at {index_dir}; "
                                         f"build one with: audiofind index PATH --index {index_dir}")
            index_dir.mkdir(parents=True, exist_ok=True)
        conn = _connect(db_path)
        lib = cls(index_dir, conn, index_kind, nprobe)
        try:
            name = None
            if isinstance(model, str) or (model is None and rebuild):
                name = _abspath(model) if model and os.path.exists(model) else model
                model = _load_model(name)
            if rebuild:
                lib._clear()
            if model is not None:
                lib._adopt_model(model, name)
        except BaseException:
            conn.close()
            raise
        return lib

    def close(self) -> None:
        """Release the database; the object is unusable afterwards."""
        with self._lock:
            self._conn.close()
            self._index = None

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM files").fetchone()[0]

    def roots(self) -> list[str]:
        """The folders and files ever given to `update` (the server serves files only from under them)."""
        with self._lock:
            rows = self._conn.execute("SELECT path_bytes FROM roots ORDER BY path_bytes").fetchall()
        return [os.fsdecode(bytes(r[0])) for r in rows]

    def folder_counts(self) -> dict[str, int]:
        """Clips per folder (each clip counted in its own folder only), for browsing and filters."""
        with self._lock:
            rows = self._conn.execute("SELECT path_bytes FROM files").fetchall()
        counts: dict[str, int] = {}
        for (path_b,) in rows:
            folder = os.path.dirname(os.fsdecode(bytes(path_b)))
            counts[folder] = counts.get(folder, 0) + 1
        return counts

    def _meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    @property
    def model_id(self) -> str | None:
        """The model the index was built with (None for an empty new index)."""
        with self._lock:
            return self._meta("model_id")

    @property
    def generation(self) -> int:
        with self._lock:
            return int(self._meta("generation") or 0)

    @property
    def model(self) -> EmbeddingModel:
        """The embedding model, loaded on first need: stats and stored-vector searches never pay for it."""
        with self._lock:
            if self._model is None:
                name = self._meta("model_name") or self._meta("model_id")
                self._adopt_model(_load_model(name), name)
            assert self._model is not None
            return self._model

    def _clear(self) -> None:
        """Forget every clip and the model (the folders given to `update` are kept)."""
        with self._lock, _transaction(self._conn):
            self._conn.execute("DELETE FROM files")
            self._conn.execute("DELETE FROM failures")
            self._conn.execute("DELETE FROM meta WHERE key IN ('model_id', 'model_name', 'dim')")
            _bump_generation(self._conn)
        (self.index_dir / FAISS_NAME).unlink(missing_ok=True)
        self._index = None

    def _adopt_model(self, model: EmbeddingModel, name: str | None) -> None:
        """Check `model` against the index's recorded one, or record it in a new index."""
        recorded = self._meta("model_id")
        if recorded is not None and recorded != model.model_id:
            recorded_name = self._meta("model_name") or recorded
            name = name or getattr(model, "source", None) or model.model_id
            hint = f" (or pass --model {recorded_name})" if recorded_name != name else \
                f" ('{name}' now means {model.model_id})"
            raise ModelMismatchError(
                f"index {self.index_dir} was built with model {recorded}; you are using {model.model_id}; "
                f"re-embed it with: audiofind index PATH --index {self.index_dir} --model {name} --rebuild"
                f"{hint}")
        if recorded is None:
            with _transaction(self._conn):
                self._conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [
                    ("model_id", model.model_id), ("dim", str(model.dim)),
                    ("model_name", name or getattr(model, "source", None) or model.model_id)])
        self._model = model

    # ------------------------------------------------------------ indexing

    def update(
        self,
        roots: Sequence[str | os.PathLike[str]],
        *,
        workers: int | None = None,
        progress: bool | Progress = True,
        batch_size: int = 64,
        max_duration: float | None = None,
    ) -> UpdateReport:
        """Bring the index in line with the audio files under `roots` (folders or single files).

        Unchanged files are skipped by (size, mtime); changed ones are hashed, and only content never seen
        before goes through the model. Records under `roots` whose files are gone are removed; records
        elsewhere are kept. `workers` decoding processes (0 = decode in this process; None = half the
        cores) feed the model,
        which runs here in batches of `batch_size`. `max_duration` caps the seconds decoded per file.
        `progress` is a tqdm bar on stderr (True), nothing (False), or a callback receiving dicts.
        """
        start = time.monotonic()
        workers = default_workers() if workers is None else workers
        report = UpdateReport()
        abs_roots = [_abspath(r).rstrip(os.sep) or os.sep for r in roots]
        for root, given in zip(abs_roots, roots, strict=True):
            if not os.path.exists(root):
                raise FileNotFoundError(f"no such file or folder: {os.fsdecode(given)}")
        with self._lock, _transaction(self._conn):
            self._conn.executemany("INSERT OR IGNORE INTO roots VALUES (?, ?, ?)",
                                   [(os.fsencode(r), display_path(r), _now_iso()) for r in abs_roots])
        listing = self._scan(abs_roots, report)
        with self._lock:
            known = {p: _Known(*rest) for p, *rest in self._rows_under(
                abs_roots, "SELECT path_bytes, id, size, mtime_ns, content_hash FROM files")}
            failed = {p: rest for p, *rest in self._rows_under(
                abs_roots, "SELECT path_bytes, size, mtime_ns, reason FROM failures")}
        bar = _ProgressBar(progress, total=len(listing))
        writer = _Writer(self._conn, self._lock)
        try:
            to_hash = []
            for path_b, (size, mtime_ns) in listing.items():
                rec = known.get(path_b)
                if rec is not None and rec.size == size and rec.mtime_ns == mtime_ns:
                    report.unchanged += 1
                elif rec is None and failed.get(path_b, [None])[:2] == [size, mtime_ns]:
                    report.skipped.append((display_path(path_b), failed[path_b][2]))  # known bad, unchanged
                else:
                    to_hash.append(path_b)
            bar.advance(len(listing) - len(to_hash), report)
            for path_b in failed.keys() - listing.keys():
                writer.add("DELETE FROM failures WHERE path_bytes = ?", (path_b,))
            orphans: dict[str, list[tuple[bytes, _Known]]] = {}
            for path_b, rec in known.items():
                if path_b not in listing:
                    orphans.setdefault(rec.content_hash, []).append((path_b, rec))
            to_embed = self._resolve_changed(to_hash, known, orphans, writer, report, bar, workers)
            for entries in orphans.values():
                for _, rec in entries:
                    writer.add("DELETE FROM files WHERE id = ?", (rec.id,))
                    report.removed += 1
            writer.flush()
            if to_embed:  # the model loads only when some audio is new: a no-op re-run is instant
                self._embed(to_embed, known, writer, report, bar, workers, batch_size, max_duration)
            writer.flush()
        finally:
            bar.close()
            with self._lock, _transaction(self._conn):
                seconds = float(self._meta("build_seconds") or 0) + time.monotonic() - start
                self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('build_seconds', ?)",
                                   (f"{seconds:.3f}",))
        with self._lock:
            if writer.commits:
                self._load_index(prefer_file=False)  # write vectors.faiss for the final generation
        report.wall_seconds = time.monotonic() - start
        return report

    def _scan(self, roots: Sequence[str], report: UpdateReport) -> dict[bytes, tuple[int, int]]:
        """Every audio file under `roots` -> (size, mtime_ns); symlinked folders are not followed."""
        found: dict[bytes, tuple[int, int]] = {}

        def visit(path: str) -> None:
            try:
                st = os.stat(path)
            except OSError:
                return  # vanished or a dangling link: treated as gone
            if stat.S_ISREG(st.st_mode):
                found[os.fsencode(path)] = (st.st_size, st.st_mtime_ns)

        def on_error(err: OSError) -> None:
            report.skipped.append((display_path(err.filename or "?"), f"cannot list folder: {err.strerror}"))

        for root in roots:
            if not os.path.isdir(root):
                if os.path.splitext(root)[1].lower() in AUDIO_EXTENSIONS:
                    visit(root)
                else:
                    report.skipped.append((display_path(root), "not an audio file extension"))
                continue
            for dirpath, dirnames, filenames in os.walk(root, onerror=on_error):
                dirnames.sort()
                for name in sorted(filenames):
                    if os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS:
                        visit(os.path.join(dirpath, name))
        return found

    def _rows_under(self, roots: Sequence[str], select: str) -> list[list[Any]]:
        """Rows of `select` (whose first column is path_bytes, returned as bytes) for paths under `roots`."""
        out: dict[bytes, list[Any]] = {}
        for root in roots:
            if os.path.isdir(root):
                lo, hi = _prefix_range(os.fsencode(root.rstrip(os.sep) + os.sep))
                rows = self._conn.execute(f"{select} WHERE path_bytes >= ? AND (? IS NULL OR path_bytes < ?)",
                                          (lo, hi, hi))
            else:
                rows = self._conn.execute(f"{select} WHERE path_bytes = ?", (os.fsencode(root),))
            for path_b, *rest in rows:
                out[bytes(path_b)] = [bytes(path_b), *rest]
        return list(out.values())

    def _resolve_changed(self, to_hash: list[bytes], known: dict[bytes, _Known],
                         orphans: dict[str, list[tuple[bytes, _Known]]], writer: _Writer,
                         report: UpdateReport, bar: _ProgressBar, workers: int) -> list[tuple[bytes, tuple]]:
        """Hash new/changed files; handle touched, moved and copied ones; return those needing the model."""
        to_embed: list[tuple[bytes, tuple]] = []
        pool = ThreadPoolExecutor(max(1, workers)) if workers > 0 and len(to_hash) > 1 else None
        try:
            for path_b, (ok, result) in bounded_map(hash_file, [os.fsdecode(p) for p in to_hash], pool,
                                                     4 * max(1, workers)):
                path_b = os.fsencode(path_b)
                rec = known.get(path_b)
                if not ok:
                    self._skip(path_b, result, rec, writer, report)
                else:
                    size, mtime_ns, digest = result
                    if rec is not None and rec.content_hash == digest:
                        writer.add("UPDATE files SET size = ?, mtime_ns = ? WHERE id = ?",
                                   (size, mtime_ns, rec.id))
                        report.unchanged += 1
                    elif orphans.get(digest):
                        old_path, old = orphans[digest].pop()
                        if rec is not None:
                            writer.add("DELETE FROM files WHERE id = ?", (rec.id,))
                        writer.add("UPDATE files SET path_bytes = ?, path = ?, size = ?, mtime_ns = ? "
                                   "WHERE id = ?", (path_b, display_path(path_b), size, mtime_ns, old.id))
                        report.moved += 1
                    elif self._copy_vector(digest, path_b, size, mtime_ns, writer):
                        report.updated += rec is not None
                        report.added += rec is None
                    else:
                        to_embed.append((path_b, (size, mtime_ns, digest)))
                        continue  # counted when embedded
                bar.advance(1, report)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        return to_embed

    def _copy_vector(self, digest: str, path_b: bytes, size: int, mtime_ns: int, writer: _Writer) -> bool:
        """Give a new path the stored vector of identical bytes indexed elsewhere (a copy): no model run."""
        with self._lock:
            row = self._conn.execute(
                "SELECT duration, sample_rate, channels, tags, model_id, vector FROM files "
                "WHERE content_hash = ? LIMIT 1", (digest,)).fetchone()
        if row is None:
            return False
        writer.add(_UPSERT, (path_b, display_path(path_b), size, mtime_ns, digest, *row, time.time()))
        return True

    def _skip(self, path_b: bytes, reason: str, rec: _Known | None, writer: _Writer,
              report: UpdateReport) -> None:
        """Report a file that could not be read; a stale record for it no longer describes the file."""
        report.skipped.append((display_path(path_b), reason))
        if rec is not None:
            writer.add("DELETE FROM files WHERE id = ?", (rec.id,))
            report.removed += 1

    def _embed(self, to_embed: list[tuple[bytes, tuple]], known: dict[bytes, _Known], writer: _Writer,
               report: UpdateReport, bar: _ProgressBar, workers: int, batch_size: int,
               max_duration: float | None) -> None:
        """Decode in worker processes, embed here in batches, write each batch's rows."""
        model = self.model
        batch: list[tuple[bytes, tuple, np.ndarray, tuple]] = []

        def flush() -> None:
            if batch:
                self._write_embedded(batch, known, model, writer, report)
                bar.advance(len(batch), report)
                batch.clear()

        tasks = [(os.fsdecode(p), model.sample_rate, max_duration) for p, _ in to_embed]
        stats = dict(to_embed)
        pool = process_pool(workers) if workers > 0 and len(tasks) > 2 * workers else None
        threads = limit_model_threads(busy_cores=workers if pool else 0)
        try:
            for task, (ok, result) in bounded_map(
                    decode_file, tasks, pool, window=max(4, 2 * workers + batch_size // 2)):
                path_b = os.fsencode(task[0])
                wave, info, permanent = result if ok else (None, result, False)
                if wave is None:
                    self._skip(path_b, info, known.get(path_b), writer, report)
                    if permanent:
                        size, mtime_ns, _ = stats[path_b]
                        writer.add("INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?)",
                                   (path_b, size, mtime_ns, info))
                    bar.advance(1, report)
                    continue
                batch.append((path_b, stats[path_b], wave, info))
                if len(batch) >= batch_size or \
                        sum(len(b[2]) for b in batch) >= BATCH_AUDIO_SECONDS * model.sample_rate:
                    flush()
            flush()
        finally:
            restore_model_threads(threads)
            if pool is not None:
                pool.shutdown(cancel_futures=True)

    def _write_embedded(self, batch: list[tuple[bytes, tuple, np.ndarray, tuple]], known: dict[bytes, _Known],
                        model: EmbeddingModel, writer: _Writer, report: UpdateReport) -> None:
        try:
            emb = [model.embed_audio([b[2] for b in batch])]
            items = [batch]
        except Exception:  # one bad wave must not sink its batch-mates: retry one by one
            emb, items = [], []
            for b in batch:
                try:
                    emb.append(model.embed_audio([b[2]]))
                    items.append([b])
                except Exception as e:
                    reason = f"model failed: {type(e).__name__}: {e}"
                    self._skip(b[0], reason, known.get(b[0]), writer, report)
        for embeddings, group in zip(emb, items, strict=True):
            for (path_b, (size, mtime_ns, digest), wave, info), vec, tags in zip(
                    group, embeddings.vectors, embeddings.tags, strict=True):
                writer.add(_UPSERT, (path_b, display_path(path_b), size, mtime_ns, digest, *info,
                                     _tags_json(tags), model.model_id, _vector_blob(vec), time.time()))
                writer.add("DELETE FROM failures WHERE path_bytes = ?", (path_b,))
                report.embedded += 1
                report.audio_seconds += len(wave) / model.sample_rate
                report.updated += path_b in known
                report.added += path_b not in known

    # ------------------------------------------------------------ the FAISS side

    def refresh(self) -> bool:
        """Pick up changes another process committed; True when there were any."""
        with self._lock:
            if self._index is None or self.generation == self._index_generation:
                return False
            self._index = None
            return True

    def _ensure_index(self) -> faiss.Index:
        if self._index is None:
            self._load_index(prefer_file=True)
        assert self._index is not None
        return self._index

    def _wanted_kind(self, n: int) -> str:
        return choose_index_kind(n) if self.index_kind == "auto" else self.index_kind

    def _load_index(self, prefer_file: bool) -> None:
        """Use vectors.faiss when it reflects the current generation, else rebuild it from SQLite."""
        path = self.index_dir / FAISS_NAME
        with _transaction(self._conn, "DEFERRED"):  # generation and vectors from one snapshot
            generation = self.generation
            n = len(self)
            if prefer_file:
                loaded = read_faiss_file(path)
                if loaded is not None:
                    header, index = loaded
                    if header.get("generation") == generation and header.get("kind") == self._wanted_kind(n) \
                            and index.ntotal == n:
                        self._index, self._index_generation = index, generation
                        return
            ids, vectors = self._all_vectors()
        kind = self._wanted_kind(len(ids))
        trained = self._reusable_ivf(len(ids)) if kind == "ivf" else None
        index = build_faiss_index(vectors, ids, kind, nprobe=self.nprobe, trained=trained)
        self._index, self._index_generation = index, generation
        try:
            write_faiss_file(path, index, {"generation": generation, "kind": kind, "count": int(len(ids)),
                                            "model_id": self._meta("model_id")})
        except OSError as e:  # a read-only index still searches; only the cache is lost
            print(f"audiofind: cannot write {path}: {e}", file=sys.stderr)

    def _reusable_ivf(self, n: int) -> faiss.Index | None:
        """The trained IVF index in memory or on disk, if its list count still suits `n` clips."""
        import faiss

        previous = self._index
        if previous is None:
            loaded = read_faiss_file(self.index_dir / FAISS_NAME)
            previous = loaded[1] if loaded is not None else None
        ivf = faiss.try_extract_index_ivf(previous) if previous is not None else None
        if ivf is None or not ivf.is_trained:
            return None
        return ivf if 0.5 <= ivf.nlist / default_nlist(n) <= 2 else None

    def _dim(self) -> int:
        dim = self._meta("dim")
        return int(dim) if dim else self.model.dim

    def _all_vectors(self, ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, (n, dim) float32 vectors) of all rows, or of `ids` only, filled in place (no blob list)."""
        dim = self._dim()
        if ids is None:
            n = len(self)
            chunks: Iterable[list[int] | None] = [None]
        else:
            id_list = [int(i) for i in ids]
            n = len(id_list)
            chunks = (id_list[i:i + 10_000] for i in range(0, n, 10_000))
        out_ids = np.empty(n, dtype=np.int64)
        vectors = np.empty((n, dim), dtype=np.float32)
        row = 0
        for chunk in chunks:
            if chunk is None:
                cursor = self._conn.execute("SELECT id, vector FROM files ORDER BY id")
            else:
                marks = ",".join("?" * len(chunk))
                cursor = self._conn.execute(f"SELECT id, vector FROM files WHERE id IN ({marks})", chunk)
            for clip_id, blob in cursor:
                if row == n:  # rows added since the count: the next refresh picks them up
                    break
                out_ids[row] = clip_id
                vectors[row] = np.frombuffer(blob, dtype="<f4")
                row += 1
        return out_ids[:row], vectors[:row]

    # ------------------------------------------------------------ searching

    def search(self, query: str, k: int = 10, **filters: Any) -> list[SearchResult]:
        """The `k` clips that best match a description, best first."""
        return self.search_many([query], k, **filters)[0]

    def search_many(self, queries: Sequence[str], k: int = 10, **filters: Any) -> list[list[SearchResult]]:
        """Several descriptions with one text-encoder batch."""
        if isinstance(queries, str):
            raise TypeError("search_many takes a list of queries; use search() for one")
        if not queries:
            return []
        vectors = self.model.encode_text(list(queries))
        return self._search_vectors(vectors, k, **filters)

    def search_vector(self, vector: np.ndarray, k: int = 10, **filters: Any) -> list[SearchResult]:
        """Search with a vector from the index's own space (e.g. an embedded clip)."""
        return self._search_vectors(np.asarray(vector, dtype=np.float32).reshape(1, -1), k, **filters)[0]

    def similar(self, clip: int | str | os.PathLike[str], k: int = 10, **filters: Any) -> list[SearchResult]:
        """Clips that sound like `clip`: an indexed id/path (stored vector, itself excluded) or any file."""
        exclude: set[int] = set()
        if isinstance(clip, (int, np.integer)):
            rec = self.clip(int(clip))
            vector, exclude = rec.vector, {rec.id}
        else:
            path = _abspath(clip)
            with self._lock:
                row = self._conn.execute("SELECT id FROM files WHERE path_bytes = ?",
                                         (os.fsencode(path),)).fetchone()
            if row is not None:
                rec = self.clip(row[0])
                vector, exclude = rec.vector, {rec.id}
            else:
                if not os.path.exists(path):
                    raise FileNotFoundError(f"no such file: {display_path(path)}")
                model = self.model
                wave, _ = load_audio(path, sample_rate=model.sample_rate)
                vector = model.embed_audio([wave]).vectors[0]
        return self._search_vectors(vector.reshape(1, -1), k, exclude=exclude, **filters)[0]

    def _search_vectors(self, queries: np.ndarray, k: int, *, min_duration: float | None = None,
                        max_duration: float | None = None, path_prefix: str | os.PathLike[str] | None = None,
                        exclude: set[int] | frozenset[int] = frozenset()) -> list[list[SearchResult]]:
        with self._lock:
            index = self._ensure_index()
            if queries.shape[1] != index.d:
                raise ValueError(f"query vectors have dim {queries.shape[1]}, the index has {index.d}")
            if k <= 0 or index.ntotal == 0:
                return [[] for _ in queries]
            allowed = self._filter_ids(min_duration, max_duration, path_prefix)
            if allowed is not None and len(allowed) == 0:
                return [[] for _ in queries]
            available = index.ntotal if allowed is None else len(allowed)
            want = min(k + len(exclude), available)
            scores, ids = search_faiss(index, queries, want, allowed_ids=allowed, nprobe=self.nprobe)
            out = []
            for q, s_row, i_row in zip(queries, scores, ids, strict=True):
                if (i_row >= 0).sum() < want:  # approximate index fell short: answer this query exactly
                    s_row, i_row = self._exact_search(q, want, allowed)
                hits = [(int(i), float(s)) for i, s in zip(i_row, s_row, strict=True)
                        if i >= 0 and int(i) not in exclude]
                out.append(self._results(hits[:k]))
            return out

    def _exact_search(self, query: np.ndarray, k: int,
                      allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        ids, vectors = self._all_vectors(allowed)
        scores = vectors @ query
        top = np.argsort(-scores, kind="stable")[:k]
        return scores[top], ids[top]

    def _filter_ids(self, min_duration: float | None, max_duration: float | None,
                    path_prefix: str | os.PathLike[str] | None) -> np.ndarray | None:
        """Ids passing the filters, or None when there are no filters."""
        clauses: list[str] = []
        args: list[Any] = []
        if min_duration is not None:
            clauses.append("duration >= ?")
            args.append(float(min_duration))
        if max_duration is not None:
            clauses.append("duration <= ?")
            args.append(float(max_duration))
        if path_prefix is not None and os.fspath(path_prefix) != "":
            lo, hi = _prefix_range(os.fsencode(_abspath(path_prefix)))
            clauses.append("path_bytes >= ? AND (? IS NULL OR path_bytes < ?)")
            args += [lo, hi, hi]
        if not clauses:
            return None
        rows = self._conn.execute(f"SELECT id FROM files WHERE {' AND '.join(clauses)}", args).fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    def _results(self, hits: list[tuple[int, float]]) -> list[SearchResult]:
        if not hits:
            return []
        rows = {r[0]: r for r in self._conn.execute(
            f"SELECT id, path_bytes, duration, tags FROM files WHERE id IN ({','.join('?' * len(hits))})",
            [i for i, _ in hits])}
        return [SearchResult(id=i, path=os.fsdecode(bytes(rows[i][1])), score=s, duration=rows[i][2],
                             tags=_tags_from_json(rows[i][3]))
                for i, s in hits if i in rows]  # a row deleted by another process since the last refresh

    # ------------------------------------------------------------ inspection

    def clip(self, clip_id: int) -> ClipRecord:
        """The stored record of one clip, vector included."""
        with self._lock:
            row = self._conn.execute(f"SELECT {_RECORD_COLUMNS} FROM files WHERE id = ?",
                                     (int(clip_id),)).fetchone()
        if row is None:
            raise KeyError(f"no clip with id {clip_id} in {self.index_dir}")
        (id_, path_b, size, mtime_ns, digest, duration, rate, channels, tags, model_id, indexed_at, vec) = row
        return ClipRecord(id=id_, path=os.fsdecode(bytes(path_b)), size=size, mtime_ns=mtime_ns,
                          content_hash=digest, duration=duration, sample_rate=rate, channels=channels,
                          tags=_tags_from_json(tags), model_id=model_id, indexed_at=indexed_at,
                          vector=np.frombuffer(vec, dtype="<f4").astype(np.float32))

    def stats(self) -> dict[str, Any]:
        """Counts and provenance for `audiofind info` and the server's status page."""
        with self._lock:
            clips, seconds = self._conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(duration), 0) FROM files").fetchone()
            kind = faiss_index_kind(self._index) if self._index is not None else self._wanted_kind(clips)
            return {
                "index_dir": str(self.index_dir),
                "clips": clips,
                "audio_hours": round(seconds / 3600, 4),
                "model_id": self._meta("model_id"),
                "dim": int(self._meta("dim") or 0),
                "generation": int(self._meta("generation") or 0),
                "created_at": self._meta("created_at"),
                "built_at": self._meta("updated_at"),
                "build_seconds": round(float(self._meta("build_seconds") or 0), 2),
                "index_kind": kind,
            }


def _connect(db_path: Path) -> sqlite3.Connection:
    """Open in WAL mode and autocommit, creating the schema; 'not a database' becomes a clear error."""
    try:
        conn = sqlite3.connect(db_path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        with _transaction(conn):
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if version is None:
                now = _now_iso()
                conn.executemany("INSERT INTO meta VALUES (?, ?)", [
                    ("schema_version", str(SCHEMA_VERSION)), ("generation", "0"),
                    ("created_at", now), ("updated_at", now), ("build_seconds", "0")])
            elif int(version[0]) != SCHEMA_VERSION:
                raise LibraryError(f"{db_path}: index schema version {version[0]} is not supported (this "
                                   f"audiofind reads version {SCHEMA_VERSION}); re-index into a new folder")
    except sqlite3.DatabaseError as e:
        raise LibraryError(f"{db_path} is not a readable audiofind index: {e}") from e
    return conn


def _load_model(name: str | None) -> EmbeddingModel:
    from .model import load_model

    return load_model(name)


class _ProgressBar:
    """A tqdm bar on stderr with files/s and audio-hours/s, or a callback, or nothing."""

    def __init__(self, progress: bool | Progress, total: int) -> None:
        self.callback = progress if callable(progress) else None
        self.total = total
        self.done = 0
        self.start = time.monotonic()
        self.bar = None
        if progress is True:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="file", file=sys.stderr, dynamic_ncols=True, desc="indexing")

    def advance(self, n: int, report: UpdateReport) -> None:
        self.done += n
        elapsed = max(time.monotonic() - self.start, 1e-9)
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(audio_h_per_s=f"{report.audio_seconds / 3600 / elapsed:.3f}", refresh=False)
        if self.callback is not None:
            self.callback({"done": self.done, "total": self.total, "embedded": report.embedded,
                           "skipped": len(report.skipped), "audio_seconds": report.audio_seconds,
                           "elapsed": elapsed})

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
