"""Search latency at 10^3..10^6 clips for exact and approximate FAISS indexes, and query-embedding time.

Library vectors at the large sizes are synthetic but shaped like real ones: random mixtures of 1-3 real
sfx-dev clip vectors plus noise, clipped to the non-negative class-profile cone and L2-normalised.
Queries are the real benchmark queries through the real text encoder. Prints a markdown table and
the command that produced it.

    python benchmarks/bench_search.py --sfx ../shared/data/sfx-dev
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sfxdev import load_manifest, load_queries  # noqa: E402

from audiofind.audio import load_audio  # noqa: E402
from audiofind.library.vector_index import build_faiss_index, default_nlist, search_faiss  # noqa: E402
from audiofind.models import load_model  # noqa: E402


def real_clip_vectors(model, paths: list[Path], cache: Path) -> np.ndarray:
    """Embed the real clips once (cached) to seed the synthetic library."""
    if cache.exists():
        return np.load(cache)
    vecs = np.concatenate([model.embed_audio([load_audio(p)[0] for p in paths[i:i + 64]]).vectors
                           for i in range(0, len(paths), 64)])
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, vecs)
    return vecs


def synthetic_library(seed_vectors: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n vectors drawn as noisy mixtures of real ones, built in chunks to bound memory."""
    out = np.empty((n, seed_vectors.shape[1]), np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        picks = rng.integers(0, len(seed_vectors), size=(m, 3))
        weights = rng.dirichlet([1.0, 0.5, 0.25], size=m).astype(np.float32)
        mix = np.einsum("mk,mkd->md", weights, seed_vectors[picks])
        mix += rng.normal(0, 0.02, size=mix.shape).astype(np.float32)
        np.maximum(mix, 0, out=mix)
        mix /= np.maximum(np.linalg.norm(mix, axis=1, keepdims=True), 1e-12)
        out[start:start + m] = mix
    return out


def latencies_ms(index, queries: np.ndarray, k: int, repeats: int, **kw) -> np.ndarray:
    """One query at a time, as a user's search arrives."""
    times = []
    for r in range(repeats):
        for q in queries:
            t0 = time.perf_counter()
            search_faiss(index, q[None], k, **kw)
            times.append((time.perf_counter() - t0) * 1000)
        if r == 0:
            times.clear()  # first pass warms caches
    return np.array(times)


def recall_at_k(exact_ids: np.ndarray, approx_ids: np.ndarray) -> float:
    k = exact_ids.shape[1]
    return float(np.mean([len(set(e) & set(a)) / k for e, a in zip(exact_ids, approx_ids)]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sfx", type=Path, default=Path("../shared/data/sfx-dev"))
    ap.add_argument("--work", type=Path, default=Path("bench-out/search"))
    ap.add_argument("--sizes", default="1000,10000,100000,1000000")
    ap.add_argument("--nprobe", default="8,16,32", help="comma-separated IVF nprobe values to compare")
    ap.add_argument("--threads", type=int, default=1, help="FAISS threads (1 = one core per search)")
    args = ap.parse_args()
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    clips = load_manifest(args.sfx)
    queries, _ = load_queries(clips=clips)
    model = load_model()
    seeds = real_clip_vectors(model, [args.sfx / c.rel_path for c in clips], args.work / "real_vectors.npy")

    model.encode_text(queries[:4])  # warm-up
    t0 = time.perf_counter()
    for q in queries:
        model.encode_text([q])
    embed_ms = (time.perf_counter() - t0) * 1000 / len(queries)
    qvecs = model.encode_text(queries)

    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        vectors = synthetic_library(seeds, n, rng)
        ids = np.arange(n, dtype=np.int64)
        t0 = time.perf_counter()
        flat = build_faiss_index(vectors, ids, "flat")
        flat_build = time.perf_counter() - t0
        repeats = 3 if n <= 100_000 else 2
        lat = latencies_ms(flat, qvecs, 10, repeats)
        _, exact_ids = search_faiss(flat, qvecs, 10)
        rows.append((n, "exact (Flat)", flat_build, lat, 1.0))
        del flat
        t0 = time.perf_counter()
        nlist = default_nlist(n)  # what the library itself uses
        ivf = build_faiss_index(vectors, ids, "ivf", nlist=nlist)
        ivf_build = time.perf_counter() - t0
        for nprobe in [int(p) for p in args.nprobe.split(",")]:
            lat = latencies_ms(ivf, qvecs, 10, 3, nprobe=nprobe)
            _, approx_ids = search_faiss(ivf, qvecs, 10, nprobe=nprobe)
            rows.append((n, f"IVF{nlist},Flat nprobe={nprobe}", ivf_build, lat,
                         recall_at_k(exact_ids, approx_ids)))
        del ivf, vectors
        print(f"done n={n}", file=sys.stderr)

    dim = seeds.shape[1]
    print(f"{len(queries)} real queries, one at a time, k=10, {dim}-d vectors, "
          f"FAISS threads={args.threads}\n")
    print("| clips | index | build s | p50 ms | p99 ms | recall@10 vs exact |")
    print("|---:|---|---:|---:|---:|---:|")
    for n, kind, build, lat, rec in rows:
        print(f"| {n:,} | {kind} | {build:.1f} | {np.percentile(lat, 50):.3f} | "
              f"{np.percentile(lat, 99):.3f} | {rec:.3f} |")
    print(f"\nquery embedding (text encoder + class projection), one query: {embed_ms:.1f} ms mean")
    print(f"\ncommand: python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
