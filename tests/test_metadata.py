"""metadata: file-name/folder words, UCS names, embedded tags from real files (and hostile ones), stemming."""

from __future__ import annotations

import csv
import os
import shutil
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from mutagen.flac import FLAC
from mutagen.id3 import COMM, ID3, TALB, TCON, TIT2, TPE1, TXXX
from mutagen.oggvorbis import OggVorbis
from mutagen.wave import WAVE
from riff_fixtures import bext_chunk, chunk, info_chunk, ixml_chunk, riff_file, wav_fmt_and_data

from audiofind.library.metadata import (
    FIELD_CAP,
    FTS_COLUMNS,
    TOTAL_CAP,
    TextRecord,
    build_text_record,
    filename_words,
    folder_words,
    parse_ucs,
    read_embedded,
    stem,
    tokenize_for_search,
)

# ---- file names and folders ----


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("fs_gravel_3.ogg", "fs gravel"),
        ("DOOR Wood Creak Open Slow 01.wav", "door wood creak open slow"),
        ("doorCreak.wav", "door creak"),
        ("HTTPServer.wav", "http server"),
        ("horse_attack1.ogg", "horse attack"),
        ("default_place_node_hard.2.ogg", "default place node hard"),
        ("glass-break_take3_v2.wav", "glass break"),
        ("Thunder (distant) [x2].flac", "thunder distant"),
        ("dog+bark.mp3", "dog bark"),
        ("rain.on.roof.t12.wav", "rain on roof"),
        ("café_ambiance.wav", "café ambiance"),
        ("bird's_nest.wav", "bird nest"),
        ("fade2.wav", "fade"),
        ("wave_21.ogg", "wave"),
        ("car_zoom_by_02.wav", "car zoom by"),
        ("Wind Howl Wind.wav", "wind howl"),
        ("some/dir/metal_hit.wav", "metal hit"),
        ("AMBForst_Birds morning.wav", "amb forst birds morning"),
        # names that carry no words
        # run-together words keep the compound and add its parts; guesses with short parts are dropped
        ("windleaves_10.ogg", "windleaves wind leaves"),
        ("doorslam.wav", "doorslam door slam"),
        ("siegeprojectilehit_02.ogg", "siegeprojectilehit siege projectile hit"),
        ("hatchet.ogg", "hatchet"),
        ("cracky.ogg", "cracky"),
        ("onager_moving_11.ogg", "onager moving"),
        ("3f9a0c1bde77.wav", ""),
        ("deadbeef01ab.wav", ""),
        ("550e8400-e29b-41d4-a716-446655440000.wav", ""),
        ("ZOOM0001.WAV", ""),
        ("DR0000_0001.wav", ""),
        ("STE-001.wav", ""),
        ("track 07.wav", ""),
        ("Audio 12.wav", ""),
        ("REC_0003.wav", ""),
        ("untitled.wav", ""),
        ("sound1.wav", ""),
        ("clip_4.wav", ""),
        ("New Recording 3.m4a", ""),
        ("Take 3.wav", ""),
        ("9d.ogg", ""),
        ("sz12.ogg", ""),
        ("v2.wav", ""),
        ("01.wav", ""),
        ("", ""),
    ],
)
def test_filename_words(name: str, words: str) -> None:
    assert filename_words(name) == words


@pytest.mark.parametrize(
    ("relative_dir", "words"),
    [
        ("Foley/Footsteps/Gravel_Outdoor", "foley footsteps gravel outdoor"),
        ("usr/share/sounds/freedesktop/stereo", "usr share freedesktop free desktop"),
        ("Sound Effects\\Weather\\heavyRain", "weather heavy rain"),
        ("ZOOM0001/Take 3", ""),
        ("animals/dogs/dogs", "animals dogs"),
        (".", ""),
        ("", ""),
    ],
)
def test_folder_words(relative_dir: str, words: str) -> None:
    assert folder_words(relative_dir) == words


