"""Compact vectors: float16 audio and int8 name blobs, the migrations to them (crash-safe), and the "ivfpq"
FAISS family.

Real SQLite files throughout; the vectors are clustered, L2-normalised and non-negative like tag profiles.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from contextlib import closing

import faiss
import numpy as np
import pytest
from index_checks import text_and_vectors_in_step as in_step

from audiofind.library import Library, searcher, vector_index
from audiofind.library.codecs import blob_vector, decode_vectors, tags_json, vector_blob
from audiofind.library.searcher import VectorSearcher
from audiofind.library.store import (
    DB_NAME,
    FAISS_NAME,
    PAGE_SIZE,
    SCHEMA_VERSION,
    UPSERT,
    connect,
    read_meta,
    transaction,
)
from audiofind.library.vector_index import (
    build_faiss_index,
    choose_index_kind,
    faiss_index_kind,
    pq_subquantizers,
    read_faiss_file,
    refine_factor,
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


def make_index(index_dir, vectors: np.ndarray, names: np.ndarray | None = None, *,
               schema: int = SCHEMA_VERSION):
    """An index folder with one row per vector, as audiofind wrote it at `schema`: 2 float32 blobs in 4 KB
    pages, 3 float16 blobs, 4 (today) float16 audio and int8 name vectors."""
    index_dir.mkdir(parents=True, exist_ok=True)
    conn = connect(index_dir / DB_NAME)
    audio, name_codec = {2: ("<f4", "<f4"), 3: ("<f2", "<f2")}.get(schema, (None, None))
    encode_audio = (lambda v: np.asarray(v, audio).tobytes()) if audio else vector_blob
    encode_name = (lambda v: np.asarray(v, name_codec).tobytes()) if name_codec else \
        (lambda v: vector_blob(v, "name_vector"))
    with transaction(conn):
        conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                         [("dim", str(vectors.shape[1])), ("model_id", "test-profiles")])
        for i, vec in enumerate(vectors):
            path = f"/clips/{i:05d}.wav"
            tags = tags_json([("Tone", 0.5)]) if schema == SCHEMA_VERSION else '[["Tone", 0.5]]'  # was spaced
            fts = {"name": f"tone {i}", "folders": "", "ucs_category": "", "metadata": ""}
            text = json.dumps({"words": {"name": f"tone {i}"}, "version": 2, "fts": fts})
            conn.execute(UPSERT, (path.encode(), 1, 0, f"{i:032x}", 1.0 + i % 7, 8000, 1, tags,
                                  "test-profiles", encode_audio(vec), 0.0, text))
            name = b"" if names is None or i % 5 == 0 else encode_name(names[i])  # some names carry no words
            conn.execute("UPDATE files SET name_vector = ? WHERE id = ?", (name, i + 1))
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(schema),))
    if schema == 2:  # as an older audiofind made it: 4 KB pages
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("PRAGMA page_size=4096")
        conn.execute("VACUUM")
        conn.execute("PRAGMA journal_mode=WAL")
    conn.close()


def blob_lengths(index_dir) -> set[tuple[int, int]]:
    with closing(sqlite3.connect(index_dir / DB_NAME)) as conn:
        return set(conn.execute("SELECT length(vector), length(name_vector) FROM files"))


def test_vectors_are_stored_compactly_in_packed_pages(tmp_path):
    vectors, names = profiles(50), profiles(50, seed=1)
    make_index(tmp_path / "index", vectors, names)
    assert blob_lengths(tmp_path / "index") == {(DIM * 2, 0), (DIM * 2, DIM)}  # float16 audio, int8 names
    with sqlite3.connect(tmp_path / "index" / DB_NAME) as conn:
        assert conn.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE
        assert read_meta(conn, "schema_version") == str(SCHEMA_VERSION) == "4"
    assert np.allclose(blob_vector(vector_blob(vectors[0])), vectors[0], atol=1e-3)


def test_int8_name_vectors_keep_their_direction_and_ranking():
    """A name vector is kept as its direction, one byte a dimension: cosine scores move by ~1e-3 and the
    order of clearly different names does not change."""
    rng = np.random.default_rng(5)
    names = rng.standard_normal((400, 384)).astype(np.float32)
    names /= np.linalg.norm(names, axis=1, keepdims=True)
    blobs = [vector_blob(v, "name_vector") for v in names]
    assert {len(b) for b in blobs} == {384}
    decoded = decode_vectors(blobs, "name_vector")
    assert np.allclose(np.linalg.norm(decoded, axis=1), 1, atol=1e-6)
    assert (np.sum(decoded * names, axis=1) > 0.9999).all()
    query = names[:20] + 0.7 * rng.standard_normal((20, 384)).astype(np.float32) / np.sqrt(384)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    exact, stored = query @ names.T, query @ decoded.T
    assert np.abs(exact - stored).max() < 2e-3
    assert (np.argsort(-exact, axis=1)[:, :5] == np.argsort(-stored, axis=1)[:, :5]).mean() > 0.95
    assert not decode_vectors([vector_blob(np.zeros(384), "name_vector")], "name_vector").any()  # stays zero


@pytest.mark.parametrize("schema", [2, 3])
def test_an_older_index_opens_searches_the_same_and_is_converted(tmp_path, schema):
    """A schema 2 (float32) or 3 (float16) index opens, answers exact search as before (to float16
    precision), and ends up schema 4, repacked smaller, with its FAISS cache rebuilt."""
    vectors, names = profiles(300), profiles(300, dim=384, seed=1)  # names as wide as MiniLM's
    index_dir = tmp_path / "index"
    make_index(index_dir, vectors, names, schema=schema)
    width = 4 if schema == 2 else 2
    assert (DIM * width, 384 * width) in blob_lengths(index_dir)
    before = (index_dir / DB_NAME).stat().st_size
    with closing(sqlite3.connect(index_dir / DB_NAME)) as conn:  # closed: a VACUUM needs the only connection
        assert conn.execute("PRAGMA page_size").fetchone()[0] == (4096 if schema == 2 else PAGE_SIZE)
    queries = profiles(8, seed=2)
    truth = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :10] + 1
    with Library.open(index_dir) as lib:
        for q, expected in zip(queries, truth, strict=True):
            got = lib.search_vector(q, k=10)
            assert [r.id for r in got][:5] == list(expected[:5])
            assert np.allclose([r.score for r in got], np.sort(vectors @ q)[::-1][:10], atol=2e-3)
        assert np.allclose(lib.clip(7).vector, vectors[6], atol=1e-3)
        generation = lib.stats()["generation"]
    assert blob_lengths(index_dir) == {(DIM * 2, 384), (DIM * 2, 0)}
    assert (index_dir / DB_NAME).stat().st_size < before  # the freed bytes went back to the disk
    with sqlite3.connect(index_dir / DB_NAME) as conn:
        assert read_meta(conn, "schema_version") == "4"
        assert read_meta(conn, "vectors_done") is None and read_meta(conn, "float16_done") is None
        assert "path" not in {row[1] for row in conn.execute("PRAGMA table_info(files)")}  # in path_bytes
        assert conn.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE  # repacked
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        name_blob, tags = conn.execute("SELECT name_vector, tags FROM files WHERE id = 2").fetchone()
    assert blob_vector(name_blob, "name_vector") @ names[1] > 0.9999
    assert tags == '[["Tone",0.5]]'  # minified
    with closing(sqlite3.connect(index_dir / DB_NAME)) as conn:  # the contentless FTS5 table, refilled
        hits = conn.execute("SELECT rowid FROM clip_text WHERE clip_text MATCH 'tone AND \"17\"'").fetchall()
        assert hits == [(18,)]
        texts = [t for (t,) in conn.execute("SELECT text FROM files")]
        assert all(", " not in t for t in texts) and json.loads(texts[0])["fts"]["name"] == "tone 0"
        conn.execute("DELETE FROM files WHERE id = 18")  # leaves through FTS5's 'delete' (rolled back)
        left = conn.execute("SELECT count(*) FROM clip_text WHERE clip_text MATCH 'tone'").fetchone()[0]
        assert left == 299
    in_step(index_dir)
    with Library.open(index_dir) as again:  # already converted: nothing more to do
        assert again.stats()["generation"] == generation


@pytest.mark.parametrize("marker", ["float16_done", "vectors_done"])
def test_an_interrupted_conversion_resumes_without_converting_a_row_twice(tmp_path, marker):
    """The states a crash mid-migration leaves, schema still 2, the first 12 rows converted: by an older
    audiofind (`float16_done`: both vectors float16) or by this one (`vectors_done`: float16 and int8)."""
    vectors, names = profiles(40), profiles(40, seed=1)
    index_dir = tmp_path / "index"
    make_index(index_dir, vectors, names, schema=2)
    with sqlite3.connect(index_dir / DB_NAME, isolation_level=None) as conn:
        conn.execute("BEGIN")
        for i in range(1, 13):
            name = names[i - 1].astype("<f2").tobytes() if marker == "float16_done" else \
                vector_blob(names[i - 1], "name_vector")
            conn.execute("UPDATE files SET name_vector = ? WHERE id = ? AND length(name_vector) > 0",
                         (name, i))
            conn.execute("UPDATE files SET vector = ? WHERE id = ?", (vector_blob(vectors[i - 1]), i))
        conn.execute(f"INSERT INTO meta VALUES ('{marker}', '12')")
        conn.execute("COMMIT")
    connect(index_dir / DB_NAME).close()
    with sqlite3.connect(index_dir / DB_NAME) as conn:
        stored = np.stack([blob_vector(b) for (b,) in conn.execute("SELECT vector FROM files ORDER BY id")])
        named = conn.execute("SELECT id, name_vector FROM files WHERE length(name_vector) > 0 ORDER BY id")
        ids, blobs = zip(*named.fetchall(), strict=True)
        assert read_meta(conn, "schema_version") == "4"
    assert np.allclose(stored, vectors, atol=1e-3)
    cosines = np.sum(decode_vectors(list(blobs), "name_vector") * names[np.array(ids) - 1], axis=1)
    assert (cosines > 0.9999).all()


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


def test_the_vector_size_is_found_outside_the_read_snapshot(tmp_path):
    """Finding the size may load a model, which writes the meta table (the names index of a library whose
    names carry no words asks the sentence encoder): a write inside the rebuild's read snapshot failed as
    "cannot start a transaction within a transaction"."""
    make_index(tmp_path / "index", profiles(40))  # no name vectors at all
    conn = connect(tmp_path / "index" / DB_NAME)
    lock = threading.RLock()

    def dim_of_a_loaded_model() -> int:
        with lock, transaction(conn):
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('model_name', 'loaded')")
        return 16

    names = VectorSearcher(tmp_path / "index", conn, lock, "flat", 16, dim_of_a_loaded_model,
                           column="name_vector", file_name="names.faiss")
    names.reload()
    assert names.search(np.ones((1, 16), np.float32), 5) == [[]]
    assert read_meta(conn, "model_name") == "loaded"
    conn.close()


def test_pq_layout_and_auto_kinds():
    assert pq_subquantizers(527) == 31 and pq_subquantizers(384) == 24 and pq_subquantizers(34) == 2
    assert [choose_index_kind(n) for n in (1000, 100_000, 10**6, 10**7)] == ["flat", "ivf", "ivfpq", "ivfpq"]
    assert [refine_factor(n) for n in (3000, 10**6, 3 * 10**6, 10**7, 10**8)] == [20, 20, 28, 40, 80]
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
