"""`Library`: the facade over an index folder that a notebook, the CLI and the server use.

Layout of an index folder:
  library.sqlite   the source of truth (WAL mode): `files` (one row per audio file, vector included),
                   `meta` (model, dim, generation, timestamps), `failures` (undecodable files, so
                   re-runs skip them until they change) and `roots` (the paths given to `update`)
  vectors.faiss    a search index rebuilt from SQLite whenever its recorded generation is stale
                   (with `store="milvus..."` the search side lives in Milvus instead: `milvus_store`)
  .update.lock     the single-writer lock and progress heartbeat (`activity`)
  .rebuild/        while a model change re-embeds: the new index, swapped in whole when complete

The SQLite side is in `store`, the incremental update in `updater`, the FAISS side in `searcher`, the rules
a search must meet in `queries`. It is longer than 400 lines because it is the whole facade (opening,
indexing, every search entry point, inspection); the work itself lives in those modules.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..audio import load_audio
from ..models import audio_model_id_of, sentence_encoder
from ..paths import display_path
from .activity import STAGING_NAME, UpdateActivity, clean_leftovers
from .codecs import blob_vector, tags_from_json
from .collections import Collections
from .hybrid import HybridSearch, TextSearcher, TextSide
from .manage import exclusions, plan_update, prune_missing, remove_paths
from .milvus_search import MilvusText, MilvusVectors
from .milvus_store import SQLITE, MilvusStore, parse_store
from .names import fill_name_vectors
from .queries import check_search
from .records import (
    ClipRecord,
    IndexNotFoundError,
    LibraryError,
    ModelMismatchError,
    Progress,
    RemovalReport,
    SearchResult,
    UpdateReport,
)
from .searcher import VectorSearcher
from .store import (
    DB_NAME,
    NAMES_FAISS_NAME,
    RECORD_COLUMNS,
    abspath,
    connect,
    default_index_dir,
    read_meta,
    replace_rows,
    transaction,
)
from .updater import Updater
from .vector_index import DEFAULT_NPROBE
from .workers import default_workers, hash_file

if TYPE_CHECKING:
    from ..models import EmbeddingModel
    from ..models.encoders.text import TextEncoder
    from .ray_executor import RayExecutor


class Library:
    """A searchable index of sound files: `Library.open`, then `update` to fill it and `search` to query."""

    def __init__(self, index_dir: Path, conn: sqlite3.Connection, index_kind: str, nprobe: int,
                 read_only: bool = False) -> None:
        """Use `Library.open`."""
        self.index_dir = index_dir
        self.read_only = read_only
        self._conn = conn
        self._db_id = _file_id(index_dir / DB_NAME)  # a folder deleted or replaced under us changes it
        self._pending: tuple[EmbeddingModel, str | None] | None = None  # a model-change rebuild to do
        self._model: EmbeddingModel | None = None
        self._device = "cpu"  # where a model loaded by name runs
        self._text_backend = "torch"  # "numpy": text queries without torch (models.zeroshot.TEXT_BACKENDS)
        self._lock = threading.RLock()
        self._vectors: VectorSearcher | MilvusVectors = VectorSearcher(
            index_dir, conn, self._lock, index_kind, nprobe, self._dim)
        self._names: VectorSearcher | MilvusVectors = VectorSearcher(
            index_dir, conn, self._lock, index_kind, nprobe, self._name_dim, column="name_vector",
            file_name=NAMES_FAISS_NAME)
        self._text: TextSide = TextSearcher(conn, self._lock)
        self._store: MilvusStore | None = None  # None: the embedded SQLite + FAISS search side
        self._hybrid: HybridSearch | None = None  # built on the first text search
        self._sentences: TextEncoder | None = None
        self._vectors.persist = self._names.persist = not read_only

    @property
    def index_kind(self) -> str:
        return self._vectors.index_kind

    @property
    def nprobe(self) -> int:
        return self._vectors.nprobe

    # ------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        index_dir: str | os.PathLike[str] | None = None,
        model: EmbeddingModel | str | None = None,
        *,
        create: bool = False,
        index_kind: str = "auto",
        nprobe: int = DEFAULT_NPROBE,
        rebuild: bool = False,
        device: str = "cpu",
        store: str | None = None,
        read_only: bool | None = None,
        text_backend: str = "torch",
    ) -> Library:
        """Open (with `create`, make) the index in `index_dir`; `model` None loads the index's model lazily.

        `model` may be a loaded EmbeddingModel or a name/checkpoint for `load_model`; either must match the
        model the index was built with, unless `rebuild`: then the next `update` embeds its roots with
        `model` into a staging index beside this one and swaps it in whole when complete (readers keep
        the old index until then; the other roots' clips are dropped, favourites and collections kept).
        `index_kind` is "auto" (exact below vector_index.APPROX_THRESHOLD clips, IVF above, IVF over PQ
        codes re-scored from the stored vectors above COMPACT_THRESHOLD), "flat", "ivf", "ivfpq" or
        "hnsw". `device`: "cpu", "cuda" or "mps", where a model loaded by name runs.
        `read_only` (None: when the folder or database is not writable) opens without writing: searching
        works, `update` refuses. `text_backend="numpy"` encodes text queries without importing torch (the
        zero-shot model's MiniLM in numpy, equal to 1e-4): a quick cold start for a text-only search.
        `store`: where the search side lives, "sqlite" (the embedded FAISS + FTS5 default),
        "milvus-lite:PATH.db" or "milvus://HOST:PORT[/COLLECTION]"; None reopens with the recorded store.
        """
        if index_kind not in ("auto", "flat", "ivf", "ivfpq", "hnsw"):
            raise ValueError(f"index_kind must be auto, flat, ivf, ivfpq or hnsw, got {index_kind!r}")
        index_dir = Path(index_dir).expanduser() if index_dir is not None else default_index_dir()
        db_path = _prepare_folder(index_dir, create)
        if read_only is None:
            read_only = not os.access(index_dir, os.W_OK) or (db_path.exists()
                                                                 and not os.access(db_path, os.W_OK))
        if read_only and rebuild:
            raise LibraryError(_read_only_message(index_dir))
        conn = connect(db_path, read_only=read_only)
        lib = cls(index_dir, conn, index_kind, nprobe, read_only=read_only)
        lib._device, lib._text_backend = device, text_backend
        try:
            if not read_only:
                clean_leftovers(index_dir, locked=False)  # a killed run's temp files
            lib._use_store(store)
            name = None
            if isinstance(model, str) or (model is None and rebuild):
                name = abspath(model) if model and os.path.exists(model) else model
                model = _model_on(name, device, text_backend)
            if rebuild:
                assert model is not None
                lib._pending = (model, name)
            elif model is not None:
                lib._adopt_model(model, name)
        except BaseException:
            conn.close()
            raise
        return lib

    def _use_store(self, spec: str | None) -> None:
        """Search through `spec` (None: the recorded store), recording it so search and serve reopen it."""
        recorded = self._meta("store") or SQLITE
        parsed = parse_store(spec if spec is not None else recorded)
        name = parsed.spec if parsed is not None else SQLITE
        if name != recorded and not self.read_only:
            with transaction(self._conn):
                self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('store', ?)", (name,))
        if parsed is not None:
            self._store = MilvusStore(parsed, self._conn, self._lock, self._dim, self._name_dim,
                                      self.index_kind, self.nprobe)
            self._vectors, self._names = MilvusVectors(self._store), MilvusVectors(self._store, "name_vector")
            self._text = MilvusText(self._store)

    @property
    def store(self) -> str:
        """Where the search side lives: "sqlite", "milvus-lite:PATH" or "milvus://HOST:PORT"."""
        return self._store.spec.spec if self._store is not None else SQLITE

    def _name_dim(self) -> int:
        """The size of the stored name vectors (the sentence encoder's, loaded only when none is stored)."""
        row = self._conn.execute("SELECT name_vector FROM files WHERE length(name_vector) > 0 "
                                 "LIMIT 1").fetchone()
        return len(blob_vector(row[0], "name_vector")) if row else self.sentences.dim

    def close(self) -> None:
        """Release the database; the object is unusable afterwards."""
        with self._lock:
            if self._store is not None:
                self._store.close()
            self._conn.close()
            self._index = None

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM files").fetchone()[0]

    def roots(self) -> list[str]:
        """The folders and files given to `update`, less those removed (the server serves only from them)."""
        with self._lock:
            rows = self._conn.execute("SELECT path_bytes FROM roots ORDER BY path_bytes").fetchall()
        return [os.fsdecode(bytes(r[0])) for r in rows]

    def folder_counts(self) -> dict[str, int]:
        """Clips per folder (each clip counted in its own folder only), for browsing and filters."""
        with self._lock:
            rows = self._conn.execute("SELECT path_bytes FROM files").fetchall()
        counts: dict[str, int] = {}
        for (path_b,) in rows:
            folder = os.path.dirname(os.fsdecode(bytes(path_b)))
            counts[folder] = counts.get(folder, 0) + 1
        return counts

    @functools.cached_property
    def collections(self) -> Collections:
        """Favourites and named collections (and clip formats), kept in this index's SQLite."""
        return Collections(self._conn, self._lock)

    def _meta(self, key: str) -> str | None:
        return read_meta(self._conn, key)

    @property
    def model_id(self) -> str | None:
        """The model the index was built with (None for an empty new index)."""
        with self._lock:
            return self._meta("model_id")

    @property
    def generation(self) -> int:
        with self._lock:
            return int(self._meta("generation") or 0)

    @property
    def model(self) -> EmbeddingModel:
        """The embedding model, loaded on first need: stats and stored-vector searches never pay for it."""
        with self._lock:
            if self._model is None:
                name = self._meta("model_name") or self._meta("model_id")
                self._adopt_model(_model_on(name, self._device, self._text_backend), name)
            assert self._model is not None
            return self._model

    def _adopt_model(self, model: EmbeddingModel, name: str | None) -> None:
        """Check `model` against the index's recorded one, or record it in a new index."""
        recorded = self._meta("model_id")
        if recorded is not None and recorded != model.model_id and not self._same_audio_side(recorded, model):
            recorded_name = self._meta("model_name") or recorded
            name = name or getattr(model, "source", None) or model.model_id
            hint = f" (or pass --model {recorded_name})" if recorded_name != name else \
                f" ('{name}' now means {model.model_id})"
            raise ModelMismatchError(
                f"index {self.index_dir} was built with model {recorded}; you are using {model.model_id}; "
                f"re-embed it with: audiofind index PATH --index {self.index_dir} --model {name} --rebuild"
                f"{hint}")
        if recorded != model.model_id and not self.read_only:  # new, or its clip vectors fit this model
            with transaction(self._conn):
                self._conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [
                    ("model_id", model.model_id), ("dim", str(model.dim)),
                    ("audio_model_id", getattr(model, "audio_model_id", model.model_id)),
                    ("model_name", name or getattr(model, "source", None) or model.model_id)])
        self._model = model

    def _same_audio_side(self, recorded: str, model: EmbeddingModel) -> bool:
        """Clip vectors depend only on the audio side: a model that differs in how it turns queries into
        vectors (the text bridge) searches them as they are. Indexes older than the `audio_model_id` meta
        key are known by their model id."""
        theirs = self._meta("audio_model_id") or audio_model_id_of(recorded)
        return theirs is not None and theirs == getattr(model, "audio_model_id", None)

    # ------------------------------------------------------------ indexing

    def update(
        self,
        roots: Sequence[str | os.PathLike[str]] | None = None,
        *,
        workers: int | None = None,
        progress: bool | Progress = True,
        batch_size: int = 64,
        max_duration: float | None = None,
        wait: bool = True,
        ray: str | RayExecutor | None = None,
    ) -> UpdateReport:
        """Bring the index in line with the audio files under `roots` (folders or single files); None or
        empty: under every root it knows (one that is gone is listed in the report's `missing_roots`, its
        records kept until `prune_missing`). Roots are stored resolved (see `library.manage`).

        Unchanged files are skipped by (size, mtime); changed ones are hashed, and only content never seen
        before goes through the model. Records under `roots` whose files are gone are removed; records
        elsewhere are kept. `workers` decoding processes (0 = decode in this process; None = half the
        cores) feed the model, which runs here in batches of `batch_size`. `max_duration` caps the seconds
        decoded per file (None: `audio.MAX_DECODE_SECONDS`, and a file cut there is listed in the report's
        `truncated`; `math.inf`: no cap). Unreadable folders keep their records, files that fail for the
        environment's sake (permissions, I/O) are retried next run, and a decoder process that dies costs
        only the file that killed it. `progress` is a tqdm bar on stderr (True), nothing (False), or a
        callback receiving dicts.

        One writer at a time: the index's write lock (`activity`) is held for the whole run; when another
        process holds it, `wait` True waits for it (saying so on stderr), False raises IndexBusyError.

        `ray`: a Ray cluster address ("auto", "ray://HOST:10001", "local") or a `ray_executor.RayExecutor`
        spreads hashing, decoding and embedding over the cluster's workers (`workers` of them; None: one per
        CPU, or per GPU), which read the files at these paths (a shared filesystem); the rows are written
        here, by the same rules.
        """
        start = time.monotonic()
        if self.read_only:
            raise LibraryError(_read_only_message(self.index_dir))
        workers_given, workers = workers, default_workers() if workers is None else workers
        report = UpdateReport()
        with UpdateActivity(self.index_dir, wait) as activity:  # the write lock; /api/status reads it
            self._check_present("before indexing")
            if self._pending is None and self._model is not None:
                self._adopt_model(self._model, None)  # a writer before us may have changed the model
            plan = plan_update(self._conn, self._lock, roots)  # records the roots given, or takes all
            report.missing_roots = [display_path(r) for r in plan.missing]
            run = {"workers": workers, "progress": activity.wrap(progress), "batch_size": batch_size,
                   "max_duration": max_duration, "excluded": plan.excluded, "executor": None}
            try:
                if ray is not None:  # connects before any work: a wrong address fails first
                    run["executor"] = self._ray_executor(ray, workers_given)
                commits = self._rebuild(plan.roots, report, run) if self._pending is not None else \
                    self._update_rows(self._conn, lambda: self.model, plan.roots, report, run)
            except sqlite3.DatabaseError:
                self._check_present("while indexing")  # SQLite refuses writes to a moved file: say why
                raise
            finally:
                if run["executor"] is not None and run["executor"] is not ray:
                    run["executor"].close()  # one the caller made stays up for its next update
                if _file_id(self.index_dir / DB_NAME) == self._db_id:
                    with self._lock, transaction(self._conn):
                        seconds = float(self._meta("build_seconds") or 0) + time.monotonic() - start
                        self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('build_seconds', ?)",
                                           (f"{seconds:.3f}",))
            self._check_present("while indexing")
            with self._lock:
                if commits:
                    self._vectors.reload()  # write vectors.faiss and names.faiss for the final generation
                    self._names.reload()
                if self._store is not None:  # also finishes a sync a killed run left half done
                    self._store.ensure_synced()
        report.wall_seconds = time.monotonic() - start
        return report

    def _ray_executor(self, ray: str | RayExecutor, workers: int | None) -> RayExecutor:
        """`ray` as a connected executor, bound by name to the model this run embeds with."""
        from .ray_executor import as_executor

        executor = as_executor(ray, workers)
        if self._pending is not None:  # a rebuild: the new model
            model, name = self._pending
            return executor.bind(name or getattr(model, "source", None) or model.model_id, model)
        model = self.model  # loaded here too (names need it): a new index records it, an old one checks it
        return executor.bind(self._meta("model_name") or model.model_id, model)

    def _update_rows(self, conn: sqlite3.Connection, model: Any, roots: list[str], report: UpdateReport,
                     run: dict[str, Any], sentences: TextEncoder | None = None) -> int:
        """The incremental update of `conn`'s rows, then their name vectors; returns the commits made."""
        encode = sentences.encode if sentences is not None else (lambda texts: self.sentences.encode(texts))
        commits = Updater(conn, self._lock, model).run(roots, report, **run)
        return commits + fill_name_vectors(conn, self._lock, encode)

    def _rebuild(self, roots: list[str], report: UpdateReport, run: dict[str, Any]) -> int:
        """Embed `roots` with the pending model into a staging index, then swap its rows in at one commit.

        Until the swap, readers (a server) keep the old index, whole; after it they see the new one, whole,
        and reload the model (`refresh`). A run killed midway leaves the old index as it was; the staging
        folder is removed by the next writer.
        """
        assert self._pending is not None
        model, name = self._pending
        staging = self.index_dir / STAGING_NAME
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        (staging / "pid").write_text(str(os.getpid()))
        meta = {"model_id": model.model_id, "dim": str(model.dim),
                "audio_model_id": getattr(model, "audio_model_id", model.model_id),
                "model_name": name or getattr(model, "source", None) or model.model_id}
        sentences = sentence_encoder(model)
        conn = connect(staging / DB_NAME)
        try:
            with transaction(conn):
                conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(meta.items()))
            commits = self._update_rows(conn, lambda: model, roots, report, run, sentences)
        finally:
            conn.close()
        self._check_present("while indexing")
        with self._lock:
            replace_rows(self._conn, staging / DB_NAME, meta)
            self._model, self._sentences, self._hybrid, self._pending = model, sentences, None, None
            self._vectors.forget()
            self._names.forget()
        shutil.rmtree(staging, ignore_errors=True)
        return commits + 1

    def _check_present(self, when: str) -> None:
        """Raise when the index folder was deleted or replaced since it was opened (writes would be lost)."""
        if _file_id(self.index_dir / DB_NAME) == self._db_id:
            return
        if when == "while in use":
            raise LibraryError(f"the index {self.index_dir} is gone: its folder was deleted or replaced "
                               f"while in use; restore it or re-index with: audiofind index PATH --index "
                               f"{self.index_dir}, then restart")
        raise LibraryError(f"the index folder {self.index_dir} was deleted or replaced {when}; nothing of "
                           f"this run was kept: run audiofind index PATH --index {self.index_dir} again")

    def remove(self, paths: Sequence[str | os.PathLike[str]], *, wait: bool = True) -> RemovalReport:
        """Drop roots, or folders and files under one, with their records and vectors (see `library.manage`:
        a path inside a root is kept out of its later refreshes); an unknown path changes nothing. Takes
        the write lock, as `update` does."""
        return self._manage(lambda: remove_paths(self._conn, self._lock, paths), wait)

    def prune_missing(self, *, wait: bool = True) -> RemovalReport:
        """Drop the roots that no longer exist, with their records, so their clips stop coming back."""
        return self._manage(lambda: prune_missing(self._conn, self._lock), wait)

    def _manage(self, change: Any, wait: bool) -> RemovalReport:
        """Run a removal under the write lock, then rewrite the FAISS files for the new generation."""
        if self.read_only:
            raise LibraryError(_read_only_message(self.index_dir))
        with UpdateActivity(self.index_dir, wait):
            self._check_present("before removing")
            with self._lock:
                report = change()
                if (report.clips or report.roots or report.excluded) and self._meta("dim"):
                    self._vectors.reload()  # vectors.faiss for the new generation; names.faiss on next use
                    self._names.forget()
        return report

    def exclusions(self) -> list[str]:
        """Folders and files inside roots that `remove` took out of the library."""
        with self._lock:
            return exclusions(self._conn)

    # ------------------------------------------------------------ searching

    def refresh(self) -> bool:
        """Pick up changes another process committed (new rows, or a rebuild with another model, whose model
        is then loaded on the next need); True when there were any. Raises LibraryError when the index
        folder was deleted meanwhile."""
        with self._lock:
            self._check_present("while in use")
            recorded = self._meta("model_id")
            model_changed = self._pending is None and self._model is not None and recorded is not None \
                and recorded != self._model.model_id and not self._same_audio_side(recorded, self._model)
            if model_changed:
                self._model = self._sentences = self._hybrid = None
            if not (model_changed or self._vectors.is_stale() or self._names.is_stale()):
                return False
            self._vectors.forget()
            self._names.forget()
            return True

    def search(self, query: str, k: int = 10, mode: str = "hybrid", **filters: Any) -> list[SearchResult]:
        """The `k` clips that best match a description, best first.

        `mode` "hybrid" (default) ranks by sound and by name/metadata words together, "audio" by sound
        only, "text" by words only (BM25 over each clip's text record); see `library.fusion`.
        """
        return self.search_many([query], k, mode, **filters)[0]

    def search_many(self, queries: Sequence[str], k: int = 10, mode: str = "hybrid",
                    **filters: Any) -> list[list[SearchResult]]:
        """Several descriptions with one text-encoder batch."""
        if isinstance(queries, str):
            raise TypeError("search_many takes a list of queries; use search() for one")
        if not queries:
            return []
        texts, filters = check_search(queries, k, filters)
        model = self.model
        if mode != "audio" and getattr(model, "text_encoder", None) is self.sentences:
            sentences = self.sentences.encode(texts)  # one encoder pass serves both sides
            return self.search_encoded(texts, model.query_vectors(sentences), k, mode, sentences=sentences,
                                       **filters)
        return self.search_encoded(texts, model.encode_text(texts), k, mode, **filters)

    def search_encoded(self, queries: Sequence[str], vectors: np.ndarray, k: int = 10, mode: str = "hybrid",
                       sentences: np.ndarray | None = None, **filters: Any) -> list[list[SearchResult]]:
        """`search_many` with the query vectors already computed (the server batches them)."""
        queries, filters = check_search(queries, k, filters)
        with self._lock:
            if self._hybrid is None:
                self._hybrid = HybridSearch(self._vectors, self._text, self._names,
                                            self.sentences.encode,
                                            class_names=getattr(self.model, "class_names", None))
            vectors = np.asarray(vectors, dtype=np.float32)
            return self._hybrid.search(list(queries), vectors, k, mode, sentences, **filters)

    def search_vector(self, vector: np.ndarray, k: int = 10, *, exclude_content: str | None = None,
                      **filters: Any) -> list[SearchResult]:
        """Search with a vector from the index's own space (e.g. an embedded clip); clips whose content hash
        is `exclude_content` (the query file itself and its copies) are left out."""
        filters = check_search((), k, filters)[1]
        with self._lock:
            exclude = self._vectors.ids_with_content(exclude_content) if exclude_content else set()
        return self._vectors.search(np.asarray(vector, dtype=np.float32).reshape(1, -1), k, exclude=exclude,
                                    **filters)[0]

    def find(self, path: str | os.PathLike[str]) -> ClipRecord | None:
        """The record of an indexed file by its path, or None."""
        forms = list(dict.fromkeys((abspath(path), os.path.realpath(abspath(path)))))  # as given, resolved
        with self._lock:
            row = next(filter(None, (self._conn.execute("SELECT id FROM files WHERE path_bytes = ?",
                                                        (os.fsencode(p),)).fetchone() for p in forms)), None)
        return self.clip(row[0]) if row is not None else None

    def similar(self, clip: int | str | os.PathLike[str], k: int = 10, **filters: Any) -> list[SearchResult]:
        """Clips that sound like `clip`: an indexed id/path (stored vector) or any file; `clip` itself and
        every identical copy of it (same content hash) are left out."""
        filters = check_search((), k, filters)[1]
        vector: np.ndarray | None
        if isinstance(clip, (int, np.integer)):
            rec = self.clip(int(clip))
            vector, digest = rec.vector, rec.content_hash
        else:
            found = self.find(clip)
            if found is not None:
                vector, digest = found.vector, found.content_hash
            else:
                path = abspath(clip)
                if not os.path.exists(path):
                    raise FileNotFoundError(f"no such file: {display_path(path)}")
                digest = content_hash(path)
                with self._lock:
                    vector = self._vectors.vector_of_content(digest) if digest else None
                if vector is None:
                    model = self.model
                    wave, _ = load_audio(path, sample_rate=model.sample_rate)
                    vector = model.embed_audio([wave]).vectors[0]
        return self.search_vector(vector, k, exclude_content=digest, **filters)

    @property
    def sentences(self) -> TextEncoder:
        """The sentence encoder of clip names and queries (all-MiniLM-L6-v2), shared with the model's."""
        with self._lock:
            if self._sentences is None:
                self._sentences = sentence_encoder(self.model)
            return self._sentences

    def _dim(self) -> int:
        dim = self._meta("dim")
        return int(dim) if dim else self.model.dim

    # ------------------------------------------------------------ inspection

    def clip(self, clip_id: int) -> ClipRecord:
        """The stored record of one clip, vector included."""
        with self._lock:
            row = self._conn.execute(f"SELECT {RECORD_COLUMNS} FROM files WHERE id = ?",
                                     (int(clip_id),)).fetchone()
        if row is None:
            raise KeyError(f"no clip with id {clip_id} in {self.index_dir}")
        (id_, path_b, size, mtime_ns, digest, duration, rate, channels, tags, model_id, indexed_at, vec,
         text) = row
        return ClipRecord(id=id_, path=os.fsdecode(bytes(path_b)), size=size, mtime_ns=mtime_ns,
                          content_hash=digest, duration=duration, sample_rate=rate, channels=channels,
                          tags=tags_from_json(tags), model_id=model_id, indexed_at=indexed_at,
                          vector=blob_vector(vec),
                          words=json.loads(text)["words"] if text else {})

    def stats(self) -> dict[str, Any]:
        """Counts and provenance for `audiofind info` and the server's status page."""
        with self._lock:
            clips, seconds = self._conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(duration), 0) FROM files").fetchone()
            kind = self._vectors.kind(clips)
            return {
                "index_dir": str(self.index_dir),
                "clips": clips,
                "audio_hours": round(seconds / 3600, 4),
                "model_id": self._meta("model_id"),
                "dim": int(self._meta("dim") or 0),
                "generation": int(self._meta("generation") or 0),
                "created_at": self._meta("created_at"),
                "built_at": self._meta("updated_at"),
                "build_seconds": round(float(self._meta("build_seconds") or 0), 2),
                "index_kind": kind,
                "store": self.store,
            }


