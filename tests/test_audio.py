"""Decoding real files of every supported format to mono float32 at 32 kHz, and refusing bad ones clearly."""

from __future__ import annotations

import csv
import os
import pickle
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from audiofind.audio import (
    AUDIO_EXTENSIONS,
    SAMPLE_RATE,
    AudioDecodeError,
    AudioInfo,
    frame_windows,
    load_audio,
    probe,
)

av = pytest.importorskip("av")


def peak_hz(wave: np.ndarray, sample_rate: int) -> float:
    """Frequency of the strongest FFT bin."""
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.argmax(spectrum) * sample_rate / len(wave))


def amplitude(wave: np.ndarray) -> float:
    """Sine amplitude from the RMS of the middle half (away from codec edge effects)."""
    mid = wave[len(wave) // 4 : 3 * len(wave) // 4]
    return float(np.sqrt(2 * np.mean(mid.astype(np.float64) ** 2)))


def encode_with_av(path: Path, data: np.ndarray, rate: int, codec: str, fmt: str | None = None) -> Path:
    """Write (channels, frames) float samples with FFmpeg, e.g. AAC in .m4a, which libsndfile cannot write."""
    layout = {1: "mono", 2: "stereo"}[data.shape[0]]
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        step = 1024
        for i in range(0, data.shape[1], step):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(data[:, i : i + step], dtype=np.float32), format="fltp", layout=layout
            )
            frame.sample_rate = rate
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def stereo_sine(freq: float, rate: int, duration: float, amp: float = 0.5) -> np.ndarray:
    """(2, frames) sine, identical in both channels."""
    t = np.arange(round(duration * rate)) / rate
    return np.repeat((amp * np.sin(2 * np.pi * freq * t))[None], 2, axis=0)


def assert_clean(wave: np.ndarray) -> None:
    assert wave.dtype == np.float32
    assert wave.ndim == 1
    assert wave.flags.c_contiguous
    assert np.isfinite(wave).all()


# ---------------------------------------------------------------- formats


@pytest.mark.parametrize(
    ("name", "rate", "subtype", "amp_tol"),
    [
        ("pcm16.wav", 44_100, "PCM_16", 0.01),
        ("float.wav", 48_000, "FLOAT", 0.01),
        ("u8.wav", 22_050, "PCM_U8", 0.03),
        ("clip.flac", 44_100, None, 0.01),
        ("clip.ogg", 44_100, None, 0.05),
        ("clip.oga", 22_050, None, 0.05),
        ("clip.opus", 48_000, None, 0.05),
        ("clip.mp3", 44_100, "MPEG_LAYER_III", 0.05),
        ("clip.aiff", 16_000, None, 0.01),
        ("clip.au", 8_000, None, 0.01),
        ("clip.caf", 96_000, None, 0.01),
    ],
)
def test_decodes_soundfile_formats(tone_file, name: str, rate: int, subtype: str | None, amp_tol: float):
    path = tone_file(name, freq=1000, sample_rate=rate, duration=1.5, channels=2, subtype=subtype)
    wave, info = load_audio(path)
    assert_clean(wave)
    assert info.sample_rate == rate and info.channels == 2
    assert info.duration == pytest.approx(1.5, abs=0.03)
    assert len(wave) == pytest.approx(info.duration * SAMPLE_RATE, abs=2)
    assert peak_hz(wave, SAMPLE_RATE) == pytest.approx(1000, abs=2)
    assert amplitude(wave) == pytest.approx(0.5, abs=amp_tol)
    assert probe(path) == info


def test_decodes_m4a_aac_through_pyav(tmp_path):
    path = encode_with_av(tmp_path / "clip.m4a", stereo_sine(1000, 44_100, 2.0), 44_100, "aac")
    with pytest.raises(sf.LibsndfileError):
        sf.info(path)  # so this really is the fallback path
    wave, info = load_audio(path)
    assert_clean(wave)
    assert info == AudioInfo(2.0, 44_100, 2)
    assert len(wave) == 2 * SAMPLE_RATE  # the encoder's end padding is cut at the declared duration
    assert peak_hz(wave, SAMPLE_RATE) == pytest.approx(1000, abs=2)
    assert amplitude(wave) == pytest.approx(0.5, abs=0.05)
    assert probe(path) == info


