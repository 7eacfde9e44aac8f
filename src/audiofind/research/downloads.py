"""Getting Clotho v2.1 onto disk: the release's files, resumable md5-checked downloads, safe 7z extraction,
completeness markers, and adopting a folder someone already has."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import urllib.error
import urllib.parse
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from http.client import HTTPException
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .. import __version__
from ..download import fetch_resumable, file_digest, offline
from .data import (
    SPLITS,
    DatasetError,
    SplitReport,
    clotho_files,
    clotho_layout,
    disk_index,
    parse_splits,
    quote_missing,
    read_clotho_rows,
    resolve_audio_name,
)

log = logging.getLogger(__name__)

CLOTHO_V21_URL = "https://zenodo.org/records/4783391/files"
MARKER_NAME = ".audiofind-complete.json"  # written into <root>/<split>/ once that split is complete
_RETRY_DELAY_S = 2.0  # first pause before resuming a broken download; doubles per retry (tests set 0)



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


class ChecksumError(ValueError):
    """A downloaded file is not the one expected; the message names it with both md5 sums."""


class DownloadError(OSError):
    """A download failed for network reasons; what was received is kept for resuming."""


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


def clotho_report(
    root: str | os.PathLike[str], splits: Iterable[str] | str = SPLITS
) -> dict[str, SplitReport]:
    """Look at a Clotho folder without changing it: which CSVs and audio folders exist, what is missing."""
    root = Path(root).expanduser()
    out: dict[str, SplitReport] = {}
    for split in parse_splits(splits):
        files = clotho_files(split)
        csv_dir, audio_dir = clotho_layout(root, split)
        captions = csv_dir / files["captions"]
        names = [row["file_name"] for _, row in read_clotho_rows(captions)] if captions.is_file() else []
        index = disk_index(audio_dir)
        missing = tuple(n for n in names if resolve_audio_name(n, index) is None) \
            if audio_dir.is_dir() else ()
        out[split] = SplitReport(
            split=split,
            captions_csv=captions,
            audio_dir=audio_dir,
            has_captions=captions.is_file(),
            has_metadata=(csv_dir / files["metadata"]).is_file(),
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
                f"{report.captions_csv.name} are not in {archive.name}: {quote_missing(report.missing)}",
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
                f"{quote_missing(r.missing)}",
                stacklevel=2,
            )
    if problems:
        raise FileNotFoundError(
            f"{root} is not in the Clotho v2.1 layout (clotho_captions_<split>.csv, "
            f"clotho_metadata_<split>.csv and an audio folder <split>/ per split): " + "; ".join(problems)
        )
    return root
