"""Checks on an index folder's SQLite file, shared by the tests that kill, edit or migrate an index."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from audiofind.library import DB_NAME


def text_and_vectors_in_step(index_dir: Path) -> None:
    """Every clip with a text record has exactly one FTS row, and no FTS row lacks its clip."""
    with sqlite3.connect(f"file:{index_dir / DB_NAME}?mode=ro", uri=True) as conn:
        with_text = {r[0] for r in conn.execute("SELECT id FROM files WHERE text IS NOT NULL")}
        everyone = {r[0] for r in conn.execute("SELECT id FROM files")}
        fts = [r[0] for r in conn.execute("SELECT rowid FROM clip_text")]
    assert len(fts) == len(set(fts)) and set(fts) == with_text
    assert with_text == everyone, "rows written without their text record"
