"""Datasets for training and judging retrieval: Clotho v2.1 (download, adopt, load), the DCASE 2025 Task 6
evaluation files, and plain caption CSVs for fine-tuning on one's own sounds."""

from __future__ import annotations

import ast
import csv
import html
import io
import json
import logging
import os
import re
import shutil
import time
import unicodedata
import urllib.error
import urllib.parse
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.client import HTTPException
from pathlib import Path
from typing import Any

from tqdm import tqdm

from audiofind import __version__
from audiofind.download import fetch_resumable, file_digest, offline

log = logging.getLogger(__name__)

SPLITS = ("development", "validation", "evaluation")
CLOTHO_V21_URL = "https://zenodo.org/records/4783391/files"
MARKER_NAME = ".audiofind-complete.json"  # written into <root>/<split>/ once that split is complete

_CAPTION_COLUMNS = tuple(f"caption_{i}" for i in range(1, 6))
_META_COLUMNS = ("keywords", "sound_id", "sound_link", "start_end_samples", "manufacturer", "license")
_RETRY_DELAY_S = 2.0  # first pause before resuming a broken download; doubles per retry (tests set 0)
_SHOW_MISSING = 5  # missing names quoted in an error message


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset release: where it lives and how to check it."""

    name: str
    url: str
    md5: str
    size: int | None = None  # bytes; None where no source we trust states it


def _zenodo(name: str, md5: str, size: int | None) -> RemoteFile:
    """A file of the Clotho v2.1 Zenodo record."""
    return RemoteFile(name, f"{CLOTHO_V21_URL}/{urllib.parse.quote(name)}?download=1", md5, size)


# md5 sums as listed by Zenodo for record 4783391 (also hard-coded by aac-datasets and mirdata); sizes are
# Zenodo's for the development and validation files, unknown to us for the evaluation ones.
CLOTHO_V21_FILES: dict[str, RemoteFile] = {
    f.name: f
    for f in [
        _zenodo("clotho_audio_development.7z", "c8b05bc7acdb13895bb3c6a29608667e", 4_541_582_263),
        _zenodo("clotho_audio_validation.7z", "7dba730be08bada48bd15dc4e668df59", 1_260_701_425),
        _zenodo("clotho_audio_evaluation.7z", "4569624ccadf96223f19cb59fe4f849f", None),
        _zenodo("clotho_captions_development.csv", "d4090b39ce9f2491908eebf4d5b09bae", 1_336_762),
        _zenodo("clotho_captions_validation.csv", "5879e023032b22a2c930aaa0528bead4", 367_649),
        _zenodo("clotho_captions_evaluation.csv", "1b16b9e57cf7bdb7f13a13802aeb57e2", None),
        _zenodo("clotho_metadata_development.csv", "170d20935ecfdf161ce1bb154118cda5", 830_797),
        _zenodo("clotho_metadata_validation.csv", "2e010427c56b1ce6008b0f03f41048ce", 224_803),
        _zenodo("clotho_metadata_evaluation.csv", "13946f054d4e1bf48079813aac61bf77", None),
    ]
}


@dataclass
class CaptionedClip:
    """One audio file with every caption written for it, ready for training or evaluation."""

    audio_path: Path
    file_name: str  # as the dataset spells it (Clotho: the CSV's name, HTML escapes and all)
    captions: list[str]
    split: str
    meta: dict[str, Any] = field(default_factory=dict)  # Clotho: keywords, sound_id, sound_link, license...


@dataclass(frozen=True)
class SplitReport:
    """What a Clotho folder holds for one split, for adopting it and for the CLI's summary."""

    split: str
    captions_csv: Path
    audio_dir: Path
    has_captions: bool
    has_metadata: bool
    has_audio_dir: bool
    clips: int  # rows of the captions CSV
    missing: tuple[str, ...]  # CSV names whose audio file is absent
    complete_marker: bool

    @property
    def found(self) -> int:
        """Clips whose audio file is present."""
        return self.clips - len(self.missing)