def content_hash(path: str | os.PathLike[str]) -> str | None:
    """The blake2b digest the index keys content by, or None when the file cannot be read (decoding
    then reports why)."""
    try:
        return hash_file(path)[2]
    except (OSError, ValueError):
        return None


def _prepare_folder(index_dir: Path, create: bool) -> Path:
    """The database path in `index_dir`, made when `create`; odd places (a file, unwritable) fail clearly."""
    db_path = index_dir / DB_NAME
    if index_dir.exists() and not index_dir.is_dir():
        raise LibraryError(f"{index_dir} is a file, not an index folder; give --index a folder (a new one, "
                           "or one holding an audiofind index)")
    if db_path.exists():
        if db_path.is_dir():
            raise LibraryError(f"{db_path} is a folder, not an index database; give --index another folder")
        return db_path
    if not create:
        raise IndexNotFoundError(f"no audiofind index at {index_dir}; "
                                 f"build one with: audiofind index PATH --index {index_dir}")
    try:
        index_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LibraryError(f"cannot create the index folder {index_dir}: {e.strerror or e}; give --index a "
                           "folder you can write") from None
    if not os.access(index_dir, os.W_OK):
        raise LibraryError(f"cannot create an index in {index_dir}: the folder is not writable; give --index "
                           "a folder you can write")
    return db_path


def _read_only_message(index_dir: Path) -> str:
    return (f"the index {index_dir} is read-only here (searching works; indexing needs write access to the "
            "folder and its library.sqlite)")


def _file_id(path: Path) -> tuple[int, int] | None:
    """(device, inode) of a file, None when it is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _load_model(name: str | None, device: str = "cpu", text_backend: str = "torch") -> EmbeddingModel:
    from ..models import load_model

    return load_model(name, device=device, text_backend=text_backend)


def _model_on(name: str | None, device: str, text_backend: str = "torch") -> EmbeddingModel:
    """`_load_model` with only the arguments that differ from its defaults (tests swap in one-argument
    stand-ins)."""
    if text_backend != "torch":
        return _load_model(name, device, text_backend)
    return _load_model(name) if device == "cpu" else _load_model(name, device)

