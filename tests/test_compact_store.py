"""Compact vectors: float16 blobs, the schema 2 -> 3 migration (crash-safe), and the "ivfpq" FAISS family.

Real SQLite files throughout; the vectors are clustered, L2-normalised and non-negative like tag profiles.
"""

from __future__ import annotations

import sqlite3
import threading

import faiss
import numpy as np
import pytest

from audiofind.library import Library, searcher, vector_index
from audiofind.library.searcher import VectorSearcher
from audiofind.library.store import (
    DB_NAME,
    FAISS_NAME,
    PAGE_SIZE,
    SCHEMA_VERSION,
    UPSERT,
    blob_vector,
    connect,
    read_meta,
    tags_json,
    transaction,
    vector_blob,
)
from audiofind.library.vector_index import (
    build_faiss_index,
    choose_index_kind,
    faiss_index_kind,
    pq_subquantizers,
    read_faiss_file,
    search_faiss,
)

DIM = 34


def profiles(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    """Non-negative mixtures of a few cluster centres, L2-normalised (the shape of real clip vectors)."""
    rng = np.random.default_rng(seed)
    centres = np.abs(rng.standard_normal((30, dim))) ** 3
    mix = centres[rng.integers(0, 30, n)] + 0.3 * centres[rng.integers(0, 30, n)]
    mix = np.maximum(mix + 0.05 * rng.standard_normal((n, dim)), 0).astype(np.float32)
    return mix / np.linalg.norm(mix, axis=1, keepdims=True)


def make_index(index_dir, vectors: np.ndarray, names: np.ndarray | None = None, *, float32: bool = False):
    """An index folder with one row per vector; `float32` writes it as a schema 2 (pre-float16) index."""
    index_dir.mkdir(parents=True, exist_ok=True)
    conn = connect(index_dir / DB_NAME)
    encode = (lambda v: np.asarray(v, "<f4").tobytes()) if float32 else vector_blob
    with transaction(conn):
        conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                         [("dim", str(vectors.shape[1])), ("model_id", "test-profiles")])
        for i, vec in enumerate(vectors):
            path = f"/clips/{i:05d}.wav"
            conn.execute(UPSERT, (path.encode(), path, 1, 0, f"{i:032x}", 1.0 + i % 7, 8000, 1,
                                  tags_json([("Tone", 0.5)]), "test-profiles", encode(vec), 0.0, None))
            name = b"" if names is None or i % 5 == 0 else encode(names[i])  # some names carry no words
            conn.execute("UPDATE files SET name_vector = ? WHERE id = ?", (name, i + 1))
        if float32:
            conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    if float32:  # as an older audiofind made it: 4 KB pages
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("PRAGMA page_size=4096")
        conn.execute("VACUUM")
        conn.execute("PRAGMA journal_mode=WAL")
    conn.close()


def blob_lengths(index_dir) -> set[tuple[int, int]]:
    with sqlite3.connect(index_dir / DB_NAME) as conn:
        return set(conn.execute("SELECT length(vector), length(name_vector) FROM files"))


def test_vectors_are_stored_as_float16_in_packed_pages(tmp_path):
    vectors = profiles(50)
    make_index(tmp_path / "index", vectors)
    assert blob_lengths(tmp_path / "index") <= {(DIM * 2, 0), (DIM * 2, DIM * 2)}
    with sqlite3.connect(tmp_path / "index" / DB_NAME) as conn:
        assert conn.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE
        assert read_meta(conn, "schema_version") == str(SCHEMA_VERSION) == "3"
    assert np.allclose(blob_vector(vector_blob(vectors[0])), vectors[0], atol=1e-3)


def test_float32_index_opens_searches_the_same_and_is_converted(tmp_path):
    """A schema 2 index (float32 blobs) opens, answers exact search as before (to float16 precision),
    and ends up float16, schema 3, with its FAISS cache rebuilt."""
    vectors, names = profiles(300), profiles(300, seed=1)
    index_dir = tmp_path / "index"
    make_index(index_dir, vectors, names, float32=True)
    assert blob_lengths(index_dir) >= {(DIM * 4, DIM * 4)}
    with sqlite3.connect(index_dir / DB_NAME) as conn:
        assert conn.execute("PRAGMA page_size").fetchone()[0] == 4096
    queries = profiles(8, seed=2)
    truth = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :10] + 1
    with Library.open(index_dir) as lib:
        for q, expected in zip(queries, truth, strict=True):
            got = lib.search_vector(q, k=10)
            assert [r.id for r in got][:5] == list(expected[:5])
            assert np.allclose([r.score for r in got], np.sort(vectors @ q)[::-1][:10], atol=2e-3)
        assert np.allclose(lib.clip(7).vector, vectors[6], atol=1e-3)
        generation = lib.stats()["generation"]
    assert blob_lengths(index_dir) <= {(DIM * 2, DIM * 2), (DIM * 2, 0)}
    with sqlite3.connect(index_dir / DB_NAME) as conn:
        assert read_meta(conn, "schema_version") == "3" and read_meta(conn, "float16_done") is None
        assert conn.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE  # repacked
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        name_blob = conn.execute("SELECT name_vector FROM files WHERE id = 2").fetchone()[0]
    assert np.allclose(blob_vector(name_blob), names[1], atol=1e-3)
    with Library.open(index_dir) as again:  # already converted: nothing more to do
        assert again.stats()["generation"] == generation


