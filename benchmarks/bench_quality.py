"""Retrieval quality on the sfx-dev development set: zero-shot search against a file-name keyword search.

    python benchmarks/bench_quality.py --sfx ../shared/data/sfx-dev --work bench-out/quality

copies the clips to anonymous names (``<work>/clips``), indexes them with the package's Library API
(``<work>/index`` unless ``--index-dir``), runs the hand-written queries of ``sfxdev_queries.tsv`` and
prints a markdown table of R@1, R@5, R@10 and mAP@10 for the zero-shot default, for the peer (BM25
keyword search over the original file names) and for a random ranking, followed by the command line
that produced it. ``--split test`` scores only the held-out packages (see ``sfxdev.split_by_package``):
candidates are the test-side clips and queries are those with a relevant clip among them.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sfxdev import (  # noqa: E402
    DEFAULT_HOLDOUT,
    QUERIES_TSV,
    anonymise,
    keyword_scores,
    load_manifest,
    load_queries,
    restrict,
    split_by_package,
)

from audiofind.research.metrics import retrieval_metrics  # noqa: E402

TABLE_METRICS = ("R@1", "R@5", "R@10", "mAP@10")
METHODS = ("zero-shot", "keyword", "keyword-path", "random")
LABELS = {
    "zero-shot": "audiofind zero-shot (default model)",
    "keyword": "keyword search over original file names (BM25)",
    "keyword-path": "keyword search over original folder + file names (BM25)",
    "random": "random ranking",
}


def zero_shot_scores(
    anon_paths: Sequence[Path],
    queries: Sequence[str],
    *,
    index_dir: str | os.PathLike[str],
    workers: int = 2,
    model: str | None = None,
    timings: dict[str, float] | None = None,
) -> np.ndarray:
    """(n_queries, n_clips) scores from the package's own search over the anonymised copies.

    Builds (or brings up to date) a library index over the copies' folder, searches every query for
    all clips, and maps the results back to clip columns; a clip the index did not rank gets -inf.
    """
    from audiofind.library import Library

    anon_paths = [Path(p).resolve() for p in anon_paths]
    roots = sorted({str(p.parent) for p in anon_paths})
    column = {str(p): j for j, p in enumerate(anon_paths)}

    t0 = time.perf_counter()
    lib = Library.open(index_dir, model, create=True)
    try:
        report = lib.update(roots, workers=workers, progress=False)
        t1 = time.perf_counter()
        # audio only: the copies keep some embedded titles, which hybrid search (the default) would match
        results = lib.search_many(list(queries), k=len(anon_paths), mode="audio")
        t2 = time.perf_counter()
    finally:
        lib.close()
    if timings is not None:
        timings.update(update_s=t1 - t0, search_s=t2 - t1, embedded=float(report.embedded))
        timings["skipped"] = float(len(report.skipped))

    scores = np.full((len(queries), len(anon_paths)), -np.inf)
    for i, hits in enumerate(results):
        for hit in hits:
            for path in hit.paths:  # identical files are one result listing every copy: each is found
                j = column.get(str(Path(path).resolve()))
                if j is not None:
                    scores[i, j] = hit.score
    return scores


def random_scores(n_queries: int, n_clips: int, seed: int = 0) -> np.ndarray:
    """Chance level: an independent random ranking per query."""
    return np.random.default_rng(seed).random((n_queries, n_clips))


def markdown_table(rows: dict[str, dict[str, float]]) -> str:
    head = "| method | " + " | ".join(TABLE_METRICS) + " |"
    rule = "|---|" + "---:|" * len(TABLE_METRICS)
    body = [
        f"| {LABELS.get(name, name)} | " + " | ".join(f"{m[k]:.3f}" for k in TABLE_METRICS) + " |"
        for name, m in rows.items()
    ]
    return "\n".join([head, rule, *body])


def command_line() -> str:
    return "python " + shlex.join([sys.argv[0], *sys.argv[1:]])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sfx", type=Path, default=Path("../shared/data/sfx-dev"), help="the sfx-dev folder")
    p.add_argument("--work", type=Path, default=Path("bench-out/quality"), help="anonymised copies and index")
    p.add_argument("--index-dir", type=Path, default=None, help="library index folder (default <work>/index)")
    p.add_argument("--queries", type=Path, default=QUERIES_TSV, help="query file (query<TAB>match regex)")
    p.add_argument("--split", choices=("all", "test"), default="all",
                   help=f"'test': only the held-out packages ({', '.join(DEFAULT_HOLDOUT)})")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--model", default=None,
                   help="model name or checkpoint for a new index (default: the package default)")
    p.add_argument("--workers", type=int, default=2, help="decoding processes for indexing")
    p.add_argument("--seed", type=int, default=0, help="seed of the anonymous names and the random row")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = set(args.methods) - set(METHODS)
    if bad or not args.methods:
        p.error(f"--methods takes a subset of {','.join(METHODS)}, got {args.methods}")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    clips = load_manifest(args.sfx)
    queries, relevant = load_queries(args.queries, clips)

    cols = list(range(len(clips)))
    rows_q = list(range(len(queries)))
    if args.split == "test":
        _, cols = split_by_package(clips)
        queries, relevant, rows_q = restrict(queries, relevant, cols)
    eval_clips = [clips[j] for j in cols]
    sizes = np.array([len(r) for r in relevant])

    results: dict[str, dict[str, float]] = {}
    timings: dict[str, float] = {}
    unranked = 0
    for method in args.methods:
        if method == "zero-shot":
            # every clip is copied and indexed whatever the split, so reruns share one index;
            # the split then selects columns (a clip's score does not depend on the others)
            anon = anonymise(args.sfx, clips, args.work / "clips", seed=args.seed)
            index_dir = args.index_dir or args.work / "index"
            full = zero_shot_scores(anon, list(queries), index_dir=index_dir, workers=args.workers,
                                    model=args.model, timings=timings)
            scores = full[:, cols]
            unranked = int(np.count_nonzero(~np.isfinite(scores).any(axis=0)))
        elif method in ("keyword", "keyword-path"):
            scores = keyword_scores(queries, eval_clips, with_folders=method == "keyword-path")
        else:
            scores = random_scores(len(queries), len(eval_clips), seed=args.seed)
        label = method if method != "zero-shot" or not args.model else f"audiofind, model {args.model}"
        results[label] = retrieval_metrics(scores, relevant)

    summary = (
        f"sfx-dev retrieval, split {args.split}: {len(queries)} queries, {len(eval_clips)} clips, "
        f"{sizes.mean():.1f} relevant clips per query (median {np.median(sizes):g}, "
        f"{int(np.count_nonzero(sizes == 1))} queries with one)"
    )
    print(summary)
    if unranked:
        print(f"warning: {unranked} clips were not ranked by the index (scored -inf)")
    print()
    print(markdown_table(results))
    print()
    print(f"command: `{command_line()}`")
    if timings:
        print(f"index update {timings.get('update_s', 0):.1f} s, search {timings.get('search_s', 0):.2f} s")

    out = {
        "split": args.split,
        "holdout_sources": list(DEFAULT_HOLDOUT) if args.split == "test" else [],
        "n_queries": len(queries),
        "n_clips": len(eval_clips),
        "mean_relevant": float(sizes.mean()),
        "median_relevant": float(np.median(sizes)),
        "query_rows": rows_q,
        "metrics": results,
        "timings": timings,
        "unranked_clips": unranked,
        "command": command_line(),
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return out


if __name__ == "__main__":
    main()