class DatasetError(ValueError):
    """A dataset file is malformed; the message names the file, line and field."""


class ChecksumError(ValueError):
    """A downloaded file is not the one expected; the message names it with both md5 sums."""


class DownloadError(OSError):
    """A download failed for network reasons; what was received is kept for resuming."""


# ---------------------------------------------------------------- Clotho file names


def clotho_files(split: str) -> dict[str, str]:
    """The release's file names for one split: captions, metadata and audio archive."""
    _check_split(split)
    return {
        "captions": f"clotho_captions_{split}.csv",
        "metadata": f"clotho_metadata_{split}.csv",
        "audio": f"clotho_audio_{split}.7z",
    }


def _check_split(split: str) -> str:
    """Reject a split name Clotho does not have, listing those it has."""
    if split not in SPLITS:
        raise ValueError(f"unknown Clotho split {split!r}; expected one of {', '.join(SPLITS)}")
    return split


def parse_splits(splits: Iterable[str] | str) -> tuple[str, ...]:
    """Normalise a split list (also 'a,b' text), keeping order and dropping repeats."""
    if isinstance(splits, str):
        splits = [s.strip() for s in splits.split(",") if s.strip()]
    out = tuple(dict.fromkeys(_check_split(s) for s in splits))
    if not out:
        raise ValueError(f"no Clotho split given; expected some of {', '.join(SPLITS)}")
    return out


# ---------------------------------------------------------------- downloading


def _url(remote: RemoteFile, base_url: str | None) -> str:
    """The file's official URL, or the same name under a mirror's prefix."""
    if base_url is None:
        return remote.url
    return f"{base_url.rstrip('/')}/{urllib.parse.quote(remote.name)}"


def _check_space(folder: Path, remote: RemoteFile, have: int) -> None:
    """Fail early, with numbers, when the download cannot fit on the disk."""
    if remote.size is None:
        return
    free = shutil.disk_usage(folder).free
    need = remote.size - have
    if need > free:
        raise OSError(
            f"not enough disk space in {folder} for {remote.name}: {need / 1e9:.2f} GB still to download, "
            f"{free / 1e9:.2f} GB free"
        )


def _permanent(e: BaseException) -> bool:
    """HTTP answers that retrying will not change (404, 403...)."""
    return isinstance(e, urllib.error.HTTPError) and 400 <= e.code < 500 and e.code not in (408, 429)


