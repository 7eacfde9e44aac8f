"""The Milvus side of an index (`--store milvus://HOST:PORT` or `milvus-lite:PATH`): schema, connection, sync.

SQLite stays the bookkeeping of the incremental update (what was seen, hashes, failures, roots); Milvus
holds what search reads: one entity per clip with its record (path, duration, rate, channels, tags, model),
audio vector, name vector and text record, BM25-indexed. `MilvusStore.sync` brings Milvus in step with the
committed SQLite rows by comparing a stamp per clip (upsert what differs, delete what is gone), so it is
idempotent: a run killed mid-sync and run again leaves no duplicates, and remove/prune need no hook. A
small state collection records which index generation the clips reflect; it is written last.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .codecs import blob_vector
from .records import LibraryError
from .store import abspath, read_meta, transaction

SQLITE = "sqlite"
TOKEN_ENV = "AUDIOFIND_MILVUS_TOKEN"  # "user:password" or an API key, for a secured Milvus
DEFAULT_COLLECTION = "audiofind_clips"
SYNC_BATCH = 512  # entities per upsert: a killed sync loses at most this much work
TEXT_BYTES = 60_000  # VARCHAR fields hold at most 65 535 bytes
_FIELDS = "id, path_bytes, duration, sample_rate, channels, tags, model_id, indexed_at, text"


@dataclass(frozen=True)
class StoreSpec:
    """Where the search side lives: a parsed `--store` value."""

    spec: str  # as recorded in the index's meta
    uri: str  # for pymilvus.MilvusClient
    collection: str
    lite: bool


def parse_store(spec: str) -> StoreSpec | None:
    """None for the embedded SQLite+FAISS store; a bad value is a ValueError naming the forms accepted."""
    text = spec.strip()
    if text in ("", SQLITE):
        return None
    if text.startswith("milvus-lite:"):
        path = text[len("milvus-lite:"):]
        if not path.endswith(".db"):
            raise ValueError(f"--store {spec!r}: a milvus-lite file name ends in .db "
                             "(e.g. milvus-lite:clips.db)")
        path = abspath(path)
        return StoreSpec(f"milvus-lite:{path}", path, DEFAULT_COLLECTION, True)
    if text.startswith("milvus://"):
        rest = text[len("milvus://"):]
        address, _, collection = rest.partition("/")
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or (collection and not collection.replace("_", "").isalnum()):
            raise ValueError(f"--store {spec!r}: expected milvus://HOST:PORT or milvus://HOST:PORT/COLLECTION")
        return StoreSpec(text, f"http://{address}", collection or DEFAULT_COLLECTION, False)
    raise ValueError(f"--store must be sqlite, milvus-lite:PATH.db or milvus://HOST:PORT, not {spec!r}")


def stamp(row: tuple[Any, ...], has_name: bool) -> str:
    """What a clip's Milvus entity must reflect, hashed: any change to the row changes it."""
    data = repr((*row, has_name)).encode("utf-8", "surrogateescape")
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def fts_columns(text: str | None) -> dict[str, str]:
    """The stemmed FTS columns of a stored text record ({} for none)."""
    return json.loads(text)["fts"] if text else {}


def _clip_bytes(text: str) -> str:
    data = text.encode("utf-8", "replace")
    return text if len(data) <= TEXT_BYTES else data[:TEXT_BYTES].decode("utf-8", "ignore")


