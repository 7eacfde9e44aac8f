"""EfficientAT MobileNetV3 audio tagger (Schmid et al., ICASSP 2023) and the log-mel front end it expects.

Written from the paper and the published state dicts: key names and shapes below match
`mn04_as_mAP_432.pt` exactly so the file loads strictly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SAMPLE_RATE = 32_000
N_MELS = 128
N_FFT = 1024
WIN_LENGTH = 800
HOP_LENGTH = 320
F_MAX = 15_000.0
PREEMPHASIS = 0.97

# (input, kernel, expanded, output, squeeze-excite, hard-swish, stride): MobileNetV3-Large, unscaled
_BLOCKS = [
    (16, 3, 16, 16, False, False, 1),
    (16, 3, 64, 24, False, False, 2),
    (24, 3, 72, 24, False, False, 1),
    (24, 5, 72, 40, True, False, 2),
    (40, 5, 120, 40, True, False, 1),
    (40, 5, 120, 40, True, False, 1),
    (40, 3, 240, 80, False, True, 2),
    (80, 3, 200, 80, False, True, 1),
    (80, 3, 184, 80, False, True, 1),
    (80, 3, 184, 80, False, True, 1),
    (80, 3, 480, 112, True, True, 1),
    (112, 3, 672, 112, True, True, 1),
    (112, 5, 672, 160, True, True, 2),
    (160, 5, 960, 160, True, True, 1),
    (160, 5, 960, 160, True, True, 1),
]

# width multiplier of each published AudioSet checkpoint, keyed by the short model name
WIDTHS = {
    "mn01": 0.1, "mn02": 0.2, "mn04": 0.4, "mn05": 0.5, "mn10": 1.0, "mn20": 2.0, "mn30": 3.0, "mn40": 4.0,
}


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channel counts as MobileNet does, so scaled widths match the checkpoints."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def kaldi_mel_banks(n_mels: int = N_MELS, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE,
                    f_min: float = 0.0, f_max: float = F_MAX) -> Tensor:
    """Kaldi-style triangles on mel = 1127 ln(1 + f/700); shape (n_mels, n_fft // 2 + 1)."""

    def mel(f: Tensor | float) -> Tensor:
        return 1127.0 * torch.log1p(torch.as_tensor(f, dtype=torch.float64) / 700.0)

    n_bins = n_fft // 2
    mel_lo, mel_hi = mel(f_min), mel(f_max)
    delta = (mel_hi - mel_lo) / (n_mels + 1)
    idx = torch.arange(n_mels, dtype=torch.float64).unsqueeze(1)
    left, centre, right = mel_lo + idx * delta, mel_lo + (idx + 1) * delta, mel_lo + (idx + 2) * delta
    bin_mel = mel(torch.arange(n_bins, dtype=torch.float64) * sample_rate / n_fft).unsqueeze(0)
    up = (bin_mel - left) / (centre - left)
    down = (right - bin_mel) / (right - centre)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)
    return F.pad(banks, (0, 1)).float()  # the Nyquist bin gets no weight


class LogMelFrontEnd(nn.Module):
    """Waveform (batch, samples) at 32 kHz -> normalised log-mel (batch, 1, 128, frames)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("window", torch.hann_window(WIN_LENGTH, periodic=False), persistent=False)
        self.register_buffer("mel_banks", kaldi_mel_banks(), persistent=False)

    def forward(self, wave: Tensor) -> Tensor:
        # y[n] = x[n] - 0.97 x[n-1] with x[-1] = 0, so 10 s gives the 1,001 frames the model was trained on
        emphasised = wave - PREEMPHASIS * F.pad(wave, (1, 0))[:, :-1]
        spec = torch.stft(emphasised, N_FFT, hop_length=HOP_LENGTH, win_length=WIN_LENGTH, window=self.window,
                          center=True, return_complex=True)
        power = spec.real.square() + spec.imag.square()
        mel = torch.matmul(self.mel_banks, power)
        return ((torch.log(mel + 1e-5) + 4.5) / 5.0).unsqueeze(1)


class ConvBNAct(nn.Sequential):
    """Conv2d + BatchNorm (eps 1e-3) + optional activation; indices 0/1 match the checkpoint keys."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1,
                 activation: type[nn.Module] | None = nn.Hardswish) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out, eps=0.001, momentum=0.01),
        ]
        if activation is not None:
            layers.append(activation())
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """Channel attention from the time-frequency mean; sigmoid gate as in the EfficientAT checkpoints."""

    def __init__(self, channels: int, squeezed: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, squeezed)
        self.fc2 = nn.Linear(squeezed, channels)

    def forward(self, x: Tensor) -> Tensor:
        scale = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3))))))
        return x * scale[:, :, None, None]


class ConcurrentSE(nn.Module):
    """Keeps the checkpoint's key layout (`conc_se_layers.0`); only the channel branch exists."""

    def __init__(self, channels: int, squeezed: int) -> None:
        super().__init__()
        self.conc_se_layers = nn.ModuleList([SqueezeExcite(channels, squeezed)])

    def forward(self, x: Tensor) -> Tensor:
        return self.conc_se_layers[0](x)


