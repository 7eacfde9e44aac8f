"""HTTP API and web page over a `Library`: search by text or example, stream clips, draw waveforms.

A thin layer: every search goes through the `Library` Python API. What this module adds is what an HTTP
front needs and the library does not: limits on inputs, JSON errors, byte-range streaming by clip id only
(never by path), a check that a clip's file still lies inside the folders the library indexed, bearer
tokens for non-loopback use, and picking up a re-indexed library without a restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from email.utils import formatdate
from importlib import resources
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__
from .audio import AUDIO_EXTENSIONS, AudioDecodeError, load_audio, probe
from .library import ClipRecord, Library, LibraryError, SearchResult, display_path

if TYPE_CHECKING:
    from .model import EmbeddingModel

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
TOKEN_HEADER = "x-audiofind-token"
SESSION_COOKIE = "audiofind_session"
REFRESH_INTERVAL_S = 1.0  # how often a request may check whether another process re-indexed
CHUNK_BYTES = 256 * 1024
WAVEFORM_CACHE_ENTRIES = 512
TEXT_CACHE_ENTRIES = 4096  # query vectors (2 KB each in the default model's 527-d space)
TEXT_BATCH = 64  # most queries the text encoder takes in one pass
WAVEFORM_MAX_SAMPLES = 30_000_000  # decode long files at a lower rate so peaks never need > ~120 MB
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})

# Browsers need the right type to play and seek; Python's mimetypes misses several of these.
AUDIO_CONTENT_TYPES: dict[str, str] = {
    ".wav": "audio/wav",
    ".wave": "audio/wav",
    ".w64": "audio/x-w64",
    ".rf64": "audio/x-rf64",
    ".aif": "audio/aiff",
    ".aiff": "audio/aiff",
    ".aifc": "audio/aiff",
    ".caf": "audio/x-caf",
    ".au": "audio/basic",
    ".snd": "audio/basic",
    ".flac": "audio/flac",
    ".ogg": "audio/ogg",
    ".oga": "audio/ogg",
    ".opus": "audio/ogg",
    ".mp3": "audio/mpeg",
    ".m4a": "audio/mp4",
    ".m4b": "audio/mp4",
    ".mp4": "audio/mp4",
    ".aac": "audio/aac",
    ".wv": "audio/x-wavpack",
    ".mka": "audio/x-matroska",
    ".wma": "audio/x-ms-wma",
}
# Upload content types accepted when the file name carries no known extension.
_UPLOAD_TYPE_SUFFIX: dict[str, str] = {
    "audio/wav": ".wav",
    "audio/x-wav": ".wav",
    "audio/wave": ".wav",
    "audio/vnd.wave": ".wav",
    "audio/flac": ".flac",
    "audio/x-flac": ".flac",
    "audio/ogg": ".ogg",
    "audio/opus": ".opus",
    "audio/mpeg": ".mp3",
    "audio/mp3": ".mp3",
    "audio/mp4": ".m4a",
    "audio/x-m4a": ".m4a",
    "audio/aac": ".aac",
    "audio/aiff": ".aiff",
    "audio/x-aiff": ".aiff",
}
_WEB_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
_PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)


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


class ApiError(Exception):
    """An error with its HTTP status, rendered as `{"error": ..., "detail": ...}`."""

    def __init__(
        self, status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(error)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers


class _BodyTooLarge(Exception):
    """Raised from inside `receive` when a request body passes the limit mid-stream."""


def is_loopback(host: str) -> bool:
    """True for names and addresses only this machine can reach; anything else needs a token."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None, no_auth: bool) -> None:
    """Refuse to expose the library beyond this machine without a token, unless told so explicitly."""
    if token is not None and no_auth:
        raise ValueError("give either --token or --no-auth, not both")
    if token is not None and len(token) < 8:
        raise ValueError("the token must be at least 8 characters")
    if not is_loopback(host) and token is None and not no_auth:
        raise ValueError(
            f"refusing to listen on {host} without a token: anyone who can reach this port could read "
            "your sound files. Pass --token SECRET (clients send 'Authorization: Bearer SECRET') "
            "or --no-auth to serve without one."
        )