class MilvusStore:
    """One Milvus collection of clips (plus its sync state) mirroring an index's SQLite rows."""

    def __init__(self, spec: StoreSpec, conn: sqlite3.Connection, lock: threading.RLock,
                 dim: Callable[[], int], name_dim: Callable[[], int], index_kind: str, nprobe: int) -> None:
        self.spec, self.conn, self.lock = spec, conn, lock
        self._dim, self._name_dim = dim, name_dim
        self.index_kind, self.nprobe = index_kind, nprobe
        self.collection, self.state_collection = spec.collection, spec.collection + "_state"
        self._client: Any = None
        self._synced: dict[str, Any] | None = None  # the state row as last read or written

    @property
    def client(self) -> Any:
        """The pymilvus client, connected on first use (opening a milvus-lite file takes about a second)."""
        if self._client is None:
            try:
                from pymilvus import MilvusClient
            except ImportError:
                raise LibraryError("the Milvus store needs pymilvus: "
                                   "pip install 'audiofind[milvus]'") from None
            logging.getLogger("pymilvus").setLevel(logging.ERROR)  # its iterator warns on every listing
            try:
                client = MilvusClient(self.spec.uri, token=os.environ.get(TOKEN_ENV, ""))
                for name in (self.collection, self.state_collection):  # a reopened collection starts released
                    if client.has_collection(name):
                        client.load_collection(name)
            except Exception as e:  # pymilvus raises its own types for refused connections, bad files
                raise LibraryError(f"cannot open the Milvus store {self.spec.spec}: {e}") from None
            self._client = client
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def index_type(self) -> str:
        """The Milvus index family of the audio vectors for this store and `index_kind`."""
        kinds = {"flat": "FLAT", "ivf": "IVF_FLAT", "hnsw": "HNSW"}
        if self.index_kind in kinds:
            return kinds[self.index_kind]
        return "FLAT" if self.spec.lite else "AUTOINDEX"

    def search_params(self, k: int) -> dict[str, Any]:
        params: dict[str, Any] = {"nprobe": self.nprobe} if self.index_type() == "IVF_FLAT" else \
            {"ef": max(64, k)} if self.index_type() == "HNSW" else {}
        return {"metric_type": "IP", "params": params}

    # ------------------------------------------------------------ schema

    def _create(self, dim: int, name_dim: int) -> None:
        """The clips collection (vectors, record, BM25 over the text) and the one-row state collection."""
        from pymilvus import DataType, Function, FunctionType

        c = self.client
        schema = c.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("stamp", DataType.VARCHAR, max_length=32)
        schema.add_field("path_hex", DataType.VARCHAR, max_length=16_384)  # the path bytes, hex: exact
        schema.add_field("duration", DataType.DOUBLE)
        schema.add_field("sample_rate", DataType.INT64)
        schema.add_field("channels", DataType.INT64)
        schema.add_field("tags", DataType.VARCHAR, max_length=65_535)
        schema.add_field("model_id", DataType.VARCHAR, max_length=1024)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("has_name", DataType.BOOL)
        schema.add_field("name_vector", DataType.FLOAT_VECTOR, dim=name_dim)
        schema.add_field("columns", DataType.VARCHAR, max_length=65_535)  # the stemmed FTS columns, JSON
        schema.add_field("fts", DataType.VARCHAR, max_length=65_535, enable_analyzer=True, enable_match=True)
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_function(Function(name="fts_bm25", function_type=FunctionType.BM25,
                                     input_field_names=["fts"], output_field_names=["sparse"]))
        index = c.prepare_index_params()
        vector_index: dict[str, Any] = {"nlist": 1024} if self.index_type() == "IVF_FLAT" else \
            {"M": 16, "efConstruction": 200} if self.index_type() == "HNSW" else {}
        index.add_index("vector", index_type=self.index_type(), metric_type="IP", params=vector_index)
        index.add_index("name_vector", index_type="FLAT" if self.spec.lite else "AUTOINDEX", metric_type="IP")
        index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
        c.create_collection(self.collection, schema=schema, index_params=index)
        state = c.create_schema(auto_id=False)
        state.add_field("id", DataType.INT64, is_primary=True)
        state.add_field("state", DataType.VARCHAR, max_length=4096)
        state.add_field("v", DataType.FLOAT_VECTOR, dim=2)  # Milvus wants a vector field in every collection
        state_index = c.prepare_index_params()
        state_index.add_index("v", index_type="FLAT" if self.spec.lite else "AUTOINDEX", metric_type="L2")
        c.create_collection(self.state_collection, schema=state, index_params=state_index)

    def _ensure_collections(self, dim: int, name_dim: int) -> None:
        """Create the collections, or recreate them when the vector sizes changed (another model)."""
        c = self.client
        if c.has_collection(self.collection) and c.has_collection(self.state_collection):
            dims = {f["name"]: f.get("params", {}).get("dim")
                    for f in c.describe_collection(self.collection)["fields"]}
            if int(dims.get("vector") or 0) == dim and int(dims.get("name_vector") or 0) == name_dim:
                return
        for name in (self.collection, self.state_collection):
            if c.has_collection(name):
                c.drop_collection(name)
        self._synced = None
        self._create(dim, name_dim)

    # ------------------------------------------------------------ sync

    def _source(self) -> str:
        """Which index the store mirrors: another index syncing into the same collection is noticed."""
        database = self.conn.execute("PRAGMA database_list").fetchone()[2]
        return f"{read_meta(self.conn, 'created_at')}|{database}"

    def state(self) -> dict[str, Any] | None:
        """The recorded sync state (generation, source, clips, tokens), or None before the first sync."""
        if self._synced is None and self.client.has_collection(self.state_collection):
            rows = self.client.query(self.state_collection, filter="id == 0", output_fields=["state"])
            self._synced = json.loads(rows[0]["state"]) if rows else None
        return self._synced

    def in_step(self) -> bool:
        """Whether the store reflects the committed SQLite generation of this index."""
        with self.lock:
            generation = int(read_meta(self.conn, "generation") or 0)
            state = self._synced if self._synced is not None else self.state()
            return (state is not None and state["generation"] == generation
                    and state["source"] == self._source())

    def ensure_synced(self) -> None:
        """Sync when SQLite moved on since the last sync (cheap when in step: one meta read)."""
        with self.lock:  # one sync at a time: the server's threads wait for it rather than repeat it
            if not self.in_step():
                self.sync()

    def _local(self) -> tuple[int, dict[int, str], int]:
        """(generation, {id: stamp}, total tokens) of the committed rows, from one snapshot."""
        with self.lock, transaction(self.conn, "DEFERRED"):
            generation = int(read_meta(self.conn, "generation") or 0)
            stamps, tokens = {}, 0
            for row in self.conn.execute(f"SELECT {_FIELDS}, length(name_vector) > 0 FROM files"):
                stamps[int(row[0])] = stamp(row[:-1], bool(row[-1]))
                tokens += sum(len(col.split()) for col in fts_columns(row[-2]).values())
        return generation, stamps, tokens

    def _remote(self) -> dict[int, str]:
        """{id: stamp} of every entity in Milvus."""
        out: dict[int, str] = {}
        for batch in self._iterate(["stamp"]):
            out.update((int(r["id"]), r["stamp"]) for r in batch)
        return out

    def _iterate(self, fields: list[str], expression: str = "") -> Iterator[list[dict[str, Any]]]:
        it = self.client.query_iterator(self.collection, batch_size=4096, filter=expression,
                                        output_fields=fields)
        try:
            while batch := it.next():
                yield batch
        finally:
            it.close()

    def sync(self, progress: Callable[[int, int], None] | None = None) -> tuple[int, int]:
        """Upsert the clips whose stamp differs, delete those gone; (upserted, deleted). Idempotent."""
        generation, local, tokens = self._local()
        if not local and not self.client.has_collection(self.collection):
            return 0, 0
        self._ensure_collections(self._dim(), self._name_dim())
        remote = self._remote()
        changed = [i for i, s in local.items() if remote.get(i) != s]
        gone = [i for i in remote if i not in local]
        for start in range(0, len(changed), SYNC_BATCH):
            entities = self._entities(changed[start:start + SYNC_BATCH])
            if entities:
                self.client.upsert(self.collection, entities)
            if progress is not None:
                progress(min(start + SYNC_BATCH, len(changed)), len(changed))
        for start in range(0, len(gone), 4096):
            self.client.delete(self.collection, ids=gone[start:start + 4096])
        self.client.flush(self.collection)
        state = {"generation": generation, "source": self._source(), "clips": len(local), "tokens": tokens}
        self.client.upsert(self.state_collection, [{"id": 0, "state": json.dumps(state), "v": [0.0, 0.0]}])
        self.client.flush(self.state_collection)
        self._synced = state
        return len(changed), len(gone)

    def _entities(self, ids: list[int]) -> list[dict[str, Any]]:
        """The Milvus entities of these clips as SQLite has them now (rows deleted meanwhile are skipped)."""
        name_dim = self._name_dim()
        marks = ",".join("?" * len(ids))
        with self.lock:
            rows = self.conn.execute(f"SELECT {_FIELDS}, length(name_vector) > 0, vector, name_vector "
                                     f"FROM files WHERE id IN ({marks})", ids).fetchall()
        out = []
        for row in rows:
            (id_, path_b, duration, rate, channels, tags, model_id, _, text, has_name, vec, name_vec) = row
            columns = fts_columns(text)
            has_name = bool(has_name)
            out.append({
                "id": int(id_), "stamp": stamp(row[:9], has_name), "path_hex": bytes(path_b).hex(),
                "duration": float(duration), "sample_rate": int(rate), "channels": int(channels),
                "tags": _clip_bytes(tags), "model_id": model_id,
                "vector": blob_vector(vec).tolist(),
                "has_name": has_name,
                "name_vector": (blob_vector(name_vec, "name_vector").tolist() if has_name
                                else [0.0] * name_dim),
                "columns": _clip_bytes(json.dumps(columns)), "fts": _clip_bytes(" ".join(columns.values())),
            })
        return out

    def count(self) -> int:
        """Entities in the clips collection (0 before the first sync)."""
        if not self.client.has_collection(self.collection):
            return 0
        rows = self.client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])
