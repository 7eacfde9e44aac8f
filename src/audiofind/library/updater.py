"""The incremental update: list the folders, decide what changed, hash, decode and embed only that.

Unchanged files are skipped by (size, mtime); changed ones are hashed, and only content never seen
before goes through the model. Moved files keep their vector (same content hash), copies reuse it.
Every row written carries the file's text record (`metadata.build_text_record`: name, folders, tags),
which triggers mirror into the FTS5 table in the same transaction. Row changes go through a `Writer`,
so a crash loses at most a few seconds of work. Hashing, decoding and embedding run here and in local
processes, or on a Ray cluster (`ray_executor.RayExecutor`); the rows are written here either way.

It is longer than 400 lines because the per-file decision (unchanged, moved, copied, changed, failed, too
short) is one pass that reads best in one place, and the local and the Ray executors share its writes.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from ..audio import AUDIO_EXTENSIONS, special_file_kind
from ..paths import display_path
from .codecs import tags_json, vector_blob
from .manage import outermost, root_keys
from .metadata import TEXT_RECORD_VERSION, build_text_record
from .records import Progress, UpdateReport
from .store import UPSERT, KnownFile, Writer, prefix_range
from .workers import (
    MIN_CLIP_SECONDS,
    Failure,
    bounded_map,
    decode_file,
    embed_each,
    estimate_seconds,
    hash_file,
    limit_model_threads,
    resilient_map,
    restore_model_threads,
)

if TYPE_CHECKING:
    from ..models import EmbeddingModel
    from .ray_executor import RayExecutor

BATCH_AUDIO_SECONDS = 600.0  # flush a model batch early once it holds this much audio
# failure reasons that describe the environment, not the bytes (indexes before transient failures were
# kept out of `failures` stored them): such rows are retried rather than trusted
_ENVIRONMENT_REASONS = ("Permission denied", "Input/output error", "cannot read:", "file vanished",
                        "Stale file handle", "Transport endpoint is not connected", "file not found")


class Updater:
    """One `Library.update` run over a set of roots: plans from the stored rows, then writes the changes."""

    def __init__(self, conn: sqlite3.Connection, lock: threading.RLock,
                 model: Callable[[], EmbeddingModel]) -> None:
        self.conn, self.lock, self.model = conn, lock, model  # the model loads only if audio is new
        self.executor: RayExecutor | None = None  # None: hash in threads, decode in processes, embed here
        self.roots: list[str] = []

    def text(self, path_b: bytes) -> str:
        """The JSON text record of a file, its folders taken relative to the deepest root holding it."""
        path = os.fsdecode(path_b)
        under = [r for r in self.roots if os.path.isdir(r) and path.startswith(r.rstrip(os.sep) + os.sep)]
        record = build_text_record(path, max(under, key=len) if under else os.path.dirname(path))
        return json.dumps({"words": record.to_dict(), "fts": record.fts_columns(),
                           "version": TEXT_RECORD_VERSION}, ensure_ascii=False, separators=(",", ":"))

    def run(self, abs_roots: Sequence[str], report: UpdateReport, *, workers: int, progress: bool | Progress,
            batch_size: int, max_duration: float | None, excluded: Sequence[str] = (),
            executor: RayExecutor | None = None) -> int:
        """Bring the rows under `abs_roots` (less `excluded`) in line with their files; returns commits."""
        self.roots, self.executor = list(abs_roots), executor
        listing = scan_roots(outermost(abs_roots, excluded), report, excluded)
        # what could not be listed this time (permissions, a flaky share) keeps its rows: absence unproven
        unreadable = [os.fsencode(p) for p in getattr(listing, "unreadable", ())]

        def unlisted(path_b: bytes) -> bool:
            return any(path_b == u or path_b.startswith(u.rstrip(b"/") + b"/") for u in unreadable)
        with self.lock:
            known = {p: KnownFile(*rest) for p, *rest in self._rows_under(
                abs_roots, "SELECT path_bytes, id, size, mtime_ns, content_hash, coalesce(json_extract("
                           f"text, '$.version') = {TEXT_RECORD_VERSION}, 0) FROM files")}
            failed = {p: rest for p, *rest in self._rows_under(
                abs_roots, "SELECT path_bytes, size, mtime_ns, reason FROM failures")
                if not rest[2].startswith(_ENVIRONMENT_REASONS)}  # older indexes stored these: retry them
            too_short = self._rows_under(abs_roots, "SELECT path_bytes, id, size, mtime_ns, duration "
                                                    f"FROM files WHERE duration < {MIN_CLIP_SECONDS!r} AND")
        bar = ProgressBar(progress, total=len(listing))
        writer = Writer(self.conn, self.lock)
        try:
            for path_b, clip_id, size, mtime_ns, duration in too_short:  # indexed before they were refused
                reason = f"too short to tell what it is: {duration:.3f} s (under {MIN_CLIP_SECONDS:g} s)"
                writer.add("DELETE FROM files WHERE id = ?", (clip_id,))
                writer.add("INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?)",
                           (path_b, size, mtime_ns, reason))
                known.pop(path_b, None)
                failed[path_b] = [size, mtime_ns, reason]
                report.removed += 1
            writer.flush()
            to_hash = []
            for path_b, (size, mtime_ns) in listing.items():
                rec = known.get(path_b)
                if rec is not None and rec.size == size and rec.mtime_ns == mtime_ns:
                    report.unchanged += 1
                    if not rec.has_text:  # no record, or older word rules: no decoding; the trigger
                        writer.add("UPDATE files SET text = ? WHERE id = ?",  # clears the name vector
                                   (self.text(path_b), rec.id))
                elif rec is None and failed.get(path_b, [None])[:2] == [size, mtime_ns]:
                    report.skipped.append((display_path(path_b), failed[path_b][2]))  # known bad, unchanged
                else:
                    to_hash.append(path_b)
            bar.advance(len(listing) - len(to_hash), report)
            for path_b in failed.keys() - listing.keys():
                if not unlisted(path_b):
                    writer.add("DELETE FROM failures WHERE path_bytes = ?", (path_b,))
            orphans: dict[str, list[tuple[bytes, KnownFile]]] = {}
            for path_b, rec in known.items():
                if path_b in listing:
                    continue
                if unlisted(path_b):
                    report.unchanged += 1  # kept as it was: its folder could not be listed this time
                else:
                    orphans.setdefault(rec.content_hash, []).append((path_b, rec))
            to_embed = self._resolve_changed(to_hash, known, orphans, writer, report, bar, workers)
            for entries in orphans.values():
                for _, rec in entries:
                    writer.add("DELETE FROM files WHERE id = ?", (rec.id,))
                    report.removed += 1
            writer.flush()
            if to_embed:  # the model loads only when some audio is new: a no-op re-run is instant
                self._embed(to_embed, known, writer, report, bar, workers, batch_size, max_duration)
            writer.flush()
        finally:
            bar.close()
        return writer.commits

    def _rows_under(self, roots: Sequence[str], select: str) -> list[list[Any]]:
        """Rows of `select` (whose first column is path_bytes, returned as bytes) for paths under `roots`;
        a `select` ending in AND has its own conditions."""
        where = select if select.endswith(" AND") else f"{select} WHERE"
        out: dict[bytes, list[Any]] = {}
        for root in roots:
            if os.path.isdir(root):
                lo, hi = prefix_range(os.fsencode(root.rstrip(os.sep) + os.sep))
                rows = self.conn.execute(f"{where} path_bytes >= ? AND (? IS NULL OR path_bytes < ?)",
                                          (lo, hi, hi))
            else:
                rows = self.conn.execute(f"{where} path_bytes = ?", (os.fsencode(root),))
            for path_b, *rest in rows:
                out[bytes(path_b)] = [bytes(path_b), *rest]
        return list(out.values())

    def _resolve_changed(self, to_hash: list[bytes], known: dict[bytes, KnownFile],
                         orphans: dict[str, list[tuple[bytes, KnownFile]]], writer: Writer,
                         report: UpdateReport, bar: ProgressBar, workers: int) -> list[tuple[bytes, tuple]]:
        """Hash new/changed files; handle touched, moved and copied ones; return those needing the model."""
        to_embed: list[tuple[bytes, tuple]] = []
        local = self.executor is None and workers > 0 and len(to_hash) > 1
        pool = ThreadPoolExecutor(max(1, workers)) if local else None
        paths = [os.fsdecode(p) for p in to_hash]
        try:
            for path_b, (ok, result) in self.executor.hash_map(paths) if self.executor and paths else \
                    bounded_map(hash_file, paths, pool, 4 * max(1, workers)):
                path_b = os.fsencode(path_b)
                rec = known.get(path_b)
                if not ok:
                    self._skip(path_b, result, rec, writer, report)
                else:
                    size, mtime_ns, digest = result
                    if rec is not None and rec.content_hash == digest:
                        writer.add("UPDATE files SET size = ?, mtime_ns = ?, text = ? WHERE id = ?",
                                   (size, mtime_ns, self.text(path_b), rec.id))
                        report.unchanged += 1
                    elif orphans.get(digest):
                        old_path, old = orphans[digest].pop()
                        if rec is not None:
                            writer.add("DELETE FROM files WHERE id = ?", (rec.id,))
                        writer.add("UPDATE files SET path_bytes = ?, size = ?, mtime_ns = ?, text = ? "
                                   "WHERE id = ?", (path_b, size, mtime_ns, self.text(path_b), old.id))
                        report.moved += 1
                    elif self._copy_vector(digest, path_b, size, mtime_ns, writer):
                        report.updated += rec is not None
                        report.added += rec is None
                    else:
                        to_embed.append((path_b, (size, mtime_ns, digest)))
                        continue  # counted when embedded
                bar.advance(1, report)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        return to_embed

    def _copy_vector(self, digest: str, path_b: bytes, size: int, mtime_ns: int, writer: Writer) -> bool:
        """Give a new path the stored vector of identical bytes indexed elsewhere (a copy): no model run."""
        with self.lock:
            row = self.conn.execute(
                "SELECT duration, sample_rate, channels, tags, model_id, vector FROM files "
                "WHERE content_hash = ? LIMIT 1", (digest,)).fetchone()
        if row is None:
            return False
        writer.add(UPSERT, (path_b, size, mtime_ns, digest, *row, time.time(), self.text(path_b)))
        return True

    def _skip(self, path_b: bytes, reason: str | Failure, rec: KnownFile | None, writer: Writer,
              report: UpdateReport) -> None:
        """Report a file that could not be read; a stale record for it no longer describes the file, unless
        the failure was transient (permissions, I/O): then the record stays until a run can read the file."""
        transient = isinstance(reason, Failure) and reason.transient
        report.skipped.append((display_path(path_b), str(getattr(reason, "reason", reason))))
        if rec is not None and not transient:
            writer.add("DELETE FROM files WHERE id = ?", (rec.id,))
            report.removed += 1

    def _embed(self, to_embed: list[tuple[bytes, tuple]], known: dict[bytes, KnownFile], writer: Writer,
               report: UpdateReport, bar: ProgressBar, workers: int, batch_size: int,
               max_duration: float | None) -> None:
        """Decode in worker processes, embed here in batches, write each batch's rows."""
        if self.executor is not None:
            return self._embed_remote(to_embed, known, writer, report, bar, max_duration)
        model = self.model()
        batch: list[tuple[bytes, tuple, np.ndarray, tuple]] = []

        def flush() -> None:
            if batch:
                self._write_embedded(batch, known, model, writer, report)
                bar.advance(len(batch), report)
                batch.clear()

        tasks = [(os.fsdecode(p), model.sample_rate, max_duration) for p, _ in to_embed]
        stats = dict(to_embed)
        parallel = workers > 0 and len(tasks) > 2 * workers
        window = max(4, 2 * workers + batch_size // 2)
        threads = limit_model_threads(busy_cores=workers if parallel else 0)
        results = None
        try:
            # in worker processes: restarted when one dies, audio in flight bounded by seconds, not files
            results = resilient_map(decode_file, tasks, workers, window,
                                    weigh=lambda t: estimate_seconds(t[0], t[2])) \
                if parallel else bounded_map(decode_file, tasks, None, window)
            for task, (ok, result) in results:
                path_b = os.fsencode(task[0])
                if ok:
                    wave, info, extra = result
                    failure = None if wave is not None else Failure(info, transient=not extra)
                else:
                    wave, failure = None, result
                if failure is not None:
                    self._fail(path_b, failure, stats[path_b], known, writer, report)
                    bar.advance(1, report)
                    continue
                if extra:  # decoded only up to the per-file cap
                    report.truncated.append((display_path(path_b), extra))
                batch.append((path_b, stats[path_b], wave, info))
                if len(batch) >= batch_size or \
                        sum(len(b[2]) for b in batch) >= BATCH_AUDIO_SECONDS * model.sample_rate:
                    flush()
            flush()
        finally:
            restore_model_threads(threads)
            if results is not None:
                results.close()  # a generator: closing it shuts the decoding processes down

    def _write_embedded(self, batch: list[tuple[bytes, tuple, np.ndarray, tuple]],
                        known: dict[bytes, KnownFile], model: EmbeddingModel, writer: Writer,
                        report: UpdateReport) -> None:
        """Embed one batch and queue its rows; a batch that fails is retried clip by clip."""
        for (path_b, stat, wave, info), result in zip(batch, embed_each(model, [b[2] for b in batch]),
                                                      strict=True):
            if isinstance(result, str):
                self._skip(path_b, result, known.get(path_b), writer, report)
            else:
                self._write_row(path_b, stat, info, (*result, model.model_id), len(wave) / model.sample_rate,
                                known, writer, report)

    def _write_row(self, path_b: bytes, stat: tuple, info: tuple, embedded: tuple[np.ndarray, Any, str],
                   seconds: float, known: dict[bytes, KnownFile], writer: Writer,
                   report: UpdateReport) -> None:
        """Queue the row of one embedded file (`embedded`: vector, tags, model id), wherever it ran."""
        (size, mtime_ns, digest), (vec, tags, model_id) = stat, embedded
        writer.add(UPSERT, (path_b, size, mtime_ns, digest, *info, tags_json(tags), model_id,
                            vector_blob(vec), time.time(), self.text(path_b)))
        writer.add("DELETE FROM failures WHERE path_bytes = ?", (path_b,))
        report.embedded += 1
        report.audio_seconds += seconds
        report.updated += path_b in known
        report.added += path_b not in known

    def _fail(self, path_b: bytes, failure: Failure | str, stat: tuple, known: dict[bytes, KnownFile],
              writer: Writer, report: UpdateReport) -> None:
        """Skip a file that did not decode or embed; a failure of its bytes is remembered until it changes."""
        self._skip(path_b, failure, known.get(path_b), writer, report)
        if isinstance(failure, Failure) and not failure.transient:
            writer.add("INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?)",
                       (path_b, stat[0], stat[1], failure.reason))

    def _embed_remote(self, to_embed: list[tuple[bytes, tuple]], known: dict[bytes, KnownFile],
                      writer: Writer, report: UpdateReport, bar: ProgressBar,
                      max_duration: float | None) -> None:
        """Decode and embed on the executor's workers (a Ray cluster); write their rows here, as they come."""
        assert self.executor is not None
        stats = dict(to_embed)
        for path, (ok, result) in self.executor.embed_map([os.fsdecode(p) for p, _ in to_embed],
                                                          max_duration):
            path_b = os.fsencode(path)
            if not ok:
                self._fail(path_b, result, stats[path_b], known, writer, report)
            else:
                info, extra, vec, tags, seconds = result
                if extra:  # decoded only up to the per-file cap
                    report.truncated.append((display_path(path_b), extra))
                self._write_row(path_b, stats[path_b], info, (vec, tags, self.executor.model_id), seconds,
                                known, writer, report)
            bar.advance(1, report)


class Listing(dict):
    """path bytes -> (size, mtime_ns), plus the folders and files that could not be read this time."""

    def __init__(self) -> None:
        super().__init__()
        self.unreadable: list[str] = []


_GONE = (errno.ENOENT, errno.ENOTDIR)  # vanished between listing and looking: really gone


def scan_roots(roots: Sequence[str], report: UpdateReport, excluded: Sequence[str] = ()) -> Listing:
    """Every audio file under `roots`, less the paths in `excluded` -> (size, mtime_ns).

    Symlinked folders are followed after every real one, so each real folder is walked once, by its own
    path (a link to a folder already walked is skipped with a reason). Special files (FIFOs, sockets,
    devices) with an audio name are skipped with a reason, never opened. A folder or file unreadable for a
    reason other than being gone is reported and listed in `unreadable`, so its stored rows are kept."""
    found = Listing()
    seen, skip, links = root_keys(roots), set(excluded), list[str]()  # seen: (dev, inode) -> path walked by

    def problem(path: str, err: OSError, what: str) -> None:
        if err.errno in _GONE:
            return
        found.unreadable.append(path)
        why = f"cannot {what}: {err.strerror or err}; its records are kept"
        report.skipped.append((display_path(path), why))

    def visit(path: str, entry: os.DirEntry | None = None) -> None:
        try:
            st = entry.stat() if entry is not None else os.stat(path)
        except OSError as e:
            problem(path, e, "read file")
            return
        kind = special_file_kind(st.st_mode)
        if kind is None:
            found[os.fsencode(path)] = (st.st_size, st.st_mtime_ns)
        else:
            report.skipped.append((display_path(path), f"not a regular file: {kind}"))

    def walk(folder: str) -> None:
        try:
            st = os.stat(folder)
            key = (st.st_dev, st.st_ino)
            if seen.setdefault(key, folder) != folder:
                report.skipped.append((display_path(folder), f"symlinked folder not followed: it leads to "
                                                              f"{display_path(seen[key])}, already indexed"))
                return
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            problem(folder, e, "list folder")
            return
        subfolders = []
        for entry in entries:
            if entry.path in skip:
                continue
            try:
                is_dir = entry.is_dir()  # follows links
            except OSError:
                is_dir = False
            if is_dir:
                (links if entry.is_symlink() else subfolders).append(entry.path)
            elif os.path.splitext(entry.name)[1].lower() in AUDIO_EXTENSIONS:
                visit(entry.path, entry)
        for sub in subfolders:
            walk(sub)

    for root in roots:
        if not os.path.isdir(root):
            if os.path.splitext(root)[1].lower() in AUDIO_EXTENSIONS:
                visit(root)
            else:
                report.skipped.append((display_path(root), "not an audio file extension"))
            continue
        walk(root)
    for link in links:  # grows while links inside linked folders are found
        walk(link)
    return found


class ProgressBar:
    """A tqdm bar on stderr with files/s and audio-hours/s, or a callback, or nothing."""

    def __init__(self, progress: bool | Progress, total: int) -> None:
        self.callback = progress if callable(progress) else None
        self.total = total
        self.done = 0
        self.start = time.monotonic()
        self.bar = None
        if progress is True:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="file", file=sys.stderr, dynamic_ncols=True, desc="indexing")

    def advance(self, n: int, report: UpdateReport) -> None:
        self.done += n
        elapsed = max(time.monotonic() - self.start, 1e-9)
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(audio_h_per_s=f"{report.audio_seconds / 3600 / elapsed:.3f}", refresh=False)
        if self.callback is not None:
            self.callback({"done": self.done, "total": self.total, "embedded": report.embedded,
                           "skipped": len(report.skipped), "audio_seconds": report.audio_seconds,
                           "elapsed": elapsed})

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