def error_response(
    status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The one error shape every endpoint, middleware and handler uses."""
    return JSONResponse(
        {"error": error, "detail": jsonable_encoder(detail)}, status_code=status, headers=headers
    )


# ---------------------------------------------------------------- the service behind the routes


class LibraryService:
    """Everything the routes do, as plain blocking methods the routes run in the threadpool."""

    def __init__(self, library: Library, limits: Limits) -> None:
        self.library = library
        self.limits = limits
        self._model_lock = threading.Lock()  # torch modules are not guaranteed re-entrant across threads
        self._refresh_lock = threading.Lock()
        self._next_refresh = 0.0
        self._text_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._batcher = _TextBatcher(self._encode_batch)
        self._wave_cache: OrderedDict[tuple, dict[str, Any]] = OrderedDict()
        self._wave_lock = threading.Lock()
        self._wave_slots = threading.BoundedSemaphore(2)  # decoding is CPU-heavy: bound it
        self._folders_cache: _FolderIndex | None = None

    # ------------------------------------------------------------ freshness

    def maybe_refresh(self) -> None:
        """At most once a second, pick up an index another process (`audiofind index`) committed."""
        now = time.monotonic()
        if now < self._next_refresh or not self._refresh_lock.acquire(blocking=False):
            return
        try:
            self._next_refresh = now + REFRESH_INTERVAL_S
            self.library.refresh()
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
            vectors = self.library.model.encode_text(texts)
        with self._cache_lock:
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

    def search_vector(self, vector: np.ndarray, k: int, filters: dict[str, Any]) -> list[SearchResult]:
        """The index side of a text search (FAISS and SQLite, under the library's lock)."""
        self.maybe_refresh()
        return self.library.search_vector(vector, k, **filters)

    def search(self, query: str, k: int, filters: dict[str, Any]) -> list[SearchResult]:
        """Text search, blocking."""
        return self.search_vector(self.text_vector(query), k, filters)

    def similar_to_clip(self, clip_id: int, k: int, filters: dict[str, Any]) -> list[SearchResult]:
        """Clips like an indexed one: its stored vector, no model run."""
        self.maybe_refresh()
        try:
            return self.library.similar(int(clip_id), k, **filters)
        except KeyError:
            raise ApiError(404, "no such clip", {"id": clip_id}) from None

    def similar_to_file(self, path: str, k: int, filters: dict[str, Any]) -> list[SearchResult]:
        """Clips like an uploaded file: decode (bounded), embed under the model lock, search."""
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
        return self.library.search_vector(vector, k, **filters)

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
        return {"status": "ok", "version": __version__, **stats, "limits": asdict(self.limits)}


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
    import stat

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


def result_dict(r: SearchResult) -> dict[str, Any]:
    """A search hit plus what a page needs to show and play it."""
    d = r.to_dict()
    d.update(_clip_links(r.id, d["path"]))
    return d


def _clip_links(clip_id: int, path: str) -> dict[str, Any]:
    return {
        "name": os.path.basename(path),
        "folder": os.path.dirname(path),
        "audio_url": f"/api/clips/{clip_id}/audio",
        "waveform_url": f"/api/clips/{clip_id}/waveform",
    }


# ---------------------------------------------------------------- byte ranges


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """The one (start, end-inclusive) range a `Range` header asks for; None to send the whole file.

    Raises ApiError(416) for a malformed or unsatisfiable byte range. Several ranges at once, or units
    other than bytes, are ignored (RFC 9110 lets a server send the whole file instead); media players
    only ever ask for one.
    """
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    if "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    first, last = first.strip(), last.strip()
    unsatisfiable = ApiError(
        416,
        "range not satisfiable",
        {"range": header[:100], "size": size},
        headers={"Content-Range": f"bytes */{size}"},
    )
    if not dash or (first and not first.isdigit()) or (last and not last.isdigit()) or not (first or last):
        raise unsatisfiable
    if not first:  # suffix: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            raise unsatisfiable
        return max(0, size - n), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size or end < start:
        raise unsatisfiable
    return start, min(end, size - 1)


def _read_span(f: BinaryIO, start: int, length: int) -> Iterator[bytes]:
    """File bytes [start, start+length) in chunks; closes the file when done or abandoned."""
    try:
        f.seek(start)
        while length > 0:
            chunk = f.read(min(CHUNK_BYTES, length))
            if not chunk:
                break
            length -= len(chunk)
            yield chunk
    finally:
        f.close()


# ---------------------------------------------------------------- middleware


class _Guard:
    """Host check (against DNS rebinding), bearer token for /api, and the upload size limit."""

    def __init__(
        self, app: ASGIApp, token: str | None, allowed_hosts: Sequence[str] | None, max_upload_bytes: int
    ) -> None:
        self.app = app
        self.token = token
        self.cookie_value = session_cookie_value(token) if token else None
        self.allowed_hosts = (
            None
            if allowed_hosts is None or "*" in allowed_hosts
            else {h.lower().strip("[]") for h in allowed_hosts}
        )
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path: str = scope["path"]
        if self.allowed_hosts is not None:
            host = _host_name(headers.get("host", ""))
            if host not in self.allowed_hosts:
                await error_response(421, "host not allowed", {"host": headers.get("host", "")[:100]})(
                    scope, receive, send
                )
                return
        if self.token is not None and path.startswith("/api") and not self._authorised(headers):
            await error_response(
                401,
                "missing or wrong access token",
                "send 'Authorization: Bearer TOKEN' or 'X-Audiofind-Token: TOKEN'",
                headers={"WWW-Authenticate": 'Bearer realm="audiofind"'},
            )(scope, receive, send)
            return
        if scope["method"] in ("POST", "PUT", "PATCH"):
            declared = headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_upload_bytes:
                await _drain(receive, int(declared), self.max_upload_bytes)
                await error_response(
                    413,
                    "upload too large",
                    {"limit_bytes": self.max_upload_bytes, "got_bytes": int(declared)},
                    headers={"Connection": "close"},
                )(scope, receive, send)
                return
            receive = self._limited(receive)
        await self.app(scope, receive, send)

    def _authorised(self, headers: dict[str, str]) -> bool:
        assert self.token is not None and self.cookie_value is not None
        given = headers.get(TOKEN_HEADER)
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        if given is not None:
            return hmac.compare_digest(given.encode(), self.token.encode())
        cookie = _cookie(headers.get("cookie", ""), SESSION_COOKIE)
        return cookie is not None and hmac.compare_digest(cookie.encode(), self.cookie_value.encode())

    def _limited(self, receive: Receive) -> Receive:
        seen = 0
        limit = self.max_upload_bytes

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _BodyTooLarge()
            return message

        return limited


async def _drain(receive: Receive, declared: int, limit: int) -> None:
    """Read (and drop) a too-large body, up to a bound, so the client sees the 413 instead of a reset."""
    budget = min(declared, 2 * limit + 1024 * 1024)
    while budget > 0:
        message = await receive()
        if message["type"] != "http.request":
            return
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _host_name(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def session_cookie_value(token: str) -> str:
    """The cookie <audio> elements (which cannot send headers) authenticate with: derived, not the token."""
    return hmac.new(token.encode(), b"audiofind-session-v1", hashlib.sha256).hexdigest()


# ---------------------------------------------------------------- request models


class SimilarRequest(BaseModel):
    """Body of POST /api/similar as JSON (or the form fields beside an upload)."""

    model_config = ConfigDict(extra="forbid")

    id: int | None = Field(None, description="an indexed clip id; omit when uploading a file")
    k: int = Field(20, ge=1, le=200)
    min_duration: float | None = Field(None, ge=0)
    max_duration: float | None = Field(None, ge=0)
    path_prefix: str | None = Field(None, max_length=4096)


_SIMILAR_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": SimilarRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "an audio clip"},
                        "id": {"type": "integer"},
                        "k": {"type": "integer", "minimum": 1, "maximum": 200},
                        "min_duration": {"type": "number"},
                        "max_duration": {"type": "number"},
                        "path_prefix": {"type": "string"},
                    },
                }
            },
        },
    }
}


