"""Training sources: Clotho, AudioCaps, WavCaps and captions CSVs mixed with weights, each filtered by the
DCASE 2025 exclusion list.

`data.sources` in a training config is a list of mappings, e.g.

    - {kind: clotho, root: data, split: development}
    - {kind: audiocaps, root: data, split: train, weight: 1.0}
    - {kind: wavcaps, root: data, split: "FreeSound,BBC_Sound_Effects,SoundBible,AudioSet_SL"}
    - {kind: csv, path: my_captions.csv, audio_root: ~/sounds, weight: 2.0}

Layouts are the releases' as the DCASE 2025 baseline (aac-datasets) lays them out: Clotho in
`root[/CLOTHO_v2.1]/clotho_{csv,audio}_files` or the Zenodo layout; AudioCaps as
`root/AUDIOCAPS/csv_files_v1/<split>.csv` (audiocap_id, youtube_id, start_time, caption; a .tsv with the
same columns works too) with audio in
`root/AUDIOCAPS/audio_32000Hz/<split>/<youtube_id>_<start>.{flac,mp3,wav}`; WavCaps as
`root/WavCaps/json_files/<Source>/*.json` ({"data": [{"id", "caption", ...}]}) with audio in
`root/WavCaps/Audio/<Source>/<id>.flac` or the baseline's mp3 copy
`root/WavCaps_mp3/Audio/<Source>/<id>.mp3`.

A weight says how often each of a source's items is drawn per epoch (1: once, as plain concatenation;
0.5: a random half; 2: twice). The exclusion list (`data.exclude`: "auto", a CSV path, or "none") drops
every clip whose Freesound id is on it, from every source; what was dropped is logged and reported.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Sampler

from ..assets import ASSETS, Asset, resolve_asset
from .data import CaptionedClip, DatasetError, clotho_layout, freesound_id, load_captions_csv, load_clotho

log = logging.getLogger(__name__)

EXCLUSION_FILE = "dcase2025_task6_excluded_freesound_ids.csv"
ASSETS.setdefault(
    EXCLUSION_FILE,
    Asset(
        EXCLUSION_FILE,
        "https://raw.githubusercontent.com/CPJKU/dcase2025_task6_baseline/main/resources/" + EXCLUSION_FILE,
        "243671ebaebad871615e6903d3e23643ea75f121aa873d7e0172a477d04caf20",
        "DCASE 2025 Task 6 (CPJKU/dcase2025_task6_baseline)",
        20_640,
    ),
)
KINDS = ("clotho", "audiocaps", "wavcaps", "csv")
WAVCAPS_SOURCES = ("FreeSound", "BBC_Sound_Effects", "SoundBible", "AudioSet_SL")
_AUDIO_EXTS = (".flac", ".mp3", ".wav", ".ogg")


@dataclass
class SourceConfig:
    """One training source; see the module docstring."""

    kind: str
    root: str | None = None
    path: str | None = None  # csv: the captions file; audiocaps: an explicit captions CSV/TSV
    split: str | None = None  # clotho: development; audiocaps: train; wavcaps: comma-separated sources
    audio_root: str | None = None
    weight: float = 1.0
    name: str | None = None

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SourceConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"data.sources: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        source = cls(**values)
        if source.kind not in KINDS:
            raise ValueError(f"data.sources: kind must be one of {', '.join(KINDS)}, not {source.kind!r}")
        if source.weight < 0:
            raise ValueError(f"data.sources: weight must be >= 0, got {source.weight}")
        return source

    @property
    def label(self) -> str:
        return self.name or f"{self.kind}:{self.split or Path(self.path or self.root or '').name}"


@dataclass
class TrainingData:
    """The training clips of all sources, which source each came from, and what was dropped."""

    clips: list[CaptionedClip]
    source_of: list[int]
    weights: list[float]
    report: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------- AudioCaps and WavCaps release layouts


def _find_audio(folder: Path, stem: str) -> Path | None:
    for ext in _AUDIO_EXTS:
        if (folder / (stem + ext)).is_file():
            return folder / (stem + ext)
    return None


def load_audiocaps(
    root: str | os.PathLike[str],
    split: str = "train",
    audio_root: str | None = None,
    captions: str | None = None,
) -> list[CaptionedClip]:
    """AudioCaps in the aac-datasets layout; captions of one (youtube_id, start_time) become one clip.
    AudioCaps audio comes from YouTube and is never complete, so absent clips are skipped with a warning."""
    root = Path(root).expanduser()
    candidates = (
        [Path(captions).expanduser()]
        if captions
        else [
            base / name
            for base in (root / "AUDIOCAPS" / "csv_files_v1", root / "AUDIOCAPS", root / "csv_files_v1", root)
            for name in (f"{split}.csv", f"{split}.tsv")
        ]
    )
    table = next((p for p in candidates if p.is_file()), None)
    if table is None:
        raise FileNotFoundError(
            f"AudioCaps {split}: no captions file; looked for {', '.join(map(str, candidates))}"
        )
    audio_dirs = (
        [Path(audio_root).expanduser()]
        if audio_root
        else [root / "AUDIOCAPS" / "audio_32000Hz" / split, root / "audio_32000Hz" / split, root / split]
    )
    audio_dir = next((d for d in audio_dirs if d.is_dir()), None)
    if audio_dir is None:
        raise FileNotFoundError(
            f"AudioCaps {split}: no audio folder; looked for {', '.join(map(str, audio_dirs))}"
        )
    text = table.read_text(encoding="utf-8-sig")
    rows = list(csv.DictReader(io.StringIO(text), delimiter="\t" if table.suffix == ".tsv" else ","))
    need = {"youtube_id", "start_time", "caption"}
    if rows and not need <= set(rows[0]):
        raise DatasetError(f"{table}: line 1: need columns {', '.join(sorted(need))}")
    clips: dict[str, CaptionedClip] = {}
    missing = 0
    for row in rows:
        stem = f"{row['youtube_id']}_{int(float(row['start_time']))}"
        if stem not in clips:
            audio = _find_audio(audio_dir, stem)
            if audio is None:
                missing += 1
                continue
            meta = {k: row[k] for k in ("youtube_id", "start_time", "labels") if row.get(k)}
            clips[stem] = CaptionedClip(audio, audio.name, [], f"audiocaps-{split}", meta)
        clips[stem].captions.append(row["caption"])
    if missing:
        warnings.warn(
            f"AudioCaps {split}: {missing} caption rows name clips absent from {audio_dir}", stacklevel=2
        )
    if not clips:
        raise DatasetError(f"AudioCaps {split}: no clip of {table} has audio in {audio_dir}")
    return list(clips.values())


def load_wavcaps(
    root: str | os.PathLike[str], subsets: str | Sequence[str] | None = None, audio_root: str | None = None
) -> list[CaptionedClip]:
    """WavCaps from its JSON files and an audio folder per source (flac, or the baseline's mp3 copy)."""
    root = Path(root).expanduser()
    names = (
        [s.strip() for s in subsets.split(",")]
        if isinstance(subsets, str)
        else list(subsets or WAVCAPS_SOURCES)
    )
    if bad := [s for s in names if s not in WAVCAPS_SOURCES]:
        raise ValueError(f"WavCaps: unknown source(s) {', '.join(bad)}; known: {', '.join(WAVCAPS_SOURCES)}")
    json_base = next((b for b in (root / "WavCaps" / "json_files", root / "json_files") if b.is_dir()), None)
    if json_base is None:
        raise FileNotFoundError(f"WavCaps: no json_files folder under {root} (or {root / 'WavCaps'})")
    clips: list[CaptionedClip] = []
    for source in names:
        files = sorted((json_base / source).glob("*.json"))
        if not files:
            raise FileNotFoundError(f"WavCaps {source}: no JSON file in {json_base / source}")
        bases = (
            [Path(audio_root).expanduser() / source]
            if audio_root
            else [
                root / "WavCaps" / "Audio" / source,
                root / "WavCaps_mp3" / "Audio" / source,
                root / "Audio" / source,
            ]
        )
        audio_dir = next((d for d in bases if d.is_dir()), None)
        if audio_dir is None:
            raise FileNotFoundError(
                f"WavCaps {source}: no audio folder; looked for {', '.join(map(str, bases))}"
            )
        missing = 0
        for entry in json.loads(files[0].read_text(encoding="utf-8"))["data"]:
            ident = str(entry["id"])
            audio = _find_audio(audio_dir, ident.removesuffix(".wav"))
            if audio is None:
                missing += 1
                continue
            meta: dict[str, Any] = {"wavcaps_source": source, "id": ident}
            if source == "FreeSound" and ident.isdigit():
                meta["freesound_id"] = int(ident)
            clips.append(CaptionedClip(audio, audio.name, [entry["caption"]], f"wavcaps-{source}", meta))
        if missing:
            warnings.warn(f"WavCaps {source}: {missing} entries have no audio in {audio_dir}", stacklevel=2)
    return clips


# ---------------------------------------------------------------- exclusion and mixing


def exclusion_ids(setting: str | None, sources: Sequence[SourceConfig]) -> set[int] | None:
    """The excluded Freesound ids: from a path, or ("auto") beside a Clotho source, else the asset folders."""
    from .data import load_excluded_freesound_ids

    if setting is None or str(setting).lower() == "none":
        return None
    if setting != "auto":
        return load_excluded_freesound_ids(setting)
    for s in sources:
        if s.kind == "clotho" and s.root:
            for folder in (Path(s.root).expanduser(), clotho_layout(s.root, "development")[0]):
                if (folder / EXCLUSION_FILE).is_file():
                    return load_excluded_freesound_ids(folder / EXCLUSION_FILE)
    return load_excluded_freesound_ids(resolve_asset(EXCLUSION_FILE))


def _load(source: SourceConfig) -> list[CaptionedClip]:
    if source.kind == "clotho":
        if not source.root:
            raise ValueError("data.sources: a clotho source needs root")
        return load_clotho(source.root, source.split or "development")
    if source.kind == "audiocaps":
        return load_audiocaps(source.root or ".", source.split or "train", source.audio_root, source.path)
    if source.kind == "wavcaps":
        return load_wavcaps(source.root or ".", source.split, source.audio_root)
    if not source.path:
        raise ValueError("data.sources: a csv source needs path")
    return load_captions_csv(source.path, source.audio_root, split=source.label)


def load_sources(sources: Sequence[SourceConfig], exclude: str | None = "auto") -> TrainingData:
    """Every source's clips, filtered by the exclusion list, with a report of what each lost."""
    loaded = [_load(s) for s in sources]
    has_ids = any(freesound_id(c) is not None for clips in loaded for c in clips)
    excluded = exclusion_ids(exclude, sources) if has_ids or exclude not in ("auto", None) else None
    data = TrainingData([], [], [s.weight for s in sources])
    for k, (source, clips) in enumerate(zip(sources, loaded)):
        dropped = [c for c in clips if excluded and freesound_id(c) in excluded]
        kept = [c for c in clips if not (excluded and freesound_id(c) in excluded)]
        data.clips += kept
        data.source_of += [k] * len(kept)
        data.report.append(
            {
                "source": source.label,
                "kind": source.kind,
                "clips": len(kept),
                "captions": sum(len(c.captions) for c in kept),
                "weight": source.weight,
                "excluded": [f"{c.file_name} ({freesound_id(c)})" for c in dropped],
            }
        )
        if dropped:
            log.info(
                "%s: the DCASE 2025 exclusion list drops %d clip(s): %s",
                source.label,
                len(dropped),
                ", ".join(data.report[-1]["excluded"][:10]),
            )
    if not data.clips:
        raise ValueError("no training clips left in data.sources")
    return data


class WeightedSourceSampler(Sampler[int]):
    """Per epoch, each item of source s is drawn `weight_s` times in expectation, then all is shuffled;
    under DDP every rank takes its share of one global order (the tail is dropped to share evenly)."""

    def __init__(
        self,
        item_sources: Sequence[int],
        weights: Sequence[float],
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
    ) -> None:
        self.groups = [[i for i, s in enumerate(item_sources) if s == k] for k in range(len(weights))]
        self.weights, self.world, self.rank, self.seed, self.epoch = (
            list(weights),
            num_replicas,
            rank,
            seed,
            0,
        )
        total = sum(
            math.floor(w) * len(g) + round((w % 1) * len(g)) for w, g in zip(self.weights, self.groups)
        )
        self.per_rank = total // num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed + 7919 * self.epoch)
        picked: list[torch.Tensor] = []
        for w, group in zip(self.weights, self.groups):
            items = torch.tensor(group, dtype=torch.long)
            picked += [items] * math.floor(w)
            extra = round((w % 1) * len(group))
            if extra:
                picked.append(items[torch.randperm(len(group), generator=gen)[:extra]])
        order = (
            torch.cat(picked)[torch.randperm(sum(len(p) for p in picked), generator=gen)] if picked else []
        )
        share = order[: self.per_rank * self.world][self.rank :: self.world]
        return iter(share.tolist())