@pytest.mark.parametrize(
    ("name", "category", "subcategory", "fx_name", "extra"),
    [
        ("DOORWood_Creak Open Slow_ACME_01.wav", "doors", "wood", "creak open slow", "acme"),
        ("AMBForst_Birds morning.wav", "ambience", "forest", "birds morning", ""),
        ("FOOTGrvl_Walk slow_JD_Steps.wav", "footsteps", "gravel", "walk slow", "jd steps"),
        ("UIClick_Soft tick.wav", "user interface", "click", "soft tick", ""),
        ("RAIN_Heavy on roof.flac", "rain", "", "heavy on roof", ""),
        ("AMBForst-PARK_Birds_EM.wav", "ambience", "forest", "birds", "park em"),
        ("METLImpt_Pipe hit hard_BOOM.wav", "metal", "impact", "pipe hit hard", "boom"),
        (
            "AMBForst_Autumn.A Quiet Forest.Wind In The Pines_EM.wav",
            "ambience",
            "forest",
            "autumn quiet forest wind in the pines",
            "em",
        ),
    ],
)
def test_parse_ucs(name: str, category: str, subcategory: str, fx_name: str, extra: str) -> None:
    ucs = parse_ucs(name)
    assert ucs is not None
    assert (ucs.category, ucs.subcategory, ucs.fx_name, ucs.extra) == (category, subcategory, fx_name, extra)


@pytest.mark.parametrize(
    "name",
    ["DOOR Wood Creak.wav", "XYZAbc_foo.wav", "fs_gravel_3.ogg", "MyFile_x.wav", "RAIN.wav", "ZOOM0001.WAV"],
)
def test_parse_ucs_rejects_other_names(name: str) -> None:
    assert parse_ucs(name) is None


# ---- stemming ----


@pytest.mark.parametrize(
    ("word", "stemmed"),
    [
        ("footsteps", "footstep"),
        ("barking", "bark"),
        ("barks", "bark"),
        ("creaked", "creak"),
        ("doors", "door"),
    ],
)
def test_stem(word: str, stemmed: str) -> None:
    assert stem(word) == stemmed


def test_tokenize_for_search_folds_case_accents_and_suffixes() -> None:
    assert tokenize_for_search("Dogs BARKING, in the Forêt; 808 kicks") == [
        "dog",
        "bark",
        "in",
        "the",
        "foret",
        "808",
        "kick",
    ]
    assert tokenize_for_search("") == []


# ---- real files ----


def _shortest(sfx_dir: Path, suffix: str) -> Path:
    """The shortest clip of sfx-dev with this suffix, so that copies and encodes stay cheap."""
    with open(sfx_dir / "manifest.tsv", newline="") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if r["path"].endswith(suffix)]
    return sfx_dir / min(rows, key=lambda r: float(r["duration_s"] or "inf"))["path"]


@pytest.fixture
def ogg_clip(sfx_dir: Path, tmp_path: Path) -> Path:
    """A real Vorbis clip copied to tmp_path/Animals/Farm (the folders are part of what it says)."""
    dest = tmp_path / "Animals" / "Farm" / "cow_moo_03.ogg"
    dest.parent.mkdir(parents=True)
    shutil.copyfile(_shortest(sfx_dir, ".ogg"), dest)
    return dest


@pytest.fixture
def wav_parts(sfx_dir: Path) -> tuple[bytes, bytes]:
    """The fmt and data chunk bodies of a real WAV clip, to rebuild WAVs with extra chunks around them."""
    return wav_fmt_and_data(_shortest(sfx_dir, ".wav"))