class InvertedResidual(nn.Module):
    """MobileNetV3 bottleneck: expand, depthwise conv, optional SE, project; residual if shapes allow."""

    def __init__(self, c_in: int, kernel: int, expanded: int, c_out: int, use_se: bool, hswish: bool,
                 stride: int) -> None:
        super().__init__()
        act = nn.Hardswish if hswish else nn.ReLU
        layers: list[nn.Module] = []
        if expanded != c_in:
            layers.append(ConvBNAct(c_in, expanded, 1, activation=act))
        layers.append(ConvBNAct(expanded, expanded, kernel, stride, groups=expanded, activation=act))
        if use_se:
            layers.append(ConcurrentSE(expanded, make_divisible(expanded // 4)))
        layers.append(ConvBNAct(expanded, c_out, 1, activation=None))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return out + x if self.residual else out


@dataclass
class TaggerOutput:
    logits: Tensor  # (batch, classes)
    embedding: Tensor  # (batch, channels): time-frequency mean of the last feature map
    frames: Tensor  # (batch, channels, time): frequency-mean feature map, for pooling over time


class MobileNetTagger(nn.Module):
    """EfficientAT `mnXX_as`: MobileNetV3 on log-mels with an MLP head over 527 AudioSet classes."""

    def __init__(self, width: float = 0.4, num_classes: int = 527) -> None:
        super().__init__()
        self.width = width
        blocks = [
            (make_divisible(i * width), k, make_divisible(e * width), make_divisible(o * width), se, hs, s)
            for i, k, e, o, se, hs, s in _BLOCKS
        ]
        last_in = blocks[-1][3]
        self.embed_dim = 6 * last_in
        layers: list[nn.Module] = [ConvBNAct(1, blocks[0][0], 3, stride=2)]
        layers += [InvertedResidual(*b) for b in blocks]
        layers.append(ConvBNAct(last_in, self.embed_dim, 1))
        self.features = nn.Sequential(*layers)
        hidden = make_divisible(1280 * width)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(self.embed_dim, hidden), nn.Hardswish(),
            nn.Dropout(0.2), nn.Linear(hidden, num_classes),
        )
        self.front_end = LogMelFrontEnd()

    def forward_features(self, mel: Tensor) -> TaggerOutput:
        fmap = self.features(mel)
        frames = fmap.mean(dim=2)  # (batch, channels, time)
        pooled = frames.mean(dim=2)
        return TaggerOutput(self.classifier[2:](pooled), pooled, frames)

    def forward(self, wave: Tensor) -> TaggerOutput:
        return self.forward_features(self.front_end(wave))

    def freeze_for_inference(self) -> MobileNetTagger:
        """Swap the conv stack for a frozen TorchScript graph (oneDNN-fused on CPU: about twice as fast).

        Costs ~2 s once, so callers do it before bulk work only; inference-only, any input length.
        """
        example = torch.zeros(1, 1, N_MELS, 101, device=next(self.parameters()).device)
        with torch.no_grad():
            traced = torch.jit.trace(self.features.eval(), example)
            self.features = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
        return self

    def fold_batchnorm(self) -> MobileNetTagger:
        """Fold each BatchNorm into its conv for inference (about 10% faster on CPU); not for training."""
        for module in self.modules():
            if isinstance(module, ConvBNAct) and isinstance(module[1], nn.BatchNorm2d):
                conv, bn = module[0], module[1]
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                                  conv.padding, groups=conv.groups, bias=True)
                with torch.no_grad():
                    fused.weight.copy_(conv.weight * scale[:, None, None, None])
                    fused.bias.copy_(bn.bias - bn.running_mean * scale)
                module[0], module[1] = fused, nn.Identity()
        return self

    @classmethod
    def from_checkpoint(cls, path: str, width: float | None = None) -> MobileNetTagger:
        """Load a published state dict strictly: every key must match, or the architecture is wrong."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        if width is None:
            width = _infer_width(state)
        model = cls(width=width, num_classes=state["classifier.5.bias"].shape[0])
        model.load_state_dict(state, strict=True)
        return model.eval()


def _infer_width(state: dict[str, Tensor]) -> float:
    """Recover the width multiplier from the first conv's channel count (16 * width, rounded to 8)."""
    first = state["features.0.0.weight"].shape[0]
    hidden = state["classifier.2.weight"].shape[0]
    for width in sorted(WIDTHS.values()):
        if make_divisible(16 * width) == first and make_divisible(1280 * width) == hidden:
            return width
    raise ValueError(f"checkpoint has an unknown EfficientAT width (first conv {first} channels)")


def receptive_frames(seconds: float) -> int:
    """Number of log-mel frames for a duration, as the centred STFT produces them."""
    return math.floor(seconds * SAMPLE_RATE / HOP_LENGTH) + 1
