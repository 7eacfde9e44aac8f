"""Indexing workers: hashing and decoding audio files in a bounded pool beside the model's threads."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import Any

import numpy as np

from ..audio import AudioDecodeError, load_audio


def hash_file(path: str) -> tuple[int, int, str]:
    """(size, mtime_ns, blake2b hex) of the bytes: the identity that survives renames and touches."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        digest = hashlib.blake2b(digest_size=16)
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return st.st_size, st.st_mtime_ns, digest.hexdigest()


def decode_file(task: tuple[str, int, float | None]) -> tuple[np.ndarray | None, Any, bool]:
    """(wave, (duration, rate, channels), _) or (None, reason, permanent); runs in a worker, never raises.

    `permanent` marks failures of the bytes themselves, not worth retrying until the file changes.
    """
    path, sample_rate, max_duration = task
    try:
        wave, info = load_audio(path, sample_rate=sample_rate, max_duration=max_duration)
    except AudioDecodeError as e:
        return None, e.reason, True
    except FileNotFoundError:
        return None, "file vanished while indexing", False
    except OSError as e:
        return None, f"cannot read: {e.strerror or e}", False
    except Exception as e:  # a decoder bug on one odd file must not stop a library scan
        return None, f"decoder error: {type(e).__name__}: {e}", True
    if wave.size == 0:
        return None, "no audio samples", True
    return wave, (info.duration, info.sample_rate, info.channels), False


def _guarded(fn: Callable[[Any], Any], item: Any) -> tuple[bool, Any]:
    try:
        return True, fn(item)
    except FileNotFoundError:
        return False, "file vanished while indexing"
    except OSError as e:
        return False, f"cannot read: {e.strerror or e}"


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
    guard (spawned workers would re-run it), and the workers touch only the decoders, never torch."""
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method))
