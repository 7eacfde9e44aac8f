"""Search by what a clip sounds like and by what it is called: audio candidates and BM25 candidates, fused.

`TextSearcher` runs BM25 over the FTS5 table that mirrors every clip's text record. `HybridSearch` takes
the best audio candidates (FAISS) and the best text candidates (FTS5), scores the union exactly on both
sides, and ranks it with `fusion.fuse`; so the approximate FAISS path stays fast at large sizes. Each
result carries its calibrated match strength and why it matched: the query words found in its record
and the audio classes that carried its audio score.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .fusion import DEFAULT_FUSION, MODES, FusionParams, fuse, match_strength, saturate
from .metadata import tokenize_for_search
from .records import SearchResult
from .searcher import VectorSearcher, filter_clause

# Words that carry no meaning in a description ("the sound of rain on a roof"); everything else counts.
STOP_WORDS = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "being", "by", "for", "from", "in", "into", "is", "it", "its",
    "of", "on", "or", "over", "some", "the", "then", "there", "this", "to", "very", "while", "with",
    "sound", "sounds", "noise",
})
COLUMN_WEIGHTS = (1.0, 0.5, 1.0, 0.8)  # BM25 weight of name, folders, UCS category, embedded tags
_WORD = re.compile(r"[^\W_]+")
_EXPLAIN_TAGS = 3


def query_terms(query: str) -> list[tuple[str, str]]:
    """(stem, word as typed) for each meaningful query word, first occurrence only."""
    seen: dict[str, str] = {}
    for word in _WORD.findall(query):
        if word.casefold() in STOP_WORDS or len(word) < 2 and not word.isdigit():
            continue
        for term in tokenize_for_search(word):
            seen.setdefault(term, word)
    return list(seen.items())


PREFIX_MIN = 3  # stems this long also match as prefixes: "sword" finds "swordhit", "wind" finds "windgust"


def match_expression(terms: Sequence[tuple[str, str]]) -> str | None:
    """An FTS5 query OR-ing the stems, each quoted (no word is read as an operator) and, when long enough,
    also as a prefix: a whole-word match then counts twice in BM25, a compound-word match once."""
    parts = [f'"{stem}" OR "{stem}"*' if len(stem) >= PREFIX_MIN else f'"{stem}"' for stem, _ in terms]
    return " OR ".join(parts) or None


def matches(stem: str, words: set[str]) -> bool:
    """Whether a query stem matched a record's words, as `match_expression` matches them."""
    return stem in words or (len(stem) >= PREFIX_MIN and any(w.startswith(stem) for w in words))


class TextSearcher:
    """BM25 over the clips' text records (the FTS5 table `clip_text`)."""

    def __init__(self, conn: sqlite3.Connection, lock: threading.RLock,
                 weights: Sequence[float] = COLUMN_WEIGHTS) -> None:
        self.conn, self.lock = conn, lock
        self._bm25 = f"bm25(clip_text, {', '.join(str(float(w)) for w in weights)})"

    def top(self, expression: str, n: int, filters: tuple[str, list[Any]] | None) -> dict[int, float]:
        """The `n` best clips for the expression (passing the filters) -> BM25, higher is better."""
        where, args = ("", []) if filters is None else (f" AND rowid IN (SELECT id FROM files WHERE "
                                                           f"{filters[0]})", filters[1])
        sql = (f"SELECT rowid, -{self._bm25} AS s FROM clip_text WHERE clip_text MATCH ?{where} "
               f"ORDER BY s DESC LIMIT ?")
        with self.lock:
            return {int(i): float(s) for i, s in self.conn.execute(sql, [expression, *args, n])}

    def scores(self, expression: str, ids: Sequence[int]) -> dict[int, float]:
        """BM25 of the given clips (those whose record holds no query word are absent)."""
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        sql = f"SELECT rowid, -{self._bm25} FROM clip_text WHERE clip_text MATCH ? AND rowid IN ({marks})"
        with self.lock:
            return {int(i): float(s) for i, s in self.conn.execute(sql, [expression, *map(int, ids)])}

    def stems(self, ids: Sequence[int]) -> dict[int, set[str]]:
        """The stemmed words of each clip's text record, for explaining a match."""
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        with self.lock:
            rows = self.conn.execute(f"SELECT id, text FROM files WHERE id IN ({marks})", list(map(int, ids)))
            return {int(i): {w for col in json.loads(t)["fts"].values() for w in col.split()} if t else set()
                    for i, t in rows}