def test_ogg_vorbis_comment(ogg_clip: Path, tmp_path: Path) -> None:
    tags = OggVorbis(ogg_clip)
    tags["TITLE"] = "Cow mooing"
    tags["DESCRIPTION"] = "A cow moos twice in a barn"
    tags["GENRE"] = "Animals"
    tags["ARTIST"] = "Jane Recordist"
    tags.save()
    assert read_embedded(ogg_clip) == {
        "title": "Cow mooing",
        "description": "A cow moos twice in a barn",
        "genre": "Animals",
    }
    record = build_text_record(ogg_clip, tmp_path)
    assert (record.name, record.folders, record.ucs_category) == ("cow moo", "animals farm", "")
    assert "barn" in record.metadata and "Jane" not in record.metadata
    columns = record.fts_columns()
    assert set(columns) == set(FTS_COLUMNS)
    assert "moo" in columns["metadata"].split() and "barn" in columns["metadata"].split()
    assert record.to_dict()["metadata"]["title"] == "Cow mooing"
    assert build_text_record(ogg_clip, tmp_path / "elsewhere").folders == ""  # no words from outside the root
    assert sf.info(ogg_clip).frames > 0  # still a playable file


def test_flac_tags(ogg_clip: Path, tmp_path: Path) -> None:
    data, rate = sf.read(ogg_clip)
    path = tmp_path / "FOOTGrvl_Walk slow_JD.flac"
    sf.write(path, data, rate)
    tags = FLAC(path)
    tags["title"] = "Gravel steps"
    tags["comment"] = "boots on wet gravel"
    tags["keywords"] = ["gravel", "footsteps"]
    tags.save()
    record = build_text_record(path, tmp_path)
    assert record.fields == {
        "title": "Gravel steps",
        "comment": "boots on wet gravel",
        "keywords": "gravel ; footsteps",
    }
    assert (record.name, record.ucs_category, record.folders) == ("walk slow jd", "footsteps gravel", "")
    assert {"footstep", "boot"} <= set(record.fts_columns()["metadata"].split())


def test_mp3_id3(ogg_clip: Path, tmp_path: Path) -> None:
    data, rate = sf.read(ogg_clip)
    path = tmp_path / "clip_4.mp3"
    try:
        sf.write(path, data, rate, format="MP3", subtype="MPEG_LAYER_III")
    except (sf.LibsndfileError, TypeError, ValueError) as error:
        pytest.skip(f"this libsndfile cannot write MP3: {error}")
    tags = ID3()
    tags.add(TIT2(encoding=3, text="Thunder rumble"))
    tags.add(COMM(encoding=3, lang="eng", desc="", text="distant thunder over hills"))
    tags.add(TCON(encoding=3, text="Weather"))
    tags.add(TXXX(encoding=3, desc="KEYWORDS", text="storm"))
    tags.add(TALB(encoding=3, text="Storm Collection"))
    tags.add(TPE1(encoding=3, text="Some Artist"))
    tags.add(COMM(encoding=3, lang="eng", desc="iTunNORM", text=" 00000A1F 00000B2C"))
    tags.save(path)
    assert read_embedded(path) == {
        "title": "Thunder rumble",
        "comment": "distant thunder over hills",
        "keywords": "storm",
        "genre": "Weather",
        "album": "Storm Collection",
    }
    assert build_text_record(path, tmp_path).name == ""


def test_m4a_tags(ogg_clip: Path, tmp_path: Path) -> None:
    av = pytest.importorskip("av")
    from mutagen.mp4 import MP4, MP4FreeForm

    data, rate = sf.read(ogg_clip, dtype="float32", always_2d=True)
    path = tmp_path / "a.m4a"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data[:, :1].T), format="fltp", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    tags = MP4(path)
    tags["\xa9nam"] = ["Bell ring"]
    tags["desc"] = ["small brass bell"]
    tags["----:com.apple.iTunes:KEYWORDS"] = [MP4FreeForm(b"bell, brass")]
    tags.save()
    assert read_embedded(path) == {
        "title": "Bell ring",
        "description": "small brass bell",
        "keywords": "bell, brass",
    }


