"""Datasets for training and judging retrieval: Clotho v2.1 (download, adopt, load), the DCASE 2025 Task 6
evaluation files, and plain caption CSVs for fine-tuning on one's own sounds."""

from __future__ import annotations

import ast
import csv
import html
import io
import os
import re
import unicodedata
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPLITS = ("development", "validation", "evaluation")

_CAPTION_COLUMNS = tuple(f"caption_{i}" for i in range(1, 6))
_META_COLUMNS = ("keywords", "sound_id", "sound_link", "start_end_samples", "manufacturer", "license")
_SHOW_MISSING = 5  # missing names quoted in an error message


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


# ---------------------------------------------------------------- Clotho file names


def clotho_files(split: str) -> dict[str, str]:
    """The release's file names for one split: captions, metadata and audio archive."""
    _check_split(split)
    return {
        "captions": f"clotho_captions_{split}.csv",
        "metadata": f"clotho_metadata_{split}.csv",
        "audio": f"clotho_audio_{split}.7z",
    }


def clotho_layout(root: str | os.PathLike[str], split: str) -> tuple[Path, Path]:
    """(folder of the split's CSVs, its audio folder) under `root`, in whichever layout it is found.

    The release layout (CSVs in root, audio in root/<split>/) or the DCASE baseline's aac-datasets one
    (root[/CLOTHO_v2.1]/clotho_csv_files/ and .../clotho_audio_files/<split>/); the release layout when
    neither is there, so error messages name it."""
    root = Path(root).expanduser()
    name = clotho_files(split)["captions"]
    for base in (root / "CLOTHO_v2.1", root):
        if (base / "clotho_csv_files" / name).is_file():
            return base / "clotho_csv_files", base / "clotho_audio_files" / split
    return root, root / split


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


def disk_index(folder: Path) -> dict[str, str]:
    """Map NFC-normalised file names in a folder to their names on disk (macOS stores NFD)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return {}
    return {unicodedata.normalize("NFC", n): n for n in names}


def resolve_audio_name(name: str, index: dict[str, str]) -> str | None:
    """The on-disk name for a CSV name: verbatim, or with its HTML escapes (&#39; &amp;) undone."""
    for candidate in (name, html.unescape(name)):
        found = index.get(unicodedata.normalize("NFC", candidate))
        if found is not None:
            return found
    return None


def quote_missing(names: Sequence[str]) -> str:
    """The first few missing names, quoted, and how many more."""
    shown = ", ".join(repr(n) for n in names[:_SHOW_MISSING])
    more = len(names) - _SHOW_MISSING
    return shown + (f" and {more} more" if more > 0 else "")

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


def read_clotho_rows(path: Path) -> list[tuple[int, dict]]:
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
    csv_dir, audio_dir = clotho_layout(root, split)
    captions = csv_dir / files["captions"]
    if not captions.is_file():
        raise FileNotFoundError(
            f"Clotho {split}: {captions} not found; run `audiofind data clotho --root {root}` to get Clotho"
        )
    if not audio_dir.is_dir():
        raise FileNotFoundError(
            f"Clotho {split}: audio folder {audio_dir} not found; run `audiofind data clotho --root {root}`"
        )
    metadata = csv_dir / files["metadata"]
    meta = _clotho_meta(metadata) if metadata.is_file() else {}
    index = disk_index(audio_dir)
    clips: list[CaptionedClip] = []
    missing: list[str] = []
    for line, row in read_clotho_rows(captions):
        name = row["file_name"]
        texts = [row[c] for c in _CAPTION_COLUMNS if row[c].strip()]
        if not texts:
            raise DatasetError(
                f"{captions}: line {line}, fields caption_1..caption_5: all empty for {name!r}"
            )
        on_disk = resolve_audio_name(name, index)
        if on_disk is None:
            missing.append(name)
            continue
        clips.append(CaptionedClip(audio_dir / on_disk, name, texts, split, dict(meta.get(name, {}))))
    if missing:
        message = (
            f"Clotho {split}: {len(missing)} of {len(missing) + len(clips)} audio files listed in "
            f"{captions.name} are missing from {audio_dir}: {quote_missing(missing)}"
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
                f"{path}: line {line}, field audio_filenames: not evaluation files: {quote_missing(unknown)}"
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
