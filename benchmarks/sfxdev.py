"""The sfx-dev development set: manifest loader, curated queries, anonymised copies and a file-name peer.

``../shared/data/sfx-dev`` holds 1,506 sound effects from Debian game packages with weak labels in
``manifest.tsv``. This module turns it into a retrieval benchmark:

* :func:`load_manifest` reads the clips (skipping empty files);
* :func:`load_queries` reads the hand-written queries in ``sfxdev_queries.tsv``; each query's
  ``match`` regex is applied (``re.fullmatch``) to ``f"{source}|{dir_context}|{path_label}"`` of every
  clip, and every clip it matches is relevant;
* :func:`anonymise` copies the clips to random hex names so that nothing can match on the file name;
* :func:`keyword_scores` is the peer a user would otherwise use: a BM25 keyword search over the
  original file paths, as a file browser or ``grep`` would give;
* :func:`split_by_package` holds whole packages out, for fine-tuning experiments.
"""

from __future__ import annotations

import csv
import json
import math
import random
import re
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np

QUERIES_TSV = Path(__file__).with_name("sfxdev_queries.tsv")
MAPPING_FILE = "mapping.json"
DEFAULT_HOLDOUT = ("wesnoth", "freedesktop")


@dataclass(frozen=True)
class Clip:
    rel_path: str  # relative to the sfx-dev folder
    source: str  # game or theme: 0ad, wesnoth, widelands, minetest, hedgewars, freedesktop
    package: str  # Debian package
    duration: float  # seconds
    path_label: str  # words from the file name
    dir_context: str  # the last two folders

    @property
    def key(self) -> str:
        """The string a query's ``match`` regex is applied to."""
        return f"{self.source}|{self.dir_context}|{self.path_label}"


# ---------------------------------------------------------------------------------------------
# manifest and queries
# ---------------------------------------------------------------------------------------------