def test_decodes_wavpack_integer_samples_through_pyav(tmp_path):
    path = tmp_path / "clip.wv"
    data = stereo_sine(440, 44_100, 1.0)
    with av.open(str(path), "w", format="wv") as container:
        stream = container.add_stream("wavpack", rate=44_100, layout="stereo")
        stream.codec_context.format = "s16p"  # integer planar samples exercise the scaling path
        frame = av.AudioFrame.from_ndarray(data.astype(np.float32), format="fltp", layout="stereo")
        frame.sample_rate, frame.pts = 44_100, 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    wave, info = load_audio(path, sample_rate=44_100)
    assert info == AudioInfo(1.0, 44_100, 2)
    assert np.allclose(wave, data[0], atol=1e-3)


def test_max_duration_truncates_but_info_describes_the_whole_file(tone_file, tmp_path):
    path = tone_file("long.flac", sample_rate=44_100, duration=5.0, channels=2)
    wave, info = load_audio(path, max_duration=1.25)
    assert len(wave) == round(1.25 * SAMPLE_RATE)
    assert info.duration == pytest.approx(5.0)
    full, _ = load_audio(path)
    assert np.allclose(wave[:-200], full[: len(wave) - 200], atol=1e-4)  # same audio, minus the filter tail
    m4a = encode_with_av(tmp_path / "long.m4a", stereo_sine(440, 44_100, 3.0), 44_100, "aac")
    wave, info = load_audio(m4a, max_duration=1.0)
    assert len(wave) == SAMPLE_RATE and info.duration == pytest.approx(3.0)
    wave, _ = load_audio(path, max_duration=60)  # longer than the file: no effect
    assert len(wave) == 5 * SAMPLE_RATE


@pytest.mark.parametrize("bad", [0, -1.0])
def test_rejects_nonsense_arguments(tone_file, bad):
    path = tone_file()
    with pytest.raises(ValueError, match="max_duration"):
        load_audio(path, max_duration=bad)
    with pytest.raises(ValueError, match="sample_rate"):
        load_audio(path, sample_rate=int(bad))


# ---------------------------------------------------------------- signal correctness


def test_resamples_1khz_sine_from_44k1_to_32k(tone_file):
    path = tone_file("sine.wav", freq=1000, sample_rate=44_100, duration=2.0, amplitude=0.8, subtype="FLOAT")
    wave, info = load_audio(path)
    assert info.sample_rate == 44_100 and len(wave) == 2 * SAMPLE_RATE
    assert peak_hz(wave, SAMPLE_RATE) == pytest.approx(1000, abs=1)
    assert amplitude(wave) == pytest.approx(0.8, rel=0.005)
    t = np.arange(len(wave)) / SAMPLE_RATE  # phase too: the resampler's delay is compensated
    mid = slice(1000, -1000)
    assert np.allclose(wave[mid], 0.8 * np.sin(2 * np.pi * 1000 * t[mid]), atol=2e-3)


def test_block_wise_resampling_equals_one_shot(tone_file):
    rng = np.random.default_rng(0)
    noise = rng.uniform(-0.5, 0.5, size=(200_000, 2)).astype(np.float32)  # several decode blocks
    path = tone_file("noise.wav", data=noise, sample_rate=48_000, subtype="FLOAT")
    wave, _ = load_audio(path, sample_rate=16_000)
    expected = soxr.resample(noise.mean(axis=1), 48_000, 16_000)
    assert wave.shape == expected.shape
    assert np.abs(wave - expected).max() < 1e-5


def test_same_rate_is_bit_exact_and_channels_are_averaged(tone_file):
    rng = np.random.default_rng(1)
    left = rng.uniform(-1, 1, 50_000).astype(np.float32)
    right = rng.uniform(-1, 1, 50_000).astype(np.float32)
    path = tone_file("lr.wav", data=np.stack([left, right], axis=1), sample_rate=SAMPLE_RATE, subtype="FLOAT")
    wave, info = load_audio(path)
    assert info.channels == 2
    assert np.array_equal(wave, ((left + right) / 2).astype(np.float32))
    opposite = np.stack([left, -left], axis=1)
    cancel = tone_file("cancel.wav", data=opposite, sample_rate=SAMPLE_RATE, subtype="FLOAT")
    assert np.abs(load_audio(cancel)[0]).max() == 0


def test_multichannel_is_averaged(tone_file):
    data = np.zeros((8_000, 6), dtype=np.float32)
    data[:, 2] = 0.6
    wave, info = load_audio(tone_file("six.wav", data=data, sample_rate=SAMPLE_RATE, subtype="FLOAT"))
    assert info.channels == 6
    assert np.allclose(wave, 0.1)


