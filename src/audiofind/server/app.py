"""HTTP API and web page over a `Library`: search by text or example, stream clips, draw waveforms.

A thin layer: every search goes through the `Library` Python API, via `service.LibraryService`. What this
module adds is what an HTTP front needs and the library does not: limits on inputs, JSON errors, byte-range
streaming by clip id only (never by path; see `clip_streaming`), bearer tokens for non-loopback use, and a
Host check against DNS rebinding. Containment checks, caching and picking up a re-indexed library without a
restart live in `service`.

It is longer than 400 lines because every route is declared here, next to its limits and OpenAPI
description, so the API reads as one list; security, schemas, streaming and the service live apart.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response
from starlette.routing import Match

from .. import __version__
from ..audio import AUDIO_EXTENSIONS
from ..library import Library, LibraryError, SearchResult, damaged_message
from ..library.fusion import is_weak
from ..library.queries import PATH_PREFIX_PATTERN, QUERY_PATTERN, QueryError, check_filters
from .errors import ApiError, error_response
from .routes_workbench import install_workbench_routes
from .schemas import (
    COMMON_ERRORS,
    MAX_PATH_PREFIX_CHARS,
    SIMILAR_OPENAPI,
    ClipId,
    ErrorBody,
    SimilarRequest,
    clip_links,
    error_responses,
    result_dict,
    strict_json_fields,
)
from .security import LOOPBACK_NAMES, SESSION_COOKIE, BodyTooLarge, Guard, session_cookie_value
from .service import LibraryService, Limits, clean_stale_uploads, upload_prefix
from .streaming import CHUNK_BYTES, audio_response
from .workbench import MAX_OVERFETCH, search_with_formats

if TYPE_CHECKING:
    from ..models import EmbeddingModel

__all__ = ["ApiError", "Limits", "app_url", "create_app", "serve"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765

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
    device: str = "cpu",
) -> FastAPI:
    """The audiofind web app over the index in `index_dir` (or an already open `library`).

    `token`: required on every /api request (Bearer or X-Audiofind-Token header, or the session cookie
    the page gets from POST /api/session). `allowed_hosts`: Host header names accepted; None means the
    loopback names when there is no token (a guard against DNS rebinding) and any host with one; ["*"]
    accepts any. `cors_origins`: origins allowed to call the API from other pages (none by default).
    `warm_up` loads the model at startup, so the first search is not the slow one; `on_ready` runs after.
    `device`: where the model runs when it is loaded here ("cpu", "cuda", "mps").
    """
    limits = limits or Limits()
    own_library = library is None
    clean_stale_uploads()  # a server killed mid-upload left its temp copy
    if library is None:
        library = Library.open(index_dir, model=model, device=device)
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
    install_workbench_routes(app, service)
    _document_common_errors(app)
    app.add_middleware(
        Guard, token=token, allowed_hosts=allowed_hosts, max_upload_bytes=limits.max_upload_bytes
    )
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "HEAD", "POST", "DELETE"],
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
            allow = ", ".join(_allowed_methods(app, request))
            return error_response(405, "method not allowed", {"method": request.method}, {"Allow": allow})
        return error_response(exc.status_code, str(exc.detail), None, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()
        ]
        return error_response(422, "invalid request", detail)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(_: Request, __: BodyTooLarge) -> JSONResponse:
        return error_response(
            413,
            "upload too large",
            {"limit_bytes": app.state.limits.max_upload_bytes},
            headers={"Connection": "close"},
        )

    @app.exception_handler(QueryError)
    async def _query_error(_: Request, exc: QueryError) -> JSONResponse:
        return error_response(400, str(exc))  # the library's own rules, should a request slip past a route

    @app.exception_handler(LibraryError)
    async def _library_error(_: Request, exc: LibraryError) -> JSONResponse:
        return error_response(503, "the index is not available", str(exc))

    @app.exception_handler(sqlite3.DatabaseError)
    async def _damaged(_: Request, exc: sqlite3.DatabaseError) -> JSONResponse:
        return error_response(503, "the index is not available", damaged_message(exc))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return error_response(500, "internal error", type(exc).__name__)


def _allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette names only the first route's)."""
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


