"""Query latency of hybrid against audio-only search through `Library.search`, at 10^4 and 10^6 clips.

    python benchmarks/bench_hybrid_latency.py --seed-index bench-out/hybrid/named-index --sizes 10000,1000000

The synthetic libraries are grown from a real index (build one with bench_hybrid.py): each synthetic clip
copies a random real clip's text record (so the FTS5 table has the real word statistics, repeated) and
gets an audio vector mixed from 1-3 real clip vectors (as in bench_search.py) and a name vector that is
its seed's plus noise. Rows go straight into SQLite (the triggers fill FTS5); FAISS indexes are built by
the library itself on the first search. Every query is one of the 159 real sfx-dev queries, one at a
time, end to end (text encoders, FAISS, FTS5, fusion); the first pass warms caches and is not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_search import synthetic_library  # noqa: E402
from report import finish  # noqa: E402
from sfxdev import QUERIES_TSV, load_manifest, load_queries  # noqa: E402

from audiofind.library import DB_NAME, Library  # noqa: E402
from audiofind.library.codecs import CODECS, tags_from_json, tags_json, vector_blob  # noqa: E402

COPIED_META = ("model_id", "model_name", "dim")


def seed_rows(index: Path) -> dict:
    """The real rows a synthetic library is grown from: vectors, text records, tags and paths."""
    with sqlite3.connect(f"file:{index / DB_NAME}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT vector, name_vector, text, tags, path_bytes FROM files "
                            "WHERE text IS NOT NULL").fetchall()
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    version = meta.get("schema_version", "4")
    codecs = {"2": ("<f4", "<f4"), "3": ("<f2", "<f2")}.get(version,
                                                         (CODECS["vector"], CODECS["name_vector"]))
    audio = decode(np.stack([np.frombuffer(r[0], codecs[0]) for r in rows]))
    width = np.dtype(codecs[1]).itemsize
    dim = next(len(r[1]) // width for r in rows if r[1])
    names = decode(np.stack([np.frombuffer(r[1], codecs[1]) if r[1] else np.zeros(dim, codecs[1])
                             for r in rows]))
    return {"audio": audio, "names": names, "texts": [compact(json.loads(r[2])) for r in rows],
            "tags": [tags_json(tags_from_json(r[3])) for r in rows],
            "paths": [os.fsdecode(r[4]) for r in rows], "meta": {k: meta[k] for k in COPIED_META}}


def compact(record: dict) -> str:
    """A text record as the library writes it today (an older seed index spaced its JSON)."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def decode(stored: np.ndarray) -> np.ndarray:
    """float32 unit vectors (zero rows stay zero) from any stored dtype."""
    vectors = stored.astype(np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def build(target: Path, n: int, seed: dict, rng: np.random.Generator) -> None:
    """`n` synthetic rows in the library's format; each copies a random real clip's text record, tags
    and path (made unique with a number, so paths are as long as real ones)."""
    texts, tags, paths, meta = seed["texts"], seed["tags"], seed["paths"], seed["meta"]
    Library.open(target, create=True).close()  # the schema
    conn = sqlite3.connect(target / DB_NAME, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(meta.items()))
    for start in range(0, n, 50_000):  # a transaction per chunk keeps the WAL small at 10^7 rows
        conn.execute("BEGIN")
        m = min(50_000, n - start)
        audio = synthetic_library(seed["audio"], m, rng)
        picks = rng.integers(0, len(texts), size=m)
        name_seed = seed["names"]
        names = name_seed[picks] + rng.normal(0, 0.02, size=(m, name_seed.shape[1])).astype(np.float32)
        names /= np.maximum(np.linalg.norm(names, axis=1, keepdims=True), 1e-12)
        conn.executemany(
            "INSERT INTO files (path_bytes, size, mtime_ns, content_hash, duration, sample_rate, "
            "channels, tags, model_id, vector, indexed_at, text, name_vector) "
            "VALUES (?, 1, 0, ?, 1.0, 44100, 1, ?, ?, ?, 0, ?, ?)",
            ((path.encode(), f"{start + i:032x}", tags[p], meta["model_id"], vector_blob(audio[i]),
              texts[p], vector_blob(names[i], "name_vector") if name_seed[p].any() else b"")
             for i, p in enumerate(picks)
             for path in [unique_path(paths[p], start + i)]))
        conn.execute("COMMIT")
    conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
    conn.close()


def synthetic_index(target: Path, n: int, seed: dict, rng: np.random.Generator) -> None:
    """Write the `n`-row synthetic library at `target` unless a run before this one left it there."""
    if (target / DB_NAME).exists():
        return
    t0 = time.perf_counter()
    build(target, n, seed, rng)
    print(f"wrote {n:,} rows in {time.perf_counter() - t0:.0f} s", file=sys.stderr)


def unique_path(real: str, number: int) -> str:
    """A real clip's path with a number before its file name: as long as real paths, never repeated."""
    folder, name = os.path.split(real)
    return os.path.join(folder, f"{number:07d}-{name}")


def latencies(lib: Library, queries: list[str], mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Wall and CPU milliseconds per query; CPU time is what a busy machine does not inflate."""
    wall, cpu = [], []
    for r in range(2):
        for q in queries:
            t0, c0 = time.perf_counter(), time.process_time()
            lib.search(q, k=10, mode=mode)
            wall.append(1000 * (time.perf_counter() - t0))
            cpu.append(1000 * (time.process_time() - c0))
        if r == 0:
            wall.clear()
            cpu.clear()
    return np.array(wall), np.array(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed-index", type=Path, default=Path("bench-out/hybrid/named-index"))
    ap.add_argument("--sfx", type=Path, default=Path("../shared/data/sfx-dev"))
    ap.add_argument("--work", type=Path, default=Path("bench-out/hybrid-latency"))
    ap.add_argument("--sizes", default="10000,1000000")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import faiss

    faiss.omp_set_num_threads(1)
    queries, _ = load_queries(QUERIES_TSV, load_manifest(args.sfx))
    seed = seed_rows(args.seed_index)
    rng = np.random.default_rng(0)
    rows, out = [], []
    for n in (int(s) for s in args.sizes.split(",")):
        target = args.work / f"n{n}"
        synthetic_index(target, n, seed, rng)
        with Library.open(target) as lib:
            t0 = time.perf_counter()
            lib.search("warm up", k=10, mode="hybrid")  # loads models, builds and caches both FAISS files
            setup = time.perf_counter() - t0
            for mode in ("audio", "hybrid", "text"):
                ms, cpu = latencies(lib, list(queries), mode)
                row = {"clips": n, "mode": mode, "p50_ms": float(np.percentile(ms, 50)),
                       "p99_ms": float(np.percentile(ms, 99)), "cpu_p50_ms": float(np.percentile(cpu, 50)),
                       "cpu_p99_ms": float(np.percentile(cpu, 99)), "index": lib.stats()["index_kind"],
                       "first_search_s": setup}
                out.append(row)
                cells = [f"{row[key]:.1f}" for key in ("p50_ms", "p99_ms", "cpu_p50_ms", "cpu_p99_ms")]
                rows.append(f"| {n:,} | {mode} | {row['index']} | " + " | ".join(cells) + " |")
    print("| clips | mode | FAISS | p50 ms | p99 ms | CPU p50 ms | CPU p99 ms |\n"
          "|---:|---|---|---:|---:|---:|---:|\n" + "\n".join(rows))
    finish(out, args.json, load=True)


if __name__ == "__main__":
    main()
