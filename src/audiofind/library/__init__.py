"""The sound-library index: scan folders, embed what changed, store it crash-safely, search it.

`Library` (in `core`) is the facade a notebook, the CLI and the server use. Beneath it: `store`
(the SQLite schema, connection and transactions: the source of truth), `records` (the result and
report types), `updater` (scanning folders and the incremental update), `workers` (hashing and
decoding in worker processes), `searcher` and `vector_index` (the FAISS side derived from SQLite).
Modules here may import the ground floor and `audiofind.models`, never `research`, `server` or `cli`.
"""

from .core import Library, content_hash
from .records import (
    ClipRecord,
    IndexBusyError,
    IndexNotFoundError,
    LibraryError,
    ModelMismatchError,
    SearchResult,
    UpdateReport,
    damaged_message,
)
from .store import DB_NAME, FAISS_NAME, INDEX_ENV, default_index_dir

__all__ = [
    "DB_NAME", "FAISS_NAME", "INDEX_ENV", "ClipRecord", "IndexBusyError", "IndexNotFoundError", "Library",
    "LibraryError", "ModelMismatchError", "SearchResult", "UpdateReport", "damaged_message",
    "content_hash", "default_index_dir",
]