def _document_common_errors(app: FastAPI) -> None:
    """Add what the guard and a vanished index may answer on any /api route to every operation's responses."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            common = {str(code): {"description": entry["description"], "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
                for code, entry in error_responses(*COMMON_ERRORS).items()}
            for path, ops in schema.get("paths", {}).items():
                if path.startswith("/api"):
                    for op in ops.values():
                        op.setdefault("responses", {}).update(
                            {c: v for c, v in common.items() if c not in op["responses"]})
            schema.setdefault("components", {}).setdefault("schemas", {})["ErrorBody"] = \
                ErrorBody.model_json_schema()
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _filters(
    min_duration: float | None, max_duration: float | None, path_prefix: str | None
) -> dict[str, Any]:
    """Validated keyword filters for the Library (its rules, `library.queries`); absolute folders only."""
    try:
        check_filters(min_duration, max_duration, path_prefix)
    except QueryError as e:
        raise ApiError(400, str(e), {"min_duration": min_duration, "max_duration": max_duration}) from None
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
    web = resources.files("audiofind.server") / "web"

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

    @app.get("/api/search", summary="Search clips by a text description",
             responses=error_responses(400, 422))
    async def search(
        q: str = Query(
            ..., min_length=1, max_length=limits.max_query_chars,
            json_schema_extra={"pattern": QUERY_PATTERN},  # checked below, answered with a 400
            description="what it sounds like; a blank query is a 400",
        ),
        k: int = Query(limits.default_k, ge=1, le=limits.max_k),
        min_duration: float | None = Query(
            None, ge=0, description="seconds; at most max_duration (or 400)"),
        max_duration: float | None = Query(None, ge=0, description="seconds; at least min_duration"),
        path_prefix: str | None = Query(None, max_length=MAX_PATH_PREFIX_CHARS,
                                        json_schema_extra={"pattern": PATH_PREFIX_PATTERN},
                                        description="an absolute folder, as listed by /api/folders (or 400)"),
        mode: Literal["hybrid", "audio", "text"] = Query(
            "hybrid", description="hybrid: by sound and by name/metadata words; audio: sound; text: words"
        ),
        min_score: float | None = Query(None, ge=0, le=1, description="drop results with a weaker match"),
        sample_rate: int | None = Query(None, ge=1, le=768_000, description="only clips at this rate"),
        channels: int | None = Query(None, ge=1, le=64, description="only clips with this many channels"),
    ) -> dict[str, Any]:
        if not q.strip():
            raise ApiError(400, "empty query")
        filters = _filters(min_duration, max_duration, path_prefix)
        start = time.perf_counter()
        text = q.strip()
        vector = await service.text_vector_async(text)
        found, formats = await run_in_threadpool(
            search_with_formats, service, lambda n: service.search_vector(text, vector, n, filters, mode), k,
            sample_rate, channels)
        hits = [h for h in found if min_score is None or (h.match or 0.0) >= min_score]
        return {
            "query": q,
            "k": k,
            "mode": mode,
            "count": len(hits),
            "no_good_match": is_weak(found[0].match if found else None),
            "results": [result_dict(h, formats.get(h.id)) for h in hits],
            "took_ms": round(1000 * (time.perf_counter() - start), 2),
        }

    @app.post(
        "/api/similar",
        summary="Clips that sound like an uploaded clip or an indexed one",
        description="JSON `{\"id\": N, ...}` for an indexed clip, or multipart/form-data with a `file` "
        "(an audio file) or an `id`. min_duration larger than max_duration is a 400.",
        openapi_extra=SIMILAR_OPENAPI,
        responses=error_responses(400, 404, 413, 415, 422),
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
            except RecursionError:
                raise RequestValidationError(
                    [{"loc": ("body",), "msg": "invalid JSON: nested too deeply", "type": "json_invalid"}]
                ) from None
            except (ValueError, UnicodeDecodeError) as e:
                raise RequestValidationError(
                    [{"loc": ("body",), "msg": f"invalid JSON: {e}", "type": "json_invalid"}]
                ) from None
            if not isinstance(fields, dict):
                raise RequestValidationError(
                    [{"loc": ("body",), "msg": "expected a JSON object", "type": "dict_type"}]
                )
            fields, wrong = strict_json_fields(fields)
            if wrong:
                raise RequestValidationError(wrong)
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
            wanted = params.sample_rate is not None or params.channels is not None
            fetched, source = await _similar_upload(
                service, upload, MAX_OVERFETCH if wanted else params.k, filters, limits)
            search: Callable[[int], list[SearchResult]] = lambda n: fetched[:n]  # noqa: E731
        elif params.id is not None:
            clip_id = params.id
            search = lambda n: service.similar_to_clip(clip_id, n, filters)  # noqa: E731
            source = {"id": params.id}
        else:
            raise ApiError(400, "give a clip id or upload a file", None)
        hits, formats = await run_in_threadpool(
            search_with_formats, service, search, params.k, params.sample_rate, params.channels)
        return {
            "source": source,
            "k": params.k,
            "count": len(hits),
            "results": [result_dict(h, formats.get(h.id)) for h in hits],
            "took_ms": round(1000 * (time.perf_counter() - start), 2),
        }

    @app.get("/api/clips/{clip_id}", summary="One clip's record and tags",
             responses=error_responses(404, 422))
    async def clip(clip_id: ClipId) -> dict[str, Any]:
        rec = await run_in_threadpool(service.clip, clip_id)
        d = rec.to_dict()
        d.update(clip_links(rec.id, d["path"]))
        return d

    @app.get(
        "/api/clips/{clip_id}/audio",
        summary="A clip's audio file (byte ranges supported; HEAD too)",
        response_class=Response,
        responses={
            200: {"description": "the whole file",
                  "content": {"audio/*": {}, "application/octet-stream": {}}},
            206: {"description": "the requested byte range",
                  "content": {"audio/*": {}, "application/octet-stream": {}}},
            **error_responses(403, 404, 416, 422),
        },
    )
    async def clip_audio(clip_id: ClipId, request: Request) -> Response:
        rec, f, st = await run_in_threadpool(service.open_clip_file, clip_id)
        try:
            return audio_response(request, rec, f, st)
        except BaseException:
            f.close()
            raise

    app.add_api_route("/api/clips/{clip_id}/audio", clip_audio, methods=["HEAD"], include_in_schema=False)

    @app.get("/api/clips/{clip_id}/waveform", summary="Min/max peaks to draw a clip's waveform",
             responses=error_responses(403, 404, 415, 422))
    async def clip_waveform(
        clip_id: ClipId, points: int = Query(400, ge=1, le=limits.max_waveform_points)
    ) -> dict[str, Any]:
        return await run_in_threadpool(service.waveform, clip_id, points)

    @app.get("/api/folders", summary="Indexed folders with clip counts, for the folder filter")
    async def folders() -> dict[str, Any]:
        items = await run_in_threadpool(service.folders)
        return {"folders": items}

    @app.get("/api/status", summary="Clips, audio hours, model and index build time")
    async def status() -> dict[str, Any]:
        return {**await run_in_threadpool(service.status), "auth": token is not None}

    @app.post("/api/session", summary="Exchange the token for a cookie, so <audio> elements can stream",
              responses=error_responses(413))
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
        with tempfile.NamedTemporaryFile(prefix=upload_prefix(), suffix=suffix) as tmp:
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


def serve(
    app: FastAPI, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, log_level: str = "warning"
) -> None:
    """Run the app under uvicorn until interrupted.

    Idle keep-alive connections are kept 30 s (uvicorn's default is 5): a busy client that reuses a connection
    just as the server drops it sees "server disconnected", and browsers keep connections for minutes.
    """
    import uvicorn

    uvicorn.Server(server_config(app, host, port, log_level)).run()


MAX_REQUEST_HEAD_BYTES = 64 * 1024  # request line + headers: a query and a folder filter at their limits fit


def server_config(app: FastAPI, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                  log_level: str = "warning") -> Any:
    """The uvicorn configuration `serve` runs with (tests start the same one on a socket of their own)."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        server_header=False,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=3,
        h11_max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES,
    )


def app_url(host: str, port: int, token: str | None = None) -> str:
    """The address to open in a browser; the token rides in the fragment, which never reaches a server log."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else host
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    url = f"http://{shown}:{port}/"
    return f"{url}#token={quote(token, safe='')}" if token else url
