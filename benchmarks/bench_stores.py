"""The milvus-lite store against the embedded SQLite + FAISS one, at 10^4 and 10^5 clips.

    python benchmarks/bench_stores.py --seed-index bench-out/hybrid/named-index --sizes 10000,100000

Libraries are grown from a real index as in bench_hybrid_latency.py (real text records repeated, audio
vectors mixed from real ones as in bench_search.py, name vectors = seed's plus noise), written straight
into SQLite. For each store it measures the time to make the search side from those rows (sqlite: both
FAISS files on the first search; milvus-lite: `MilvusStore.sync`, inserting every clip), its bytes on disk,
and the latency of real sfx-dev queries one at a time through `Library.search` (audio and hybrid, k=10;
FAISS and torch on one thread; the first pass warms caches and is not counted).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_hybrid_latency import latencies, seed_rows, synthetic_index  # noqa: E402
from report import finish  # noqa: E402
from sfxdev import QUERIES_TSV, load_manifest, load_queries  # noqa: E402

from audiofind.library import DB_NAME, Library  # noqa: E402


def disk_bytes(*paths: Path) -> int:
    """Bytes of these files, and of every file under these folders."""
    total = 0
    for path in paths:
        if path.is_file():
            total += path.stat().st_size
        elif path.is_dir():
            total += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return total


def measure(target: Path, store: str, queries: list[str]) -> list[dict]:
    """Build this store's search side from scratch, then time the queries."""
    for stale in (target / "vectors.faiss", target / "names.faiss"):
        stale.unlink(missing_ok=True)
    shutil.rmtree(target / "milvus", ignore_errors=True)
    (target / "milvus").mkdir()
    with Library.open(target, store=store) as lib:
        t0 = time.perf_counter()
        if lib._store is not None:
            lib._store.sync()
        lib.search("warm up", k=10, mode="hybrid")  # sqlite: builds and writes both FAISS files
        setup = time.perf_counter() - t0
        search_side = disk_bytes(target / "milvus") if lib._store is not None else \
            disk_bytes(target / "vectors.faiss", target / "names.faiss")
        rows = []
        for mode in ("audio", "hybrid"):
            ms, cpu = latencies(lib, queries, mode)
            rows.append({"clips": len(lib), "store": store.split(":")[0], "mode": mode,
                         "setup_s": setup, "search_side_bytes": search_side,
                         "sqlite_bytes": disk_bytes(target / DB_NAME),
                         "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
                         "cpu_p50_ms": float(np.percentile(cpu, 50)),
                         "cpu_p99_ms": float(np.percentile(cpu, 99))})
        return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed-index", type=Path, default=Path("bench-out/hybrid/named-index"))
    ap.add_argument("--sfx", type=Path, default=Path("../shared/data/sfx-dev"))
    ap.add_argument("--work", type=Path, default=Path("bench-out/stores"))
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--queries", type=int, default=80, help="how many of the real queries to time")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import faiss
    import torch

    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)  # as a search server runs it (`serve --torch-threads 1`)
    queries = list(load_queries(QUERIES_TSV, load_manifest(args.sfx))[0])[:args.queries]
    seed = seed_rows(args.seed_index)
    rng = np.random.default_rng(0)
    out, lines = [], []
    for n in (int(s) for s in args.sizes.split(",")):
        target = args.work / f"n{n}"
        synthetic_index(target, n, seed, rng)
        for store in ("sqlite", f"milvus-lite:{target / 'milvus' / 'clips.db'}"):
            for row in measure(target, store, queries):
                out.append(row)
                cells = [f"{row['setup_s']:.1f}", f"{row['search_side_bytes'] / 2**20:.0f}",
                         f"{row['p50_ms']:.1f}", f"{row['p99_ms']:.1f}", f"{row['cpu_p50_ms']:.1f}"]
                lines.append(f"| {n:,} | {row['store']} | {row['mode']} | " + " | ".join(cells) + " |")
    print("| clips | store | mode | search side built (s) | search side on disk (MiB) | p50 ms | p99 ms | "
          "CPU p50 ms |\n|---:|---|---|---:|---:|---:|---:|---:|\n" + "\n".join(lines))
    finish(out, args.json, load=True)


if __name__ == "__main__":
    main()