def test_an_interrupted_conversion_resumes_without_converting_a_row_twice(tmp_path):
    """The state a crash mid-migration leaves (first rows float16, marker at the last of them, schema 2)."""
    vectors = profiles(40)
    index_dir = tmp_path / "index"
    make_index(index_dir, vectors, vectors, float32=True)
    with sqlite3.connect(index_dir / DB_NAME, isolation_level=None) as conn:
        conn.execute("BEGIN")
        for i in range(1, 13):
            conn.execute("UPDATE files SET vector = ? WHERE id = ?", (vector_blob(vectors[i - 1]), i))
        conn.execute("INSERT INTO meta VALUES ('float16_done', '12')")
        conn.execute("COMMIT")
    connect(index_dir / DB_NAME).close()
    with sqlite3.connect(index_dir / DB_NAME) as conn:
        stored = np.stack([blob_vector(b) for (b,) in conn.execute("SELECT vector FROM files ORDER BY id")])
        assert read_meta(conn, "schema_version") == "3"
    assert np.allclose(stored, vectors, atol=1e-3)


def test_ivfpq_family_re_scored_from_stored_vectors(tmp_path, monkeypatch):
    """IVF over PQ codes, re-scored exactly from SQLite, built in chunks: close to exact search."""
    monkeypatch.setattr(searcher, "CHUNK", 700)  # several chunks on a small library
    monkeypatch.setattr(vector_index, "OPQ_MIN_TRAIN", 1000)  # the OPQ-rotated layout of large libraries
    vectors = profiles(3000)
    make_index(tmp_path / "index", vectors)
    queries = profiles(20, seed=3)
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10] + 1
    with Library.open(tmp_path / "index", index_kind="ivfpq", nprobe=8) as lib:
        got = [[r.id for r in lib.search_vector(q, k=10)] for q in queries]
        assert lib.stats()["index_kind"] == "ivfpq"
        filtered = lib.search_vector(queries[0], k=5, min_duration=6.5)
    header, index = read_faiss_file(tmp_path / "index" / FAISS_NAME)
    rotation = faiss.downcast_VectorTransform(index.chain.at(0))  # OPQ, saved as its linear map
    assert header["kind"] == "ivfpq" and isinstance(rotation, faiss.LinearTransform) and rotation.d_out == 32
    with sqlite3.connect(tmp_path / "index" / DB_NAME) as conn:  # an update: other vectors, next generation
        conn.executemany("UPDATE files SET vector = ? WHERE id = ?",
                         [(vector_blob(v), i + 1) for i, v in enumerate(profiles(3000, seed=9))])
        conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
    with Library.open(tmp_path / "index", index_kind="ivfpq", nprobe=8) as lib:
        lib.search_vector(queries[0], k=10)  # rebuilt on the trained rotation and lists, not retrained
    rebuilt = read_faiss_file(tmp_path / "index" / FAISS_NAME)[1]  # held: the rotation lives inside it
    again = faiss.downcast_VectorTransform(rebuilt.chain.at(0))
    assert (faiss.vector_to_array(again.A) == faiss.vector_to_array(rotation.A)).all()
    recall = np.mean([len(set(g) & set(t)) / 10 for g, t in zip(got, truth, strict=True)])
    assert recall >= 0.9, recall
    assert len(filtered) == 5 and all(r.duration >= 6.5 for r in filtered)
    long_ids = np.flatnonzero(1.0 + np.arange(3000) % 7 >= 6.5) + 1
    exact = sorted(long_ids, key=lambda i: -vectors[i - 1] @ queries[0])
    assert [r.id for r in filtered][:3] == exact[:3]


def test_exact_search_in_chunks_matches_one_scan(tmp_path, monkeypatch):
    vectors = profiles(500)
    make_index(tmp_path / "index", vectors)
    conn = connect(tmp_path / "index" / DB_NAME)
    vs = VectorSearcher(tmp_path / "index", conn, threading.RLock(), "flat", 16, lambda: DIM)
    q = profiles(1, seed=4)[0]
    whole = vs._exact_search(q, 10, None)
    monkeypatch.setattr(searcher, "CHUNK", 64)
    parts = vs._exact_search(q, 10, None)
    conn.close()
    assert (whole[1] == parts[1]).all() and np.allclose(whole[0], parts[0])


def test_pq_layout_and_auto_kinds():
    assert pq_subquantizers(527) == 31 and pq_subquantizers(384) == 24 and pq_subquantizers(34) == 2
    assert [choose_index_kind(n) for n in (1000, 100_000, 10**6, 10**7)] == ["flat", "ivf", "ivfpq", "ivfpq"]
    vectors = profiles(2000)
    ids = np.arange(2000, dtype=np.int64) + 5
    index = build_faiss_index(vectors, ids, "ivfpq", nprobe=8)
    assert faiss_index_kind(index) == "ivfpq" and index.ntotal == 2000
    again = build_faiss_index(vectors[:100], ids[:100], "ivfpq", trained=index)  # training reused
    assert faiss_index_kind(again) == "ivfpq" and again.ntotal == 100
    _, got = search_faiss(index, vectors[:3], 50)
    assert all(i in row for i, row in zip(ids[:3], got, strict=True))  # coarse alone; the searcher re-scores
    with pytest.raises(ValueError, match="unknown index kind"):
        build_faiss_index(vectors, ids, "pq")
