"""Search over a Milvus store: the same sides `hybrid.HybridSearch` fuses, answered by Milvus.

`MilvusVectors` stands in for `searcher.VectorSearcher` (audio vectors, or name vectors with
`field="name_vector"`), `MilvusText` for `hybrid.TextSearcher`. Milvus finds the BM25 candidates; their
scores are then computed here with SQLite FTS5's formula (`fts5_bm25`: column weights, k1 = 1.2, b = 0.75,
idf from the document frequency Milvus counts), so fusion constants fitted on the embedded store hold and a
filter never changes a clip's text score (milvus-lite computes its BM25 statistics over the filtered rows
only). The difference that remains: Milvus matches whole words, so the prefix rule of
`hybrid.match_expression` ("sword" finding "swordhit") scores compounds only for clips another side found.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .codecs import tags_from_json
from .hybrid import COLUMN_WEIGHTS, PREFIX_MIN
from .metadata import FTS_COLUMNS
from .milvus_store import MilvusStore
from .records import SearchResult
from .store import abspath

K1, B = 1.2, 0.75  # FTS5's bm25() constants
_RECORD = ["path_hex", "duration", "tags"]
_ID_CHUNK = 4096


def filter_expression(min_duration: float | None = None, max_duration: float | None = None,
                      path_prefix: str | os.PathLike[str] | None = None,
                      exclude: set[int] | frozenset[int] = frozenset()) -> str:
    """A Milvus boolean expression for the search filters ("" for none), like `searcher.filter_clause`."""
    parts = []
    if min_duration is not None:
        parts.append(f"duration >= {float(min_duration)!r}")
    if max_duration is not None:
        parts.append(f"duration <= {float(max_duration)!r}")
    if path_prefix is not None and os.fspath(path_prefix) != "":
        parts.append(f'path_hex like "{os.fsencode(abspath(path_prefix)).hex()}%"')  # hex: no wildcards
    if exclude:
        parts.append(f"id not in [{','.join(str(int(i)) for i in sorted(exclude))}]")
    return " and ".join(parts)


def _and(*parts: str) -> str:
    return " and ".join(f"({p})" for p in parts if p)


class MilvusVectors:
    """Vector search over one vector field of the store (what `VectorSearcher` answers for FAISS)."""

    def __init__(self, store: MilvusStore, field: str = "vector") -> None:
        self.store, self.field = store, field
        self._present = "has_name == true" if field == "name_vector" else ""
        self.index_kind, self.nprobe = store.index_kind, store.nprobe

    def forget(self) -> None:
        """Nothing is cached here beyond the sync state, which `is_stale` checks."""

    def is_stale(self) -> bool:
        return not self.store.in_step()

    def reload(self) -> None:
        """After an update committed: bring Milvus in step (the names side rides on the audio side's sync)."""
        if self.field == "vector":
            self.store.sync()

    def kind(self, n: int) -> str:
        return f"milvus {self.store.index_type()}"

    def search(self, queries: np.ndarray, k: int, *, min_duration: float | None = None,
               max_duration: float | None = None, path_prefix: str | os.PathLike[str] | None = None,
               exclude: set[int] | frozenset[int] = frozenset()) -> list[list[SearchResult]]:
        """The `k` best clips per query vector that pass the filters, best first."""
        if k <= 0 or len(queries) == 0:
            return [[] for _ in queries]
        self.store.ensure_synced()
        if not self.store.client.has_collection(self.store.collection):
            return [[] for _ in queries]
        expression = _and(self._present, filter_expression(min_duration, max_duration, path_prefix, exclude))
        out = []
        for q in np.asarray(queries, dtype=np.float32):
            n = k
            while True:  # identical copies count once (`results`): look deeper until k contents are found
                found = self.store.client.search(
                    self.store.collection, data=[q.tolist()], anns_field=self.field, limit=min(n, 16_384),
                    filter=expression, output_fields=_RECORD, search_params=self.store.search_params(n))[0]
                results = self._grouped([_result(h["id"], h["distance"], h["entity"]) for h in found], k)
                if len(results) >= k or len(found) < n or n >= 16_384:
                    break
                n *= 2
            out.append(results)
        return out

    def all_vectors(self, ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of these clips (or all) that have a vector in this field."""
        self.store.ensure_synced()
        got: list[int] = []
        vectors: list[list[float]] = []
        for rows in self._rows(ids, [self.field], self._present):
            for r in rows:
                got.append(int(r["id"]))
                vectors.append(r[self.field])
        dim = self.store._dim() if self.field == "vector" else self.store._name_dim()
        return np.array(got, dtype=np.int64), np.array(vectors, dtype=np.float32).reshape(len(got), dim)

    def results(self, hits: list[tuple[int, float]], k: int | None = None) -> list[SearchResult]:
        """(id, score) pairs as results, in order, at most `k`, one per content, with Milvus's records."""
        chunks = self._rows(np.array([i for i, _ in hits], dtype=np.int64), _RECORD)
        records = {int(r["id"]): r for rows in chunks for r in rows}
        return self._grouped([_result(i, s, records[i]) for i, s in hits if i in records], k)

    def ids_with_content(self, digest: str) -> set[int]:
        """The ids of every indexed file holding these bytes (content hashes are SQLite's bookkeeping)."""
        with self.store.lock:
            rows = self.store.conn.execute("SELECT id FROM files WHERE content_hash = ?", (digest,))
            return {r[0] for r in rows}

    def vector_of_content(self, digest: str) -> np.ndarray | None:
        """The stored vector of these bytes, if any indexed file holds them (from Milvus)."""
        ids = np.array(sorted(self.ids_with_content(digest)), dtype=np.int64)
        got, vectors = self.all_vectors(ids) if len(ids) else (ids, None)
        return vectors[0] if len(got) else None

    def _grouped(self, results: list[SearchResult], k: int | None) -> list[SearchResult]:
        """The best-placed of identical files stands for the others (its `duplicates`), as
        `VectorSearcher.results` does; content hashes are the update's bookkeeping, in SQLite."""
        if not results:
            return []
        conn, lock = self.store.conn, self.store.lock
        with lock:
            digests = dict(conn.execute(f"SELECT id, content_hash FROM files WHERE id IN "
                                        f"({','.join('?' * len(results))})", [r.id for r in results]))
            out, by_hash = [], {}
            for r in results:
                digest = digests.get(r.id)
                if digest is None or digest in by_hash:
                    continue
                by_hash[digest] = r
                out.append(r)
                if len(out) == k:
                    break
            for digest, clip_id, path_b in conn.execute(
                    "SELECT content_hash, id, path_bytes FROM files WHERE content_hash IN "
                    f"({','.join('?' * len(by_hash))}) ORDER BY path_bytes", list(by_hash)):
                if clip_id != by_hash[digest].id:
                    by_hash[digest].duplicates.append(os.fsdecode(bytes(path_b)))
        return out

    def _rows(self, ids: np.ndarray | None, fields: list[str], where: str = "") -> Any:
        """Query results for `ids` in chunks (all entities when None)."""
        if ids is None:
            yield from self.store._iterate(fields, where)
            return
        id_list = [int(i) for i in ids]
        for start in range(0, len(id_list), _ID_CHUNK):
            chunk = id_list[start:start + _ID_CHUNK]
            if chunk:
                yield self.store.client.query(self.store.collection, output_fields=fields,
                                              filter=_and(f"id in [{','.join(map(str, chunk))}]", where))


def _result(clip_id: int, score: float, entity: dict[str, Any]) -> SearchResult:
    path = os.fsdecode(bytes.fromhex(entity["path_hex"]))
    return SearchResult(id=int(clip_id), path=path, score=float(score), duration=float(entity["duration"]),
                        tags=tags_from_json(entity["tags"]))


class MilvusText:
    """BM25 over the clips' text records held in Milvus (what `TextSearcher` answers over FTS5)."""

    def __init__(self, store: MilvusStore, weights: Sequence[float] = COLUMN_WEIGHTS) -> None:
        self.store, self.weights = store, dict(zip(FTS_COLUMNS, weights, strict=True))
        self._df: dict[tuple[int, str], int] = {}

    def top(self, terms: Sequence[tuple[str, str]], n: int, filters: dict[str, Any]) -> dict[int, float]:
        """The `n` best clips holding a query word (passing the filters) -> BM25, higher is better."""
        self.store.ensure_synced()
        if not terms or not self.store.client.has_collection(self.store.collection):
            return {}
        found = self.store.client.search(
            self.store.collection, data=[" ".join(stem for stem, _ in terms)], anns_field="sparse",
            limit=min(2 * n, 16_384), filter=filter_expression(**filters), output_fields=["columns"],
            search_params={"metric_type": "BM25"})
        scores = self._score(terms, {int(h["id"]): _columns(h["entity"]) for h in found[0]})
        return dict(sorted(scores.items(), key=lambda kv: -kv[1])[:n])

    def scores(self, terms: Sequence[tuple[str, str]], ids: Sequence[int]) -> dict[int, float]:
        """BM25 of the given clips (those whose record holds no query word are absent)."""
        return self._score(terms, self._columns(ids)) if terms and ids else {}

    def stems(self, ids: Sequence[int]) -> dict[int, set[str]]:
        """The stemmed words of each clip's text record, for explaining a match."""
        return {i: {w for col in cols.values() for w in col.split()}
                for i, cols in self._columns(ids).items()}

    def _columns(self, ids: Sequence[int]) -> dict[int, dict[str, str]]:
        self.store.ensure_synced()
        rows = MilvusVectors(self.store)._rows(np.array(list(ids), dtype=np.int64), ["columns"])
        return {int(r["id"]): _columns(r) for chunk in rows for r in chunk}

    def _score(self, terms: Sequence[tuple[str, str]],
               records: dict[int, dict[str, str]]) -> dict[int, float]:
        """FTS5's bm25() of `match_expression(terms)` over each record, with the store's statistics."""
        state = self.store.state() or {"clips": 0, "tokens": 0}
        n_docs, avgdl = state["clips"], state["tokens"] / max(state["clips"], 1)
        phrases = [(stem, False) for stem, _ in terms] + [(s, True) for s, _ in terms if len(s) >= PREFIX_MIN]
        idf = {stem: self._idf(stem, n_docs, state["generation"]) for stem, _ in terms}
        out = {}
        for clip_id, columns in records.items():
            tokens = {c: columns.get(c, "").split() for c in FTS_COLUMNS}
            length = sum(len(t) for t in tokens.values())
            score, hit = 0.0, False
            for stem, prefix in phrases:
                freq = sum(self.weights[c] * sum(1 for t in words if _hits(t, stem, prefix))
                           for c, words in tokens.items())
                if freq > 0:
                    hit = True
                    norm = K1 * (1 - B + B * length / max(avgdl, 1e-9))
                    score += idf[stem] * freq * (K1 + 1) / (freq + norm)
            if hit:
                out[clip_id] = score
        return out

    def _idf(self, stem: str, n_docs: int, generation: int) -> float:
        """FTS5's idf, log((N - n + 0.5) / (n + 0.5)) floored at 1e-6, n counted by Milvus (cached)."""
        key = (generation, stem)
        if key not in self._df:
            rows = self.store.client.query(self.store.collection, filter=f'TEXT_MATCH(fts, "{stem}")',
                                           output_fields=["count(*)"])
            self._df[key] = int(rows[0]["count(*)"])
        n = self._df[key]
        value = math.log((n_docs - n + 0.5) / (n + 0.5)) if n_docs else 0.0
        return value if value > 0 else 1e-6


def _hits(token: str, stem: str, prefix: bool) -> bool:
    return token == stem or prefix and token.startswith(stem)


def _columns(entity: dict[str, Any]) -> dict[str, str]:
    try:
        return json.loads(entity["columns"])
    except ValueError:  # a record cut at the VARCHAR limit: its words are in `fts` (unweighted)
        return {"name": entity.get("fts", "")}
