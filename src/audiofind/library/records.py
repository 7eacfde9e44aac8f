"""What the library hands back: search hits, clip records, update reports, and its errors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..paths import display_path

Tags = list[tuple[str, float]]
Progress = Callable[[dict[str, Any]], None]


class LibraryError(Exception):
    """An error the CLI and server report as one line, without a traceback."""


class IndexNotFoundError(LibraryError):
    """No index where one was expected."""


class IndexBusyError(LibraryError):
    """Another process holds the index's write lock and the caller chose not to wait."""

    exit_code = 75  # EX_TEMPFAIL, what `audiofind index --no-wait` exits with: try again later


class ModelMismatchError(LibraryError):
    """The index holds vectors from another model; mixing spaces would return nonsense."""


def damaged_message(error: Exception) -> str:
    """One line for damaged SQLite pages a query ran into (a decoding error would quote the garbage)."""
    reason = str(error).split(" with text ")[0][:120]
    return (f"the index is damaged ({reason}); restore a backup of the index folder, or build a new one "
            "with: audiofind index PATH --index NEW_FOLDER")


# ---------------------------------------------------------------- results


@dataclass
class SearchResult:
    """One hit: enough to show it and to open the file."""

    id: int
    path: str  # os.fsdecode of the stored bytes: opens the file even when the name is not UTF-8
    score: float  # what the ranking used, higher is better: cosine (audio), fused (hybrid) or BM25 (text)
    duration: float
    tags: Tags
    match: float | None = None  # calibrated match strength in [0, 1] (see library.fusion)
    audio_score: float | None = None  # cosine similarity of query and clip vectors
    text_score: float | None = None  # saturated BM25 of the query over the clip's text record, in [0, 1)
    name_score: float | None = None  # cosine of the query's and the clip name's sentence vectors
    why: dict[str, list[str]] | None = None  # {"words": query words in its name/tags, "tags": audio classes}
    duplicates: list[str] = field(default_factory=list)  # other indexed paths holding the same bytes

    @property
    def display_path(self) -> str:
        return display_path(self.path)

    @property
    def paths(self) -> list[str]:
        """Every indexed path of this content, `path` first: one result stands for all identical files."""
        return [self.path, *self.duplicates]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id,
            "path": self.display_path,
            "score": round(self.score, 6),
            "duration": round(self.duration, 3),
            "tags": [{"label": label, "prob": round(prob, 4)} for label, prob in self.tags],
            "paths": [display_path(p) for p in self.paths],
            "duplicates": len(self.duplicates),
        }
        for key in ("match", "audio_score", "text_score", "name_score"):
            value = getattr(self, key)
            if value is not None:
                d[key] = round(value, 4)
        if self.why is not None:
            d["why"] = self.why
        return d


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
    words: dict[str, Any] = field(default_factory=dict)  # the text record: name, folders, UCS, embedded tags

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
    truncated: list[tuple[str, str]] = field(default_factory=list)  # (display path, what was left out)
    missing_roots: list[str] = field(default_factory=list)  # known roots gone (records kept until pruned)
    audio_seconds: float = 0.0  # audio embedded in this run
    wall_seconds: float = 0.0

    @property
    def realtime_factor(self) -> float:
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["skipped"] = [{"path": p, "reason": r} for p, r in self.skipped]
        d["truncated"] = [{"path": p, "reason": r} for p, r in self.truncated]
        d["realtime_factor"] = round(self.realtime_factor, 2)
        return d


@dataclass
class RemovalReport:
    """What `Library.remove` or `Library.prune_missing` dropped."""

    clips: int = 0  # records (and their vectors) deleted
    roots: list[str] = field(default_factory=list)  # roots no longer refreshed (display paths)
    excluded: list[str] = field(default_factory=list)  # folders/files inside a root kept out of refreshes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
