"""Retrieval metrics for language-based audio retrieval (DCASE 2025 Task 6 definitions).

Each query row of a similarity matrix ranks the candidate clips by descending score; ties go to the
lower column index (what a stable sort of ``-score`` does). Ranks are 1-based.

* AP@k  = (1/|relevant|) * sum over relevant clips ranked within the top k of
  (number of relevant clips ranked at or above it) / (its rank). The normaliser is |relevant|,
  not min(k, |relevant|).
* mAP@k = mean of AP@k over queries.
* R@K   = share of queries with at least one relevant clip in the top K.

The single-positive Clotho protocol is the special case where each caption's own clip is its only
relevant candidate; the DCASE 2025 re-annotation gives several relevant clips per query.

It is a little longer than 400 lines: every metric and both file formats stay in one place, as pure
functions checked against one brute-force reference in the tests.
"""

from __future__ import annotations

import ast
import csv
import html
import operator
from collections.abc import Collection, Iterator, Sequence
from os import PathLike
from pathlib import Path

import numpy as np

__all__ = [
    "average_precision_at_k",
    "evaluate_score_file",
    "mean_average_precision_at_k",
    "read_relevance",
    "read_score_file",
    "recall_at_k",
    "relevant_ranks",
    "retrieval_metrics",
]

# Bound on the (pairs x candidates) boolean work arrays in relevant_ranks, in elements.
_CHUNK_ELEMENTS = 1 << 22

MULTI_POSITIVE_COLUMNS = ("query", "audio_filenames")


# ---------------------------------------------------------------------------------------------
# ranking and metrics
# ---------------------------------------------------------------------------------------------


def _check_scores(scores: np.ndarray) -> np.ndarray:
    """Return scores as a 2-D float64 array (exact for float32 input), refusing NaN, which has no rank."""
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"scores must be a 2-D (n_queries, n_candidates) array, got shape {arr.shape}")
    nan_rows = np.flatnonzero(np.isnan(arr).any(axis=1))
    if nan_rows.size:
        raise ValueError(
            f"scores contain NaN (first in query {int(nan_rows[0])}; {nan_rows.size} queries affected)"
        )
    return arr


def _check_relevant(query: int, rel: Collection[int], n_candidates: int) -> np.ndarray:
    """Return one query's relevant columns as sorted unique int64, so bad indices fail loudly."""
    if isinstance(rel, (str, bytes)):
        raise ValueError(f"query {query}: relevant items must be candidate indices, got a string {rel!r}")
    try:
        cols = sorted({operator.index(j) for j in rel})
    except TypeError as exc:
        raise ValueError(f"query {query}: relevant items must be integer candidate indices ({exc})") from None
    if not cols:
        raise ValueError(f"query {query} has no relevant item")
    if cols[0] < 0 or cols[-1] >= n_candidates:
        bad = cols[0] if cols[0] < 0 else cols[-1]
        raise ValueError(f"query {query}: relevant index {bad} is out of range for {n_candidates} candidates")
    return np.asarray(cols, dtype=np.int64)


def relevant_ranks(scores: np.ndarray, relevant: Sequence[Collection[int]]) -> list[np.ndarray]:
    """Give each query's sorted 1-based ranks of its relevant candidates, the one input every metric needs."""
    arr = _check_scores(scores)
    n_queries, n_candidates = arr.shape
    if len(relevant) != n_queries:
        raise ValueError(f"relevant has {len(relevant)} entries but scores has {n_queries} queries")
    per_query = [_check_relevant(i, rel, n_candidates) for i, rel in enumerate(relevant)]
    if not per_query:
        return []
    counts = np.fromiter((c.size for c in per_query), dtype=np.int64, count=n_queries)
    pair_query = np.repeat(np.arange(n_queries, dtype=np.int64), counts)
    pair_col = np.concatenate(per_query)
    n_pairs = pair_col.size

    # rank of candidate j = 1 + #(scores > s_j) + #(scores == s_j at a smaller column index)
    ranks = np.empty(n_pairs, dtype=np.int64)
    column = np.arange(n_candidates, dtype=np.int64)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, n_candidates))
    for start in range(0, n_pairs, chunk):
        q = pair_query[start : start + chunk]
        c = pair_col[start : start + chunk]
        rows = arr[q]
        own = arr[q, c][:, None]
        higher = np.count_nonzero(rows > own, axis=1)
        tied_before = np.count_nonzero((rows == own) & (column[None, :] < c[:, None]), axis=1)
        ranks[start : start + chunk] = 1 + higher + tied_before

    bounds = np.cumsum(counts)[:-1]
    return [np.sort(r) for r in np.split(ranks, bounds)]


