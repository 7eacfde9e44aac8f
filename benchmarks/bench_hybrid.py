"""Hybrid search on sfx-dev: audio, text and fused rankings, fusion alternatives, calibration, "no match".

    python benchmarks/bench_hybrid.py --sfx ../shared/data/sfx-dev --work bench-out/hybrid [--json out.json]

Indexes sfx-dev twice through the package's `Library`: as it is (original file and folder names and
embedded tags, the indexed root being the sfx-dev folder) and as anonymised copies (random hex names, one
flat folder, embedded tags removed: 75 of the ogg files carry titles such as "geologist hammer 00"), then:

1. **Fusion sweep** on the development packages only (`sfxdev.split_by_package`: wesnoth and freedesktop
   held out): score-weighted fusion `audio + wt * bm25 / (bm25 + h) + wn * name` over a grid, each signal
   alone, reciprocal-rank fusion, and a learned (logistic) ranking. The three scores of every clip come
   from the library itself (a hybrid search for all clips scores each of them exactly on every side).
2. **Calibration**: a logistic fit of P(relevant | audio, text, name) on the top-50 hybrid candidates of
   every development query in both libraries, with a reliability table per split.
3. **No good match**: the best result's strength for `sfxdev_nomatch.txt` (sounds sfx-dev lacks) against
   the benchmark queries, and the threshold that separates them best on the development packages.
4. **Final table**: `Library.search_many` in each mode with the shipped `DEFAULT_FUSION`, on both
   libraries, all packages and held-out packages.

It prints the constants it fitted next to the shipped ones; `library/fusion.py` holds the shipped ones.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sfxdev import (  # noqa: E402
    QUERIES_TSV,
    anonymise,
    load_manifest,
    load_queries,
    restrict,
    split_by_package,
    strip_tags,
)

from audiofind.library import Library  # noqa: E402
from audiofind.library.fusion import (  # noqa: E402
    DEFAULT_FUSION,
    FusionParams,
    fit_logistic,
    fuse,
    match_strength,
    reciprocal_rank_fusion,
    saturate,
)
from audiofind.research.metrics import retrieval_metrics  # noqa: E402

NOMATCH_TXT = Path(__file__).with_name("sfxdev_nomatch.txt")
METRICS = ("R@1", "R@5", "R@10", "mAP@10")
TEXT_WEIGHTS = (0.5, 1.0, 1.5)
NAME_WEIGHTS = (0.0, 0.5, 1.0, 1.5)
HALVES = (2.0, 4.0, 8.0)


def open_library(index_dir: Path, roots: Sequence[Path], workers: int) -> Library:
    lib = Library.open(index_dir, create=True)
    lib.update([str(r) for r in roots], workers=workers, progress=False)
    return lib


def mode_matrices(lib: Library, queries: Sequence[str], column: dict[str, int], k: int, mode: str,
                  fields: Sequence[str]) -> list[np.ndarray]:
    """(queries, clips) of result fields of the top-`k` results of `search_many` in `mode`; others NaN."""
    out = [np.full((len(queries), len(column)), np.nan) for _ in fields]
    for i, hits in enumerate(lib.search_many(list(queries), k=k, mode=mode)):
        for h in hits:
            for path in h.paths:  # identical files are one result listing every copy: each is found
                j = column.get(str(Path(path).resolve()))
                if j is not None:
                    for matrix, field in zip(out, fields, strict=True):
                        matrix[i, j] = getattr(h, field)
    return out


def raw_bm25(text_score: np.ndarray, half: float) -> np.ndarray:
    """Undo the shipped saturation t = b / (b + half), so other halves can be tried."""
    t = np.nan_to_num(text_score, nan=0.0)
    return half * t / np.maximum(1.0 - t, 1e-12)


def metrics(scores: np.ndarray, relevant: Sequence[Sequence[int]]) -> dict[str, float]:
    return {k: v for k, v in retrieval_metrics(np.nan_to_num(scores, nan=-np.inf), relevant).items()
            if k in METRICS}


def table(rows: dict[str, dict[str, float]], head: str = "method") -> str:
    lines = [f"| {head} | " + " | ".join(METRICS) + " |", "|---|" + "---:|" * len(METRICS)]
    lines += [f"| {name} | " + " | ".join(f"{m[k]:.3f}" for k in METRICS) + " |" for name, m in rows.items()]
    return "\n".join(lines)


def sweep(audio: np.ndarray, bm25: np.ndarray, name: np.ndarray,
          relevant: Sequence[Sequence[int]]) -> dict[str, dict]:
    """Every fusion alternative on one benchmark."""
    rows: dict[str, dict[str, float]] = {
        "audio only": metrics(audio, relevant),
        "BM25 only": metrics(np.where(bm25 > 0, bm25, np.nan), relevant),
        "name vectors only": metrics(np.where(name > 0, name, np.nan), relevant),
    }
    for wt in TEXT_WEIGHTS:
        for wn in NAME_WEIGHTS:
            for h in HALVES:
                fused = audio + wt * saturate(bm25, h) + wn * name
                rows[f"weighted wt={wt:g} wn={wn:g} h={h:g}"] = metrics(fused, relevant)
    words = saturate(bm25, DEFAULT_FUSION.text_half) + name
    rrf = np.stack([reciprocal_rank_fusion(a, b) for a, b in zip(audio, words, strict=True)])
    rows["reciprocal rank of audio and words (k=60)"] = metrics(rrf, relevant)
    return rows


def candidates(audio: np.ndarray, text: np.ndarray, name: np.ndarray, params: FusionParams, top: int = 50):
    """(features, rows, columns) of each query's top hybrid candidates, for calibration."""
    fused = fuse(audio, text, name, "hybrid", params)
    order = np.argsort(-fused, axis=1, kind="stable")[:, :top]
    rows = np.repeat(np.arange(len(audio))[:, None], top, axis=1)
    feats = np.stack([audio[rows, order].ravel(), text[rows, order].ravel(), name[rows, order].ravel()], 1)
    return feats, rows, order


