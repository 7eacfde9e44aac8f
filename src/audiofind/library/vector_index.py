"""The vector index: FAISS flat, IVF and HNSW indexes over clip vectors, and their on-disk cache file."""

from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import faiss

APPROX_THRESHOLD = 50_000  # clips; above this "auto" switches from exact to IVF search
DEFAULT_NPROBE = 16
_FAISS_MAGIC = b"AUDIOFIND-FAISS 1\n"


def choose_index_kind(n: int, threshold: int = APPROX_THRESHOLD) -> str:
    """Exact search is fast enough below `threshold` clips; above it IVF keeps queries interactive."""
    return "flat" if n < threshold else "ivf"


def default_nlist(n: int) -> int:
    """About sqrt(n) lists (with nprobe 16: recall@10 0.96-0.99 from 10^4 to 10^6 clips, BENCHMARKS.md),
    but never fewer than ~39 training points per list."""
    return max(1, min(int(math.sqrt(n)), n // 39))


def build_faiss_index(
    vectors: np.ndarray,
    ids: np.ndarray,
    kind: str = "flat",
    *,
    nlist: int | None = None,
    nprobe: int = DEFAULT_NPROBE,
    hnsw_m: int = 32,
    ef_construction: int = 80,
    ef_search: int = 64,
    trained: faiss.Index | None = None,
) -> faiss.Index:
    """An inner-product index over L2-normalised `vectors` whose search returns `ids` (int64).

    For "ivf", `trained` (an earlier IVF index of the same dim) lends its coarse quantizer, so a
    rebuild after an update skips k-means; otherwise k-means runs on a subsample of the vectors.
    """
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if vectors.ndim != 2 or len(vectors) != len(ids):
        raise ValueError(f"need (n, dim) vectors and n ids, got {vectors.shape} and {ids.shape}")
    dim = vectors.shape[1]
    if kind == "flat" or (kind == "ivf" and len(vectors) == 0):
        index = faiss.index_factory(dim, "IDMap,Flat", faiss.METRIC_INNER_PRODUCT)
    elif kind == "ivf" and trained is not None and trained.d == dim:
        index = faiss.clone_index(faiss.extract_index_ivf(trained))
        index.reset()
        index.nprobe = nprobe
    elif kind == "ivf":
        index = faiss.index_factory(dim, f"IVF{nlist or default_nlist(len(vectors))},Flat",
                                    faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = 10  # quality plateaus early; training dominates the build time
        index.cp.max_points_per_centroid = 64
        index.train(vectors)
        index.nprobe = nprobe
    elif kind == "hnsw":
        index = faiss.index_factory(dim, f"IDMap,HNSW{hnsw_m},Flat", faiss.METRIC_INNER_PRODUCT)
        hnsw = faiss.downcast_index(index.index)
        hnsw.hnsw.efConstruction = ef_construction
        hnsw.hnsw.efSearch = ef_search
    else:
        raise ValueError(f"unknown index kind {kind!r}; use 'flat', 'ivf' or 'hnsw'")
    if len(vectors):
        index.add_with_ids(vectors, ids)
    return index


def faiss_index_kind(index: faiss.Index) -> str:
    """'flat', 'ivf' or 'hnsw', read off a built or loaded index."""
    import faiss

    if faiss.try_extract_index_ivf(index) is not None:
        return "ivf"
    inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else index
    return "hnsw" if isinstance(inner, faiss.IndexHNSW) else "flat"


def search_faiss(
    index: faiss.Index,
    queries: np.ndarray,
    k: int,
    *,
    allowed_ids: np.ndarray | None = None,
    nprobe: int | None = None,
    ef_search: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids), each (n_queries, k); missing hits have id -1. `allowed_ids` restricts the candidates."""
    import faiss

    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    sel = faiss.IDSelectorBatch(np.ascontiguousarray(allowed_ids, dtype=np.int64)) \
        if allowed_ids is not None else None
    kind = faiss_index_kind(index)
    if kind == "ivf":
        params: Any = faiss.SearchParametersIVF(
            sel=sel, nprobe=nprobe or faiss.extract_index_ivf(index).nprobe)
    elif kind == "hnsw":
        params = faiss.SearchParametersHNSW(
            sel=sel, efSearch=max(ef_search or faiss.downcast_index(index.index).hnsw.efSearch, k))
    else:
        params = faiss.SearchParameters(sel=sel) if sel is not None else None
    return index.search(queries, k, params=params)


def write_faiss_file(path: Path, index: faiss.Index, header: dict[str, Any]) -> None:
    """Write atomically (temp name + os.replace) with a JSON header naming the generation it reflects."""
    import faiss

    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(_FAISS_MAGIC + json.dumps(header).encode() + b"\n")
            f.write(faiss.serialize_index(index).tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_faiss_file(path: Path) -> tuple[dict[str, Any], faiss.Index] | None:
    """The header and index, or None when the file is missing or unreadable (it is only a cache)."""
    import faiss

    try:
        data = path.read_bytes()
        if not data.startswith(_FAISS_MAGIC):
            return None
        end = data.index(b"\n", len(_FAISS_MAGIC))
        header = json.loads(data[len(_FAISS_MAGIC):end])
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8, offset=end + 1))
        return header, index
    except (OSError, ValueError, RuntimeError):
        return None
