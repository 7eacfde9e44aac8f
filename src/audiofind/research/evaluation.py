"""Challenge evaluation for any EmbeddingModel: similarities, score files, ensembles, both protocols.

* Single-positive (Clotho): every caption of a split is a query; its own clip is the relevant one.
* Multi-positive (DCASE 2025): the re-annotation's queries, 1 to 12 relevant clips each; ranked on mAP@16.

Score files follow the DCASE 2025 baseline's submission format (d25_t6/predict.py writes a pandas table
indexed by query): a header ``index,<file1>,...``, one row per query in the order of the queries file,
one column per candidate file (the column order carries no meaning) and a similarity per cell, higher
meaning more relevant. The baseline's values are cosine / 1024 (a mean of the product); ours are the
cosines, which rank identically. Files with a ``caption`` header cell are read as well. Ranking files
follow the format of the 2022-2024 editions: ``caption,file_name_1,...,file_name_k``, best first.

It is a little longer than 400 lines because the three commands (evaluate, predict, ensemble) share
the clip embedding and score-file code kept here side by side.
"""

from __future__ import annotations

import csv
import html
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..audio import AUDIO_EXTENSIONS, load_audio
from ..models import EmbeddingModel
from .metrics import read_relevance, read_score_file, retrieval_metrics

if TYPE_CHECKING:
    from .data import CaptionedClip

__all__ = [
    "COMBINE_METHODS",
    "Candidate",
    "ScoreTable",
    "align_score_tables",
    "audio_dir_candidates",
    "clotho_queries",
    "combine_scores",
    "embed_clips",
    "embed_texts",
    "evaluate_model",
    "multi_positive_queries",
    "rank_candidates",
    "read_queries",
    "read_score_table",
    "similarity_matrix",
    "write_ranking",
    "write_score_file",
]

COMBINE_METHODS = ("mean", "zscore")
SCORE_HEADER = "index"  # first header cell of a score file, as pandas writes the baseline's
SINGLE_POSITIVE_KS = {"recall_ks": (1, 5, 10), "map_ks": (10,)}
MULTI_POSITIVE_KS = {"recall_ks": (1, 5, 10), "map_ks": (16, 10)}


class HasAudioPath(Protocol):
    """Anything naming an audio file, such as a data.CaptionedClip or a Candidate."""

    audio_path: Any


ClipLike = HasAudioPath | str | os.PathLike[str]


@dataclass(frozen=True)
class Candidate:
    """One retrievable file: where its audio is and the name its score-file column carries."""

    audio_path: Path
    file_name: str


# ---------------------------------------------------------------------------------------------
# embeddings and similarities
# ---------------------------------------------------------------------------------------------


def _audio_path(clip: ClipLike) -> Path:
    """Accept clips and plain paths alike, so callers need not wrap file lists."""
    return Path(getattr(clip, "audio_path", clip))


def embed_clips(
    model: EmbeddingModel, clips: Sequence[ClipLike], batch_size: int = 16, progress: bool = True
) -> np.ndarray:
    """Embed each clip's whole audio once, a batch at a time so memory stays bounded."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    out = np.zeros((len(clips), model.dim), dtype=np.float32)
    bar = _progress_bar(progress, len(clips), "embedding audio", "clip")
    try:
        for start in range(0, len(clips), batch_size):
            batch = clips[start : start + batch_size]
            waves = [load_audio(_audio_path(c), sample_rate=model.sample_rate)[0] for c in batch]
            vectors = np.asarray(model.embed_audio(waves).vectors, dtype=np.float32)
            if vectors.shape != (len(batch), model.dim):
                raise ValueError(
                    f"model {model.model_id} returned audio embeddings of shape {vectors.shape} "
                    f"for {len(batch)} clips of dim {model.dim}"
                )
            out[start : start + len(batch)] = vectors
            bar(len(batch))
    finally:
        bar(0, close=True)
    return out


def embed_texts(model: EmbeddingModel, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """Embed queries in batches, so thousands of captions never form one giant tokenizer call."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    parts = [
        np.asarray(model.encode_text(list(texts[i : i + batch_size])), dtype=np.float32)
        for i in range(0, len(texts), batch_size)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, model.dim), dtype=np.float32)


def similarity_matrix(
    model: EmbeddingModel,
    captions: Sequence[str],
    clips: Sequence[ClipLike],
    batch_size: int = 16,
    progress: bool = True,
) -> np.ndarray:
    """(queries x clips) cosine similarities: the matrix a score file and every metric start from."""
    audio = embed_clips(model, clips, batch_size=batch_size, progress=progress)
    return embed_texts(model, captions) @ audio.T


def _progress_bar(enabled: bool, total: int, desc: str, unit: str) -> Callable[..., None]:
    """A tqdm bar on stderr when wanted, else a no-op with the same call shape."""
    if not enabled:
        return lambda n, close=False: None
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, leave=False)

    def step(n: int, close: bool = False) -> None:
        bar.update(n)
        if close:
            bar.close()

    return step


# ---------------------------------------------------------------------------------------------
# queries and relevance
# ---------------------------------------------------------------------------------------------