def fetch_file(
    remote: RemoteFile, folder: Path, base_url: str | None = None, progress: bool = True, retries: int = 3
) -> Path:
    """Download one file into `folder` (resuming NAME.part, retrying breaks); check its md5, then rename."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / remote.name
    if final.is_file():
        if file_digest(final, "md5") == remote.md5.lower():
            return final
        log.warning("%s: md5 does not match the release; downloading it again", final)
        final.unlink()
    part = folder / (remote.name + ".part")
    url = _url(remote, base_url)
    _check_space(folder, remote, part.stat().st_size if part.is_file() else 0)
    for attempt in range(retries + 1):
        try:
            fetch_resumable(url, part, expected_size=remote.size, desc=remote.name, progress=progress)
            break
        except (OSError, HTTPException) as e:  # URLError, HTTPError and timeouts are OSErrors
            have = part.stat().st_size if part.is_file() else 0
            if attempt == retries or _permanent(e):
                kept = f"; the {have} bytes received are kept in {part}, run again to resume" if have else ""
                raise DownloadError(f"downloading {remote.name} from {url} failed: {e}{kept}") from e
            log.warning("%s: %s; resuming from byte %d", remote.name, e, have)
            time.sleep(_RETRY_DELAY_S * 2**attempt)
    if remote.size is not None and part.stat().st_size != remote.size:
        size = part.stat().st_size
        part.unlink()
        raise ChecksumError(
            f"{remote.name} from {url} has {size} bytes, expected {remote.size}; the download was deleted, "
            "run again to fetch it afresh"
        )
    actual = file_digest(part, "md5")
    if actual != remote.md5.lower():
        part.unlink()
        raise ChecksumError(
            f"{remote.name} from {url} is corrupt or changed upstream: md5 {actual}, expected {remote.md5}; "
            "the download was deleted, run again to fetch it afresh"
        )
    os.replace(part, final)
    return final


# ---------------------------------------------------------------- extracting


def _extract_progress(bar: tqdm) -> Any:
    """A py7zr callback counting extracted files on `bar` (built here: py7zr is imported only when needed)."""
    from py7zr.callbacks import ExtractCallback

    class _Progress(ExtractCallback):
        def report_start_preparation(self) -> None:
            pass

        def report_start(self, processing_file_path: str, processing_bytes: str) -> None:
            pass

        def report_update(self, decompressed_bytes: str) -> None:
            pass

        def report_end(self, processing_file_path: str, wrote_bytes: str) -> None:
            bar.update(1)

        def report_warning(self, message: str) -> None:
            log.warning("7z: %s", message)

        def report_postprocess(self) -> None:
            pass

    return _Progress()


def _safe_members(names: Sequence[str], archive: Path) -> None:
    """Refuse archives whose members would land outside the target folder."""
    for name in names:
        parts = Path(name.replace("\\", "/")).parts
        if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
            raise DatasetError(f"{archive}: member {name!r} would be written outside the extraction folder")


def _unpacked_folder(staging: Path, split: str) -> Path:
    """Where the audio landed: the official archives hold one folder named after the split; accept others."""
    if (staging / split).is_dir():
        return staging / split
    entries = list(staging.iterdir())
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return staging


def extract_archive(archive: Path, root: Path, split: str, progress: bool = True) -> Path:
    """Unpack a Clotho audio archive into <root>/<split>/ via a staging folder: no half split on a crash."""
    import py7zr  # imported here: only downloads need it

    staging = root / f".{split}.extracting"
    if staging.exists():
        shutil.rmtree(staging)  # left over from an interrupted extraction of ours
    staging.mkdir(parents=True)
    try:
        with py7zr.SevenZipFile(archive, mode="r") as z:
            infos = z.list()
            _safe_members([i.filename for i in infos], archive)
            n_files = sum(1 for i in infos if not i.is_directory)
            with tqdm(
                total=n_files, unit="file", desc=f"extract {archive.name}", disable=not progress, leave=False
            ) as bar:
                z.extractall(path=staging, callback=_extract_progress(bar))
        inner = _unpacked_folder(staging, split)
        target = root / split
        if not target.exists():
            os.replace(inner, target)
        else:  # an incomplete earlier copy: fill it in
            for item in inner.iterdir():
                os.replace(item, target / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# ---------------------------------------------------------------- markers and reports


def _marker(root: Path, split: str) -> dict[str, Any] | None:
    """The split's completion record, or None when absent or unreadable."""
    path = root / split / MARKER_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("split") == split else None


