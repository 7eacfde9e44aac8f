"""Indexing on a Ray cluster: hashing, decoding and embedding on actors; the rows are written by the driver.

`RayExecutor` is what `Library.update(ray=...)` gives `updater.Updater` instead of its local thread and
process pools, with their contract: items in, `(item, (ok, result))` out, every item answered once. So the
incremental rules and every write stay in the updater, in this process, through `store.Writer`.

One actor per CPU of the cluster (per GPU when it has any: `num_gpus=1`), each loading its own model copy
by name or checkpoint path on its first embedding task; weights are never shipped. Workers read the files
at the driver's paths: the cluster must share the filesystem, mounted at the same place on every node
(no bytes are sent). A lost actor (a crash, an out-of-memory kill, a node gone) costs only the files of
its tasks in flight: each is retried once, alone, on a live actor (a replacement is started for the lost
one), and a file whose retry is lost too comes back as a permanent failure (`LOST`).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .records import LibraryError
from .updater import BATCH_AUDIO_SECONDS
from .workers import Failure, _guarded, decode_file, embed_each, hash_file

if TYPE_CHECKING:
    from ..models import EmbeddingModel

LOST = "the Ray worker indexing this file was lost, twice (a crash, an out-of-memory kill or a lost node)"
TASK_FILES = 32  # files per embedding task: one model batch on the actor, the most a lost actor costs
HASH_FILES = 64  # files per hashing task
IN_FLIGHT = 2  # tasks queued per actor: one running, the next one ready beside it
CONNECT_SECONDS = 10.0  # a cluster's GCS port must accept a connection within this
START_SECONDS = 300.0  # how long a run with no live actor waits for one to be placed before giving up

Hook = Callable[[str, list[str]], None]  # (method, paths), run on the actor before each task


class ClusterError(LibraryError):
    """Ray is not installed, no cluster answers at the address, or no worker could be started."""


class IndexWorker:
    """One Ray actor: hashes and decodes files from the shared filesystem, embeds with its own model."""

    def __init__(self, model_name: str | None, audio_id: str | None, before_task: Hook | None) -> None:
        import ray
        import torch

        self.model_name, self.audio_id, self.before_task = model_name, audio_id, before_task
        self.device = "cuda" if ray.get_gpu_ids() else "cpu"
        self.model: EmbeddingModel | None = None
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        torch.set_num_threads(max(1, int(cpus)))  # one model thread per CPU the actor holds

    def pid(self) -> int:
        """The actor's process id (and a readiness check: it answers once the actor runs)."""
        return os.getpid()

    def hash(self, paths: list[str]) -> list[tuple[bool, Any]]:
        """`workers.hash_file` on each path, failures as values."""
        self._hook("hash", paths)
        return [_guarded(hash_file, p) for p in paths]

    def embed(self, paths: list[str], max_duration: float | None) -> list[tuple[bool, Any]]:
        """Decode and embed each path: (True, (info, truncation, vector, tags, seconds)) or (False, why)."""
        self._hook("embed", paths)
        model = self._model()
        out: list[tuple[bool, Any]] = [(False, "not embedded")] * len(paths)
        batch: list[tuple[int, np.ndarray, tuple, Any]] = []
        for i, path in enumerate(paths):
            decoded = _decode(path, model.sample_rate, max_duration)
            if isinstance(decoded, Failure):
                out[i] = (False, decoded)
            else:
                batch.append((i, *decoded))
                if sum(len(b[1]) for b in batch) >= BATCH_AUDIO_SECONDS * model.sample_rate:
                    self._embed_batch(model, batch, out)
        self._embed_batch(model, batch, out)
        return out

    def _model(self) -> EmbeddingModel:
        if self.model is None:
            from ..models import load_model

            model = load_model(self.model_name, device=self.device)
            audio_id = getattr(model, "audio_model_id", model.model_id)  # clip vectors depend on it alone
            if self.audio_id is not None and audio_id != self.audio_id:
                raise ClusterError(f"model {self.model_name} on a Ray worker embeds audio as {audio_id}, "
                                   f"but this index holds {self.audio_id}: install the same audiofind there")
            self.model = model
        return self.model

    def _embed_batch(self, model: EmbeddingModel, batch: list, out: list[tuple[bool, Any]]) -> None:
        """Embed `batch` into `out`; a batch that fails is retried clip by clip (one bad wave, one file)."""
        results = embed_each(model, [b[1] for b in batch])
        for (i, wave, info, extra), result in zip(batch, results, strict=True):
            if isinstance(result, str):
                out[i] = (False, result)
            else:
                seconds = len(wave) / model.sample_rate
                out[i] = (True, (info, extra, np.asarray(result[0], np.float32), result[1], seconds))
        batch.clear()

    def _hook(self, method: str, paths: list[str]) -> None:
        if self.before_task is not None:
            self.before_task(method, paths)


