"""Shapes that cross the wire: search results with their links, and the request bodies with their limits."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from ..library import SearchResult

if TYPE_CHECKING:
    pass


# ---------------------------------------------------------------- result shapes


def result_dict(r: SearchResult, fmt: tuple[int, int] | None = None) -> dict[str, Any]:
    """A search hit plus what a page needs to show and play it; `fmt`: the clip's (sample rate, channels)."""
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

    id: int | None = Field(None, description="an indexed clip id; omit when uploading a file")
    k: int = Field(20, ge=1, le=200)
    min_duration: float | None = Field(None, ge=0)
    max_duration: float | None = Field(None, ge=0)
    path_prefix: str | None = Field(None, max_length=4096)
    sample_rate: int | None = Field(None, ge=1, le=768_000, description="only clips at this sample rate")
    channels: int | None = Field(None, ge=1, le=64, description="only clips with this many channels")


SIMILAR_OPENAPI: dict[str, Any] = {
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
                        "sample_rate": {"type": "integer"},
                        "channels": {"type": "integer"},
                    },
                }
            },
        },
    }
}