def _write_marker(root: Path, split: str, source: str, report: SplitReport) -> None:
    """Record that a split is complete, so later runs skip it without hashing gigabytes."""
    files = clotho_files(split)
    record = {
        "dataset": "clotho-v2.1",
        "split": split,
        "source": source,
        "clips": report.clips,
        "missing_audio": len(report.missing),
        "md5": {n: CLOTHO_V21_FILES[n].md5 for n in files.values() if n in CLOTHO_V21_FILES},
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "audiofind": __version__,
    }
    path = root / split / MARKER_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _disk_index(folder: Path) -> dict[str, str]:
    """Map NFC-normalised file names in a folder to their names on disk (macOS stores NFD)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return {}
    return {unicodedata.normalize("NFC", n): n for n in names}


def _resolve_audio(name: str, index: dict[str, str]) -> str | None:
    """The on-disk name for a CSV name: verbatim, or with its HTML escapes (&#39; &amp;) undone."""
    for candidate in (name, html.unescape(name)):
        found = index.get(unicodedata.normalize("NFC", candidate))
        if found is not None:
            return found
    return None


def clotho_report(
    root: str | os.PathLike[str], splits: Iterable[str] | str = SPLITS
) -> dict[str, SplitReport]:
    """Look at a Clotho folder without changing it: which CSVs and audio folders exist, what is missing."""
    root = Path(root).expanduser()
    out: dict[str, SplitReport] = {}
    for split in parse_splits(splits):
        files = clotho_files(split)
        captions = root / files["captions"]
        audio_dir = root / split
        names = [row["file_name"] for _, row in _read_clotho_rows(captions)] if captions.is_file() else []
        index = _disk_index(audio_dir)
        missing = tuple(n for n in names if _resolve_audio(n, index) is None) if audio_dir.is_dir() else ()
        out[split] = SplitReport(
            split=split,
            captions_csv=captions,
            audio_dir=audio_dir,
            has_captions=captions.is_file(),
            has_metadata=(root / files["metadata"]).is_file(),
            has_audio_dir=audio_dir.is_dir(),
            clips=len(names),
            missing=missing if audio_dir.is_dir() else tuple(names),
            complete_marker=_marker(root, split) is not None,
        )
    return out


def layout_complete(root: str | os.PathLike[str], splits: Iterable[str] | str = SPLITS) -> bool:
    """True when every asked-for split has its captions CSV and all its audio files: nothing to download."""
    if not Path(root).expanduser().is_dir():
        return False
    return all(
        r.has_captions and r.has_audio_dir and r.clips and not r.missing
        for r in clotho_report(root, splits).values()
    )


def _quote_missing(names: Sequence[str]) -> str:
    """The first few missing names, quoted, and how many more."""
    shown = ", ".join(repr(n) for n in names[:_SHOW_MISSING])
    more = len(names) - _SHOW_MISSING
    return shown + (f" and {more} more" if more > 0 else "")


# ---------------------------------------------------------------- public: get Clotho


def download_clotho(
    root: str | os.PathLike[str],
    splits: Iterable[str] | str = SPLITS,
    base_url: str | None = None,
    progress: bool = True,
    *,
    keep_archives: bool = False,
    retries: int = 3,
) -> Path:
    """Fetch, check and unpack Clotho v2.1 into `root` in the official layout; skips what is already there."""
    root = Path(root).expanduser()
    splits = parse_splits(splits)
    if base_url is None and offline():
        raise DownloadError("AUDIOFIND_OFFLINE is set: not downloading Clotho from zenodo.org")
    root.mkdir(parents=True, exist_ok=True)
    for split in splits:
        files = clotho_files(split)
        for kind in ("captions", "metadata"):
            fetch_file(CLOTHO_V21_FILES[files[kind]], root, base_url, progress, retries)
        if _marker(root, split) is not None and (root / split).is_dir():
            log.info("Clotho %s: complete already (%s)", split, root / split / MARKER_NAME)
            continue
        report = clotho_report(root, [split])[split]
        if report.has_audio_dir and not report.missing:
            try:
                _write_marker(root, split, "existing", report)
            except OSError as e:  # a read-only copy is still usable
                log.warning("Clotho %s: cannot write %s: %s", split, MARKER_NAME, e)
            log.info("Clotho %s: all %d audio files present already", split, report.clips)
            continue
        archive = fetch_file(CLOTHO_V21_FILES[files["audio"]], root, base_url, progress, retries)
        extract_archive(archive, root, split, progress)
        report = clotho_report(root, [split])[split]
        if report.missing:
            warnings.warn(
                f"Clotho {split}: {len(report.missing)} of {report.clips} audio files listed in "
                f"{report.captions_csv.name} are not in {archive.name}: {_quote_missing(report.missing)}",
                stacklevel=2,
            )
        _write_marker(root, split, "download", report)
        if not keep_archives:
            archive.unlink()
    return root


def adopt_clotho(root: str | os.PathLike[str], splits: Iterable[str] | str = SPLITS) -> Path:
    """Accept a Clotho copy in the official layout: check CSVs and audio folders, warn of missing audio."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"Clotho folder {root} does not exist")
    problems: list[str] = []
    for split, r in clotho_report(root, splits).items():
        if not r.has_captions:
            problems.append(f"{split}: captions file {r.captions_csv} is missing")
        if not r.has_audio_dir:
            problems.append(f"{split}: audio folder {r.audio_dir} is missing")
        if problems:
            continue
        if not r.has_metadata:
            warnings.warn(f"Clotho {split}: no {clotho_files(split)['metadata']} in {root}", stacklevel=2)
        if r.missing:
            warnings.warn(
                f"Clotho {split}: {len(r.missing)} of {r.clips} audio files are missing from {r.audio_dir}: "
                f"{_quote_missing(r.missing)}",
                stacklevel=2,
            )
    if problems:
        raise FileNotFoundError(
            f"{root} is not in the Clotho v2.1 layout (clotho_captions_<split>.csv, "
            f"clotho_metadata_<split>.csv and an audio folder <split>/ per split): " + "; ".join(problems)
        )
    return root


# ---------------------------------------------------------------- reading CSVs


def _decode(path: Path, fallback: str | None) -> str:
    """A CSV's text: UTF-8 (BOM allowed), else `fallback` (Clotho's metadata is Latin-1), else an error."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        if fallback is not None:
            return data.decode(fallback)
        line = data.count(b"\n", 0, e.start) + 1
        raise DatasetError(f"{path}: line {line}: not valid UTF-8 (byte {data[e.start]:#04x})") from e


