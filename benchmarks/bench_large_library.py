"""A large library end to end: disk bytes per clip, RAM while building and serving, latency and recall.

    python benchmarks/bench_large_library.py --seed-index bench-out/hybrid/named-index --sizes 100000,1000000

Each size is a synthetic library grown from a real index by bench_hybrid_latency.build (audio vectors
mixed from real ones; real text records, tags and path lengths; name vectors), written in the library's
own format. Then, each in a fresh process: the library builds its FAISS indexes (`auto` kind, from
SQLite in chunks) on the first search, audio (vectors.faiss) and names (names.faiss), and a second
process opens them and answers the 159 real sfx-dev queries one at a time through
`Library.search_vector` (the query vectors come from the real text encoder; the first pass warms
caches), then through `Library.search` (hybrid: text encoders, both FAISS indexes, FTS5, fusion).
Peak RSS is the process's VmHWM, which counts the SQLite pages it read through its memory map (page
cache the kernel can take back); anonymous RSS is the memory the process itself holds. recall@10 is
against an exact scan of the stored vectors. Bytes per clip count every file of the index folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_hybrid_latency import latencies, seed_rows, synthetic_index  # noqa: E402
from bench_search import recall_at_k  # noqa: E402
from report import finish  # noqa: E402
from sfxdev import QUERIES_TSV, load_manifest, load_queries  # noqa: E402

from audiofind.library import DB_NAME, Library, searcher  # noqa: E402
from audiofind.library.store import FAISS_NAME, NAMES_FAISS_NAME, read_meta  # noqa: E402
from audiofind.library.vector_index import refine_factor  # noqa: E402


def child(target: str, queries_npy: str, phase: str) -> None:
    """One process: 'build' makes the FAISS files; 'serve' opens them and times the queries."""
    import faiss

    faiss.omp_set_num_threads(1)
    qvecs = np.load(queries_npy)
    texts = json.loads(Path(queries_npy).with_suffix(".json").read_text())
    t0 = time.perf_counter()
    with Library.open(target, index_kind=os.environ.get("BENCH_INDEX_KIND", "auto"),
                      text_backend="numpy") as lib:
        lib.search_vector(qvecs[0], k=10)
        first = time.perf_counter() - t0
        lib.search(texts[0], k=10)  # the names index and the text encoders
        out = {"phase": phase, "first_search_s": first, "names_s": time.perf_counter() - t0 - first,
               "kind": lib.stats()["index_kind"]}
        if phase == "serve":
            out["runs"] = []
            n = len(lib)
            for factor in [None if f == "auto" else int(f)
                           for f in os.environ.get("BENCH_REFINE", "auto").split(",")]:
                searcher.refine_factor = refine_factor if factor is None else (lambda _n, f=factor: f)
                times, ids = [], []
                for r in range(2):
                    for q in qvecs:
                        t1 = time.perf_counter()
                        hits = lib.search_vector(q, k=10)
                        times.append(1000 * (time.perf_counter() - t1))
                        if r:
                            ids.append([h.id for h in hits] + [-1] * (10 - len(hits)))
                    if r == 0:
                        times.clear()
                out["runs"].append({"refine": factor or refine_factor(n), "shipped": factor is None,
                                    "p50_ms": float(np.percentile(times, 50)),
                                    "p99_ms": float(np.percentile(times, 99)), "ids": ids})
            searcher.refine_factor = refine_factor
            hybrid = latencies(lib, texts, "hybrid")[0] if os.environ.get("BENCH_HYBRID", "1") == "1" else []
            out["hybrid_p50_ms"] = float(np.percentile(hybrid, 50)) if len(hybrid) else float("nan")
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    out["peak_rss_mb"] = int(status["VmHWM"].split()[0]) / 1024  # ru_maxrss would carry the parent's over
    out["anon_rss_mb"] = int(status["RssAnon"].split()[0]) / 1024
    print(json.dumps(out))


def run_child(target: Path, queries_npy: Path, phase: str) -> dict:
    src = Path(__file__).resolve().parents[1] / "src"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, __file__, "--child", str(target), str(queries_npy), phase],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def exact_top10(db: Path, qvecs: np.ndarray) -> np.ndarray:
    """Exact top-10 ids per query from the stored float16 vectors, a chunk at a time."""
    best = np.zeros((len(qvecs), 0), np.float32), np.zeros((len(qvecs), 0), np.int64)
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        cursor = conn.execute("SELECT id, vector FROM files ORDER BY id")
        while rows := cursor.fetchmany(100_000):
            ids = np.array([r[0] for r in rows], np.int64)
            vecs = np.frombuffer(b"".join(r[1] for r in rows), "<f2").reshape(len(rows), -1)
            vecs = vecs.astype(np.float32)
            scores = np.concatenate([best[0], qvecs @ vecs.T], axis=1)
            all_ids = np.concatenate([best[1], np.broadcast_to(ids, (len(qvecs), len(ids)))], axis=1)
            top = np.argsort(-scores, axis=1, kind="stable")[:, :10]
            best = np.take_along_axis(scores, top, 1), np.take_along_axis(all_ids, top, 1)
    return best[1]


def cached_exact_top10(target: Path, qvecs: np.ndarray, reuse: bool) -> np.ndarray:
    """exact_top10, kept beside the index for the rows' generation (a scan of 10^7 rows takes minutes)."""
    with closing(sqlite3.connect(f"file:{target / DB_NAME}?mode=ro", uri=True)) as conn:
        path = target / f"exact_top10.g{read_meta(conn, 'generation')}.npy"
    if reuse and path.exists():
        return np.load(path)
    truth = exact_top10(target / DB_NAME, qvecs)
    np.save(path, truth)
    return truth


