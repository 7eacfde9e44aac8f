"""Training sources on synthetic audio in the real layouts: the exclusion list, AudioCaps and WavCaps
releases (real AudioCaps captions), the baseline's Clotho layout, weighted mixing, the audio cache."""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from clotho_fixtures import make_clotho_tree, shared_clotho_dir

from audiofind.assets import AssetNotFoundError
from audiofind.research.audio_cache import AudioCache
from audiofind.research.data import load_clotho
from audiofind.research.downloads import adopt_clotho
from audiofind.research.sources import (
    EXCLUSION_FILE,
    SourceConfig,
    WeightedSourceSampler,
    load_audiocaps,
    load_sources,
    load_wavcaps,
)
from audiofind.research.train_config import load_config
from audiofind.research.train_data import CaptionDataset, load_training

EXCLUDED_DEV = ("FREEZER_DOOR_OPEN_CLOSE.wav", "freezer open_close.wav")  # Freesound 137692, 120328


def _tone(path: Path, seconds: float = 1.0, rate: int = 44_100, freq: float = 440.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(round(seconds * rate)) / rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate)
    return path


@pytest.fixture(scope="module")
def clotho(tmp_path_factory):
    return make_clotho_tree(
        tmp_path_factory.mktemp("clotho"),
        4,
        splits=("development",),
        include=EXCLUDED_DEV,
        exclusion_list=False,
    )


def test_exclusion_list_drops_clotho_clips_and_says_which(clotho):
    exclusion = shared_clotho_dir() / EXCLUSION_FILE
    data = load_sources([SourceConfig("clotho", root=str(clotho.root))], str(exclusion))
    assert len(data.clips) == 2 and not {c.file_name for c in data.clips} & set(EXCLUDED_DEV)
    assert data.report[0]["excluded"] == [
        "freezer open_close.wav (120328)",
        "FREEZER_DOOR_OPEN_CLOSE.wav (137692)",
    ]
    assert len(load_sources([SourceConfig("clotho", root=str(clotho.root))], "none").clips) == 4


def test_auto_finds_the_list_beside_clotho_or_in_the_asset_folder(clotho, tmp_path, monkeypatch):
    source = [SourceConfig("clotho", root=str(clotho.root))]
    with pytest.raises(AssetNotFoundError, match=EXCLUSION_FILE):  # offline, nowhere: what to put where
        load_sources(source, "auto")
    assets = tmp_path / "assets"
    assets.mkdir()
    shutil.copy(shared_clotho_dir() / EXCLUSION_FILE, assets)
    monkeypatch.setenv("AUDIOFIND_ASSETS", str(assets))
    assert len(load_sources(source, "auto").clips) == 2
    # a CSV source without Freesound ids needs no list at all
    csv_path = tmp_path / "mine.csv"
    _tone(tmp_path / "a.wav")
    csv_path.write_text("audio_path,caption\na.wav,a tone\n")
    monkeypatch.setenv("AUDIOFIND_ASSETS", str(tmp_path / "nowhere"))
    assert len(load_sources([SourceConfig("csv", path=str(csv_path))], "auto").clips) == 1


def test_the_baseline_clotho_layout_loads_and_adopts(tmp_path):
    tree = make_clotho_tree(tmp_path / "data", 3, splits=("development", "validation"), layout="baseline")
    assert (tmp_path / "data" / "CLOTHO_v2.1" / "clotho_audio_files" / "development").is_dir()
    for root in (tmp_path / "data", tmp_path / "data" / "CLOTHO_v2.1"):
        clips = load_clotho(root, "validation")
        assert [c.file_name for c in clips] == tree.files("validation") and clips[0].meta["sound_id"]
    adopt_clotho(tmp_path / "data", ("development", "validation"))