class HybridSearch:
    """Rank clips for text queries by audio, by words (BM25 + dense names), or by both."""

    def __init__(self, vectors: VectorSearcher, text: TextSearcher, names: VectorSearcher,
                 encode_sentences: Callable[[list[str]], np.ndarray], params: FusionParams = DEFAULT_FUSION,
                 class_names: Sequence[str] | None = None) -> None:
        self.vectors, self.text, self.names, self.params = vectors, text, names, params
        self.encode_sentences = encode_sentences
        self.class_names = list(class_names) if class_names is not None else None

    def search(self, queries: Sequence[str], query_vectors: np.ndarray, k: int, mode: str = "hybrid",
               sentences: np.ndarray | None = None, **filters: Any) -> list[list[SearchResult]]:
        """`sentences`: the queries' sentence vectors, when the caller already has them."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        if k <= 0:
            return [[] for _ in queries]
        pool = max(4 * k, 50)
        audio_hits = self.vectors.search(query_vectors, pool, **filters) if mode != "text" else None
        if mode == "audio":
            sentences = None
        elif sentences is None:
            sentences = self.encode_sentences(list(queries))
        name_hits = self.names.search(sentences, pool, **filters) if sentences is not None else None
        clause = filter_clause(**filters)
        out = []
        for i, query in enumerate(queries):
            terms = query_terms(query) if mode != "audio" else []
            expression = match_expression(terms)
            scores = {
                "audio": {h.id: h.score for h in audio_hits[i]} if audio_hits is not None else {},
                "text": self.text.top(expression, pool, clause) if expression else {},
                "name": {h.id: h.score for h in name_hits[i]} if name_hits is not None else {},
            }
            sentence = sentences[i] if sentences is not None else None
            out.append(self._rank(query_vectors[i], sentence, terms, expression, scores, k, mode))
        return out

    def _rank(self, q: np.ndarray, sentence: np.ndarray | None, terms: list[tuple[str, str]],
              expression: str | None, scores: dict[str, dict[int, float]], k: int,
              mode: str) -> list[SearchResult]:
        """Score the union of candidates exactly on every side, fuse, and dress the best `k`."""
        audio, text, name = scores["audio"], scores["text"], scores["name"]
        ids = np.array(sorted(set(audio) | set(text) | set(name)), dtype=np.int64)
        if len(ids) == 0:
            return []
        self._complete(audio, ids, self.vectors, q)
        if sentence is not None:
            self._complete(name, ids, self.names, sentence)
        missing_text = [int(i) for i in ids if int(i) not in text] if expression else []
        text.update(self.text.scores(expression, missing_text) if missing_text else {})
        a = np.array([audio.get(int(i), 0.0) for i in ids])
        t = saturate(np.array([text.get(int(i), 0.0) for i in ids]), self.params.text_half)
        n = np.maximum(np.array([name.get(int(i), 0.0) for i in ids]), 0.0)
        ranking = fuse(a, t, n, mode, self.params)
        order = np.lexsort((-a, -ranking))  # ties (e.g. equal BM25 in text mode) go to the better audio
        if mode == "text":  # words only: a BM25 match, or a name that clearly says the same
            order = order[(t[order] > 0) | (n[order] >= self.params.name_floor)]
        strength = match_strength(a, t, n, self.params)
        hits = self.vectors.results([(int(ids[j]), float(ranking[j])) for j in order], k)  # k contents
        by_id = {int(ids[j]): j for j in order}
        stems = self.text.stems([h.id for h in hits]) if terms else {}
        tags = self._explain_tags(q, [h.id for h in hits])
        for h in hits:
            j = by_id[h.id]
            h.match, h.audio_score = float(strength[j]), float(a[j])
            if mode != "audio":
                h.text_score, h.name_score = float(t[j]), float(n[j])
            h.why = {"words": [word for stem, word in terms if matches(stem, stems.get(h.id, set()))],
                     "tags": tags.get(h.id, [])}
        return hits

    @staticmethod
    def _complete(scores: dict[int, float], ids: np.ndarray, searcher: VectorSearcher, q: np.ndarray) -> None:
        """Add the exact cosine of candidates the searcher did not return (absent vectors stay absent)."""
        missing = [int(i) for i in ids if int(i) not in scores]
        if missing:
            got, vecs = searcher.all_vectors(np.array(missing, dtype=np.int64))
            scores.update(zip(got.tolist(), (vecs @ q).tolist(), strict=True))

    def _explain_tags(self, q: np.ndarray, ids: list[int]) -> dict[int, list[str]]:
        """The classes contributing most to each clip's audio score (class-space models only)."""
        if self.class_names is None or len(q) != len(self.class_names) or not ids:
            return {}
        got, vecs = self.vectors.all_vectors(np.array(ids, dtype=np.int64))
        out = {}
        for clip_id, contribution in zip(got.tolist(), vecs * q, strict=True):
            top = np.argsort(-contribution, kind="stable")[:_EXPLAIN_TAGS]
            out[clip_id] = [self.class_names[c] for c in top if contribution[c] > 0]
        return out