def test_wav_bext_info_ixml(wav_parts: tuple[bytes, bytes], tmp_path: Path) -> None:
    fmt, data = wav_parts
    path = tmp_path / "ZOOM0001.WAV"
    path.write_bytes(
        riff_file(
            chunk(b"fmt ", fmt),
            bext_chunk(b"Dog barking behind a fence"),
            info_chunk(
                INAM="Forêt pluie".encode(),
                ICMT=b"light rain",
                IKEY=b"rain; forest",
                IGNR=b"Ambience",
                ISBJ=b"Nature",
                IART=b"Nobody",
                ISFT=b"Some DAW",
            ),
            ixml_chunk("<PROJECT>P1</PROJECT><SCENE>12</SCENE><TAKE>3</TAKE><NOTE>wild track</NOTE>"),
            chunk(b"data", data),
        )
    )
    assert sf.info(path).frames > 0  # the helper writes a valid WAV
    assert read_embedded(path) == {
        "title": "Forêt pluie",
        "description": "Dog barking behind a fence",
        "comment": "light rain",
        "keywords": "rain; forest",
        "genre": "Ambience",
        "subject": "Nature",
        "note": "wild track",
    }
    record = build_text_record(path, tmp_path)
    assert record.name == "" and {"dog", "bark", "rain", "foret"} <= set(
        record.fts_columns()["metadata"].split()
    )
    assert "ZOOM" not in record.metadata and "Nobody" not in record.metadata


def test_wav_id3_chunk_and_bext_together(wav_parts: tuple[bytes, bytes], tmp_path: Path) -> None:
    fmt, data = wav_parts
    path = tmp_path / "x.wav"
    path.write_bytes(riff_file(chunk(b"fmt ", fmt), bext_chunk(b"glass smash"), chunk(b"data", data)))
    tags = WAVE(path)
    tags.add_tags()
    tags.tags.add(TIT2(encoding=3, text="Glass break"))
    tags.save()
    assert read_embedded(path) == {"title": "Glass break", "description": "glass smash"}


