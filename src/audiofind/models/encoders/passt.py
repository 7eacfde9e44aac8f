"""PaSST (Koutini et al., Interspeech 2022), written here from the paper and the released state dicts.

The parameter names and shapes are those of the `hear21passt` package, so the official AudioSet weights
(`passt-s-f128-p16-s16-ap.468.pt`, ...) load strictly, but nothing here imports it: that package pulls
unpinned torchaudio/timm/torchvision and with them another torch. The front end is hear21passt's
`AugmentMelSTFT` (pre-emphasis as a valid 2-tap convolution, so 10 s gives 1,000 frames; Kaldi mel banks
whose edges jitter while training; optional SpecAugment masks), the network a ViT over 16x16 patches with
separate time and frequency position embeddings, class and distillation tokens, and structured patchout.

A PaSST has time position embeddings for `input_tdim` frames (10 s); a longer input is refused here, and
`DualEncoder` cuts whole clips into 10 s segments instead.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...assets import ASSETS, Asset
from .efficientat import kaldi_mel_banks

SAMPLE_RATE, N_FFT, WIN_LENGTH, HOP_LENGTH, N_MELS = 32_000, 1024, 800, 320, 128

_RELEASES = "https://github.com/kkoutini/PaSST/releases/download/"
# arch -> (weights file, release URL, patch stride); the URLs are hear21passt 0.0.26's default_cfgs
ARCHS: dict[str, tuple[str, str, int]] = {
    "passt_s_p16_s16_128_ap468": ("passt-s-f128-p16-s16-ap.468.pt", "v0.0.2-audioset/", 16),
    "passt_s_swa_p16_128_ap476": ("passt-s-f128-p16-s10-ap.476-swa.pt", "v0.0.1-audioset/", 10),
    "passt_s_kd_p16_128_ap486": ("passt-s-kd-ap.486.pt", "v.0.0.9/", 10),
}
for _file, _tag, _ in ARCHS.values():  # in the asset registry: AUDIOFIND_ASSETS, AUDIOFIND_OFFLINE apply
    ASSETS.setdefault(_file, Asset(_file, _RELEASES + _tag + _file, None, "Apache-2.0 (PaSST)"))


class PaSSTMel(nn.Module):
    """Waveform (B, samples) at 32 kHz -> normalised log-mel (B, 128, frames), as hear21passt computes it."""

    def __init__(self, freqm: int = 0, timem: int = 0, fmin_aug_range: int = 10, fmax_aug_range: int = 2000):
        super().__init__()
        self.freqm, self.timem = int(freqm), int(timem)
        self.fmin_aug_range, self.fmax_aug_range = max(1, int(fmin_aug_range)), max(1, int(fmax_aug_range))
        self.fmin, self.fmax = 0.0, SAMPLE_RATE // 2 - self.fmax_aug_range // 2
        self.register_buffer("window", torch.hann_window(WIN_LENGTH, periodic=False), persistent=False)
        self.register_buffer(
            "eval_banks", kaldi_mel_banks(N_MELS, N_FFT, SAMPLE_RATE, self.fmin, self.fmax), persistent=False
        )

    def _banks(self) -> Tensor:
        if not self.training:
            return self.eval_banks
        fmin = self.fmin + int(torch.randint(self.fmin_aug_range, (1,)))
        fmax = self.fmax + self.fmax_aug_range // 2 - int(torch.randint(self.fmax_aug_range, (1,)))
        return kaldi_mel_banks(N_MELS, N_FFT, SAMPLE_RATE, fmin, fmax).to(self.eval_banks.device)

    @staticmethod
    def _mask(x: Tensor, width: int, dim: int) -> Tensor:
        """One random band per example, of width uniform in [0, width), set to 0 (SpecAugment)."""
        size = x.shape[dim]
        w = (torch.rand(x.shape[0], device=x.device) * min(width, size)).long()
        start = (torch.rand(x.shape[0], device=x.device) * (size - w + 1)).long()
        pos = torch.arange(size, device=x.device)
        band = (pos[None] >= start[:, None]) & (pos[None] < (start + w)[:, None])
        return x.masked_fill(band.unsqueeze(2 if dim == 1 else 1), 0.0)

    @torch.no_grad()
    def forward(self, wave: Tensor) -> Tensor:
        x = wave[:, 1:] - 0.97 * wave[:, :-1]  # hear21passt's conv1d([-0.97, 1]): one sample shorter
        spec = torch.stft(
            x,
            N_FFT,
            hop_length=HOP_LENGTH,
            win_length=WIN_LENGTH,
            window=self.window,
            center=True,
            return_complex=True,
        )
        mel = torch.matmul(self._banks(), spec.real.square() + spec.imag.square())
        mel = torch.log(mel + 1e-5)
        if self.training and self.freqm > 0:
            mel = self._mask(mel, self.freqm, 1)
        if self.training and self.timem > 0:
            mel = self._mask(mel, self.timem, 2)
        return (mel + 4.5) / 5.0


class _PatchEmbed(nn.Module):
    def __init__(self, dim: int, stride: tuple[int, int]) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, dim, kernel_size=16, stride=stride)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), _Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), _Mlp(dim, 4 * dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PaSST(nn.Module):
    """PaSST-S by default (768-d, 12 blocks, 12 heads); spectrogram (B, 1, 128, T) -> tokens or logits."""

    def __init__(
        self,
        fstride: int = 16,
        tstride: int = 16,
        input_fdim: int = 128,
        input_tdim: int = 998,
        s_patchout_t: int = 0,
        s_patchout_f: int = 0,
        u_patchout: int = 0,
        num_classes: int = 527,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
    ) -> None:
        super().__init__()
        self.embed_dim, self.num_tokens = embed_dim, 2
        self.s_patchout_t, self.s_patchout_f, self.u_patchout = s_patchout_t, s_patchout_f, u_patchout
        self.grid = (input_fdim // fstride, input_tdim // tstride)  # hear21passt's grid_size
        self.patch_embed = _PatchEmbed(embed_dim, (fstride, tstride))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.new_pos_embed = nn.Parameter(torch.zeros(1, 2, embed_dim))
        self.freq_new_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, self.grid[0], 1))
        self.time_new_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, 1, self.grid[1]))
        self.blocks = nn.Sequential(*[_Block(embed_dim, num_heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, num_classes))
        self.head_dist = nn.Linear(embed_dim, num_classes)
        for p in (
            self.cls_token,
            self.dist_token,
            self.new_pos_embed,
            self.freq_new_pos_embed,
            self.time_new_pos_embed,
        ):
            nn.init.trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    @property
    def max_frames(self) -> int:
        """Longest spectrogram the time position embeddings cover."""
        return self.grid[1] * self.patch_embed.proj.stride[1] + 15

    def tokens(self, spec: Tensor) -> Tensor:
        """(B, 1, F, T) -> (B, 2 + patches, d) after the final norm: class, distillation, patch tokens."""
        x = self.patch_embed(spec)
        b, _, f, t = x.shape
        if t > self.grid[1]:
            seconds = self.max_frames * HOP_LENGTH / SAMPLE_RATE
            raise ValueError(
                f"PaSST covers {self.grid[1]} time patches (about {seconds:.0f} s) and got {t}: cut longer "
                "audio into segments (model.clip_s with model.window_s <= 10)"
            )
        x = x + self.time_new_pos_embed[:, :, :, :t] + self.freq_new_pos_embed
        if self.training and self.s_patchout_t:
            x = x[:, :, :, torch.randperm(t)[: max(1, t - self.s_patchout_t)].sort().values]
        if self.training and self.s_patchout_f:
            x = x[:, :, torch.randperm(f)[: max(1, f - self.s_patchout_f)].sort().values, :]
        x = x.flatten(2).transpose(1, 2)
        if self.training and self.u_patchout:
            n = x.shape[1]
            x = x[:, torch.randperm(n)[: max(1, n - self.u_patchout)].sort().values, :]
        special = torch.cat([self.cls_token, self.dist_token], dim=1) + self.new_pos_embed
        x = torch.cat([special.expand(b, -1, -1), x], dim=1)
        return self.norm(self.blocks(x))

    def classify(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """(logits, features): the embedding is the mean of the class and distillation tokens."""
        features = tokens[:, :2].mean(dim=1)
        return self.head(features), features

    def forward(self, spec: Tensor) -> tuple[Tensor, Tensor]:
        return self.classify(self.tokens(spec))


def load_passt_weights(net: PaSST, path: str) -> None:
    """Load a released PaSST state dict strictly, naming what does not fit."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state) if isinstance(state, dict) else state
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shapes differ
        raise ValueError(f"{path} does not fit this PaSST (check arch, fstride/tstride, input_tdim): "
                         f"{str(err).splitlines()[1:3]}") from None
    if missing or unexpected:
        raise ValueError(
            f"{path} does not fit this PaSST (check arch, fstride/tstride, input_tdim): missing "
            f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )


def frames_for(seconds: float) -> int:
    """Spectrogram frames PaSSTMel makes from `seconds` of audio (10 s -> 1,000)."""
    return math.floor((round(seconds * SAMPLE_RATE) - 1) / HOP_LENGTH) + 1