def _unique(items: Sequence[str]) -> list[str]:
    """Drop repeats, keeping first-seen order, so each query is one score-file row."""
    return list(dict.fromkeys(items))


def clotho_queries(clips: Sequence[CaptionedClip]) -> tuple[list[str], list[list[int]]]:
    """Single-positive protocol: each distinct caption, relevant to every clip it was written for."""
    owners: dict[str, list[int]] = {}
    for i, clip in enumerate(clips):
        for caption in clip.captions:
            if caption.strip():
                owners.setdefault(caption, [])
                if i not in owners[caption]:
                    owners[caption].append(i)
    if not owners:
        raise ValueError("the clips carry no captions to use as queries")
    return list(owners), list(owners.values())


def multi_positive_queries(
    annotations: str | os.PathLike[str], file_names: Sequence[str]
) -> tuple[list[str], list[list[int]]]:
    """DCASE 2025 protocol: the annotation's queries and the candidate columns relevant to each."""
    from .data import load_multi_positive

    path = Path(annotations)
    relevant_files = load_multi_positive(path)
    known = {html.unescape(n) for n in file_names}
    missing = sorted({f for files in relevant_files.values() for f in files if html.unescape(f) not in known})
    if missing:
        raise ValueError(
            f"{path}: {len(missing)} relevant files are not among the {len(file_names)} candidate clips "
            f"(first: {missing[0]!r}); the multi-positive protocol needs the whole evaluation split"
        )
    queries = list(relevant_files)
    return queries, read_relevance(path, queries, file_names)


def read_queries(path: str | os.PathLike[str]) -> list[str]:
    """Queries from a CSV (a caption or query column, or Clotho captions) or a text file, one a line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc})") from None
    if path.suffix.lower() not in (".csv", ".tsv"):
        queries = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        rows = list(csv.reader(text.splitlines(), delimiter="\t" if path.suffix.lower() == ".tsv" else ","))
        if not rows:
            raise ValueError(f"{path}: empty file (expected a header with a 'caption' or 'query' column)")
        header = [h.strip().lower() for h in rows[0]]
        if "caption" in header or "query" in header:
            cols = [header.index("caption" if "caption" in header else "query")]
        elif header and header[0] == "file_name" and all(h.startswith("caption") for h in header[1:]):
            cols = list(range(1, len(header)))
        else:
            raise ValueError(
                f"{path}: line 1: header {rows[0]!r} has no 'caption' or 'query' column "
                "(nor is it a Clotho 'file_name,caption_1,...' file)"
            )
        queries = [row[c] for row in rows[1:] for c in cols if c < len(row) and row[c].strip()]
    if not queries:
        raise ValueError(f"{path}: no queries found")
    return _unique(queries)


def audio_dir_candidates(audio_dir: str | os.PathLike[str]) -> list[Candidate]:
    """The audio files directly inside a folder, by name, as retrieval candidates."""
    root = Path(audio_dir)
    if not root.is_dir():
        raise ValueError(f"audio folder {root} does not exist or is not a folder")
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
    if not files:
        raise ValueError(f"{root}: no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))})")
    return [Candidate(p, p.name) for p in files]


# ---------------------------------------------------------------------------------------------
# protocols
# ---------------------------------------------------------------------------------------------


def evaluate_model(
    model: EmbeddingModel,
    clips: Sequence[CaptionedClip],
    annotations: str | os.PathLike[str] | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, dict[str, float] | None]:
    """Both protocols from one pass over the audio: single-positive, and multi-positive given annotations."""
    file_names = [c.file_name for c in clips]
    single_queries, single_relevant = clotho_queries(clips)
    multi = multi_positive_queries(annotations, file_names) if annotations is not None else None
    audio = embed_clips(model, clips, batch_size=batch_size, progress=progress)
    single_scores = embed_texts(model, single_queries) @ audio.T
    single = retrieval_metrics(single_scores, single_relevant, **SINGLE_POSITIVE_KS)
    result: dict[str, dict[str, float] | None] = {"single_positive": single, "multi_positive": None}
    if multi is not None:
        queries, relevant = multi
        result["multi_positive"] = retrieval_metrics(
            embed_texts(model, queries) @ audio.T, relevant, **MULTI_POSITIVE_KS
        )
    return result


# ---------------------------------------------------------------------------------------------
# score and ranking files
# ---------------------------------------------------------------------------------------------


@dataclass
class ScoreTable:
    """A score file in memory: query captions (rows), candidate file names (columns) and similarities."""

    captions: list[str]
    file_names: list[str]
    scores: np.ndarray
    source: str = "<memory>"


def read_score_table(path: str | os.PathLike[str]) -> ScoreTable:
    """Read a challenge score file, remembering where it came from for error messages."""
    captions, file_names, scores = read_score_file(path)
    return ScoreTable(captions, file_names, scores, str(path))


def _check_table(captions: Sequence[str], file_names: Sequence[str], scores: np.ndarray) -> np.ndarray:
    """Refuse what the score-file reader would refuse, before writing a file nobody can read back."""
    scores = np.asarray(scores)
    if scores.shape != (len(captions), len(file_names)):
        raise ValueError(
            f"scores have shape {scores.shape} for {len(captions)} captions and {len(file_names)} files"
        )
    if not captions or not file_names:
        raise ValueError("a score file needs at least one caption and one candidate file")
    for kind, names in (("caption", captions), ("file name", file_names)):
        seen: set[str] = set()
        for name in names:
            if not name.strip():
                raise ValueError(f"empty {kind}")
            if name in seen:
                raise ValueError(f"duplicate {kind} {name!r}")
            seen.add(name)
    if not np.all(np.isfinite(scores)):
        row = int(np.flatnonzero(~np.isfinite(scores).all(axis=1))[0])
        raise ValueError(f"scores for caption {captions[row]!r} are not all finite")
    return scores


def write_score_file(
    path: str | os.PathLike[str], captions: Sequence[str], file_names: Sequence[str], scores: np.ndarray
) -> None:
    """Write the submission score file; 9 digits give back each float32 exactly, 17 each float64."""
    scores = _check_table(captions, file_names, scores)
    fmt = "{:.9g}" if scores.dtype == np.float32 else "{:.17g}"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([SCORE_HEADER, *file_names])
        for caption, row in zip(captions, scores, strict=True):
            writer.writerow([caption, *map(fmt.format, row.tolist())])


def rank_candidates(scores: np.ndarray, top_k: int) -> np.ndarray:
    """Each query's top_k column indices, best first; ties go to the lower column, as in the metrics."""
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    scores = np.asarray(scores, dtype=np.float64)
    return np.argsort(-scores, axis=1, kind="stable")[:, : min(top_k, scores.shape[1])]