def test_rf64_with_bext_after_data(wav_parts: tuple[bytes, bytes], tmp_path: Path) -> None:
    fmt, data = wav_parts
    ds64 = chunk(b"ds64", struct.pack("<QQQI", 0, len(data), len(data) // 2, 0))
    big_data = b"data" + struct.pack("<I", 0xFFFFFFFF) + data + b"\0" * (len(data) & 1)
    path = tmp_path / "long.wav"
    path.write_bytes(
        riff_file(ds64, chunk(b"fmt ", fmt), big_data, bext_chunk(b"crowd cheering"), form=b"RF64")
    )
    assert read_embedded(path) == {"description": "crowd cheering"}


# ---- hostile files: quick, and never an exception ----


def test_truncated_files(ogg_clip: Path, wav_parts: tuple[bytes, bytes], tmp_path: Path) -> None:
    raw = ogg_clip.read_bytes()
    ogg_clip.write_bytes(raw[: len(raw) // 2])
    assert isinstance(read_embedded(ogg_clip), dict)
    ogg_clip.write_bytes(raw[:30])
    assert read_embedded(ogg_clip) == {}
    fmt, data = wav_parts
    wav = tmp_path / "cut.wav"
    whole = riff_file(chunk(b"fmt ", fmt), bext_chunk(b"engine idle"), chunk(b"data", data))
    wav.write_bytes(whole[: len(whole) - len(data) // 2])
    assert read_embedded(wav) == {"description": "engine idle"}  # what came before the cut is kept
    wav.write_bytes(wav.read_bytes()[:300])  # cut inside the bext chunk
    assert read_embedded(wav) == {"description": "engine idle"}


def test_megabyte_of_junk_is_capped(ogg_clip: Path, wav_parts: tuple[bytes, bytes], tmp_path: Path) -> None:
    junk = "x" * 1_000_000
    tags = OggVorbis(ogg_clip)
    for key in ("TITLE", "DESCRIPTION", "COMMENT", "GENRE", "KEYWORDS", "ALBUM"):
        tags[key] = junk
    tags.save()
    fields = read_embedded(ogg_clip)
    assert fields and all(len(v) <= FIELD_CAP for v in fields.values())
    assert sum(map(len, fields.values())) <= TOTAL_CAP
    fmt, data = wav_parts
    wav = tmp_path / "junk.wav"
    wav.write_bytes(
        riff_file(chunk(b"fmt ", fmt), info_chunk(ICMT=b"\x01y" * 500_000, INAM=b"hum"), chunk(b"data", data))
    )
    fields = read_embedded(wav)
    assert (
        fields["title"] == "hum"
        and set(fields["comment"]) <= {"y", " "}
        and len(fields["comment"]) <= FIELD_CAP
    )


def test_hostile_riff_chunks(wav_parts: tuple[bytes, bytes], tmp_path: Path) -> None:
    fmt, data = wav_parts
    path = tmp_path / "h.wav"
    # a bext claiming 4 GB, then nothing
    path.write_bytes(riff_file(chunk(b"fmt ", fmt)) + b"bext" + struct.pack("<I", 0xFFFFFFF0) + b"\0" * 700)
    assert read_embedded(path) == {}
    # broken iXML and a broken INFO list next to a good bext: the good chunk still counts
    bad_info = chunk(b"LIST", b"INFO" + b"INAM" + struct.pack("<I", 10_000) + b"ab")
    path.write_bytes(
        riff_file(
            chunk(b"fmt ", fmt),
            chunk(b"iXML", b"<<<\xff\xfe not xml"),
            bad_info,
            bext_chunk("café door".encode()),
            chunk(b"data", data),
        )
    )
    fields = read_embedded(path)
    assert fields["description"] == "café door" and set(fields) <= {"description", "title"}  # title: 'ab'
    # a hundred thousand empty chunks: the walk stops at its bound, so the bext behind them is not reached
    path.write_bytes(riff_file(chunk(b"fmt ", fmt), b"JUNK\0\0\0\0" * 100_000, bext_chunk(b"too far")))
    assert read_embedded(path) == {}


@pytest.mark.parametrize(
    "content", [b"", b"hello, not audio\n" * 100, b"RIFF\x10\0\0\0WAVEfmt \xff", os.urandom(5000)]
)
def test_not_audio_with_a_wav_name(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "door_slam.wav"
    path.write_bytes(content)
    assert read_embedded(path) == {}
    assert build_text_record(path, tmp_path) == TextRecord(name="door slam")


def test_ixml_external_entities_are_not_read(wav_parts: tuple[bytes, bytes], tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("private words")
    fmt, data = wav_parts
    doctype = f'<!DOCTYPE BWFXML [<!ENTITY x SYSTEM "{secret.as_uri()}">]>'
    xml = f'<?xml version="1.0"?>{doctype}<BWFXML><NOTE>a &x; b</NOTE></BWFXML>'
    path = tmp_path / "x.wav"
    path.write_bytes(riff_file(chunk(b"fmt ", fmt), chunk(b"iXML", xml.encode()), chunk(b"data", data)))
    fields = read_embedded(path)
    assert fields.get("note", "").startswith("a") and "private" not in str(fields)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    assert read_embedded(tmp_path / "nope.wav") == {}
    assert read_embedded(tmp_path) == {}
    assert read_embedded("bad\0name.wav") == {}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_never_blocks(tmp_path: Path) -> None:
    fifo = tmp_path / "Sounds" / "wind_gust.wav"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    results: list[object] = []
    worker = threading.Thread(target=lambda: results.append(build_text_record(fifo, tmp_path)), daemon=True)
    worker.start()
    worker.join(5)
    if worker.is_alive():  # unblock the reader so the test run can end, then fail
        with open(fifo, "wb"):
            pass
        pytest.fail("reading a FIFO blocked")
    assert results == [TextRecord(name="wind gust", folders="")]