def _check_k(k: int, name: str = "k") -> int:
    """Validate a cut-off, because k < 1 would silently give zero scores."""
    try:
        k = operator.index(k)
    except TypeError:
        raise ValueError(f"{name} must be a positive integer, got {k!r}") from None
    if k < 1:
        raise ValueError(f"{name} must be a positive integer, got {k}")
    return k


def _check_ranks(ranks: np.ndarray) -> np.ndarray:
    """Return ranks sorted as int64, refusing shared or non-positive ranks, which no ranking can produce."""
    r = np.sort(np.asarray(ranks).ravel())
    if r.size == 0:
        return r.astype(np.int64)
    if not np.issubdtype(r.dtype, np.integer):
        if not np.all(np.isfinite(r)) or not np.all(r == np.round(r)):
            raise ValueError(f"ranks must be whole numbers, got {ranks!r}")
        r = r.astype(np.int64)
    if r[0] < 1:
        raise ValueError(f"ranks are 1-based, got {int(r[0])}")
    if np.any(np.diff(r) == 0):
        raise ValueError("two relevant items cannot share a rank")
    return r.astype(np.int64)


def average_precision_at_k(ranks: np.ndarray, n_relevant: int, k: int) -> float:
    """AP@k of one query from its relevant items' ranks, normalised by all its relevant items (DCASE rule)."""
    k = _check_k(k)
    n_relevant = operator.index(n_relevant)
    r = _check_ranks(ranks)
    if n_relevant < 1:
        raise ValueError(f"n_relevant must be at least 1, got {n_relevant}")
    if r.size > n_relevant:
        raise ValueError(f"{r.size} ranks given but n_relevant is {n_relevant}")
    top = r[r <= k]
    if top.size == 0:
        return 0.0
    hits_so_far = np.arange(1, top.size + 1, dtype=np.float64)
    return float(np.sum(hits_so_far / top) / n_relevant)


def mean_average_precision_at_k(
    ranks_per_query: Sequence[np.ndarray], n_relevant: Sequence[int], k: int
) -> float:
    """mAP@k: AP@k averaged over queries, each query weighing the same."""
    k = _check_k(k)
    if len(ranks_per_query) != len(n_relevant):
        raise ValueError(f"{len(ranks_per_query)} rank lists but {len(n_relevant)} relevant counts")
    if not ranks_per_query:
        raise ValueError("mAP of zero queries is undefined")
    total = 0.0
    for i, (ranks, n) in enumerate(zip(ranks_per_query, n_relevant, strict=True)):
        try:
            total += average_precision_at_k(ranks, n, k)
        except ValueError as exc:
            raise ValueError(f"query {i}: {exc}") from None
    return total / len(ranks_per_query)


def recall_at_k(ranks_per_query: Sequence[np.ndarray], k: int) -> float:
    """R@K: share of queries with at least one relevant item in the top K (an empty rank list is a miss)."""
    k = _check_k(k)
    if not ranks_per_query:
        raise ValueError("recall of zero queries is undefined")
    hits = sum(1 for ranks in ranks_per_query if np.asarray(ranks).size and np.min(ranks) <= k)
    return hits / len(ranks_per_query)


