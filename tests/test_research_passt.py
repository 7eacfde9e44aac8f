"""PaSST with random weights: its shapes, the whole-clip segments and their weights, weights from the
asset folder, and a quiet stdout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from clotho_fixtures import tiny_text_model

from audiofind.assets import AssetNotFoundError
from audiofind.models.audio_backbones import PaSSTBackbone, build_audio_backbone
from audiofind.models.dual_encoder import DualEncoderConfig, build_model, segment_weights
from audiofind.models.encoders.passt import ARCHS, PaSST, PaSSTMel, frames_for

TINY = {"embed_dim": 32, "depth": 1, "num_heads": 2, "input_tdim": 1000}
SR = 32_000


@pytest.fixture(autouse=True)
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_passt_s_shapes_with_random_weights():
    """The baseline's PaSST-S (stride 16, 1,000 frames): parameter shapes, patchout, the 768-d embedding."""
    with torch.device("meta"):  # the full network's shapes, without 86 M random numbers
        state = PaSST(fstride=16, tstride=16, input_tdim=1000).state_dict()
    assert len(state) == 159  # as hear21passt 0.0.26's passt_s_p16_s16_128_ap468
    assert state["time_new_pos_embed"].shape == (1, 768, 1, 62)
    assert state["freq_new_pos_embed"].shape == (1, 768, 8, 1)
    assert state["head.1.weight"].shape == (527, 768) and state["head_dist.weight"].shape == (527, 768)
    assert sum(p.numel() for p in state.values()) == pytest.approx(86.2e6, rel=0.01)
    assert frames_for(10.0) == 1000
    net = PaSST(fstride=16, tstride=16, input_tdim=1000, s_patchout_t=15, s_patchout_f=2, depth=1)
    spec = PaSSTMel().eval()(0.1 * torch.randn(1, 10 * SR)).unsqueeze(1)
    assert spec.shape == (1, 1, 128, 1000)
    with torch.no_grad():
        assert net.eval().tokens(spec).shape == (1, 2 + 62 * 8, 768)
        assert net.train().tokens(spec).shape == (1, 2 + 47 * 6, 768)  # 15 time, 2 frequency rows out
        logits, features = net.eval()(spec)
    assert logits.shape == (1, 527) and features.shape == (1, 768)


def test_passt_refuses_more_than_ten_seconds():
    backbone = PaSSTBackbone(pretrained=False, options=TINY)
    assert backbone(0.1 * torch.randn(1, 10 * SR))[0].shape == (1, 32, 1)
    with pytest.raises(ValueError, match="clip_s"):
        backbone(0.1 * torch.randn(1, 12 * SR))


def test_front_end_matches_the_baseline_settings():
    mel = PaSSTMel()  # the baseline's freqm=0, timem=0: no masks; mel edges jitter only while training
    x = 0.1 * torch.randn(2, SR)
    assert torch.equal(mel.eval()(x), mel.eval()(x))
    torch.manual_seed(0)
    assert not torch.equal(mel.train()(x), mel.eval()(x))
    masked = PaSSTMel(freqm=48, timem=192).train()(x)
    assert masked.shape == (2, 128, 100) and bool((masked == (0 + 4.5) / 5).any())
    with pytest.raises(ValueError, match="unknown PaSST option"):
        build_audio_backbone("passt", False, {"freqmask": 3})


def test_segment_weights_count_like_the_baseline_or_by_duration():
    d = torch.tensor([4.0, 10.0, 14.0, 20.5, 30.0, 0.0])
    count = segment_weights(d, 3, 10.0, 10.0, "count")
    third = [1 / 3] * 3
    expected = [[1, 0, 0], [1, 0, 0], [0.5, 0.5, 0], third, third, [1, 0, 0]]
    assert count.numpy() == pytest.approx(np.array(expected))
    by_duration = segment_weights(d, 3, 10.0, 10.0, "duration")
    assert by_duration[2].tolist() == pytest.approx([10 / 14, 4 / 14, 0])


class _Recorder(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, x):
        self.seen.append(tuple(x.shape))
        return self.inner(x)


def test_whole_clips_through_passt_in_training_and_inference(capsys, tmp_path):
    options = {**TINY, "s_patchout_t": 15, "s_patchout_f": 2}
    cfg = DualEncoderConfig(
        audio_backbone="passt",
        audio_options=options,
        embed_dim=16,
        clip_s=30.0,
        text_backbone=str(tiny_text_model(tmp_path / "text")),
    )
    net = build_model(cfg, pretrained=False)
    recorder = _Recorder(net.audio)
    net.audio = recorder
    net.audio.dim = recorder.inner.dim
    waves = 0.1 * torch.randn(2, 30 * SR)
    out = net.train().encode_audio(waves, torch.tensor([14.0, 30.0]))
    assert out.shape == (2, 16) and recorder.seen == [(6, 10 * SR)]  # 2 clips x 3 segments of 10 s
    # inference skips segments without audio and gives what the padded training input gives
    clips = [
        0.1 * np.random.default_rng(0).standard_normal(14 * SR).astype(np.float32),
        0.1 * np.random.default_rng(1).standard_normal(3 * SR).astype(np.float32),
    ]
    recorder.seen.clear()
    vectors, probs = net.embed_waves(clips)
    assert sum(s[0] for s in recorder.seen) == 3 and probs.shape == (2, 527)
    padded = torch.zeros(2, 30 * SR)
    padded[0, : 14 * SR], padded[1, : 3 * SR] = torch.from_numpy(clips[0]), torch.from_numpy(clips[1])
    with torch.no_grad():
        expected = net.eval().encode_audio(padded, torch.tensor([14.0, 3.0])).numpy()
    assert np.allclose(vectors, expected, atol=1e-5)
    assert capsys.readouterr().out == ""  # nothing printed while building or on the first forward


def test_weights_come_from_the_asset_folder(tmp_path, monkeypatch):
    file = ARCHS["passt_s_p16_s16_128_ap468"][0]
    with pytest.raises(AssetNotFoundError, match=file):  # offline in tests: says what to put where
        PaSSTBackbone(pretrained=True, options=TINY)
    folder = tmp_path / "assets"
    folder.mkdir()
    source = PaSST(**{k: v for k, v in TINY.items()})
    torch.save(source.state_dict(), folder / file)
    monkeypatch.setenv("AUDIOFIND_ASSETS", str(folder))
    with pytest.warns(UserWarning, match="unverified"):
        loaded = PaSSTBackbone(pretrained=True, options=TINY)
    assert torch.equal(loaded.net.cls_token, source.cls_token)
    torch.save({"model": PaSST(embed_dim=16, depth=1, num_heads=2).state_dict()}, folder / file)
    with pytest.raises(ValueError, match="does not fit"), pytest.warns(UserWarning):
        PaSSTBackbone(pretrained=True, options=TINY)