def disk_bytes(target: Path) -> dict[str, float]:
    """Bytes on disk of SQLite (with its WAL), the two FAISS files and the whole folder, per clip."""
    sqlite_bytes = sum(p.stat().st_size for p in target.glob(f"{DB_NAME}*"))
    with closing(sqlite3.connect(f"file:{target / DB_NAME}?mode=ro", uri=True)) as conn:
        n, audio, names = conn.execute("SELECT COUNT(*), SUM(length(vector)), "
                                       "SUM(COALESCE(length(name_vector), 0)) FROM files").fetchone()
        page = conn.execute("PRAGMA page_size").fetchone()[0]
    folder = sum(p.stat().st_size for p in target.iterdir() if p.is_file() and p.suffix != ".npy")
    return {"sqlite_b": sqlite_bytes / n, "faiss_b": (target / FAISS_NAME).stat().st_size / n,
            "names_faiss_b": (target / NAMES_FAISS_NAME).stat().st_size / n, "total_b": folder / n,
            "audio_vector_b": audio / n, "name_vector_b": names / n, "page_size": page}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed-index", type=Path, default=Path("bench-out/hybrid/named-index"))
    ap.add_argument("--sfx", type=Path, default=Path("../shared/data/sfx-dev"))
    ap.add_argument("--work", type=Path, default=Path("bench-out/large-library"))
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--index-kind", default="auto", help="Library.open(index_kind=...)")
    ap.add_argument("--no-hybrid", action="store_true",
                    help="skip timing hybrid search (BM25 over the synthetic texts, each repeated "
                         "n/1,498 times, takes seconds a query at 10^7)")
    ap.add_argument("--refine", default="auto",
                    help="candidates per result to time, a comma list of factors of k or 'auto' (the "
                         "library's own, vector_index.refine_factor), e.g. auto,20,30")
    ap.add_argument("--reuse", action="store_true",
                    help="keep FAISS files that still match the rows (build s is then their load time) and "
                         "the exact top-10 computed before")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    os.environ["BENCH_INDEX_KIND"] = args.index_kind  # for the child processes
    os.environ["BENCH_HYBRID"] = "0" if args.no_hybrid else "1"
    os.environ["BENCH_REFINE"] = args.refine
    from audiofind.models import load_model

    queries, _ = load_queries(QUERIES_TSV, load_manifest(args.sfx))
    args.work.mkdir(parents=True, exist_ok=True)
    queries_npy = args.work / "queries.npy"
    np.save(queries_npy, load_model().encode_text(list(queries)).astype(np.float32))
    queries_npy.with_suffix(".json").write_text(json.dumps(list(queries)))
    qvecs = np.load(queries_npy)
    seed = seed_rows(args.seed_index)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        target = args.work / f"n{n}"
        synthetic_index(target, n, seed, np.random.default_rng(0))
        if not args.reuse:
            for name in (FAISS_NAME, NAMES_FAISS_NAME):
                (target / name).unlink(missing_ok=True)
        built = run_child(target, queries_npy, "build")
        served = run_child(target, queries_npy, "serve")
        truth = cached_exact_top10(target, qvecs, args.reuse)
        disk = disk_bytes(target)
        for run in served["runs"]:
            row = {"clips": n, "kind": served["kind"], "build_s": built["first_search_s"],
                   "names_build_s": built["names_s"], "build_rss_mb": built["peak_rss_mb"],
                   "serve_rss_mb": served["peak_rss_mb"], "serve_anon_mb": served["anon_rss_mb"],
                   "open_s": served["first_search_s"], "refine": run["refine"], "shipped": run["shipped"],
                   "p50_ms": run["p50_ms"], "p99_ms": run["p99_ms"], "hybrid_p50_ms": served["hybrid_p50_ms"],
                   "recall10": recall_at_k(truth, np.array(run["ids"])), **disk}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    print("| clips | FAISS | SQLite B/clip (vectors: audio + names) | vectors.faiss + names.faiss B/clip | "
          "total B/clip | build s (audio + names) | build peak RSS | serving peak RSS (anonymous) | "
          "candidates | p50 ms | p99 ms | recall@10 | hybrid p50 ms |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    for r in rows:
        candidates = f"{r['refine']} × k" + (" (shipped)" if r["shipped"] else "")
        candidates = candidates if r["kind"] == "ivfpq" else "k"
        print(f"| {r['clips']:,} | {r['kind']} | {r['sqlite_b']:,.0f} ({r['audio_vector_b']:.0f} + "
              f"{r['name_vector_b']:.0f}) | {r['faiss_b']:,.0f} + {r['names_faiss_b']:,.0f} | "
              f"{r['total_b']:,.0f} | {r['build_s']:.0f} + {r['names_build_s']:.0f} | "
              f"{r['build_rss_mb']:,.0f} MB | {r['serve_rss_mb']:,.0f} MB ({r['serve_anon_mb']:,.0f} MB) | "
              f"{candidates} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['recall10']:.3f} | "
              f"{r['hybrid_p50_ms']:.1f} |")
    finish(rows, args.json)


if __name__ == "__main__":
    main()