def calibration_data(libs: list[tuple[np.ndarray, np.ndarray, np.ndarray]], relevant, params: FusionParams):
    feats, labels = [], []
    for audio, text, name in libs:
        f, rows, order = candidates(audio, text, name, params)
        rel = np.zeros(audio.shape, bool)
        for i, r in enumerate(relevant):
            rel[i, list(r)] = True
        feats.append(f)
        labels.append(rel[rows, order].ravel())
    return np.concatenate(feats), np.concatenate(labels)


def reliability(strength: np.ndarray, labels: np.ndarray) -> str:
    edges = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0001]
    lines = ["| match strength | results | relevant (observed) |", "|---|---:|---:|"]
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (strength >= lo) & (strength < hi)
        if sel.any():
            lines.append(f"| {lo:.1f}–{min(hi, 1):.1f} | {int(sel.sum())} | {labels[sel].mean():.2f} |")
    return "\n".join(lines)


def best_strengths(lib: Library, queries: Sequence[str]) -> tuple[np.ndarray, list]:
    results = lib.search_many(list(queries), k=1, mode="hybrid")
    return np.array([hits[0].match if hits else 0.0 for hits in results]), results


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sfx", type=Path, default=Path("../shared/data/sfx-dev"))
    ap.add_argument("--work", type=Path, default=Path("bench-out/hybrid"))
    ap.add_argument("--queries", type=Path, default=QUERIES_TSV)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    clips = load_manifest(args.sfx)
    queries, relevant = load_queries(args.queries, clips)
    nomatch = [ln.strip() for ln in NOMATCH_TXT.read_text(encoding="utf-8").splitlines()
               if ln.strip() and not ln.startswith("#")]
    train_cols, test_cols = split_by_package(clips)
    n = len(clips)
    anon = anonymise(args.sfx, clips, args.work / "clips")
    strip_tags(anon)
    setups = {
        "original names": (open_library(args.work / "named-index", [args.sfx.resolve()], args.workers),
                           {str((args.sfx / c.rel_path).resolve()): j for j, c in enumerate(clips)}),
        "anonymised": (open_library(args.work / "anon-index", [args.work / "clips"], args.workers),
                       {str(p.resolve()): j for j, p in enumerate(anon)}),
    }
    scores = {}
    for name, (lib, column) in setups.items():
        # hybrid with k = every clip scores every clip exactly on all three sides
        audio, text, names = mode_matrices(lib, queries, column, n, "hybrid",
                                           ("audio_score", "text_score", "name_score"))
        scores[name] = (np.nan_to_num(audio, nan=0.0), raw_bm25(text, DEFAULT_FUSION.text_half),
                        np.nan_to_num(names, nan=0.0))

    np.savez(args.work / "scores.npz", **{f"{name}.{side}": m for name, ms in scores.items()
                                          for side, m in zip(("audio", "bm25", "name"), ms, strict=True)})
    out: dict = {"command": "python " + " ".join(shlex.quote(a) for a in sys.argv), "n_queries": len(queries),
                 "n_clips": n, "n_nomatch_queries": len(nomatch)}
    q_train, rel_train, rows_train = restrict(queries, relevant, train_cols)
    q_test, rel_test, rows_test = restrict(queries, relevant, test_cols)

    print(f"# sfx-dev hybrid search: {len(queries)} queries, {n} clips; development packages "
          f"{len(q_train)} queries / {len(train_cols)} clips, held-out packages {len(q_test)} / "
          f"{len(test_cols)}\n")
    print("## 1. Fusion alternatives, development packages, original names\n")
    dev_scores = [x[np.ix_(rows_train, train_cols)] for x in scores["original names"]]
    rows = sweep(*dev_scores, rel_train)
    print(table(rows))
    out["sweep_dev"] = rows
    best = max((k for k in rows if k.startswith("weighted")), key=lambda k: rows[k]["mAP@10"])
    d = DEFAULT_FUSION
    print(f"\nbest score-weighted setting on the development packages: {best} (shipped: "
          f"wt={d.text_weight:g} wn={d.name_weight:g} h={d.text_half:g})\n")

    print("## 2. Calibration (logistic P(relevant | audio, text, name), top-50 hybrid candidates)\n")
    shipped = DEFAULT_FUSION

    def part(r_q, cols):
        cut = np.ix_(r_q, cols)
        return [(a[cut], saturate(b[cut], shipped.text_half), nm[cut]) for a, b, nm in scores.values()]

    feats, labels = calibration_data(part(rows_train, train_cols), rel_train, shipped)
    coef = fit_logistic(feats, labels)
    print(f"fitted logit = {coef[0]:.2f} + {coef[1]:.2f} * audio + {coef[2]:.2f} * text + {coef[3]:.2f} "
          f"* name (shipped: {' / '.join(f'{c:.2f}' for c in shipped.calibration)})\n")
    learned = {}
    a, b, nm = dev_scores
    learned["learned (logistic) ranking"] = metrics(coef[1] * a + coef[2] * saturate(b, shipped.text_half)
                                                    + coef[3] * nm, rel_train)
    print(table(learned) + "\n")
    out["calibration_fit"] = coef.tolist()
    for split, r_q, cols, rel in (("development", rows_train, train_cols, rel_train),
                                  ("held-out", rows_test, test_cols, rel_test)):
        f, lab = calibration_data(part(r_q, cols), rel, shipped)
        print(f"reliability of the shipped calibration, {split} packages, both libraries:\n")
        print(reliability(match_strength(f[:, 0], f[:, 1], f[:, 2], shipped), lab) + "\n")

    print("## 3. \"Nothing in this library matches well\"\n")
    lines = ["| library | threshold | no-match queries flagged | queries with a right top-1 not flagged |",
             "|---|---:|---:|---:|"]
    state = {}
    for name, (lib, column) in setups.items():
        miss, _ = best_strengths(lib, nomatch)
        have, results = best_strengths(lib, queries)
        top_right = np.array([bool(hits) and column.get(str(Path(hits[0].path).resolve())) in set(rel)
                              for hits, rel in zip(results, relevant, strict=True)])
        state[name] = (miss, have, top_right)
    for tau in (0.15, 0.2, 0.25, 0.3, 0.35, 0.4):
        for name, (miss, have, right) in state.items():
            flagged, kept = np.mean(miss < tau), np.mean(have[right] >= tau)
            lines.append(f"| {name} | {tau:.2f} | {flagged:.2f} | {kept:.2f} |")
    print("\n".join(lines))
    print(f"\nshipped threshold: {shipped.weak_below:.2f}\n")
    out["nomatch"] = {name: {"nomatch_best": m.tolist(), "query_best": h.tolist(), "top1_right": r.tolist()}
                      for name, (m, h, r) in state.items()}

    print("## 4. Library search with the shipped settings\n")
    final: dict[str, dict[str, float]] = {}
    for name, (lib, column) in setups.items():
        for mode in ("audio", "text", "hybrid"):
            field = {"audio": "audio_score", "text": "text_score", "hybrid": "score"}[mode]
            [m] = mode_matrices(lib, queries, column, 10, mode, [field])  # R@10, mAP@10 need only the top 10
            final[f"{name}, {mode}, all packages"] = metrics(m, relevant)
            final[f"{name}, {mode}, held-out packages"] = metrics(m[np.ix_(rows_test, test_cols)], rel_test)
    print(table(final, "library, mode, split"))
    out["final"] = final
    print(f"\ncommand: `{out['command']}`")
    for lib, _ in setups.values():
        lib.close()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    return out


if __name__ == "__main__":
    main()
