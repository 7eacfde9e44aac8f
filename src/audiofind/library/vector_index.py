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
COMPACT_THRESHOLD = 250_000  # clips; above this "auto" keeps PQ codes, not vectors, in FAISS (BENCHMARKS.md)
DEFAULT_NPROBE = 16
REFINE_FACTOR = 20  # "ivfpq" re-scores this many times k candidates exactly up to 10^6 clips (refine_factor)
TRAIN_PER_LIST = 64  # k-means sample: points per IVF list (FAISS's own cap), so training never needs all rows
KINDS = ("flat", "ivf", "ivfpq", "hnsw")
OPQ_MIN_TRAIN = 10_000  # "ivfpq" rotates (OPQ) when it has this many training points, else plain PQ
OPQ_NITER, OPQ_TRAIN_POINTS = 20, 30_000  # caps OPQ training (FAISS: 50 / 65,536); recall@10 0.959 vs 0.961
_FAISS_MAGIC = b"AUDIOFIND-FAISS 1\n"


def choose_index_kind(n: int, threshold: int = APPROX_THRESHOLD) -> str:
    """Exact search is fast enough below `threshold` clips; above it IVF keeps queries interactive, and
    above COMPACT_THRESHOLD IVF over PQ codes (re-scored from the stored vectors) keeps RAM and disk small."""
    return "flat" if n < threshold else "ivf" if n < max(threshold, COMPACT_THRESHOLD) else "ivfpq"


def refine_factor(n: int) -> int:
    """Candidates re-scored per result by "ivfpq" in a library of `n` clips: REFINE_FACTOR up to 10^6,
    doubling for every tenfold more, as PQ codes tell close neighbours apart less well in a fuller space
    (BENCHMARKS.md: recall@10 0.967 at 10^6 with 20 x k; at 10^7 0.911 with 20 x k, 0.962 with 40 x k)."""
    return round(REFINE_FACTOR * 2 ** max(0.0, math.log10(max(n, 1) / 1e6)))


def pq_subquantizers(dim: int) -> int:
    """Plain PQ's sub-vector count: the smallest divisor of `dim` giving sub-vectors of at most 17 dims."""
    return next(m for m in range(max(1, -(-dim // 17)), dim + 1) if dim % m == 0)


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

    For "ivf" and "ivfpq", `trained` (an earlier index of the same family and dim) lends its coarse
    quantizer (and PQ codebooks), so a rebuild after an update skips training; otherwise training runs
    on a subsample of the vectors.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if vectors.ndim != 2 or len(vectors) != len(ids):
        raise ValueError(f"need (n, dim) vectors and n ids, got {vectors.shape} and {ids.shape}")
    sample = vectors[np.random.default_rng(0).permutation(len(vectors))[:train_sample_size(
        kind, len(vectors), nlist)]] if kind in ("ivf", "ivfpq") and trained is None else vectors[:0]
    index = empty_faiss_index(vectors.shape[1], kind, len(vectors), sample, nlist=nlist, nprobe=nprobe,
                              hnsw_m=hnsw_m, ef_construction=ef_construction, ef_search=ef_search,
                              trained=trained)
    if len(vectors):
        index.add_with_ids(vectors, ids)
    return index


def train_sample_size(kind: str, n: int, nlist: int | None = None) -> int:
    """How many vectors training needs: TRAIN_PER_LIST per IVF list, none for untrained families."""
    if kind not in ("ivf", "ivfpq"):
        return 0
    return min(n, TRAIN_PER_LIST * (nlist or default_nlist(n)))


def empty_faiss_index(
    dim: int,
    kind: str,
    n: int,
    sample: np.ndarray,
    *,
    nlist: int | None = None,
    nprobe: int = DEFAULT_NPROBE,
    hnsw_m: int = 32,
    ef_construction: int = 80,
    ef_search: int = 64,
    trained: faiss.Index | None = None,
) -> faiss.Index:
    """A trained, empty index for `n` clips, ready for chunks of `add_with_ids` (so a build of 10^7
    clips never holds all the vectors: IVF families train on `sample`, about 64 rows per list)."""
    import faiss

    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}; use {', '.join(map(repr, KINDS))}")
    if kind == "flat" or (kind in ("ivf", "ivfpq") and n == 0):
        return faiss.index_factory(dim, "IDMap,Flat", faiss.METRIC_INNER_PRODUCT)
    if kind == "hnsw":
        index = faiss.index_factory(dim, f"IDMap,HNSW{hnsw_m},Flat", faiss.METRIC_INNER_PRODUCT)
        hnsw = faiss.downcast_index(index.index)
        hnsw.hnsw.efConstruction = ef_construction
        hnsw.hnsw.efSearch = ef_search
        return index
    previous = faiss.try_extract_index_ivf(trained) if trained is not None else None
    if previous is not None and trained.d == dim and ivf_kind(previous) == kind:
        index = faiss.clone_index(trained if kind == "ivfpq" else previous)  # with its OPQ rotation
        index.reset()
    else:
        index = faiss.index_factory(dim, ivf_factory(kind, dim, nlist or default_nlist(n), len(sample)),
                                    faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.niter = 10  # quality plateaus early; training dominates the build time
        ivf.cp.max_points_per_centroid = TRAIN_PER_LIST
        if isinstance(index, faiss.IndexPreTransform):
            opq = faiss.downcast_VectorTransform(index.chain.at(0))
            opq.niter, opq.max_train_points = OPQ_NITER, OPQ_TRAIN_POINTS  # the rotation's cost, capped
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
    faiss.extract_index_ivf(index).nprobe = nprobe
    return index


def ivf_factory(kind: str, dim: int, nlist: int, n_train: int) -> str:
    """The FAISS factory string of an IVF family.

    "ivfpq" (BENCHMARKS.md, large libraries): an OPQ rotation to a multiple of 64 dims (527 -> 512), then
    64 one-byte PQ codes per clip, with residuals on the IVF lists; the searcher re-scores refine_factor(n) *
    k candidates from the stored vectors. Below OPQ_MIN_TRAIN training points (small libraries, tests)
    plain PQ over dim-dividing sub-vectors, with fewer bits when there are too few points for 256
    centroids. 'np': no polysemous training (slow, unused).
    """
    if kind == "ivf":
        return f"IVF{nlist},Flat"
    if n_train >= OPQ_MIN_TRAIN:
        m = min(64, max(1, dim // 8))
        return f"OPQ{m}_{dim // m * m},IVF{nlist},PQ{m}np"
    bits = min(8, max(1, int(math.log2(max(n_train, 2)))))
    return f"IVF{nlist},PQ{pq_subquantizers(dim)}x{bits}np"


def ivf_kind(ivf: faiss.IndexIVF) -> str:
    """'ivfpq' for IVF over PQ codes, 'ivf' for IVF over whole vectors."""
    import faiss

    return "ivfpq" if isinstance(faiss.downcast_index(ivf), faiss.IndexIVFPQ) else "ivf"


def faiss_index_kind(index: faiss.Index) -> str:
    """'flat', 'ivf', 'ivfpq' or 'hnsw', read off a built or loaded index."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return ivf_kind(ivf)
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
    if kind in ("ivf", "ivfpq"):
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