def _rows(
    path: Path, required: Sequence[str], fallback: str | None = None
) -> tuple[list[str], list[tuple[int, dict]]]:
    """Header and (line number, row) pairs of a CSV, checking columns and field counts."""
    text = _decode(path, fallback)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise DatasetError(f"{path}: empty file; expected a header with {', '.join(required)}") from None
    except csv.Error as e:
        raise DatasetError(f"{path}: line 1: {e}") from e
    header = [h.strip() for h in header]
    header[0] = header[0].lstrip("\ufeff")
    missing = [c for c in required if c not in header]
    if missing:
        raise DatasetError(
            f"{path}: line 1: missing column(s) {', '.join(missing)} (header: {', '.join(header)})"
        )
    rows: list[tuple[int, dict]] = []
    line = reader.line_num + 1
    try:
        for values in reader:
            if values and any(v.strip() for v in values):
                if len(values) != len(header):
                    raise DatasetError(
                        f"{path}: line {line}: {len(values)} fields, the header has {len(header)}"
                    )
                rows.append((line, dict(zip(header, values, strict=True))))
            line = reader.line_num + 1
    except csv.Error as e:
        raise DatasetError(f"{path}: line {line}: {e}") from e
    return header, rows


def _read_clotho_rows(path: Path) -> list[tuple[int, dict]]:
    """Rows of a Clotho captions CSV (file_name, caption_1..caption_5), refusing repeated names."""
    _, rows = _rows(path, ("file_name", *_CAPTION_COLUMNS), fallback="latin-1")
    seen: dict[str, int] = {}
    for line, row in rows:
        name = row["file_name"]
        if not name:
            raise DatasetError(f"{path}: line {line}, field file_name: empty")
        if name in seen:
            raise DatasetError(f"{path}: line {line}, field file_name: {name!r} repeats line {seen[name]}")
        seen[name] = line
    return rows


def _sound_id(value: Any) -> int | None:
    """A Freesound id as int; None for blanks and Clotho's 'Not found'."""
    if isinstance(value, int):
        return value
    text = str(value or "").strip()
    return int(text) if text.isdigit() else None


