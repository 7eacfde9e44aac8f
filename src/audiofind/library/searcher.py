"""The FAISS side of an index: derived from SQLite, cached in vectors.faiss, rebuilt when stale.

`VectorSearcher` answers vector queries with the library's filters (duration, path prefix, excluded ids),
falling back to an exact scan where an approximate index returns too few hits.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .codecs import blob_vector, decode_vectors, tags_from_json
from .records import SearchResult
from .store import FAISS_NAME, abspath, prefix_range, read_meta, transaction
from .vector_index import (
    choose_index_kind,
    default_nlist,
    empty_faiss_index,
    faiss_index_kind,
    ivf_kind,
    read_faiss_file,
    refine_factor,
    search_faiss,
    train_sample_size,
    write_faiss_file,
)

CHUNK = 100_000  # rows read from SQLite at a time: a build or exact scan never holds every vector

if TYPE_CHECKING:
    import faiss


class VectorSearcher:
    """The in-memory FAISS index of one library, with the generation of the rows it reflects."""

    def __init__(self, index_dir: Path, conn: sqlite3.Connection, lock: threading.RLock, index_kind: str,
                 nprobe: int, dim: Callable[[], int], column: str = "vector",
                 file_name: str = FAISS_NAME) -> None:
        """`column` of `files` holds the vectors (rows with an empty or NULL one are left out)."""
        self.index_dir, self.conn, self.lock = index_dir, conn, lock
        self.index_kind, self.nprobe, self._dim = index_kind, nprobe, dim
        self.column, self.file_name = column, file_name
        self._present = f"length({column}) > 0"
        self._index: faiss.Index | None = None
        self._index_generation = -1
        self.persist = True  # False for a read-only index: build in memory, write no cache file

    def _generation(self) -> int:
        return int(read_meta(self.conn, "generation") or 0)

    def _count(self) -> int:
        return self.conn.execute(f"SELECT COUNT(*) FROM files WHERE {self._present}").fetchone()[0]

    def forget(self) -> None:
        """Drop the in-memory index: the next search reloads it."""
        self._index = None

    def is_stale(self) -> bool:
        """True when a loaded index no longer reflects the committed rows."""
        return self._index is not None and self._generation() != self._index_generation

    def kind(self, n: int) -> str:
        """The FAISS family in use (or that would be used for `n` clips)."""
        return faiss_index_kind(self._index) if self._index is not None else self._wanted_kind(n)

    def reload(self) -> None:
        """Rebuild from the rows and rewrite vectors.faiss (after an update committed)."""
        self._load_index(prefer_file=False)

    def _ensure_index(self) -> faiss.Index:
        if self._index is None:
            self._load_index(prefer_file=True)
        assert self._index is not None
        return self._index

    def _wanted_kind(self, n: int) -> str:
        return choose_index_kind(n) if self.index_kind == "auto" else self.index_kind

    def _load_index(self, prefer_file: bool) -> None:
        """Use vectors.faiss when it reflects the current generation, else rebuild it from SQLite."""
        path = self.index_dir / self.file_name
        dim = self._dim()  # before the snapshot: finding it may load a model, which writes the meta table
        with transaction(self.conn, "DEFERRED"):  # generation and vectors from one snapshot
            generation = self._generation()
            n = self._count()
            if prefer_file:
                loaded = read_faiss_file(path)
                if loaded is not None:
                    header, index = loaded
                    if header.get("generation") == generation and header.get("kind") == self._wanted_kind(n) \
                            and index.ntotal == n:
                        self._index, self._index_generation = index, generation
                        return
            kind = self._wanted_kind(n)
            index = self._build(kind, n, dim)
        self._index, self._index_generation = index, generation
        if not self.persist:
            return
        try:
            write_faiss_file(path, index, {"generation": generation, "kind": kind, "count": int(index.ntotal),
                                            "model_id": read_meta(self.conn, "model_id")})
        except OSError as e:  # a read-only index still searches; only the cache is lost
            print(f"audiofind: cannot write {path}: {e}", file=sys.stderr)

    def _build(self, kind: str, n: int, dim: int) -> faiss.Index:
        """Train on a sample of the rows (or reuse the last training), then add them a chunk at a time."""
        trained = self._reusable_ivf(n, kind, dim) if kind in ("ivf", "ivfpq") else None
        sample = np.zeros((0, dim), np.float32)
        if trained is None and train_sample_size(kind, n):
            all_ids = np.array([r[0] for r in self.conn.execute(
                f"SELECT id FROM files WHERE {self._present}")], dtype=np.int64)
            picked = np.random.default_rng(0).permutation(all_ids)[:train_sample_size(kind, n)]
            sample = self.all_vectors(picked)[1]
        index = empty_faiss_index(sample.shape[1], kind, n, sample, nprobe=self.nprobe, trained=trained)
        for ids, vectors in self.vector_chunks():
            index.add_with_ids(vectors, ids)
        return index

    def _reusable_ivf(self, n: int, kind: str, dim: int) -> faiss.Index | None:
        """The trained IVF index in memory or on disk, if its family and list count still suit `n` clips."""
        import faiss

        previous = self._index
        if previous is None:
            loaded = read_faiss_file(self.index_dir / self.file_name)
            previous = loaded[1] if loaded is not None else None
        ivf = faiss.try_extract_index_ivf(previous) if previous is not None else None
        if ivf is None or not ivf.is_trained or ivf_kind(ivf) != kind or previous.d != dim:
            return None
        return previous if 0.5 <= ivf.nlist / default_nlist(n) <= 2 else None  # whole: OPQ included

    def vector_chunks(self, ids: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) of all rows (or of `ids`), CHUNK rows at a time, in id order."""
        if ids is not None:
            for start in range(0, len(ids), CHUNK):
                yield self.all_vectors(ids[start:start + CHUNK])
            return
        last = -1
        while True:
            chunk = np.array([r[0] for r in self.conn.execute(
                f"SELECT id FROM files WHERE id > ? AND {self._present} ORDER BY id LIMIT ?", (last, CHUNK))],
                dtype=np.int64)
            if not len(chunk):
                return
            last = int(chunk[-1])
            yield self.all_vectors(chunk)

    def all_vectors(self, ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, (n, dim) float32 vectors) of all rows, or of `ids` only (ids without a vector left out)."""
        if ids is None:
            parts = list(self.vector_chunks())
            if not parts:
                return np.zeros(0, np.int64), np.zeros((0, self._dim()), np.float32)
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        id_list = np.asarray(ids, dtype=np.int64).tolist()
        rows: list[tuple[int, bytes]] = []
        for start in range(0, len(id_list), 10_000):
            chunk = id_list[start:start + 10_000]
            rows += [row for row in self.conn.execute(  # no length() in SQL: it costs 0.4 ms at 10^6 clips
                f"SELECT id, {self.column} FROM files WHERE id IN ({','.join('?' * len(chunk))})", chunk)
                if row[1]]
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0, self._dim()), np.float32)
        out_ids, blobs = zip(*rows, strict=True)
        return np.array(out_ids, dtype=np.int64), decode_vectors(list(blobs), self.column)  # one decode

    def search(self, queries: np.ndarray, k: int, *, min_duration: float | None = None,
               max_duration: float | None = None, path_prefix: str | os.PathLike[str] | None = None,
               exclude: set[int] | frozenset[int] = frozenset()) -> list[list[SearchResult]]:
        """The `k` best rows per query vector that pass the filters, best first."""
        with self.lock:
            index = self._ensure_index()
            if queries.shape[1] != index.d:
                raise ValueError(f"query vectors have dim {queries.shape[1]}, the index has {index.d}")
            if k <= 0 or index.ntotal == 0:
                return [[] for _ in queries]
            allowed = self._filter_ids(min_duration, max_duration, path_prefix)
            if allowed is not None and len(allowed) == 0:
                return [[] for _ in queries]
            available = index.ntotal if allowed is None else len(allowed)
            want = min(k + len(exclude), available)
            refine = refine_factor(index.ntotal) if faiss_index_kind(index) == "ivfpq" else 1
            scores, ids = search_faiss(index, queries, min(want * refine, available), allowed_ids=allowed,
                                       nprobe=self.nprobe)
            out = []
            for q, s_row, i_row in zip(queries, scores, ids, strict=True):
                n = want
                if refine > 1:  # PQ codes give candidates; the stored vectors give their exact scores
                    s_row, i_row = self._rescore(q, i_row[i_row >= 0], n)
                while True:
                    if (i_row >= 0).sum() < n:  # approximate index fell short: answer this query exactly
                        s_row, i_row = self._exact_search(q, n, allowed)
                    found = self.results([(int(i), float(s)) for i, s in zip(i_row, s_row, strict=True)
                                          if i >= 0 and int(i) not in exclude], k)
                    if len(found) >= k or n >= available:
                        break
                    n = min(2 * n, available)  # identical copies took places: look deeper
                    s_row, i_row = (a[0] for a in search_faiss(index, q[None], min(n * refine, available),
                                                                 allowed_ids=allowed, nprobe=self.nprobe))
                    if refine > 1:
                        s_row, i_row = self._rescore(q, i_row[i_row >= 0], n)
                out.append(found)
            return out

    def _rescore(self, query: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The `k` best of candidate `ids` by exact score against their stored vectors."""
        ids, vectors = self.all_vectors(ids)
        scores = vectors @ query
        top = np.argsort(-scores, kind="stable")[:k]
        return scores[top], ids[top]

    def _exact_search(self, query: np.ndarray, k: int,
                      allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """A scan of every (allowed) stored vector, a chunk at a time, keeping the best `k`."""
        best_scores, best_ids = np.zeros(0, np.float32), np.zeros(0, np.int64)
        for ids, vectors in self.vector_chunks(allowed):
            scores = np.concatenate([best_scores, vectors @ query])
            ids = np.concatenate([best_ids, ids])
            top = np.lexsort((ids, -scores))[:k]  # ties by id: the same order as one whole scan
            best_scores, best_ids = scores[top], ids[top]
        return best_scores, best_ids

    def _filter_ids(self, min_duration: float | None, max_duration: float | None,
                    path_prefix: str | os.PathLike[str] | None) -> np.ndarray | None:
        """Ids passing the filters, or None when there are no filters."""
        clause = filter_clause(min_duration, max_duration, path_prefix)
        if clause is None:
            return None
        rows = self.conn.execute(f"SELECT id FROM files WHERE {clause[0]} AND {self._present}",
                                 clause[1]).fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    def results(self, hits: list[tuple[int, float]], k: int | None = None) -> list[SearchResult]:
        """(id, score) pairs as results, in order, at most `k`, one per content: the best-placed of
        identical files stands for the others (its `duplicates`); rows deleted meanwhile are dropped."""
        if not hits:
            return []
        rows = {r[0]: r for r in self.conn.execute(
            "SELECT id, path_bytes, duration, tags, content_hash FROM files "
            f"WHERE id IN ({','.join('?' * len(hits))})", [i for i, _ in hits])}
        out: list[SearchResult] = []
        hashes: dict[str, SearchResult] = {}
        for i, s in hits:
            row = rows.get(i)  # None: a row deleted by another process since the last refresh
            if row is None or row[4] in hashes:
                continue
            hashes[row[4]] = SearchResult(id=i, path=os.fsdecode(bytes(row[1])), score=s, duration=row[2],
                                          tags=tags_from_json(row[3]))
            out.append(hashes[row[4]])
            if len(out) == k:
                break
        if not out:
            return out
        for digest, clip_id, path_b in self.conn.execute(
                "SELECT content_hash, id, path_bytes FROM files WHERE content_hash IN "
                f"({','.join('?' * len(hashes))}) ORDER BY path_bytes", list(hashes)):
            if clip_id != hashes[digest].id:
                hashes[digest].duplicates.append(os.fsdecode(bytes(path_b)))
        return out

    def ids_with_content(self, digest: str) -> set[int]:
        """The ids of every indexed file holding these bytes."""
        return {r[0] for r in self.conn.execute("SELECT id FROM files WHERE content_hash = ?", (digest,))}

    def vector_of_content(self, digest: str) -> np.ndarray | None:
        """The stored vector of these bytes, if any indexed file holds them (no model run needed)."""
        row = self.conn.execute(f"SELECT {self.column} FROM files WHERE content_hash = ? AND {self._present} "
                                "LIMIT 1", (digest,)).fetchone()
        return blob_vector(row[0], self.column) if row is not None else None


def filter_clause(min_duration: float | None = None, max_duration: float | None = None,
                  path_prefix: str | os.PathLike[str] | None = None) -> tuple[str, list[Any]] | None:
    """A WHERE clause over `files` (and its arguments) for the search filters, or None for no filter."""
    clauses: list[str] = []
    args: list[Any] = []
    if min_duration is not None:
        clauses.append("duration >= ?")
        args.append(float(min_duration))
    if max_duration is not None:
        clauses.append("duration <= ?")
        args.append(float(max_duration))
    if path_prefix is not None and os.fspath(path_prefix) != "":
        prefixes = prefix_forms(path_prefix)
        one = "path_bytes >= ? AND (? IS NULL OR path_bytes < ?)"
        clauses.append("(" + " OR ".join([one] * len(prefixes)) + ")")
        for prefix in prefixes:
            lo, hi = prefix_range(os.fsencode(prefix))
            args += [lo, hi, hi]
    return (" AND ".join(clauses), args) if clauses else None


def prefix_forms(path_prefix: str | os.PathLike[str]) -> list[str]:
    """The prefix as given and resolved (roots are stored resolved, so a folder reached through a symlink
    filters the same as its real path), trailing separator kept."""
    given = abspath(path_prefix)
    real = os.path.realpath(given)
    if given.endswith(os.sep) and not real.endswith(os.sep):
        real += os.sep
    return list(dict.fromkeys((given, real)))
