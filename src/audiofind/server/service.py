"""The blocking library operations behind the HTTP routes, free of any web framework so they stay testable.

`LibraryService` wraps a `Library` with what a long-running server needs: batched and cached text encoding,
picking up a re-indexed library, a check that a clip's file still lies inside the indexed folders, and cached
waveform peaks. Failures are `ApiError`s carrying the status the routes answer with.
"""

from __future__ import annotations

import asyncio
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from typing import Any, BinaryIO

import numpy as np

from .. import __version__
from ..audio import AudioDecodeError, load_audio, probe
from ..library import ClipRecord, Library, LibraryError, SearchResult, content_hash
from ..library.activity import pid_alive, read_activity
from ..paths import display_path
from .errors import ApiError

REFRESH_INTERVAL_S = 1.0  # how often a request may check whether another process re-indexed
WAVEFORM_CACHE_ENTRIES = 512
TEXT_CACHE_ENTRIES = 4096  # query vectors (2 KB each in the default model's 527-d space)
TEXT_BATCH = 64  # most queries the text encoder takes in one pass
WAVEFORM_MAX_SAMPLES = 30_000_000  # decode long files at a lower rate so peaks never need > ~120 MB


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may ask for, so no client can make the server do unbounded work."""

    max_query_chars: int = 512
    max_k: int = 200
    default_k: int = 20
    max_upload_bytes: int = 50 * 1024 * 1024
    max_upload_seconds: float = 600.0  # seconds of an uploaded clip that are decoded and embedded
    max_waveform_points: int = 4000
    max_body_bytes: int = 64 * 1024  # JSON bodies


class LibraryService:
    """Everything the routes do, as plain blocking methods the routes run in the threadpool."""

    def __init__(self, library: Library, limits: Limits) -> None:
        self.library = library
        self.limits = limits
        self._model_lock = threading.Lock()  # torch modules are not guaranteed re-entrant across threads
        self._refresh_lock = threading.Lock()
        self._next_refresh = 0.0
        self._gone: LibraryError | None = None  # the index folder vanished: every request says so
        self._model_id = library.model_id
        self._text_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._batcher = _TextBatcher(self._encode_batch)
        self._wave_cache: OrderedDict[tuple, dict[str, Any]] = OrderedDict()
        self._wave_lock = threading.Lock()
        self._wave_slots = threading.BoundedSemaphore(2)  # decoding is CPU-heavy: bound it
        self._folders_cache: _FolderIndex | None = None

    # ------------------------------------------------------------ freshness

    def maybe_refresh(self) -> None:
        """At most once a second, pick up an index another process (`audiofind index`) committed.

        A rebuild with another model drops the cached query vectors (the library reloads the model); an
        index folder deleted under the server fails every request with the LibraryError saying so (503).
        """
        now = time.monotonic()
        if now < self._next_refresh or not self._refresh_lock.acquire(blocking=False):
            if self._gone is not None:
                raise self._gone
            return
        try:
            self._next_refresh = now + REFRESH_INTERVAL_S
            try:
                changed = self.library.refresh()
            except LibraryError as e:
                self._gone = e
                raise
            self._gone = None
            if changed and self.library.model_id != self._model_id:
                with self._cache_lock:
                    self._text_cache.clear()
                self._model_id = self.library.model_id
        finally:
            self._refresh_lock.release()

    def warm_up(self) -> None:
        """Load the model, its text side and the vector index before the first request, not during it."""
        self.search("warm up", 1, {})

    def close(self) -> None:
        """Stop the batching thread."""
        self._batcher.close()

    # ------------------------------------------------------------ searching

    def _cached_vector(self, query: str) -> np.ndarray | None:
        with self._cache_lock:
            vec = self._text_cache.get(query)
            if vec is not None:
                self._text_cache.move_to_end(query)
            return vec

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        """Run by the batcher: one forward pass for every query waiting, then remember them."""
        with self._model_lock:
            model = self.library.model
            vectors = model.encode_text(texts)
        with self._cache_lock:
            if model.model_id != self._model_id:  # the index changed model meanwhile: do not cache
                return vectors
            for text, vec in zip(texts, vectors, strict=True):
                self._text_cache[text] = vec
            while len(self._text_cache) > TEXT_CACHE_ENTRIES:
                self._text_cache.popitem(last=False)
        return vectors

    def text_vector(self, query: str) -> np.ndarray:
        """One query's vector, blocking; search-as-you-type repeats itself, so recent ones are cached."""
        vec = self._cached_vector(query)
        return vec if vec is not None else self._batcher.submit(query).result()

    async def text_vector_async(self, query: str) -> np.ndarray:
        """The same without holding a worker thread while the query waits for its batch."""
        vec = self._cached_vector(query)
        return vec if vec is not None else await asyncio.wrap_future(self._batcher.submit(query))

    def search_vector(self, query: str, vector: np.ndarray, k: int, filters: dict[str, Any],
                      mode: str = "hybrid") -> list[SearchResult]:
        """The index side of a text search (FAISS, FTS5 and SQLite, under the library's lock)."""
        self.maybe_refresh()
        return self.library.search_encoded([query], vector.reshape(1, -1), k, mode, **filters)[0]

    def search(self, query: str, k: int, filters: dict[str, Any], mode: str = "hybrid") -> list[SearchResult]:
        """Text search, blocking."""
        return self.search_vector(query, self.text_vector(query), k, filters, mode)

    def similar_to_clip(self, clip_id: int, k: int, filters: dict[str, Any]) -> list[SearchResult]:
        """Clips like an indexed one: its stored vector, no model run."""
        self.maybe_refresh()
        try:
            return self.library.similar(int(clip_id), k, **filters)
        except KeyError:
            raise ApiError(404, "no such clip", {"id": clip_id}) from None

    def similar_to_file(self, path: str, k: int, filters: dict[str, Any]) -> list[SearchResult]:
        """Clips like an uploaded file: decode (bounded), embed under the model lock, search; the upload's
        own content (the same file indexed, or copies of it) is left out."""
        self.maybe_refresh()
        model = self.library.model
        try:
            wave, _ = load_audio(
                path, sample_rate=model.sample_rate, max_duration=self.limits.max_upload_seconds
            )
        except AudioDecodeError as e:
            raise ApiError(415, "the upload is not audio this server can decode", e.reason) from None
        if wave.size == 0:
            raise ApiError(415, "the upload holds no audio samples")
        with self._model_lock:
            vector = model.embed_audio([wave]).vectors[0]
        # a clip dropped from the library finds other sounds, not itself (as `audiofind similar FILE`)
        return self.library.search_vector(vector, k, exclude_content=content_hash(path), **filters)

    # ------------------------------------------------------------ clips and files

    def clip(self, clip_id: int) -> ClipRecord:
        """The record, or 404."""
        self.maybe_refresh()
        try:
            return self.library.clip(clip_id)
        except KeyError:
            raise ApiError(404, "no such clip", {"id": clip_id}) from None

    def open_clip_file(self, clip_id: int) -> tuple[ClipRecord, BinaryIO, os.stat_result]:
        """Open a clip's file by id: resolved, checked to lie inside the indexed folders, then opened."""
        rec = self.clip(clip_id)
        real = os.path.realpath(rec.path)
        if not self._inside_roots(real):
            raise ApiError(403, "this clip's file lies outside the indexed folders", {"id": clip_id})
        try:
            # open the checked, resolved path, refusing a link planted there since; the response closes it
            fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0))
            f = os.fdopen(fd, "rb")
        except FileNotFoundError:
            raise ApiError(404, "this clip's file is gone; re-index the library", {"id": clip_id}) from None
        except OSError as e:
            raise ApiError(
                403, "cannot read this clip's file", {"id": clip_id, "reason": e.strerror}
            ) from None
        st = os.fstat(f.fileno())
        if not _is_regular(st):
            f.close()
            raise ApiError(403, "this clip's path is not a regular file", {"id": clip_id})
        return rec, f, st

    def _inside_roots(self, real: str) -> bool:
        """Whether a resolved path lies under the resolved form of a folder (or file) the library indexed."""
        return any(_under(real, root) for root in self._folder_index().real_roots)

    def _folder_index(self) -> _FolderIndex:
        """Roots and clips per folder, recomputed only when the index generation changes.

        Roots come from `Library.roots()` (what `update` was given); records under none of them (an index
        written before the library recorded roots) add their outermost folders. Either way a link is served
        only when its target resolves inside a root, never merely because the link itself sits in one.
        """
        lib = self.library
        generation = lib.generation
        cached = self._folders_cache
        if cached is not None and cached.generation == generation:
            return cached
        counts = lib.folder_counts()
        roots = lib.roots()
        # records under no recorded root (an index older than the roots table): their outermost folders
        for folder in sorted(counts):
            if not any(_under(folder, r) for r in roots):
                roots.append(folder)
        self._folders_cache = _FolderIndex(generation, roots, [os.path.realpath(r) for r in roots], counts)
        return self._folders_cache

    def folders(self, limit: int = 1000) -> list[dict[str, Any]]:
        """Folders with their clip counts (each counted with its subfolders), for the folder filter."""
        self.maybe_refresh()
        index = self._folder_index()
        totals: dict[str, int] = {}
        for folder, n in index.counts.items():
            # credit every ancestor down from the root, so a parent folder shows its whole subtree
            root = next((r for r in index.roots if _under(folder, r)), folder)
            path = folder
            while True:
                totals[path] = totals.get(path, 0) + n
                if path == root or os.path.dirname(path) == path:
                    break
                path = os.path.dirname(path)
        items = sorted(totals.items())[:limit]
        return [{"path": display_path(p), "clips": n} for p, n in items]

    def waveform(self, clip_id: int, points: int) -> dict[str, Any]:
        """Min/max peaks of a clip in `points` buckets, computed once per clip version and cached."""
        rec = self.clip(clip_id)
        key = (rec.id, rec.content_hash, points)
        with self._wave_lock:
            hit = self._wave_cache.get(key)
            if hit is not None:
                self._wave_cache.move_to_end(key)
                return hit
        _, f, _ = self.open_clip_file(clip_id)  # same containment check as streaming
        f.close()
        real = os.path.realpath(rec.path)
        with self._wave_slots:
            try:
                info = probe(real)
                rate = info.sample_rate
                if info.duration * rate > WAVEFORM_MAX_SAMPLES:
                    rate = max(4000, int(WAVEFORM_MAX_SAMPLES / max(info.duration, 1e-9)))
                wave, info = load_audio(real, sample_rate=rate)
            except AudioDecodeError as e:
                raise ApiError(415, "cannot decode this clip", e.reason) from None
            except OSError as e:
                raise ApiError(
                    404, "cannot read this clip's file", {"id": clip_id, "reason": e.strerror}
                ) from None
        lo, hi = peaks(wave, points)
        out = {
            "id": rec.id,
            "duration": round(info.duration, 4),
            "points": len(lo),
            "peak": round(float(max(np.abs(lo).max(initial=0), np.abs(hi).max(initial=0))), 4),
            "min": [round(float(x), 4) for x in lo],
            "max": [round(float(x), 4) for x in hi],
        }
        with self._wave_lock:
            self._wave_cache[key] = out
            while len(self._wave_cache) > WAVEFORM_CACHE_ENTRIES:
                self._wave_cache.popitem(last=False)
        return out

    def status(self) -> dict[str, Any]:
        """Index statistics plus the server's limits, for clients and monitoring."""
        self.maybe_refresh()
        stats = self.library.stats()
        roots = [display_path(r) for r in self.library.roots()]
        return {"status": "ok", "version": __version__, **stats, "roots": roots,
                "indexing": read_activity(self.library.index_dir), "limits": asdict(self.limits)}