def _clotho_meta(path: Path) -> dict[str, dict[str, Any]]:
    """Clotho metadata by file name: keywords as a list, sound_id as int (None if unknown), rest as text."""
    _, rows = _rows(path, ("file_name",), fallback="latin-1")
    out: dict[str, dict[str, Any]] = {}
    for _, row in rows:
        meta: dict[str, Any] = {k: row[k] for k in _META_COLUMNS if k in row}
        if "keywords" in meta:
            meta["keywords"] = [k for k in meta["keywords"].split(";") if k]
        if "sound_id" in meta:
            meta["sound_id"] = _sound_id(meta["sound_id"])
        out[row["file_name"]] = meta
    return out


def load_clotho(
    root: str | os.PathLike[str], split: str, *, allow_missing: bool = False
) -> list[CaptionedClip]:
    """One Clotho split as clips with their five captions (verbatim) and metadata, in the CSV's order."""
    root = Path(root).expanduser()
    files = clotho_files(split)
    captions = root / files["captions"]
    if not captions.is_file():
        raise FileNotFoundError(
            f"Clotho {split}: {captions} not found; run `audiofind data clotho --root {root}` to get Clotho"
        )
    audio_dir = root / split
    if not audio_dir.is_dir():
        raise FileNotFoundError(
            f"Clotho {split}: audio folder {audio_dir} not found; run `audiofind data clotho --root {root}`"
        )
    metadata = root / files["metadata"]
    meta = _clotho_meta(metadata) if metadata.is_file() else {}
    index = _disk_index(audio_dir)
    clips: list[CaptionedClip] = []
    missing: list[str] = []
    for line, row in _read_clotho_rows(captions):
        name = row["file_name"]
        texts = [row[c] for c in _CAPTION_COLUMNS if row[c].strip()]
        if not texts:
            raise DatasetError(
                f"{captions}: line {line}, fields caption_1..caption_5: all empty for {name!r}"
            )
        on_disk = _resolve_audio(name, index)
        if on_disk is None:
            missing.append(name)
            continue
        clips.append(CaptionedClip(audio_dir / on_disk, name, texts, split, dict(meta.get(name, {}))))
    if missing:
        message = (
            f"Clotho {split}: {len(missing)} of {len(missing) + len(clips)} audio files listed in "
            f"{captions.name} are missing from {audio_dir}: {_quote_missing(missing)}"
        )
        if not allow_missing:
            raise FileNotFoundError(message + " (pass allow_missing=True to skip them)")
        warnings.warn(message + "; skipping them", stacklevel=2)
    return clips


