"""Routes of the sound designer's workbench: downloads, region cuts, collections, formats and local API docs.

`install_workbench_routes(app, service)` adds them to the app `create_app` builds; the work is in
`workbench` (cuts, exports) and `library.collections` (the tables). Writes take JSON bodies only: a
cross-site form cannot send `application/json` without a CORS preflight, which this server refuses.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..library.collections import MAX_NAME_CHARS, CollectionError, CollectionItem
from ..library.queries import MAX_ID
from ..paths import display_path
from .errors import ApiError
from .schemas import (
    COLLECTION_ADD_OPENAPI,
    COLLECTION_CREATE_OPENAPI,
    MAX_IDS,
    ClipId,
    CollectionName,
    clip_links,
    error_responses,
)
from .service import LibraryService
from .streaming import audio_response
from .workbench import MAX_REGION_SECONDS, collection_csv, collection_zip, region_wav

# the docs page: Swagger UI's bundle from the fastapi-offline package, served here; it sets inline styles
DOCS_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_DOCS_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
}
_DOCS_PAGE = {"docs.html": "text/html; charset=utf-8", "docs.js": "text/javascript; charset=utf-8"}


def install_workbench_routes(app: FastAPI, service: LibraryService) -> None:
    """Add the workbench routes to `app`."""
    _install_clip_routes(app, service)
    _install_collection_routes(app, service)
    _install_docs(app)


def _install_clip_routes(app: FastAPI, service: LibraryService) -> None:
    @app.get("/api/clips/{clip_id}/download",
             summary="A clip's file as an attachment (for saving or dragging)",
             response_class=Response,
             responses={200: {"description": "the whole file",
                              "content": {"audio/*": {}, "application/octet-stream": {}}},
                        206: {"description": "the requested byte range",
                              "content": {"audio/*": {}, "application/octet-stream": {}}},
                        **error_responses(403, 404, 416, 422)})
    async def clip_download(clip_id: ClipId, request: Request) -> Response:
        rec, f, st = await run_in_threadpool(service.open_clip_file, clip_id)
        try:
            response = audio_response(request, rec, f, st)
        except BaseException:
            f.close()
            raise
        response.headers["Content-Disposition"] = response.headers["Content-Disposition"].replace(
            "inline", "attachment", 1)
        return response

    @app.get(
        "/api/clips/{clip_id}/region.wav",
        summary="Seconds [start, end) of a clip as WAV, cut sample-accurately at its own rate and channels",
        response_class=Response,
        description="A region that is empty, longer than the limit, or starts past the clip's end is a 400.",
        responses={200: {"description": "the region as WAV", "content": {"audio/wav": {}}},
                   **error_responses(400, 403, 404, 415, 422)},
    )
    async def clip_region(
        clip_id: ClipId,
        start: float = Query(..., ge=0, description="seconds; the first frame is round(start * rate)"),
        end: float = Query(
            ..., gt=0, description=f"seconds, after start, at most {MAX_REGION_SECONDS:g} later"),
    ) -> Response:
        facts, body = await run_in_threadpool(region_wav, service, clip_id, start, end)
        return StreamingResponse(body, media_type="audio/wav", headers={
            "Content-Length": str(facts["length"]),
            "Content-Disposition": "attachment; filename*=utf-8''" + quote(facts["name"], safe=""),
            "X-Audiofind-Frames": str(facts["frames"]),
            "X-Audiofind-Start-Frame": str(facts["start_frame"]),
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
        })

    @app.get("/api/formats", summary="Sample rates and channel counts in the library, for the filters")
    async def formats() -> dict[str, Any]:
        return await run_in_threadpool(lambda: service.library.collections.format_counts())


def _install_collection_routes(app: FastAPI, service: LibraryService) -> None:
    def collections() -> Any:
        service.maybe_refresh()
        return service.library.collections

    def guarded(fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except CollectionError as e:
            raise ApiError(404 if e.missing else 400, str(e)) from None
        except KeyError as e:
            raise ApiError(404, "no such clip", {"id": e.args[0] if e.args else None}) from None

    async def run(fn: Any, *args: Any) -> Any:
        return await run_in_threadpool(guarded, fn, *args)

    @app.get("/api/collections", summary="Favourites and named collections, with their sizes")
    async def list_collections() -> dict[str, Any]:
        return {"collections": await run(lambda: collections().list())}

    @app.post("/api/collections", summary="Make a named collection (JSON {\"name\": ...})", status_code=201,
              openapi_extra=COLLECTION_CREATE_OPENAPI, responses=error_responses(400, 413, 415))
    async def create_collection(request: Request) -> dict[str, Any]:
        body = await _json_body(request)
        name = _raw_name(_field(body, "name", str))
        return await run(lambda: collections().create(name))

    @app.get("/api/collections/{name}", summary="The clips in a collection, where they are indexed now",
             responses=error_responses(400, 404, 422))
    async def get_collection(name: CollectionName) -> dict[str, Any]:
        name = _raw_name(name)
        items = await run(lambda: collections().items(name))
        return {"name": name.strip(), "count": len(items),
                "results": await run_in_threadpool(lambda: [_item_dict(service, it) for it in items])}

    @app.delete("/api/collections/{name}", summary="Delete a collection (favourites cannot be deleted)",
                responses=error_responses(400, 404, 422))
    async def delete_collection(name: CollectionName) -> dict[str, Any]:
        name = _raw_name(name)
        await run(lambda: collections().delete(name))
        return {"deleted": name.strip()}

    @app.post("/api/collections/{name}/clips",
              summary="Add clips by id (JSON {\"ids\": [...], \"create\": false}); they are remembered by "
                      "content hash and path, so they survive re-indexing",
              openapi_extra=COLLECTION_ADD_OPENAPI, responses=error_responses(400, 404, 413, 415, 422))
    async def add_clips(name: CollectionName, request: Request) -> dict[str, Any]:
        name = _raw_name(name)
        body = await _json_body(request)
        ids = _ids(body)
        create = body.get("create", False)
        if not isinstance(create, bool):
            raise ApiError(400, "'create' is true or false", {"create": repr(create)[:100]})
        added = await run(lambda: collections().add(name, ids, create=create))
        return {"name": name.strip(), "added": added}

    @app.delete("/api/collections/{name}/clips/{clip_id}", summary="Remove a clip from a collection",
                responses=error_responses(400, 404, 422))
    async def remove_clip(name: CollectionName, clip_id: ClipId) -> dict[str, Any]:
        name = _raw_name(name)
        removed = await run(lambda: collections().remove(name, [clip_id]))
        return {"name": name.strip(), "removed": removed}

    @app.get("/api/collections/{name}/export.csv",
             summary="A collection as CSV: path, name, format, hash",
             response_class=Response,
             responses={200: {"description": "CSV", "content": {"text/csv": {}}},
                        **error_responses(400, 404, 422)})
    async def export_csv(name: CollectionName) -> Response:
        name = _raw_name(name)
        items = await run(lambda: collections().items(name))
        return Response(collection_csv(items), media_type="text/csv; charset=utf-8",
                        headers=_attachment(f"{name.strip()}.csv"))

    @app.get("/api/collections/{name}/export.zip",
             summary="A collection's files as one ZIP (stored, streamed)",
             response_class=Response,
             responses={200: {"description": "ZIP", "content": {"application/zip": {}}},
                        **error_responses(400, 404, 422)})
    async def export_zip(name: CollectionName) -> Response:
        name = _raw_name(name)
        items = await run(lambda: collections().items(name))
        return StreamingResponse(collection_zip(service, items), media_type="application/zip",
                                 headers=_attachment(f"{name.strip()}.zip"))


def _item_dict(service: LibraryService, it: CollectionItem) -> dict[str, Any]:
    """A collection item shaped like a search result (no score), so the page shows both alike."""
    d: dict[str, Any] = {"id": it.clip_id, "content_hash": it.content_hash, "added_at": it.added_at,
                         "duration": round(it.duration or 0.0, 3), "sample_rate": it.sample_rate,
                         "channels": it.channels, "missing": it.clip_id is None, "tags": []}
    if it.clip_id is not None:
        try:
            rec = service.library.clip(it.clip_id)
            d["tags"] = [{"label": label, "prob": round(prob, 4)} for label, prob in rec.tags]
        except KeyError:
            pass
    shown = display_path(it.path)
    links = clip_links(it.clip_id if it.clip_id is not None else 0, shown)
    if it.clip_id is None:  # nothing to play or draw
        links = {"name": links["name"], "folder": links["folder"]}
    d.update(path=shown, **links)
    return d


async def _json_body(request: Request) -> dict[str, Any]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise ApiError(415, "send a JSON body (Content-Type: application/json)",
                       {"content_type": ctype or None})
    raw = await request.body()
    if len(raw) > 64 * 1024:
        raise ApiError(413, "request body too large", {"limit_bytes": 64 * 1024})
    try:
        body = json.loads(raw)
    except RecursionError:
        raise ApiError(400, "invalid JSON", "nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, "invalid JSON", str(e)) from None
    if not isinstance(body, dict):
        raise ApiError(400, "expected a JSON object")
    return body


def _field(body: dict[str, Any], key: str, kind: type) -> Any:
    value = body.get(key)
    if not isinstance(value, kind):
        raise ApiError(400, f"'{key}' is required", {key: repr(value)[:100]})
    return value


def _ids(body: dict[str, Any]) -> list[int]:
    ids = body.get("ids")
    if isinstance(ids, list):  # JSON does not tell 3 from 3.0
        ids = [int(i) if isinstance(i, float) and i.is_integer() else i for i in ids]
    if not isinstance(ids, list) or not ids or len(ids) > MAX_IDS or \
            not all(isinstance(i, int) and not isinstance(i, bool) and 1 <= i <= MAX_ID for i in ids):
        raise ApiError(400, f"'ids' is a list of 1 to {MAX_IDS} clip ids", {"ids": repr(ids)[:100]})
    return ids


_BAD_NAME_CHAR = re.compile(r"[\x00-\x1f\x7f/\\]")


def _raw_name(name: str) -> str:
    """A collection name as sent, held to the documented rules before the library strips it."""
    if len(name) > MAX_NAME_CHARS or _BAD_NAME_CHAR.search(name) or not name.strip():
        raise ApiError(400, f"a collection name has 1 to {MAX_NAME_CHARS} characters, none of them a slash "
                       "or control character", {"name": name[:100]})
    return name


def _attachment(filename: str) -> dict[str, str]:
    return {"Content-Disposition": "attachment; filename*=utf-8''" + quote(filename, safe=""),
            "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def _install_docs(app: FastAPI) -> None:
    web = resources.files("audiofind.server") / "web"

    def asset(body: bytes, media_type: str) -> Response:
        return Response(body, media_type=media_type, headers={
            "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": DOCS_CSP, "Referrer-Policy": "no-referrer"})

    @app.get("/docs", include_in_schema=False)
    async def docs_page() -> Response:
        return asset((web / "docs.html").read_bytes(), _DOCS_PAGE["docs.html"])

    @app.get("/docs/{name}", include_in_schema=False)
    async def docs_asset(name: str) -> Response:
        if name in _DOCS_PAGE:
            return asset((web / name).read_bytes(), _DOCS_PAGE[name])
        if name not in _DOCS_ASSETS:
            raise ApiError(404, "not found", {"path": f"/docs/{name}"[:200]})
        try:
            body = (resources.files("fastapi_offline") / "static" / name).read_bytes()
        except (ModuleNotFoundError, FileNotFoundError):
            return JSONResponse({"error": "the API docs need the fastapi-offline package", "detail": None},
                                status_code=404)
        return asset(body, _DOCS_ASSETS[name])