def write_ranking(
    path: str | os.PathLike[str],
    captions: Sequence[str],
    file_names: Sequence[str],
    scores: np.ndarray,
    top_k: int = 10,
) -> None:
    """Write ``caption,file_name_1..file_name_k``, the ranked-list format of the 2022-2024 editions."""
    scores = _check_table(captions, file_names, scores)
    order = rank_candidates(scores, top_k)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["caption", *(f"file_name_{i}" for i in range(1, order.shape[1] + 1))])
        for caption, cols in zip(captions, order, strict=True):
            writer.writerow([caption, *(file_names[j] for j in cols)])


# ---------------------------------------------------------------------------------------------
# ensembles
# ---------------------------------------------------------------------------------------------


def _zscore_rows(scores: np.ndarray) -> np.ndarray:
    """Standardise each query's row so models on different scales weigh the same; flat rows become 0."""
    centred = scores - scores.mean(axis=1, keepdims=True)
    std = scores.std(axis=1, keepdims=True)
    return np.divide(centred, std, out=np.zeros_like(centred), where=std > 0)


def combine_scores(matrices: Sequence[np.ndarray], method: str = "mean") -> np.ndarray:
    """Fuse several (queries x candidates) matrices: plain mean, or mean of per-query z-scores."""
    if method not in COMBINE_METHODS:
        raise ValueError(f"unknown combine method {method!r}; choose one of {', '.join(COMBINE_METHODS)}")
    if not matrices:
        raise ValueError("nothing to combine: no score matrices given")
    arrays = [np.asarray(m, dtype=np.float64) for m in matrices]
    for i, a in enumerate(arrays):
        if a.ndim != 2 or a.shape != arrays[0].shape:
            raise ValueError(f"score matrix {i} has shape {a.shape}, matrix 0 has {arrays[0].shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"score matrix {i} contains non-finite values")
    if method == "zscore":
        arrays = [_zscore_rows(a) for a in arrays]
    return np.mean(arrays, axis=0)


def _index(names: Sequence[str], kind: str, source: str) -> dict[str, int]:
    """Position of each name, refusing repeats, which would make alignment ambiguous."""
    index: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in index:
            raise ValueError(f"{source}: {kind} {name!r} appears twice ({index[name] + 1} and {i + 1})")
        index[name] = i
    return index


def _order_like(
    reference: Sequence[str], names: Sequence[str], kind: str, ref_src: str, src: str
) -> list[int]:
    """Positions in `names` of each reference name, naming the first mismatch either way."""
    if list(names) == list(reference):
        return list(range(len(names)))
    ref_index = _index(reference, kind, ref_src)
    index = _index(names, kind, src)
    extra = [n for n in names if n not in ref_index]
    missing = [n for n in reference if n not in index]
    for bad, where, other in ((extra, src, ref_src), (missing, ref_src, src)):
        if bad:
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise ValueError(f"{kind} mismatch: {kind} {bad[0]!r} of {where} is not in {other}{more}")
    return [index[n] for n in reference]


def align_score_tables(tables: Sequence[ScoreTable]) -> list[np.ndarray]:
    """Reorder every table's matrix to the first table's captions and columns, or say what does not match."""
    if not tables:
        raise ValueError("no score files given")
    ref = tables[0]
    out = []
    for t in tables:
        rows = _order_like(ref.captions, t.captions, "caption", ref.source, t.source)
        cols = _order_like(ref.file_names, t.file_names, "column", ref.source, t.source)
        out.append(t.scores[np.ix_(rows, cols)])
    return out
