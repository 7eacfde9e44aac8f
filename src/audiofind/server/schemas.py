"""Shapes that cross the wire: search results with their links, and the request bodies with their limits."""

from __future__ import annotations

import os
from typing import Annotated, Any

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field

from ..library import SearchResult
from ..library.collections import MAX_NAME_CHARS
from ..library.queries import MAX_ID, PATH_PREFIX_PATTERN

MAX_PATH_PREFIX_CHARS = 1024  # with a 512-character query, the request line stays inside the server's limit
MAX_IDS = 1000  # clip ids in one POST /api/collections/{name}/clips
# what `collections.check_name` accepts, said in JSON Schema: no slash, backslash or control character, and
# at least one character that str.strip() keeps
COLLECTION_NAME_PATTERN = r"^[^\x00-\x1f\x7f/\\]*[^\s\x00-\x1f\x7f/\\][^\x00-\x1f\x7f/\\]*$"

ClipId = Annotated[int, Path(ge=1, le=MAX_ID, description="a clip id, as search results give it")]
CollectionName = Annotated[str, Path(min_length=1, max_length=MAX_NAME_CHARS, pattern=COLLECTION_NAME_PATTERN,
                                     description="a collection name ('favourites' is built in)")]


# ---------------------------------------------------------------- errors, as the OpenAPI document shows them


class ErrorBody(BaseModel):
    """Every error the server answers: what went wrong, and details that help (or null)."""

    error: str
    detail: Any = None


_ERROR_TEXT = {
    400: "a request the server refuses: its message says why",
    401: "missing or wrong access token (only when the server runs with --token)",
    403: "the clip's file lies outside the indexed folders",
    404: "no such clip or collection, or the clip's file is gone",
    413: "the request body or upload is larger than the server's limit",
    415: "a body of the wrong content type, or an upload that is not audio this server can decode",
    416: "the byte range lies outside the file",
    421: "the Host header names a host this server does not serve (a guard against DNS rebinding)",
    422: "a parameter or body field that does not match this document",
    503: "the index is not available (e.g. deleted or replaced while serving)",
}
COMMON_ERRORS = (401, 421, 503)  # any /api route may answer these (the guard, a vanished index)


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for these error statuses, all with the one JSON error shape."""
    return {code: {"model": ErrorBody, "description": _ERROR_TEXT[code]} for code in codes}


# ---------------------------------------------------------------- result shapes


def result_dict(r: SearchResult, fmt: tuple[int, int] | None = None) -> dict[str, Any]:
    """A search hit (with `paths`: every identical file it stands for) plus what a page needs to show and
    play it; `fmt`: the clip's (sample rate, channels)."""
    d = r.to_dict()
    d.update(clip_links(r.id, d["path"]))
    d["sample_rate"], d["channels"] = fmt if fmt is not None else (None, None)
    return d


def clip_links(clip_id: int, path: str) -> dict[str, Any]:
    return {
        "name": os.path.basename(path),
        "folder": os.path.dirname(path),
        "audio_url": f"/api/clips/{clip_id}/audio",
        "waveform_url": f"/api/clips/{clip_id}/waveform",
    }


# ---------------------------------------------------------------- request models


class SimilarRequest(BaseModel):
    """Body of POST /api/similar as JSON (or the form fields beside an upload)."""

    model_config = ConfigDict(extra="forbid")

    id: int | None = Field(None, ge=1, le=MAX_ID,
                           description="an indexed clip id; omit when uploading a file")
    k: int = Field(20, ge=1, le=200)
    min_duration: float | None = Field(None, ge=0, description="seconds; at most max_duration")
    max_duration: float | None = Field(None, ge=0, description="seconds; at least min_duration")
    path_prefix: str | None = Field(None, max_length=MAX_PATH_PREFIX_CHARS, pattern=PATH_PREFIX_PATTERN,
                                    description="an absolute folder, as listed by /api/folders")
    sample_rate: int | None = Field(None, ge=1, le=768_000, description="only clips at this sample rate")
    channels: int | None = Field(None, ge=1, le=64, description="only clips with this many channels")


def strict_json_fields(fields: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """JSON values held to their JSON types before pydantic's lax parsing (which reads "5" and false as
    numbers): (fields with 3.0 read as 3 where an integer is due, errors in RequestValidationError form)."""
    out, errors = dict(fields), []
    for name, value in fields.items():
        kind = _JSON_KINDS.get(name)
        if kind is None or value is None:
            continue
        if kind == "integer" and isinstance(value, float) and value.is_integer():
            out[name] = int(value)
        elif isinstance(value, bool) or not isinstance(value, (int, float) if kind != "string" else str):
            errors.append({"loc": ("body", name), "msg": f"Input should be a JSON {kind}",
                           "type": f"{kind}_type"})
        elif kind == "integer" and isinstance(value, float):
            errors.append({"loc": ("body", name), "msg": "Input should be a whole number",
                           "type": "int_type"})
    return out, errors


_JSON_KINDS = {"id": "integer", "k": "integer", "sample_rate": "integer", "channels": "integer",
               "min_duration": "number", "max_duration": "number", "path_prefix": "string"}


def _similar_json_schema() -> dict[str, Any]:
    """The JSON body: an indexed clip's id is required (a JSON body cannot carry a file)."""
    schema = SimilarRequest.model_json_schema()
    props = schema["properties"]
    props["id"] = {"type": "integer", "minimum": 1, "maximum": MAX_ID,
                   "description": props["id"]["description"]}
    schema["required"] = ["id"]
    return schema


def _similar_form_schema() -> dict[str, Any]:
    """The multipart body: a 'file' or an 'id', never both, beside the same optional fields."""
    props: dict[str, Any] = {"file": {"type": "string", "format": "binary", "description": "an audio clip"}}
    for name, prop in SimilarRequest.model_json_schema()["properties"].items():
        if name == "id":
            props[name] = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
        else:  # optional fields are plain values in a form: no nulls
            props[name] = next((p for p in prop.get("anyOf", [prop]) if p.get("type") != "null"), prop)
            props[name].pop("default", None)
            props[name].pop("title", None)
    return {"type": "object", "properties": props, "additionalProperties": False,
            "oneOf": [{"required": ["file"]}, {"required": ["id"]}]}


SIMILAR_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _similar_json_schema()},
            "multipart/form-data": {"schema": _similar_form_schema()},
        },
    }
}
COLLECTION_CREATE_OPENAPI: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["name"],
        "properties": {"name": {"type": "string", "minLength": 1, "maxLength": MAX_NAME_CHARS,
                                "pattern": COLLECTION_NAME_PATTERN}}}}}}
}
COLLECTION_ADD_OPENAPI: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["ids"],
        "properties": {
            "ids": {"type": "array", "minItems": 1, "maxItems": MAX_IDS,
                    "items": {"type": "integer", "minimum": 1, "maximum": MAX_ID}},
            "create": {"type": "boolean", "default": False,
                       "description": "make the collection when it does not exist"}}}}}}
}
