"""FAISS index families for large libraries: bytes per clip, build time, latency and recall@10 vs exact.

    python benchmarks/bench_large.py --seed-index bench-out/hybrid/named-index --sizes 100000,1000000

Library vectors are the bench_search.py mixtures of real clip vectors (seeded from a real index's
vectors); queries are the 159 real sfx-dev queries through the real text encoder, one at a time on one
FAISS thread. Each family is trained on a sample (64 points per list) and filled in 100,000-row chunks,
as the library builds it. "+refine R" families take the R * k best candidates from the compact codes and
re-score them exactly against the float16 vectors (held here in a numpy array; the library reads them
from SQLite, which bench_large_library.py measures).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_hybrid_latency import seed_rows  # noqa: E402
from bench_search import recall_at_k, synthetic_library  # noqa: E402
from report import finish  # noqa: E402
from sfxdev import QUERIES_TSV, load_manifest, load_queries  # noqa: E402

from audiofind.library.vector_index import (  # noqa: E402
    default_nlist,
    empty_faiss_index,
    ivf_factory,
    train_sample_size,
)

FAMILIES = "IVF{nlist},Flat;IVF{nlist},SQ8;IVF{nlist},PQ31np+refine10;IVF{nlist},SQ4+refine5"


def build(spec: str, vectors: np.ndarray, rng: np.random.Generator) -> tuple[faiss.Index, float]:
    """Train on a sample and add in chunks; returns the index and build seconds. `spec` "ivfpq" is the
    library's own family (vector_index.empty_faiss_index), anything else a FAISS factory string."""
    t0 = time.perf_counter()
    if spec == "ivfpq":
        n = len(vectors)
        sample = vectors[np.sort(rng.choice(n, train_sample_size(spec, n), replace=False))]
        index = empty_faiss_index(vectors.shape[1], spec, n, sample)
        for start in range(0, n, 100_000):
            index.add_with_ids(vectors[start:start + 100_000], np.arange(start, min(n, start + 100_000)))
        return index, time.perf_counter() - t0
    index = faiss.index_factory(vectors.shape[1], spec, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.niter = 10
    sample = vectors[np.sort(rng.choice(len(vectors), min(len(vectors), 64 * ivf.nlist), replace=False))]
    index.train(sample)
    for start in range(0, len(vectors), 100_000):
        index.add(vectors[start:start + 100_000])
    return index, time.perf_counter() - t0


def search(index: faiss.Index, stored: np.ndarray, q: np.ndarray, k: int, nprobe: int,
           refine: int) -> np.ndarray:
    """Top-k ids for one query: compact codes, then (refine > 0) exact re-scoring of refine * k candidates."""
    params = faiss.SearchParametersIVF(nprobe=nprobe)
    _, ids = index.search(q[None], k * max(refine, 1), params=params)
    ids = ids[0][ids[0] >= 0]
    if refine:
        scores = stored[ids].astype(np.float32) @ q
        ids = ids[np.argsort(-scores, kind="stable")[:k]]
    return ids[:k]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed-index", type=Path, default=Path("bench-out/hybrid/named-index"))
    ap.add_argument("--sfx", type=Path, default=Path("../shared/data/sfx-dev"))
    ap.add_argument("--sizes", default="100000")
    ap.add_argument("--families", default=FAMILIES,
                    help="';'-separated factory strings or 'ivfpq' (the library's), +refineR[,R2...]")
    ap.add_argument("--nprobe", default="8,16")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    faiss.omp_set_num_threads(1)
    from audiofind.models import load_model

    queries, _ = load_queries(QUERIES_TSV, load_manifest(args.sfx))
    qvecs = load_model().encode_text(list(queries)).astype(np.float32)
    seeds = seed_rows(args.seed_index)["audio"]
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        rng = np.random.default_rng(0)
        vectors = synthetic_library(seeds, n, rng)
        stored = vectors.astype(np.float16)
        exact = faiss.IndexFlatIP(vectors.shape[1])
        exact.add(vectors)
        _, exact_ids = exact.search(qvecs, 10)
        del exact
        for family in args.families.split(";"):
            spec, _, refine = family.format(nlist=default_nlist(n)).partition("+refine")
            label = family if spec != "ivfpq" else \
                f"ivfpq: {ivf_factory(spec, vectors.shape[1], default_nlist(n), 10**9)}+refine{refine}"
            index, build_s = build(spec, vectors, rng)
            size = len(faiss.serialize_index(index))
            for nprobe, factor in ((int(p), int(f)) for p in args.nprobe.split(",")
                                   for f in (refine or "0").split(",")):
                times, found = [], []
                for r in range(2):
                    for q in qvecs:
                        t0 = time.perf_counter()
                        ids = search(index, stored, q, 10, nprobe, factor)
                        times.append(1000 * (time.perf_counter() - t0))
                        if r:
                            found.append(np.pad(ids, (0, 10 - len(ids)), constant_values=-1))
                    if r == 0:
                        times.clear()
                name = label.split("+refine")[0] + (f"+refine{factor}" if factor else "")
                row = {"clips": n, "family": name.format(nlist=default_nlist(n)), "nprobe": nprobe,
                       "build_s": build_s, "faiss_bytes_per_clip": size / n,
                       "p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
                       "recall10": recall_at_k(exact_ids, np.stack(found))}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
            del index
    print("| clips | family | nprobe | build s | FAISS B/clip | p50 ms | p99 ms | recall@10 |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['clips']:,} | {r['family']} | {r['nprobe']} | {r['build_s']:.0f} | "
              f"{r['faiss_bytes_per_clip']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
              f"{r['recall10']:.3f} |")
    finish(rows, args.json)


if __name__ == "__main__":
    main()
