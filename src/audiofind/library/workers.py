"""Indexing workers: hashing and decoding audio files in a bounded pool beside the model's threads."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, NamedTuple

import numpy as np

from ..audio import MAX_DECODE_SECONDS, AudioDecodeError, NotRegularFileError, load_audio, open_regular

MIN_CLIP_SECONDS = 0.05  # shorter decoded clips are skipped: the tagger sees nothing and ranks them anyway
SILENCE_PEAK = 1e-4  # a clip whose loudest sample is under -80 dBFS is silence, not a sound to find
DECODE_QUEUE_SECONDS = 1800.0  # estimated audio in flight across the decoders (memory, not a file count)


class Failure(NamedTuple):
    """Why a file could not be hashed or decoded; `transient` failures (the environment) are retried."""

    reason: str
    transient: bool


def hash_file(path: str) -> tuple[int, int, str]:
    """(size, mtime_ns, blake2b hex) of the bytes: the identity that survives renames and touches.

    Opened without blocking and checked on the descriptor, so a FIFO swapped in after listing is refused."""
    with open_regular(path) as f:
        st = os.fstat(f.fileno())
        digest = hashlib.blake2b(digest_size=16)
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return st.st_size, st.st_mtime_ns, digest.hexdigest()


def decode_file(task: tuple[str, int, float | None]) -> tuple[np.ndarray | None, Any, Any]:
    """(wave, (duration, rate, channels), truncation note or None) or (None, reason, permanent); runs in a
    worker, never raises.

    `permanent` marks failures of the bytes themselves, not worth retrying until the file changes; a
    failure of the environment (permissions, I/O, a vanished file) is not, and is retried next run.
    """
    path, sample_rate, max_duration = task
    try:
        wave, info = load_audio(path, sample_rate=sample_rate, max_duration=max_duration)
    except AudioDecodeError as e:
        return None, e.reason, not e.transient
    except FileNotFoundError:
        return None, "file vanished while indexing", False
    except OSError as e:
        return None, f"cannot read: {e.strerror or e}", False
    except MemoryError:
        return None, "decoder ran out of memory", False
    except Exception as e:  # a decoder bug on one odd file must not stop a library scan
        return None, f"decoder error: {type(e).__name__}: {e}", True
    if wave.size < MIN_CLIP_SECONDS * sample_rate:
        return None, f"too short to tell what it is: {wave.size / sample_rate:.3f} s " \
                     f"(under {MIN_CLIP_SECONDS:g} s)", True
    peak = float(np.max(np.abs(wave)))
    if peak < SILENCE_PEAK:
        level = f"{20 * np.log10(peak):.0f} dBFS" if peak > 0 else "digital silence"
        return None, f"silent: loudest sample {level} (under -80 dBFS)", True
    return wave, (info.duration, info.sample_rate, info.channels), info.truncated


def _guarded(fn: Callable[[Any], Any], item: Any) -> tuple[bool, Any]:
    try:
        return True, fn(item)
    except FileNotFoundError:
        return False, Failure("file vanished while indexing", False)
    except NotRegularFileError as e:
        return False, Failure(str(e), False)
    except OSError as e:
        return False, Failure(f"cannot read: {e.strerror or e}", True)


def bounded_map(fn: Callable[[Any], Any], items: Sequence[Any], pool: Executor | None,
                 window: int) -> Iterator[tuple[Any, tuple[bool, Any]]]:
    """Ordered map with at most `window` tasks in flight, so decoded audio never piles up in memory."""
    if pool is None:
        for item in items:
            yield item, _guarded(fn, item)
        return
    it = iter(items)
    pending: deque = deque()
    for item in it:
        pending.append((item, pool.submit(_guarded, fn, item)))
        if len(pending) >= window:
            break
    while pending:
        item, fut = pending.popleft()
        nxt = next(it, None)
        if nxt is not None:
            pending.append((nxt, pool.submit(_guarded, fn, nxt)))
        yield item, fut.result()


def embed_each(model: Any, waves: Sequence[np.ndarray]) -> list[tuple[np.ndarray, Any] | str]:
    """(vector, tags) for each wave, embedded as one batch; when the batch fails, clip by clip, so one bad
    wave does not sink its batch-mates and gets the model's error as its reason instead."""
    if not len(waves):
        return []
    try:
        emb = model.embed_audio(list(waves))
    except Exception:
        out: list[tuple[np.ndarray, Any] | str] = []
        for wave in waves:
            try:
                one = model.embed_audio([wave])
                out.append((one.vectors[0], one.tags[0]))
            except Exception as e:
                out.append(f"model failed: {type(e).__name__}: {e}")
        return out
    return list(zip(emb.vectors, emb.tags, strict=True))