# ---------------------------------------------------------------- the app


def create_app(
    index_dir: str | os.PathLike[str] | None = None,
    model: EmbeddingModel | str | None = None,
    *,
    token: str | None = None,
    cors_origins: Sequence[str] = (),
    allowed_hosts: Sequence[str] | None = None,
    limits: Limits | None = None,
    library: Library | None = None,
    warm_up: bool = True,
    on_ready: Callable[[], None] | None = None,
) -> FastAPI:
    """The audiofind web app over the index in `index_dir` (or an already open `library`).

    `token`: required on every /api request (Bearer or X-Audiofind-Token header, or the session cookie
    the page gets from POST /api/session). `allowed_hosts`: Host header names accepted; None means the
    loopback names when there is no token (a guard against DNS rebinding) and any host with one; ["*"]
    accepts any. `cors_origins`: origins allowed to call the API from other pages (none by default).
    `warm_up` loads the model at startup, so the first search is not the slow one; `on_ready` runs after.
    """
    limits = limits or Limits()
    own_library = library is None
    if library is None:
        library = Library.open(index_dir, model=model)
    service = LibraryService(library, limits)
    if allowed_hosts is None and token is None:
        allowed_hosts = sorted(LOOPBACK_NAMES)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if warm_up:
            await run_in_threadpool(service.warm_up)
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            service.close()
            if own_library:
                library.close()

    app = FastAPI(
        title="audiofind",
        version=__version__,
        lifespan=lifespan,
        description="Search a sound library by description or by example.",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )  # /docs would load a CDN
    app.state.service = service
    app.state.limits = limits
    _install_error_handlers(app)
    _install_routes(app, service, limits, token)
    app.add_middleware(
        _Guard, token=token, allowed_hosts=allowed_hosts, max_upload_bytes=limits.max_upload_bytes
    )
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "HEAD", "POST"],
            allow_headers=["Authorization", "X-Audiofind-Token", "Range", "Content-Type"],
            expose_headers=["Content-Range", "Accept-Ranges", "Content-Length"],
        )
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.error, exc.detail, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404 and exc.detail == "Not Found":
            return error_response(404, "not found", {"path": request.url.path[:200]})
        if exc.status_code == 405:
            return error_response(405, "method not allowed", {"method": request.method}, exc.headers)
        return error_response(exc.status_code, str(exc.detail), None, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()
        ]
        return error_response(422, "invalid request", detail)

    @app.exception_handler(_BodyTooLarge)
    async def _too_large(_: Request, __: _BodyTooLarge) -> JSONResponse:
        return error_response(
            413,
            "upload too large",
            {"limit_bytes": app.state.limits.max_upload_bytes},
            headers={"Connection": "close"},
        )

    @app.exception_handler(LibraryError)
    async def _library_error(_: Request, exc: LibraryError) -> JSONResponse:
        return error_response(503, "the index is not available", str(exc))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return error_response(500, "internal error", type(exc).__name__)