def load_manifest(sfx_dir: str | PathLike[str], include_empty: bool = False) -> list[Clip]:
    """Read ``manifest.tsv`` in file order; zero-length files (hedgewars ``custom*.ogg``) are left out."""
    manifest = Path(sfx_dir) / "manifest.tsv"
    clips: list[Clip] = []
    with open(manifest, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            clip = Clip(
                rel_path=row["path"],
                source=row["source"],
                package=row["package"],
                duration=float(row["duration_s"]),
                path_label=row["path_label"],
                dir_context=row["dir_context"],
            )
            if include_empty or clip.duration > 0:
                clips.append(clip)
    if not clips:
        raise ValueError(f"{manifest}: no clips")
    return clips


def load_queries(
    path: str | PathLike[str] = QUERIES_TSV, clips: Sequence[Clip] | None = None
) -> tuple[list[str], list[list[int]]]:
    """Read the query file and give each query the indices of its relevant clips in ``clips``.

    Raises ValueError for a malformed file, a bad or duplicate query, or a regex that matches nothing.
    """
    path = Path(path)
    if clips is None:
        raise ValueError("load_queries needs the clips (from load_manifest) to resolve the match regexes")
    keys = [c.key for c in clips]
    queries: list[str] = []
    relevant: list[list[int]] = []
    seen: set[str] = set()
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header != ["query", "match"]:
            raise ValueError(f"{path}: header must be 'query<TAB>match', got {header!r}")
        for line, row in enumerate(reader, start=2):
            if not row or not "".join(row).strip():
                continue
            if len(row) != 2:
                raise ValueError(f"{path}: line {line}: expected 2 tab-separated fields, got {len(row)}")
            query, pattern = row[0].strip(), row[1].strip()
            if not query:
                raise ValueError(f"{path}: line {line}: empty query")
            if query in seen:
                raise ValueError(f"{path}: line {line}: duplicate query {query!r}")
            seen.add(query)
            try:
                rx = re.compile(pattern)
            except re.error as exc:
                raise ValueError(
                    f"{path}: line {line}: query {query!r}: bad regex {pattern!r} ({exc})"
                ) from None
            hits = [i for i, key in enumerate(keys) if rx.fullmatch(key)]
            if not hits:
                raise ValueError(f"{path}: line {line}: query {query!r}: regex {pattern!r} matches no clip")
            queries.append(query)
            relevant.append(hits)
    if not queries:
        raise ValueError(f"{path}: no queries")
    return queries, relevant


def split_by_package(
    clips: Sequence[Clip], holdout_sources: Sequence[str] = DEFAULT_HOLDOUT
) -> tuple[list[int], list[int]]:
    """(train, test) clip indices: the test side is every clip of the held-out sources (whole packages)."""
    unknown = set(holdout_sources) - {c.source for c in clips}
    if unknown:
        raise ValueError(f"unknown holdout sources {sorted(unknown)}")
    hold = set(holdout_sources)
    train = [i for i, c in enumerate(clips) if c.source not in hold]
    test = [i for i, c in enumerate(clips) if c.source in hold]
    return train, test


def restrict(
    queries: Sequence[str], relevant: Sequence[Sequence[int]], keep_clips: Sequence[int]
) -> tuple[list[str], list[list[int]], list[int]]:
    """Restrict a benchmark to a subset of clips.

    Returns the queries that keep at least one relevant clip, their relevant lists re-indexed into
    ``keep_clips`` order, and the indices (into ``queries``) of the kept queries.
    """
    pos = {c: j for j, c in enumerate(keep_clips)}
    out_q: list[str] = []
    out_rel: list[list[int]] = []
    kept: list[int] = []
    for i, (q, rel) in enumerate(zip(queries, relevant, strict=True)):
        r = sorted(pos[c] for c in rel if c in pos)
        if r:
            out_q.append(q)
            out_rel.append(r)
            kept.append(i)
    return out_q, out_rel, kept


# ---------------------------------------------------------------------------------------------
# anonymised copies
# ---------------------------------------------------------------------------------------------


def anonymise(
    sfx_dir: str | PathLike[str], clips: Sequence[Clip], out_dir: str | PathLike[str], seed: int = 0
) -> list[Path]:
    """Copy each clip to ``out_dir/<random hex>.<ext>``; return the copies' paths aligned with ``clips``.

    Names come from ``seed`` (so a rerun reuses them), files are written in a shuffled order (so
    creation order tells nothing), a copy that an earlier run made from the same file (per its
    ``mapping.json``) and that still has the right size is kept, stray hex-named files from an earlier
    run are removed, and ``mapping.json`` records name -> source path.
    """
    sfx_dir, out_dir = Path(sfx_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    names: list[str] = []
    used: set[str] = set()
    for clip in clips:
        while True:
            stem = f"{rng.getrandbits(64):016x}"
            if stem not in used:
                used.add(stem)
                break
        names.append(stem + Path(clip.rel_path).suffix.lower())
    paths = [out_dir / n for n in names]

    try:  # a copy is only re-used if the earlier run made it from the same source file
        previous = json.loads((out_dir / MAPPING_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        previous = {}
    if not isinstance(previous, dict):
        previous = {}

    wanted = set(names)
    for old in out_dir.iterdir():
        if old.is_file() and old.name not in wanted and re.fullmatch(r"[0-9a-f]{16}\.\w+", old.name):
            old.unlink()

    order = list(range(len(clips)))
    rng.shuffle(order)
    for i in order:
        src, dst = sfx_dir / clips[i].rel_path, paths[i]
        size = src.stat().st_size
        if previous.get(dst.name) == clips[i].rel_path and dst.is_file() and dst.stat().st_size == size:
            continue
        tmp = dst.with_name(dst.name + ".part")
        shutil.copyfile(src, tmp)
        tmp.replace(dst)

    mapping = {n: c.rel_path for n, c in zip(names, clips, strict=True)}
    text = json.dumps(mapping, indent=1, sort_keys=True) + "\n"
    (out_dir / MAPPING_FILE).write_text(text, encoding="utf-8")
    return paths


def strip_tags(paths: Sequence[Path]) -> int:
    """Remove embedded tags (Vorbis comments, ID3, FLAC/MP4 tags) from copies, so that an anonymised copy
    says nothing about itself in its metadata either; returns how many files had tags."""
    import mutagen

    stripped = 0
    for path in paths:
        try:
            tagged = mutagen.File(path)
        except mutagen.MutagenError:
            continue
        if tagged is not None and tagged.tags:
            tagged.delete()
            stripped += 1
    return stripped


# ---------------------------------------------------------------------------------------------
# the peer: keyword search over the original file names
# ---------------------------------------------------------------------------------------------

STOP_WORDS = frozenset(
    {
        "a", "an", "the", "of", "on", "in", "into", "onto", "with", "without", "and", "or", "as", "at",
        "by", "for", "from", "to", "off", "out", "over", "under", "through", "during", "its", "it", "is",
        "are", "be", "being", "been", "that", "this", "these", "those", "some", "something", "someone",
        "somebody", "sound", "sounds", "noise",
    }
)
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_WORD = re.compile(r"[A-Za-z]+")
_NO_COLLAPSE = frozenset("lsz")  # hiss, fall, buzz keep their double letters


def tokenise(text: str) -> list[str]:
    """Lower-case words: split on anything but letters and at camelCase joins (digits are dropped)."""
    words: list[str] = []
    for chunk in _WORD.findall(text):
        words.extend(w.lower() for w in _CAMEL.split(chunk) if w)
    return words


def stem(word: str) -> str:
    """A light suffix stripper, enough that footsteps~footstep, chopping~chop~choppy, horses~horse."""
    w = word.lower()
    if len(w) > 4 and w.endswith("ies"):
        w = w[:-3] + "y"
    elif len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    for suffix in ("ing", "ed", "ly"):
        if w.endswith(suffix) and len(w) - len(suffix) >= 3:
            w = w[: -len(suffix)]
            break
    if len(w) > 4 and w.endswith("y"):
        w = w[:-1]
    if len(w) > 3 and w[-1] == w[-2] and w[-1] not in "aeiou" and w[-1] not in _NO_COLLAPSE:
        w = w[:-1]
    if len(w) > 3 and w.endswith("e"):
        w = w[:-1]
    return w


_SOUND_ROOTS = frozenset({"sound", "sounds", "audio"})


def path_words(rel_path: str, with_folders: bool = True) -> list[str]:
    """The words a file-name search sees: the folders below the package's sound root, and the file stem.

    The Debian install prefix (``usr/share/games/wesnoth/1.16/data/core/sounds``) is layout, not a
    description, so only the part after the last ``sound``/``sounds``/``audio`` folder counts, as it
    would in a sound library a user had arranged themselves.
    """
    p = Path(rel_path)
    if not with_folders:
        return tokenise(p.stem)
    folders = list(p.parent.parts)[1:]  # the first folder is the data set's per-source folder
    roots = [i for i, part in enumerate(folders) if part.lower() in _SOUND_ROOTS]
    if roots:
        folders = folders[roots[-1] + 1 :]
    return tokenise(" ".join([*folders, p.stem]))


def _term_weight(q: str, t: str, partial: float) -> float:
    """How much document token ``t`` counts as an occurrence of query term ``q`` (both stemmed)."""
    if q == t:
        return 1.0
    # compound file names ("swordhit", "windgust", "sawmill", "jackhammer"): a prefix of 3+ letters
    # or a substring of 4+ letters, either way round
    short, long_ = (q, t) if len(q) <= len(t) else (t, q)
    if (len(short) >= 3 and long_.startswith(short)) or (len(short) >= 4 and short in long_):
        return partial
    return 0.0


def keyword_scores(
    queries: Sequence[str],
    clips: Sequence[Clip],
    k1: float = 1.2,
    b: float = 0.75,
    partial: float = 0.7,
    tie_break_seed: int | None = 0,
    with_folders: bool = True,
) -> np.ndarray:
    """BM25 over the original paths' words, with light stemming and substring matching of compounds.

    Returns (n_queries, n_clips) float64 scores. Clips that share a score (above all: the many that
    match no query word) are put in a random order by a jitter far below any BM25 difference, so that
    the manifest order (where clips of one sound sit together) cannot help the peer.
    """
    docs = [[stem(w) for w in path_words(c.rel_path, with_folders)] for c in clips]
    n_docs = len(docs)
    lengths = np.array([len(d) for d in docs], dtype=np.float64)
    avg_len = float(lengths.mean()) if n_docs else 1.0
    vocab = sorted({t for d in docs for t in d})
    doc_counts = [Counter(d) for d in docs]

    # tf[q][doc] for every distinct query term, computed once over the vocabulary
    term_tf: dict[str, np.ndarray] = {}

    def tf_of(term: str) -> np.ndarray:
        if term not in term_tf:
            weights = {t: w for t in vocab if (w := _term_weight(term, t, partial)) > 0}
            tf = np.zeros(n_docs)
            if weights:
                for j, counts in enumerate(doc_counts):
                    tf[j] = sum(weights[t] * n for t, n in counts.items() if t in weights)
            term_tf[term] = tf
        return term_tf[term]

    scores = np.zeros((len(queries), n_docs))
    norm = k1 * (1.0 - b + b * lengths / avg_len)
    for i, query in enumerate(queries):
        terms = {stem(w) for w in tokenise(query) if w not in STOP_WORDS and len(w) >= 2}
        for term in terms:
            tf = tf_of(term)
            df = int(np.count_nonzero(tf))
            if df == 0:
                continue
            idf = math.log(1.0 + (n_docs - df + 0.5) / (df + 0.5))
            scores[i] += idf * tf * (k1 + 1.0) / (tf + norm)
    if tie_break_seed is not None:
        rng = np.random.default_rng(tie_break_seed)
        scores += rng.uniform(0.0, 1e-6, size=scores.shape)
    return scores