def test_nan_and_inf_become_zero(tone_file):
    data = np.full((1_000, 1), 0.25, dtype=np.float32)
    data[10], data[20], data[30] = np.nan, np.inf, -np.inf
    wave, _ = load_audio(tone_file("nan.wav", data=data, sample_rate=SAMPLE_RATE, subtype="FLOAT"))
    assert_clean(wave)
    assert wave[10] == wave[20] == wave[30] == 0
    assert wave[11] == pytest.approx(0.25)
    resampled, _ = load_audio(tone_file("nan48.wav", data=data, sample_rate=48_000, subtype="FLOAT"))
    assert_clean(resampled)


def test_other_target_rates(tone_file):
    path = tone_file(freq=440, sample_rate=44_100, duration=1.0)
    for rate in (8_000, 16_000, 44_100, 48_000):
        wave, _ = load_audio(path, sample_rate=rate)
        assert len(wave) == rate
        assert peak_hz(wave, rate) == pytest.approx(440, abs=1.5)


# ---------------------------------------------------------------- real files


def sfx_sample(sfx_dir: Path, n: int = 12) -> list[dict[str, str]]:
    """A spread of manifest rows covering every source and suffix."""
    with open(sfx_dir / "manifest.tsv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    picked: dict[tuple[str, str], dict[str, str]] = {}
    for row in rows:
        picked.setdefault((row["source"], Path(row["path"]).suffix), row)
    extra = rows[:: max(1, len(rows) // n)]
    return list({r["path"]: r for r in [*picked.values(), *extra]}.values())


def test_real_sound_effects_match_the_manifest(sfx_dir):
    rows = sfx_sample(sfx_dir)
    assert {Path(r["path"]).suffix for r in rows} >= {".ogg", ".wav"}
    for row in rows:
        path = sfx_dir / row["path"]
        expected = float(row["duration_s"])
        info = probe(path)
        assert info.duration == pytest.approx(expected, abs=0.002), row["path"]
        assert info.sample_rate == int(row["samplerate"]) and info.channels == int(row["channels"])
        wave, loaded = load_audio(path)
        assert loaded == info
        assert_clean(wave)
        assert len(wave) == pytest.approx(expected * SAMPLE_RATE, abs=0.002 * SAMPLE_RATE + 2), row["path"]
        assert 0 < np.abs(wave).max() < 4


# ---------------------------------------------------------------- bad input


def check_refused(path, match: str, header_ok: bool = False) -> AudioDecodeError:
    """load_audio (and probe, unless only the body is bad) refuse the file with a message naming it."""
    with pytest.raises(AudioDecodeError, match=match) as caught:
        load_audio(path)
    err = caught.value
    assert isinstance(err, ValueError)
    assert Path(os.fsdecode(path)).name in os.fsdecode(err.path)
    assert err.reason and err.reason in str(err)
    str(err).encode("utf-8")  # printable whatever the name
    if header_ok:
        probe(path)  # header-only: cannot notice a damaged body
    else:
        with pytest.raises(AudioDecodeError):
            probe(path)
    return err


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.wav"
    path.write_bytes(np.random.default_rng(2).bytes(10_000))
    check_refused(path, "not recognised|Invalid data")


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.flac"
    path.touch()
    check_refused(path, "empty")


def test_text_file_named_wav(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\n" * 50)
    check_refused(path, "noise|not recognised|Invalid data")


def test_missing_and_deleted_files(tone_file, tmp_path):
    check_refused(tmp_path / "never-there.wav", "not found")
    path = tone_file("gone.wav")
    path.unlink()
    err = check_refused(path, "not found")
    assert err.path == path


def test_directory(tmp_path):
    (tmp_path / "folder.wav").mkdir()
    check_refused(tmp_path / "folder.wav", "directory")


@pytest.mark.parametrize("name", ["cut.flac", "cut.ogg"])
def test_truncated_compressed_files(tone_file, name):
    path = tone_file(name, duration=3.0, channels=2)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    check_refused(path, "truncated|no audio samples", header_ok=True)


@pytest.mark.parametrize("name", ["cut.wav", "cut.opus", "cut.mp3"])
def test_cut_wav_opus_and_mp3_decode_what_is_there(tone_file, name):
    # libsndfile sizes a cut WAV or Opus file by what is there, and an MP3's frame count is only an
    # estimate, so these decode like they would play in any player: the part that is there
    path = tone_file(name, duration=3.0, channels=2, sample_rate=48_000)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    wave, info = load_audio(path)
    assert_clean(wave)
    assert 0.5 < info.duration < 2.0
    assert len(wave) == pytest.approx(info.duration * SAMPLE_RATE, abs=2)


def test_mp3_without_xing_header_decodes_fully(tmp_path):
    # without a Xing/Info header libsndfile can only estimate the length from the first frame's bitrate
    rng = np.random.default_rng(3)
    rate = 44_100
    data = np.concatenate([np.zeros(2 * rate), rng.uniform(-0.5, 0.5, 2 * rate)]).astype(np.float32)[None]
    path = tmp_path / "vbr.mp3"
    with av.open(str(path), "w", format="mp3", options={"write_xing": "0"}) as container:
        stream = container.add_stream("libmp3lame", rate=rate, layout="mono")
        stream.codec_context.qscale = 4  # VBR
        for i in range(0, data.shape[1], 1152):
            frame = av.AudioFrame.from_ndarray(data[:, i : i + 1152].copy(), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    assert sf.info(path).frames > 5 * rate  # libsndfile's estimate is far off ...
    wave, info = load_audio(path)
    assert info.duration == pytest.approx(4.0, abs=0.06)  # ... yet the whole file decodes
    assert len(wave) == pytest.approx(info.duration * SAMPLE_RATE, abs=2)


def test_truncated_m4a(tmp_path):
    path = encode_with_av(tmp_path / "cut.m4a", stereo_sine(440, 44_100, 2.0), 44_100, "aac")
    path.write_bytes(path.read_bytes()[:4_000])
    check_refused(path, "FFmpeg")


def test_wav_header_without_samples(tone_file):
    path = tone_file("silent.wav", data=np.zeros((0, 1)), sample_rate=SAMPLE_RATE)
    assert probe(path).duration == 0
    with pytest.raises(AudioDecodeError, match="no audio samples"):
        load_audio(path)


def test_file_without_audio_stream(tmp_path):
    path = tmp_path / "video.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    check_refused(path, "no audio stream")


def test_without_pyav_m4a_error_says_how_to_get_it(tmp_path, tone_file, monkeypatch):
    path = encode_with_av(tmp_path / "clip.m4a", stereo_sine(440, 44_100, 0.5), 44_100, "aac")
    monkeypatch.setitem(sys.modules, "av", None)  # import av now raises ImportError
    check_refused(path, r"PyAV is missing from this install: pip install av")  # a default dependency now
    wave, _ = load_audio(tone_file("still.wav"))  # libsndfile formats need no PyAV
    assert len(wave) == SAMPLE_RATE


def test_error_is_picklable():
    err = pickle.loads(pickle.dumps(AudioDecodeError(Path("a b.wav"), "broken")))
    assert isinstance(err, AudioDecodeError)
    assert (err.path, err.reason) == (Path("a b.wav"), "broken")
    assert str(err) == "cannot decode audio file 'a b.wav': broken"


# ---------------------------------------------------------------- awkward names


def test_spaces_and_unicode_in_names(tone_file):
    path = tone_file("my sound – café 音 (1).ogg", duration=0.5)
    for p in (path, str(path), os.fsencode(path)):
        wave, info = load_audio(p)
        assert len(wave) == SAMPLE_RATE // 2 and info.duration == pytest.approx(0.5)


def write_bytes_named(folder: Path, name: bytes, data: bytes) -> bytes:
    """Create a file whose name is not valid UTF-8 (possible on Linux); returns its bytes path."""
    path = os.path.join(os.fsencode(folder), name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return path


@pytest.mark.skipif(sys.platform != "linux", reason="non-UTF-8 file names are a Linux thing")
def test_non_utf8_file_name(tone_file, tmp_path):
    wav = tone_file("source.wav", duration=0.25).read_bytes()
    raw = write_bytes_named(tmp_path, b"caf\xe9 sound.wav", wav)
    as_str = os.fsdecode(raw)
    assert "\udce9" in as_str  # what os.listdir would give back
    for p in (raw, as_str, Path(as_str)):
        wave, info = load_audio(p)
        assert len(wave) == SAMPLE_RATE // 4
        assert probe(p) == info
    bad = write_bytes_named(tmp_path, b"bro\xffken.wav", b"garbage" * 100)
    err = check_refused(os.fsdecode(bad), "not recognised|Invalid data")
    assert "bro\\xffken.wav" in str(err)  # shown readably instead of crashing on print


# ---------------------------------------------------------------- a one-hour file


@pytest.fixture(scope="module")
def hour_file(tmp_path_factory) -> Path:
    """1 h of a 100 Hz sine at 8 kHz mono (57.6 MB), written in blocks."""
    path = tmp_path_factory.mktemp("long") / "hour.wav"
    second = (0.5 * np.sin(2 * np.pi * 100 * np.arange(8_000) / 8_000)).astype(np.float32)
    block = np.tile(second, 60)
    with sf.SoundFile(path, "w", 8_000, 1, "PCM_16") as f:
        for _ in range(60):
            f.write(block)
    return path


def test_one_hour_file_in_bounded_memory(hour_file):
    assert probe(hour_file) == AudioInfo(3600.0, 8_000, 1)
    tracemalloc.start()
    try:
        wave, info = load_audio(hour_file, sample_rate=4_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info == AudioInfo(3600.0, 8_000, 1)
    assert len(wave) == 3600 * 4_000
    assert peak < wave.nbytes + 4 * 2**20  # the output plus a few small blocks, never the whole input
    t = np.arange(4_000 * 10) / 4_000
    for start in (0, 1800 * 4_000, len(wave) - 40_000):  # start, middle and end all hold the sine
        chunk = wave[start : start + 40_000]
        assert np.allclose(chunk[200:-200], 0.5 * np.sin(2 * np.pi * 100 * t[200:-200]), atol=2e-3)


def test_one_hour_file_max_duration_reads_only_the_start(hour_file):
    wave, info = load_audio(hour_file, max_duration=30.0)
    assert len(wave) == 30 * SAMPLE_RATE
    assert info.duration == 3600.0
    assert peak_hz(wave, SAMPLE_RATE) == pytest.approx(100, abs=0.5)


# ---------------------------------------------------------------- frame_windows


def test_frame_windows_short_wave_is_one_window_of_its_own_length():
    wave = np.arange(3 * SAMPLE_RATE, dtype=np.float32)
    out = frame_windows(wave)
    assert out.shape == (1, 3 * SAMPLE_RATE) and out.dtype == np.float32
    assert np.array_equal(out[0], wave)


def test_frame_windows_pads_tiny_waves_to_min_s():
    out = frame_windows(np.ones(1_000, dtype=np.float32), min_s=1.0)
    assert out.shape == (1, SAMPLE_RATE)
    assert out[0, :1_000].sum() == 1_000 and not out[0, 1_000:].any()
    assert frame_windows(np.ones(1_000), min_s=0).shape == (1, 1_000)
    assert frame_windows(np.zeros(0), min_s=0.5).shape == (1, SAMPLE_RATE // 2)
    assert frame_windows(np.ones(10), window_s=0.5, min_s=2.0).shape == (1, SAMPLE_RATE // 2)  # min <= window


def test_frame_windows_exactly_one_window():
    wave = np.ones(10 * SAMPLE_RATE)
    assert frame_windows(wave).shape == (1, 10 * SAMPLE_RATE)


def test_frame_windows_last_window_is_flush_with_the_end():
    sr = 100
    wave = np.arange(25 * sr, dtype=np.float32)
    out = frame_windows(wave, sample_rate=sr, window_s=10)
    assert [int(w[0]) for w in out] == [0, 1000, 1500]
    assert out.shape == (3, 1000) and out[-1, -1] == wave[-1]
    out = frame_windows(wave, sample_rate=sr, window_s=10, hop_s=5)
    assert [int(w[0]) for w in out] == [0, 500, 1000, 1500]  # no duplicate of the end-aligned start
    out = frame_windows(np.arange(20 * sr, dtype=np.float32), sample_rate=sr, window_s=10)
    assert [int(w[0]) for w in out] == [0, 1000]
    out = frame_windows(np.arange(2001, dtype=np.float32), sample_rate=sr, window_s=10, hop_s=3)
    assert [int(w[0]) for w in out] == [0, 300, 600, 900, 1001]
    for w in out:
        assert np.array_equal(w, np.arange(w[0], w[0] + 1000))
    assert out.dtype == np.float32 and out.flags.c_contiguous


def test_frame_windows_rejects_bad_input():
    with pytest.raises(ValueError, match="1-D"):
        frame_windows(np.zeros((2, 100)))
    for kwargs in ({"window_s": 0}, {"hop_s": 0}, {"hop_s": -1}, {"min_s": -1}):
        with pytest.raises(ValueError):
            frame_windows(np.zeros(100), **kwargs)


def test_audio_extensions():
    assert all(ext.startswith(".") and ext == ext.lower() for ext in AUDIO_EXTENSIONS)
    required = ".wav .flac .ogg .oga .opus .mp3 .m4a .aac .aif .aiff .aifc .wv .caf .au .mp4"
    assert set(required.split()) <= AUDIO_EXTENSIONS