def _filters(
    min_duration: float | None, max_duration: float | None, path_prefix: str | None
) -> dict[str, Any]:
    """Validated keyword filters for the Library; the folder filter takes absolute folders only."""
    if min_duration is not None and max_duration is not None and min_duration > max_duration:
        raise ApiError(
            400,
            "min_duration is larger than max_duration",
            {"min_duration": min_duration, "max_duration": max_duration},
        )
    out: dict[str, Any] = {"min_duration": min_duration, "max_duration": max_duration}
    if path_prefix:
        if "\x00" in path_prefix or not os.path.isabs(path_prefix):
            raise ApiError(
                400,
                "path_prefix must be an absolute folder path, as listed by /api/folders",
                {"path_prefix": path_prefix[:200]},
            )
        out["path_prefix"] = path_prefix
    return out


def _install_routes(app: FastAPI, service: LibraryService, limits: Limits, token: str | None) -> None:
    web = resources.files("audiofind") / "web"

    def page_file(name: str) -> Response:
        try:
            body = (web / name).read_bytes()
        except FileNotFoundError:
            raise ApiError(404, "not found", {"path": name}) from None
        return Response(
            body,
            media_type=_WEB_FILES[name],
            headers={
                "Cache-Control": "no-cache",
                "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": _PAGE_CSP,
                "Referrer-Policy": "no-referrer",
            },
        )

    @app.get("/", include_in_schema=False)
    async def index_page() -> Response:
        return page_file("index.html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static_file(name: str) -> Response:
        if name not in _WEB_FILES:
            raise ApiError(404, "not found", {"path": f"/static/{name}"[:200]})
        return page_file(name)

    @app.get("/api/search", summary="Search clips by a text description")
    async def search(
        q: str = Query(
            ..., min_length=1, max_length=limits.max_query_chars, description="what it sounds like"
        ),
        k: int = Query(limits.default_k, ge=1, le=limits.max_k),
        min_duration: float | None = Query(None, ge=0),
        max_duration: float | None = Query(None, ge=0),
        path_prefix: str | None = Query(None, max_length=4096, description="an absolute folder"),
    ) -> dict[str, Any]:
        if not q.strip():
            raise ApiError(400, "empty query")
        filters = _filters(min_duration, max_duration, path_prefix)
        start = time.perf_counter()
        vector = await service.text_vector_async(q.strip())
        hits = await run_in_threadpool(service.search_vector, vector, k, filters)
        return {
            "query": q,
            "k": k,
            "count": len(hits),
            "results": [result_dict(h) for h in hits],
            "took_ms": round(1000 * (time.perf_counter() - start), 2),
        }

    @app.post(
        "/api/similar",
        summary="Clips that sound like an uploaded clip or an indexed one",
        openapi_extra=_SIMILAR_OPENAPI,
    )
    async def similar(request: Request) -> dict[str, Any]:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        upload: UploadFile | None = None
        if ctype == "application/json":
            body = await request.body()
            if len(body) > limits.max_body_bytes:
                raise ApiError(413, "request body too large", {"limit_bytes": limits.max_body_bytes})
            try:
                fields = json.loads(body)
            except (ValueError, UnicodeDecodeError) as e:
                raise RequestValidationError(
                    [{"loc": ("body",), "msg": f"invalid JSON: {e}", "type": "json_invalid"}]
                ) from None
            if not isinstance(fields, dict):
                raise RequestValidationError(
                    [{"loc": ("body",), "msg": "expected a JSON object", "type": "dict_type"}]
                )
        elif ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
            form = await request.form(max_files=1, max_fields=16, max_part_size=64 * 1024)
            fields = {}
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    if key != "file":
                        raise ApiError(400, "upload the clip in the 'file' field", {"field": key})
                    upload = value
                else:
                    fields[key] = value if value != "" else None
        else:
            raise ApiError(
                415,
                "send JSON {\"id\": N} or multipart/form-data with a 'file' field",
                {"content_type": ctype or None},
            )
        try:
            params = SimilarRequest.model_validate(fields)
        except ValidationError as e:
            raise RequestValidationError(
                [{**err, "loc": ("body", *err["loc"])} for err in e.errors()]
            ) from None
        if params.k > limits.max_k:
            raise RequestValidationError(
                [
                    {
                        "loc": ("body", "k"),
                        "msg": f"k must be at most {limits.max_k}",
                        "type": "less_than_equal",
                    }
                ]
            )
        filters = _filters(params.min_duration, params.max_duration, params.path_prefix)
        start = time.perf_counter()
        if upload is not None:
            if params.id is not None:
                raise ApiError(400, "give either a file or an id, not both")
            hits, source = await _similar_upload(service, upload, params.k, filters, limits)
        elif params.id is not None:
            hits = await run_in_threadpool(service.similar_to_clip, params.id, params.k, filters)
            source = {"id": params.id}
        else:
            raise ApiError(400, "give a clip id or upload a file", None)
        return {
            "source": source,
            "k": params.k,
            "count": len(hits),
            "results": [result_dict(h) for h in hits],
            "took_ms": round(1000 * (time.perf_counter() - start), 2),
        }

    @app.get("/api/clips/{clip_id}", summary="One clip's record and tags")
    async def clip(clip_id: int) -> dict[str, Any]:
        rec = await run_in_threadpool(service.clip, clip_id)
        d = rec.to_dict()
        d.update(_clip_links(rec.id, d["path"]))
        return d

    @app.get(
        "/api/clips/{clip_id}/audio",
        summary="A clip's audio file (byte ranges supported; HEAD too)",
        response_class=Response,
        responses={
            200: {"content": {"audio/*": {}}},
            206: {"description": "partial content"},
            416: {"description": "range not satisfiable"},
        },
    )
    async def clip_audio(clip_id: int, request: Request) -> Response:
        rec, f, st = await run_in_threadpool(service.open_clip_file, clip_id)
        try:
            return _audio_response(request, rec, f, st)
        except BaseException:
            f.close()
            raise

    app.add_api_route("/api/clips/{clip_id}/audio", clip_audio, methods=["HEAD"], include_in_schema=False)

    @app.get("/api/clips/{clip_id}/waveform", summary="Min/max peaks to draw a clip's waveform")
    async def clip_waveform(
        clip_id: int, points: int = Query(400, ge=1, le=limits.max_waveform_points)
    ) -> dict[str, Any]:
        return await run_in_threadpool(service.waveform, clip_id, points)

    @app.get("/api/folders", summary="Indexed folders with clip counts, for the folder filter")
    async def folders() -> dict[str, Any]:
        items = await run_in_threadpool(service.folders)
        return {"folders": items}

    @app.get("/api/status", summary="Clips, audio hours, model and index build time")
    async def status() -> dict[str, Any]:
        return {**await run_in_threadpool(service.status), "auth": token is not None}

    @app.post("/api/session", summary="Exchange the token for a cookie, so <audio> elements can stream")
    async def session(request: Request) -> Response:
        response = JSONResponse({"ok": True})
        if token is not None:  # the guard already checked the token
            response.set_cookie(
                SESSION_COOKIE,
                session_cookie_value(token),
                httponly=True,
                samesite="strict",
                path="/api",
                secure=request.url.scheme == "https",
            )
        return response


async def _similar_upload(
    service: LibraryService, upload: UploadFile, k: int, filters: dict[str, Any], limits: Limits
) -> tuple[list[SearchResult], dict[str, Any]]:
    """Check the upload's type, copy it to a named temp file (decoders want a path), search."""
    name = os.path.basename(upload.filename or "")
    suffix = os.path.splitext(name)[1].lower()
    ctype = (upload.content_type or "").split(";")[0].strip().lower()
    if suffix not in AUDIO_EXTENSIONS:
        suffix = _UPLOAD_TYPE_SUFFIX.get(ctype, "")
    if not suffix:
        raise ApiError(
            415,
            "unsupported file type: upload an audio file",
            {"filename": name[:200], "content_type": ctype or None, "extensions": sorted(AUDIO_EXTENSIONS)},
        )
    if upload.size is not None and upload.size > limits.max_upload_bytes:
        raise ApiError(413, "upload too large", {"limit_bytes": limits.max_upload_bytes})

    def run() -> list[SearchResult]:
        with tempfile.NamedTemporaryFile(prefix="audiofind-upload-", suffix=suffix) as tmp:
            upload.file.seek(0)
            shutil.copyfileobj(upload.file, tmp, CHUNK_BYTES)
            tmp.flush()
            if tmp.tell() == 0:
                raise ApiError(400, "the uploaded file is empty")
            return service.similar_to_file(tmp.name, k, filters)

    try:
        hits = await run_in_threadpool(run)
    finally:
        await upload.close()
    return hits, {"upload": name[:200]}


def _audio_response(request: Request, rec: ClipRecord, f: BinaryIO, st: os.stat_result) -> Response:
    """200 with the whole file, or 206 with the requested byte range, with the headers seeking needs."""
    size = st.st_size
    etag = f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
    last_modified = formatdate(st.st_mtime, usegmt=True)
    ext = os.path.splitext(rec.path)[1].lower()
    name = os.path.basename(display_path(rec.path))
    headers = {
        "Accept-Ranges": "bytes",
        "ETag": etag,
        "Last-Modified": last_modified,
        "Cache-Control": "private, max-age=300",
        "X-Content-Type-Options": "nosniff",
        "Content-Disposition": "inline; filename*=utf-8''" + _quote(name),
    }
    media_type = AUDIO_CONTENT_TYPES.get(ext, "application/octet-stream")
    span: tuple[int, int] | None = None
    range_header = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if range_header and (if_range is None or if_range.strip() in (etag, last_modified)):
        span = parse_range(range_header, size)
    if span is None:
        start, length, status = 0, size, 200
    else:
        start, length, status = span[0], span[1] - span[0] + 1, 206
        headers["Content-Range"] = f"bytes {span[0]}-{span[1]}/{size}"
    headers["Content-Length"] = str(length)
    if request.method == "HEAD":
        f.close()
        return Response(status_code=status, headers=headers, media_type=media_type)
    return StreamingResponse(
        _read_span(f, start, length), status_code=status, headers=headers, media_type=media_type
    )


def _quote(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")


def serve(
    app: FastAPI, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, log_level: str = "warning"
) -> None:
    """Run the app under uvicorn until interrupted.

    Idle keep-alive connections are kept 30 s (uvicorn's default is 5): a busy client that reuses a connection
    just as the server drops it sees "server disconnected", and browsers keep connections for minutes.
    """
    import uvicorn

    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        server_header=False,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=3,
    )


def app_url(host: str, port: int, token: str | None = None) -> str:
    """The address to open in a browser; the token rides in the fragment, which never reaches a server log."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else host
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    url = f"http://{shown}:{port}/"
    return f"{url}#token={_quote(token)}" if token else url