def limit_model_threads(busy_cores: int) -> int:
    """Leave the decoding workers their cores: torch's threads spin-wait when they have to share one,
    which was measured to cut mn04 throughput tenfold on two cores. Returns the previous setting."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, min(previous, (os.cpu_count() or 1) - busy_cores)))
    return previous


def restore_model_threads(previous: int) -> None:
    import torch

    torch.set_num_threads(previous)


def default_workers() -> int:
    """Half the cores decode and half run the model: measured best on 2 cores (1 decoder, 1 model thread)."""
    return max(1, (os.cpu_count() or 2) // 2)


def process_pool(workers: int) -> ProcessPoolExecutor:
    """Decoding processes. Forked on Linux: a script calling `update` needs no `if __name__ == "__main__"`
    guard (spawned workers would re-run it), and the workers touch only the decoders, never torch.
    Each worker dies with this process (`_die_with_parent`): it holds the index's SQLite files open."""
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method),
                               initializer=_die_with_parent, initargs=(os.getpid(),))


PARENT_POLL_SECONDS = 0.5


def _die_with_parent(parent_pid: int) -> None:
    """Worker initializer: on Linux the kernel sends SIGKILL when the parent dies (PR_SET_PDEATHSIG); a
    daemon thread that polls the parent pid covers other systems and a parent that died before prctl ran."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass
    import threading

    def watch() -> None:
        while os.getppid() == parent_pid:
            threading.Event().wait(PARENT_POLL_SECONDS)
        os._exit(1)

    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def estimate_seconds(path: str, max_duration: float | None) -> float:
    """Audio seconds a file will decode to, from its header alone (cheap; a guess when unreadable), for
    bounding the audio in flight."""
    import soundfile as sf

    cap = MAX_DECODE_SECONDS if max_duration is None else max_duration
    try:
        with open_regular(path) as fh, sf.SoundFile(fh) as f:
            seconds = f.frames / f.samplerate if f.samplerate > 0 else 0.0
    except Exception:  # not for libsndfile (m4a, ...) or unreadable: guess from the size at 128 kbit/s
        try:
            seconds = os.path.getsize(path) / 16_000
        except OSError:
            seconds = 0.0
    return min(seconds, cap)


DIED = "the decoding process died while decoding this file, alone, twice (a crash or out-of-memory kill)"


def resilient_map(fn: Callable[[Any], Any], items: Sequence[Any], workers: int, window: int,
                  weigh: Callable[[Any], float] | None = None,
                  budget: float | None = None) -> Iterator[tuple[Any, tuple[bool, Any]]]:
    """Map `fn` over `items` in `workers` processes, yielding (item, (ok, result)) as results complete.

    At most `window` tasks, and (by `weigh`) at most `budget` (default DECODE_QUEUE_SECONDS) seconds of
    audio, are in flight, but always one: memory does not grow with the number of long files.
    A worker's death (a crash, an OOM kill, `kill -9`) breaks the pool: it is restarted, the tasks it
    lost are re-run one at a time, and one that kills a worker again on its own comes back as
    (False, Failure(DIED, transient=False)); every other task is unaffected.
    """
    weigh = weigh or (lambda _: 0.0)
    budget = DECODE_QUEUE_SECONDS if budget is None else budget
    queue: deque = deque(items)
    suspects: deque = deque()  # tasks in flight when a worker died, re-run alone
    pending: dict[Future, tuple[Any, float, bool]] = {}
    pool = process_pool(workers)
    try:
        while queue or suspects or pending:
            if suspects:
                if not pending:
                    item = suspects.popleft()
                    pending[pool.submit(_guarded, fn, item)] = (item, 0.0, True)
            else:
                load = sum(w for _, w, _ in pending.values())
                while queue and len(pending) < window:
                    w = weigh(queue[0])
                    if pending and load + w > budget:
                        break
                    item = queue.popleft()
                    pending[pool.submit(_guarded, fn, item)] = (item, w, False)
                    load += w
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            broken = False
            for fut in done:
                item, _, alone = pending.pop(fut)
                try:
                    result = fut.result()
                except BrokenProcessPool:
                    broken = True
                    if alone:
                        yield item, (False, Failure(DIED, False))
                    else:
                        suspects.append(item)
                    continue
                yield item, result
            if broken:
                for fut, (item, _, alone) in list(pending.items()):
                    if fut.done() and fut.exception() is None:
                        yield item, fut.result()
                    elif alone:
                        yield item, (False, Failure(DIED, False))
                    else:
                        suspects.append(item)
                pending.clear()
                pool.shutdown(wait=True, cancel_futures=True)
                pool = process_pool(workers)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