def _decode(path: str, sample_rate: int, max_duration: float | None) -> tuple | Failure:
    """(wave, info, truncation) or the Failure, read the way the local decoding processes read it."""
    ok, result = _guarded(decode_file, (path, sample_rate, max_duration))
    if not ok:
        return result
    wave, info, extra = result
    return (wave, info, extra) if wave is not None else Failure(info, transient=not extra)


class RayExecutor:
    """Hashing, decoding and embedding over the actors of a Ray cluster, for one or more updates.

    `address`: "auto" (the cluster `ray start` made here), "ray://HOST:10001" (Ray Client), a GCS address
    "HOST:6379", or "local" (start a private cluster on this machine). A process that already called
    `ray.init` is used as it is. `workers`: actors to run (None: one per cluster CPU, or per GPU).
    `before_task` runs on the actor before each task (tests use it to hold a worker mid-file).
    """

    def __init__(self, address: str = "auto", *, workers: int | None = None, task_files: int = TASK_FILES,
                 before_task: Hook | None = None) -> None:
        self.address, self.workers, self.task_files = address, workers, task_files
        self.before_task = before_task
        self.model_name: str | None = None
        self.model_id: str | None = None  # written into the rows, as the local path writes its model's
        self.audio_id: str | None = None
        self.actors: dict[Any, Any] = {}  # ready ObjectRef of pid() -> actor, while starting
        self.live: list[Any] = []
        self.started = 0
        self._owns_connection = False

    def bind(self, model_name: str | None, model: EmbeddingModel) -> RayExecutor:
        """Set the model the workers load (`model`, the driver's): by name or a checkpoint path on the shared
        disk; they check that theirs embeds audio the same way."""
        audio_id = getattr(model, "audio_model_id", model.model_id)
        if (model_name, audio_id) != (self.model_name, self.audio_id):
            self._stop_actors()
        self.model_name, self.model_id, self.audio_id = model_name, model.model_id, audio_id
        return self

    def pids(self) -> list[int]:
        """The process ids of the actors, once those still starting are up."""
        ray = _ray()
        from ray.exceptions import RayActorError

        for ref, actor in list(self.actors.items()):
            with contextlib.suppress(RayActorError):
                ray.get(ref)
                self.live.append(actor)
            del self.actors[ref]
        return ray.get([a.pid.remote() for a in self.live])

    def hash_map(self, paths: Sequence[str]) -> Iterator[tuple[str, tuple[bool, Any]]]:
        """(path, (ok, (size, mtime_ns, digest) or Failure)) for every path, as tasks complete."""
        return self._map("hash", list(paths), HASH_FILES)

    def embed_map(self, paths: Sequence[str], max_duration: float | None) -> Iterator[tuple[str, tuple]]:
        """(path, (ok, result)) for every path, as tasks complete; see `IndexWorker.embed`."""
        return self._map("embed", list(paths), self.task_files, max_duration)

    def close(self) -> None:
        """Stop the actors; disconnect when this executor connected."""
        self._stop_actors()
        if self._owns_connection:
            _ray().shutdown()
            self._owns_connection = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    # ------------------------------------------------------------ the actors

    def _connect(self) -> Any:
        ray = _ray()
        if not ray.is_initialized():
            try:
                _reachable(self.address)
                ray.init(address=None if self.address == "local" else self.address, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                first = str(e).strip().split(". ")[0].splitlines()[0] if str(e).strip() else type(e).__name__
                raise ClusterError(f"no Ray cluster at {self.address}: {first.rstrip('.')} "
                                   "(start one with: ray start --head)") from None
            self._owns_connection = True
        return ray

    def _start(self, n: int) -> None:
        """Start `n` actors; they count as live once they answer `pid()`."""
        ray = self._connect()
        gpus = int(ray.cluster_resources().get("GPU", 0))
        options = {"num_cpus": 1, "num_gpus": 1} if gpus else {"num_cpus": 1}
        actor_class = ray.remote(IndexWorker).options(**options, max_restarts=0, max_task_retries=0)
        for _ in range(n):
            actor = actor_class.remote(self.model_name, self.audio_id, self.before_task)
            self.actors[actor.pid.remote()] = actor
            self.started += 1

    def _wanted(self) -> int:
        ray = self._connect()
        if self.workers:
            return self.workers
        resources = ray.cluster_resources()
        return max(1, int(resources.get("GPU", 0)) or int(resources.get("CPU", 1)))

    def _stop_actors(self) -> None:
        if not (self.actors or self.live):
            return
        ray = _ray()
        for actor in [*self.actors.values(), *self.live]:
            ray.kill(actor, no_restart=True)
        self.actors.clear()
        self.live.clear()

    def _lost(self, actor: Any) -> None:
        """Forget a dead actor and start its replacement."""
        if actor in self.live:
            self.live.remove(actor)
            self._start(1)

    def _map(self, method: str, items: list[str], chunk: int, *args: Any) -> Iterator[tuple[str, tuple]]:
        """Run `method` over `items` in tasks of `chunk`, answering every item once (see the module doc)."""
        if not items:
            return
        ray = self._connect()
        from ray.exceptions import RayActorError, RayTaskError, WorkerCrashedError

        if not (self.live or self.actors):
            self._start(self._wanted())
        queue = deque(items[i:i + chunk] for i in range(0, len(items), chunk))
        retries: deque[str] = deque()  # files of a lost actor's tasks, each re-run alone on an idle actor
        pending: dict[Any, tuple[Any, list[str], bool]] = {}  # ref -> (actor, items, is a retry)
        while queue or retries or pending:
            for actor in self.live:
                tasks = [retry for a, _, retry in pending.values() if a is actor]
                if retries and not tasks:  # alone: a death now is this file's own doing
                    batch = [retries.popleft()]
                    pending[getattr(actor, method).remote(batch, *args)] = (actor, batch, True)
                    tasks.append(True)
                while queue and not any(tasks) and len(tasks) < IN_FLIGHT:
                    batch = queue.popleft()
                    pending[getattr(actor, method).remote(batch, *args)] = (actor, batch, False)
                    tasks.append(False)
            waiting = [*pending, *self.actors]
            ready, _ = ray.wait(waiting, num_returns=1, timeout=None if pending else START_SECONDS)
            if not ready:
                raise ClusterError(f"no Ray worker could be started in {START_SECONDS:.0f} s "
                                   f"({len(self.actors)} waiting for resources)")
            ref = ready[0]
            if ref in self.actors:  # an actor came up (or died starting)
                actor = self.actors.pop(ref)
                try:
                    ray.get(ref)
                    self.live.append(actor)
                except (RayActorError, WorkerCrashedError):
                    if not self.live and not self.actors:
                        raise ClusterError("every Ray worker died while starting") from None
                continue
            actor, batch, retry = pending.pop(ref)
            try:
                results = ray.get(ref)
            except (RayActorError, WorkerCrashedError):
                self._lost(actor)
                if retry:
                    yield batch[0], (False, Failure(LOST, False))
                else:
                    retries.extend(batch)  # its files in flight: each retried once, alone, elsewhere
                continue
            except RayTaskError as e:  # the method itself raised: a model that would not load, a bug
                cause = getattr(e, "cause", None) or e
                raise ClusterError(f"a Ray worker failed: {cause}") from None
            yield from zip(batch, results, strict=True)


def _reachable(address: str) -> None:
    """Fail fast on a HOST:PORT nobody listens on (Ray itself retries it for minutes)."""
    host, _, port = address.rpartition(":")
    if address.startswith("ray://") or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as e:
        raise ConnectionError(f"cannot reach {address}: {e.strerror or e}") from None


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ClusterError("indexing on a Ray cluster needs Ray: pip install 'audiofind[ray]'") from None
    return ray


def as_executor(ray: str | RayExecutor, workers: int | None) -> RayExecutor:
    """`Library.update`'s `ray` argument as a connected executor: from an address, or the caller's own."""
    executor = ray if isinstance(ray, RayExecutor) else RayExecutor(ray, workers=workers)
    executor._connect()
    return executor
