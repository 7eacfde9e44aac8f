"""Dense name search: each clip's name words (with its UCS category and embedded description) as a sentence
vector, so "cow mooing" finds cattle_05.ogg and "man screaming in pain" finds male_death_3.wav.

The vectors live in `files.name_vector` (int8 directions, store.CODECS; an empty blob for a clip whose
name carries no words, NULL for one not yet embedded) and are computed after each update for the rows
that need them, so an index killed mid-way just finishes them next time. Folders are left out here: their
words stay in BM25, where a long install prefix cannot blur what the file name says.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable

import numpy as np

from .codecs import vector_blob
from .store import bump_generation, transaction

BATCH = 256


def name_text(words: dict) -> str:
    """The text a clip's name vector is computed from: its name, UCS category and embedded tags."""
    metadata = words.get("metadata") or {}
    parts = [words.get("name", ""), words.get("ucs_category", "")]
    parts += [str(metadata[k]) for k in ("title", "description", "keywords", "category") if metadata.get(k)]
    return " ".join(p for p in parts if p).strip()[:512]


def fill_name_vectors(conn: sqlite3.Connection, lock: threading.RLock,
                      encode: Callable[[list[str]], np.ndarray]) -> int:
    """Embed the names of rows with no name vector yet; returns how many were written."""
    with lock:
        rows = conn.execute("SELECT id, text FROM files "
                            "WHERE name_vector IS NULL AND text IS NOT NULL").fetchall()
    written = 0
    for start in range(0, len(rows), BATCH):
        chunk = [(clip_id, name_text(json.loads(text)["words"]))
                 for clip_id, text in rows[start:start + BATCH]]
        wordy = [(clip_id, t) for clip_id, t in chunk if t]
        vectors = encode([t for _, t in wordy]) if wordy else np.zeros((0, 0), np.float32)
        blobs = {clip_id: vector_blob(v, "name_vector")
                 for (clip_id, _), v in zip(wordy, vectors, strict=True)}
        with lock, transaction(conn):
            conn.executemany("UPDATE files SET name_vector = ? WHERE id = ? AND name_vector IS NULL",
                             [(blobs.get(clip_id, b""), clip_id) for clip_id, _ in chunk])
            bump_generation(conn)
        written += len(chunk)
    return written