def retrieval_metrics(
    scores: np.ndarray,
    relevant: Sequence[Collection[int]],
    recall_ks: Sequence[int] = (1, 5, 10),
    map_ks: Sequence[int] = (10, 16),
) -> dict[str, float]:
    """All challenge metrics from one similarity matrix, keyed like the leaderboard ("R@1", "mAP@16")."""
    ranks = relevant_ranks(scores, relevant)
    if not ranks:
        raise ValueError("scores has no queries")
    n_relevant = [r.size for r in ranks]
    out: dict[str, float] = {}
    for k in recall_ks:
        out[f"R@{_check_k(k, 'recall k')}"] = recall_at_k(ranks, k)
    for k in map_ks:
        out[f"mAP@{_check_k(k, 'mAP k')}"] = mean_average_precision_at_k(ranks, n_relevant, k)
    return out


# ---------------------------------------------------------------------------------------------
# challenge files
# ---------------------------------------------------------------------------------------------


def _records(path: Path) -> Iterator[tuple[int, list[str]]]:
    """Yield (first line, fields) per non-blank CSV record; decode and CSV errors become ValueError."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, strict=True)
            end = 0
            while True:
                start = end + 1
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    raise ValueError(f"{path}: line {reader.line_num}: malformed CSV ({exc})") from None
                end = reader.line_num
                if row and any(field.strip() for field in row):
                    yield start, row
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc})") from None


def _parse_scores(path: Path, line: int, fields: list[str], file_names: list[str]) -> np.ndarray:
    """Parse one query row's scores, naming the exact field when one is not a finite number."""
    try:
        values = np.array(fields, dtype=np.float64)
    except ValueError:
        values = None
    if values is not None and np.all(np.isfinite(values)):
        return values
    for col, (text, name) in enumerate(zip(fields, file_names, strict=True), start=2):
        try:
            ok = np.isfinite(float(text))
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(
                f"{path}: line {line}, column {col} (file {name!r}): score {text!r} is not a finite number"
            )
    raise ValueError(f"{path}: line {line}: scores are not numbers")  # pragma: no cover - defensive


def read_score_file(path: str | PathLike[str]) -> tuple[list[str], list[str], np.ndarray]:
    """Read a challenge score CSV (``caption,<file1>,...``) into (captions, file_names, scores)."""
    path = Path(path)
    records = _records(path)
    first = next(records, None)
    if first is None:
        raise ValueError(f"{path}: empty file (expected a header 'caption,<file1>,<file2>,...')")
    header_line, header = first
    # the official 2025 baseline writes its score table with pandas, whose first header cell is "index"
    if header[0].strip() not in ("caption", "index"):
        raise ValueError(
            f"{path}: line {header_line}, column 1: header must start with 'caption', got {header[0]!r}"
        )
    file_names = header[1:]
    if not file_names:
        raise ValueError(f"{path}: line {header_line}: header names no candidate files after 'caption'")
    seen: dict[str, int] = {}
    for col, name in enumerate(file_names, start=2):
        if name == "":
            raise ValueError(f"{path}: line {header_line}, column {col}: empty file name in header")
        if name in seen:
            raise ValueError(
                f"{path}: line {header_line}, column {col}: duplicate file name {name!r} "
                f"(also column {seen[name]})"
            )
        seen[name] = col

    captions: list[str] = []
    rows: list[np.ndarray] = []
    width = len(header)
    for line, row in records:
        if len(row) != width:
            raise ValueError(
                f"{path}: line {line}: {len(row)} fields but the header has {width} (caption {row[0]!r})"
            )
        captions.append(row[0])
        rows.append(_parse_scores(path, line, row[1:], file_names))
    if not rows:
        raise ValueError(f"{path}: no query rows after the header")
    return captions, list(file_names), np.vstack(rows)


def _normalise_space(text: str) -> str:
    """Collapse runs of whitespace and trim, so captions differing only in spacing still match."""
    return " ".join(text.split())