UPLOAD_PREFIX = "audiofind-upload-"


def upload_prefix() -> str:
    """The temp-file prefix of this process's uploads: the pid lets the next start tell leftovers apart."""
    return f"{UPLOAD_PREFIX}{os.getpid()}-"


def clean_stale_uploads(folder: str | None = None) -> int:
    """Delete upload temp files whose server process is gone (killed mid-request); returns how many."""
    import tempfile

    removed = 0
    with os.scandir(folder or tempfile.gettempdir()) as entries:
        for entry in entries:
            pid = entry.name[len(UPLOAD_PREFIX):].split("-", 1)[0]
            if entry.name.startswith(UPLOAD_PREFIX) and pid.isdigit() and not pid_alive(int(pid)):
                try:
                    os.unlink(entry.path)
                    removed += 1
                except OSError:
                    pass  # another user's file, or removed meanwhile
    return removed


class _TextBatcher:
    """Encodes the queries that arrive while the model is busy in one forward pass.

    Under load the text encoder then sees batches instead of a queue of single sentences, which is several
    times the throughput on a CPU; when idle a query goes through at once, with no added wait.
    """

    def __init__(self, encode: Callable[[list[str]], np.ndarray], max_batch: int = TEXT_BATCH) -> None:
        self._encode = encode
        self._max_batch = max_batch
        self._pending: dict[str, Future[np.ndarray]] = {}  # identical queries share one slot
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="audiofind-text-batcher", daemon=True)
        self._thread.start()

    def submit(self, text: str) -> Future[np.ndarray]:
        """A future for `text`'s vector."""
        with self._cv:
            if self._closed:
                raise RuntimeError("the server is shutting down")
            fut = self._pending.get(text)
            if fut is None:
                fut = self._pending[text] = Future()
                self._cv.notify()
            return fut

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(5)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._closed:
                    self._cv.wait()
                if self._closed and not self._pending:
                    return
                texts = list(self._pending)[: self._max_batch]
                futures = [self._pending.pop(t) for t in texts]
            try:
                vectors = self._encode(texts)
            except BaseException as e:  # every waiter hears about it; the thread keeps serving
                for fut in futures:
                    fut.set_exception(e)
                continue
            for fut, vec in zip(futures, vectors, strict=True):
                fut.set_result(vec)


@dataclass
class _FolderIndex:
    generation: int
    roots: list[str]
    real_roots: list[str]  # os.path.realpath of each root
    counts: dict[str, int]  # clips per folder


def _under(path: str, root: str) -> bool:
    """`path` is `root` or inside it (plain string test on normalised absolute paths)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _is_regular(st: os.stat_result) -> bool:
    return stat.S_ISREG(st.st_mode)


def peaks(wave: np.ndarray, points: int) -> tuple[np.ndarray, np.ndarray]:
    """(min, max) of `wave` over `points` equal buckets; fewer buckets when there are fewer samples."""
    wave = np.asarray(wave, dtype=np.float32)
    n = len(wave)
    if n == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    points = max(1, min(points, n))
    starts = (np.arange(points, dtype=np.int64) * n) // points
    return np.minimum.reduceat(wave, starts), np.maximum.reduceat(wave, starts)