def load_multi_positive(
    path: str | os.PathLike[str], known_files: Iterable[str] | None = None
) -> dict[str, list[str]]:
    """DCASE 2025 Task 6 relevance: each query caption with the evaluation file names that answer it."""
    path = Path(path).expanduser()
    _, rows = _rows(path, ("query", "audio_filenames"))
    known = set(known_files) if known_files is not None else None
    out: dict[str, list[str]] = {}
    first_line: dict[str, int] = {}
    for line, row in rows:
        query = row["query"]
        if not query.strip():
            raise DatasetError(f"{path}: line {line}, field query: empty")
        if query in out:
            raise DatasetError(
                f"{path}: line {line}, field query: {query!r} repeats line {first_line[query]}"
            )
        try:
            names = ast.literal_eval(row["audio_filenames"].strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
            raise DatasetError(
                f"{path}: line {line}, field audio_filenames: not a Python list of file names: "
                f"{row['audio_filenames'][:80]!r}"
            ) from e
        if (
            not isinstance(names, list | tuple)
            or not names
            or not all(isinstance(n, str) and n for n in names)
        ):
            raise DatasetError(
                f"{path}: line {line}, field audio_filenames: expected a non-empty list of file names, got "
                f"{row['audio_filenames'][:80]!r}"
            )
        if len(set(names)) != len(names):
            raise DatasetError(f"{path}: line {line}, field audio_filenames: a file name is listed twice")
        if known is not None and (unknown := [n for n in names if n not in known]):
            raise DatasetError(
                f"{path}: line {line}, field audio_filenames: not evaluation files: {_quote_missing(unknown)}"
            )
        out[query] = list(names)
        first_line[query] = line
    if not out:
        raise DatasetError(f"{path}: no queries")
    return out


def load_excluded_freesound_ids(path: str | os.PathLike[str]) -> set[int]:
    """Freesound ids that must stay out of training data (they overlap the evaluation audio)."""
    path = Path(path).expanduser()
    lines = _decode(path, None).splitlines()
    ids: set[int] = set()
    for number, text in enumerate(lines, start=1):
        value = text.strip().split(",")[0].strip()
        if not value or (
            number == 1 and not value.isdigit() and value.lower() in {"sound_id", "freesound_id", "id"}
        ):
            continue
        if value.lower() == "not found":  # Clotho's placeholder for a sound gone from Freesound
            continue
        if not value.isdigit():
            raise DatasetError(f"{path}: line {number}, field sound_id: {value!r} is not a Freesound id")
        ids.add(int(value))
    if not ids:
        raise DatasetError(f"{path}: no Freesound ids")
    return ids


_FREESOUND_LINK = re.compile(r"freesound\.org/.*?/sounds/(\d+)")


def freesound_id(clip: CaptionedClip) -> int | None:
    """A clip's Freesound id, from meta sound_id / freesound_id or a freesound.org link; None if none."""
    for key in ("sound_id", "freesound_id"):
        if (value := _sound_id(clip.meta.get(key))) is not None:
            return value
    for key in ("sound_link", "freesound_url", "url"):
        if (m := _FREESOUND_LINK.search(str(clip.meta.get(key) or ""))) is not None:
            return int(m.group(1))
    return None


def filter_excluded(clips: Iterable[CaptionedClip], excluded_ids: Iterable[int]) -> list[CaptionedClip]:
    """Drop clips whose Freesound id is on the exclusion list; clips without an id are kept."""
    excluded = {int(i) for i in excluded_ids}
    kept = [c for c in clips if freesound_id(c) not in excluded]
    return kept


_PATH_COLUMNS = ("audio_path", "path", "file_name")


def load_captions_csv(
    path: str | os.PathLike[str],
    audio_root: str | os.PathLike[str] | None = None,
    *,
    split: str = "custom",
    allow_missing: bool = False,
) -> list[CaptionedClip]:
    """Fine-tuning data from a CSV of `audio_path,caption` rows; rows of one file become one clip."""
    path = Path(path).expanduser()
    header, rows = _rows(path, ())
    path_col = next((c for c in _PATH_COLUMNS if c in header), None)
    if path_col is None or "caption" not in header:
        need = [] if path_col else ["audio_path (or path / file_name)"]
        need += [] if "caption" in header else ["caption"]
        raise DatasetError(
            f"{path}: line 1: missing column(s) {', '.join(need)} (header: {', '.join(header)})"
        )
    base = Path(audio_root).expanduser() if audio_root is not None else path.parent
    clips: dict[Path, CaptionedClip] = {}
    missing: list[tuple[int, str]] = []
    for line, row in rows:
        name, caption = row[path_col], row["caption"]
        if not name.strip():
            raise DatasetError(f"{path}: line {line}, field {path_col}: empty")
        if not caption.strip():
            raise DatasetError(f"{path}: line {line}, field caption: empty caption for {name!r}")
        audio = Path(name).expanduser()
        audio = audio if audio.is_absolute() else base / audio
        if audio not in clips:
            if not audio.is_file():
                missing.append((line, name))
                continue
            extra = {k: v for k, v in row.items() if k not in (path_col, "caption") and v != ""}
            clips[audio] = CaptionedClip(audio, name, [], split, extra)
        clips[audio].captions.append(caption)
    if missing:
        line, name = missing[0]
        message = f"{path}: line {line}, field {path_col}: audio file {str(base / name)!r} not found" + (
            f" ({len(missing)} rows name missing files)" if len(missing) > 1 else ""
        )
        if not allow_missing:
            raise DatasetError(message)
        warnings.warn(message + "; skipping those rows", stacklevel=2)
    if not clips:
        raise DatasetError(f"{path}: no usable rows")
    return list(clips.values())