def _read_annotations(path: Path) -> list[tuple[int, str, list[str]]]:
    """Read ANN.csv of either kind into (line, caption, relevant file names) entries."""
    records = _records(path)
    first = next(records, None)
    if first is None:
        raise ValueError(f"{path}: empty annotation file")
    header_line, header = first
    names = [h.strip().lower() for h in header]
    entries: list[tuple[int, str, list[str]]] = []
    if tuple(names) == MULTI_POSITIVE_COLUMNS:
        for line, row in records:
            if len(row) != 2:
                raise ValueError(
                    f"{path}: line {line}: expected 2 fields (query, audio_filenames), got {len(row)}"
                )
            try:
                files = ast.literal_eval(row[1])
            except (ValueError, SyntaxError):
                files = None
            if not isinstance(files, (list, tuple)) or not all(isinstance(f, str) for f in files):
                raise ValueError(
                    f"{path}: line {line}, field 'audio_filenames': expected a Python list of file names, "
                    f"got {row[1]!r}"
                )
            if not files:
                raise ValueError(f"{path}: line {line}, field 'audio_filenames': empty list for {row[0]!r}")
            entries.append((line, row[0], list(files)))
    elif (
        names
        and names[0] == "file_name"
        and len(names) > 1
        and all(n.startswith("caption") for n in names[1:])
    ):
        for line, row in records:
            if len(row) != len(header):
                raise ValueError(f"{path}: line {line}: {len(row)} fields but the header has {len(header)}")
            entries.extend((line, caption, [row[0]]) for caption in row[1:] if caption.strip())
    else:
        raise ValueError(
            f"{path}: line {header_line}: unrecognised annotation header {header!r}; expected "
            "'query,audio_filenames' (DCASE 2025 multi-positive) or 'file_name,caption_1,...' (Clotho)"
        )
    return entries


def _column_lookup(file_names: Sequence[str]) -> tuple[dict[str, int], dict[str, int | None]]:
    """Index score columns by exact name and by HTML-unescaped name (Clotho names carry '&#39;')."""
    exact = {name: i for i, name in enumerate(file_names)}
    unescaped: dict[str, int | None] = {}
    for i, name in enumerate(file_names):
        key = html.unescape(name)
        unescaped[key] = None if key in unescaped else i  # None marks an ambiguous name
    return exact, unescaped


def read_relevance(
    path: str | PathLike[str], captions: Sequence[str], file_names: Sequence[str]
) -> list[list[int]]:
    """Map each query caption to the score columns of its relevant clips, from either ANN.csv kind."""
    path = Path(path)
    entries = _read_annotations(path)
    exact_cols, unescaped_cols = _column_lookup(file_names)

    def column(name: str, line: int, caption: str) -> int:
        """Find a relevant file's score column, tolerating HTML-escaped vs plain apostrophes."""
        if name in exact_cols:
            return exact_cols[name]
        col = unescaped_cols.get(html.unescape(name))
        if col is None:
            raise ValueError(
                f"{path}: line {line}: relevant file {name!r} (for caption {caption!r}) is not a column "
                "of the score file"
            )
        return col

    # caption -> {relevant file name: annotation line}; a caption given for several clips gets them all
    by_exact: dict[str, dict[str, int]] = {}
    by_norm: dict[str, dict[str, int]] = {}
    for line, caption, files in entries:
        for name in files:
            by_exact.setdefault(caption, {}).setdefault(name, line)
            by_norm.setdefault(_normalise_space(caption), {}).setdefault(name, line)

    relevance: list[list[int]] = []
    missing: list[tuple[int, str]] = []
    for i, caption in enumerate(captions):
        files = by_exact.get(caption)
        if files is None:
            files = by_norm.get(_normalise_space(caption))
        if files is None:
            missing.append((i, caption))
            continue
        cols = {column(name, line, caption) for name, line in files.items()}
        relevance.append(sorted(cols))
    if missing:
        shown = "; ".join(f"query {i}: {c!r}" for i, c in missing[:3])
        raise ValueError(
            f"{len(missing)} of {len(captions)} query captions are not in the annotations {path} ({shown}"
            f"{'; ...' if len(missing) > 3 else ''})"
        )
    return relevance


def evaluate_score_file(
    scores_csv: str | PathLike[str], annotations_csv: str | PathLike[str]
) -> dict[str, float]:
    """Score a challenge submission file against ANN.csv with the leaderboard metrics."""
    captions, file_names, scores = read_score_file(scores_csv)
    relevant = read_relevance(annotations_csv, captions, file_names)
    return retrieval_metrics(scores, relevant)