def _audiocaps_rows(shared_dir: Path, n: int) -> list[dict[str, str]]:
    path = shared_dir / "data" / "audiocaps" / "train.tsv"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with open(path, encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        return [next(reader) for _ in range(n)]


def test_audiocaps_release_layout_with_real_captions(shared_dir, tmp_path):
    rows = _audiocaps_rows(shared_dir, 4)
    base = tmp_path / "AUDIOCAPS"
    (base / "csv_files_v1").mkdir(parents=True)
    with open(base / "csv_files_v1" / "train.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(
            fh, ["audiocap_id", "youtube_id", "start_time", "caption"], extrasaction="ignore"
        )
        writer.writeheader()
        writer.writerows(rows)
    for k, row in enumerate(rows[:3]):  # the fourth clip is gone from YouTube, as AudioCaps clips are
        _tone(
            base / "audio_32000Hz" / "train" / f"{row['youtube_id']}_{row['start_time']}.flac",
            freq=200 + 100 * k,
        )
    with pytest.warns(UserWarning, match="1 caption rows"):
        clips = load_audiocaps(tmp_path, "train")
    assert [c.captions for c in clips] == [[r["caption"]] for r in rows[:3]]
    assert clips[0].meta["youtube_id"] == rows[0]["youtube_id"]
    tsv = shared_dir / "data" / "audiocaps" / "train.tsv"  # the shared TSV reads the same way
    with pytest.warns(UserWarning):
        assert len(load_audiocaps(tmp_path, "train", captions=str(tsv))) == 3


def _wavcaps(root: Path) -> None:
    entries = {
        "FreeSound": [("354184", "a car passes"), ("11", "rain on a roof")],  # 354184 is excluded
        "BBC_Sound_Effects": [("07001", "a clock ticks")],
    }
    for source, items in entries.items():
        folder = root / "WavCaps" / "json_files" / source
        folder.mkdir(parents=True)
        data = [{"id": i, "caption": c, "duration": 1.0} for i, c in items]
        (folder / f"{source.lower()}_final.json").write_text(json.dumps({"data": data}))
        for i, _ in items:
            _tone(root / "WavCaps" / "Audio" / source / f"{i}.flac")


def test_wavcaps_release_layout_and_its_freesound_ids(tmp_path):
    _wavcaps(tmp_path)
    clips = load_wavcaps(tmp_path, "FreeSound,BBC_Sound_Effects")
    assert [c.captions[0] for c in clips] == ["a car passes", "rain on a roof", "a clock ticks"]
    exclusion = shared_clotho_dir() / EXCLUSION_FILE
    data = load_sources([SourceConfig("wavcaps", root=str(tmp_path), split="FreeSound")], str(exclusion))
    assert [c.captions[0] for c in data.clips] == ["rain on a roof"]
    assert data.report[0]["excluded"] == ["354184.flac (354184)"]
    with pytest.raises(ValueError, match="unknown source"):
        load_wavcaps(tmp_path, "Freesound")


def test_sources_mix_with_weights_from_a_config(clotho, tmp_path):
    _wavcaps(tmp_path)
    exclusion = shared_clotho_dir() / EXCLUSION_FILE
    cfg = load_config(
        None,
        [
            f"data.sources=[{{kind: clotho, root: '{clotho.root}'}}, "
            f"{{kind: wavcaps, root: '{tmp_path}', split: BBC_Sound_Effects, weight: 3}}]",
            f"data.exclude={exclusion}",
        ],
    )
    data = load_training(cfg.data)
    assert data.source_of == [0, 0, 1] and data.weights == [1.0, 3.0]
    sampler = WeightedSourceSampler(data.source_of, data.weights)
    drawn = list(sampler)
    assert len(drawn) == len(sampler) == 5 and drawn.count(2) == 3
    halves = [WeightedSourceSampler([0] * 10 + [1] * 4, [0.5, 1.0], 2, r, seed=1) for r in (0, 1)]
    shares = [list(s) for s in halves]
    assert [len(s) for s in shares] == [4, 4] and not set(shares[0]) & set(shares[1])
    assert sum(i >= 10 for s in shares for i in s) == 4  # every item of the weight-1 source, once
    halves[0].set_epoch(1)
    assert list(halves[0]) != shares[0]
    with pytest.raises(ValueError, match="kind"):
        SourceConfig.from_dict({"kind": "freesound"})


def test_audio_cache_decodes_each_clip_once_and_reads_slices(tmp_path):
    path = _tone(tmp_path / "clip.wav", seconds=3.0, freq=330)
    cache = AudioCache(tmp_path / "cache")
    first, duration = cache.load(path)
    assert (cache.decodes, cache.hits, duration) == (1, 0, pytest.approx(3.0))
    part, _ = cache.load(path, 1.0, 0.5)
    assert (cache.decodes, cache.hits) == (1, 1) and len(part) == 16_000
    assert np.allclose(part, first[32_000:48_000], atol=1e-3)  # float16 on disk
    time.sleep(0.01)
    _tone(path, seconds=2.0)
    os.utime(path)
    assert cache.load(path)[1] == pytest.approx(2.0) and cache.decodes == 2  # edited file: decoded again
    # a dataset reading every caption of a clip decodes it once per run, not once per caption
    from audiofind.research.data import CaptionedClip

    clips = [CaptionedClip(path, "clip.wav", ["one", "two", "three"], "x")]
    dataset = CaptionDataset(clips, 10.0, "captions", clip_s=30.0, cache=AudioCache(tmp_path / "c2"))
    items = [dataset[i] for i in range(3)]
    assert dataset.cache.decodes == 1 and dataset.cache.hits == 2
    assert items[0]["wave"].shape == (30 * 32_000,) and items[0]["duration"] == pytest.approx(2.0)
    assert float(items[0]["wave"][2 * 32_000 :].abs().max()) == 0.0  # zero-padded, as the baseline
