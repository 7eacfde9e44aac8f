"""Audio backbones for the dual encoder: EfficientAT, PaSST and CLAP's audio tower behind one interface.

Each takes 32 kHz waveforms and returns frame features (B, C, T) plus AudioSet logits where it has them;
`build_audio_backbone` picks one by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..assets import ASSETS, resolve_asset
from ..audio import SAMPLE_RATE
from .encoders.efficientat import WIDTHS, MobileNetTagger

# ---------------------------------------------------------------- audio backbones


class AudioBackbone(nn.Module):
    """Waveform (B, samples) at 32 kHz -> frames (B, C, T), plus AudioSet logits where the model has them."""

    dim: int

    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters kept frozen for good (a tagging head used only for display)."""
        return []


def efficientat_asset(name: str) -> str:
    """The asset file of an EfficientAT width, e.g. "mn04" -> "mn04_as_mAP_432.pt"."""
    matches = sorted(a for a in ASSETS if a.startswith(f"{name}_as_mAP_") and a.endswith(".pt"))
    if name not in WIDTHS or not matches:
        raise ValueError(f"unknown EfficientAT model {name!r}; known: {', '.join(sorted(WIDTHS))}")
    return matches[0]


class EfficientATBackbone(AudioBackbone):
    """EfficientAT MobileNetV3; its AudioSet head stays frozen and only provides tags."""

    def __init__(self, name: str, pretrained: bool = True) -> None:
        super().__init__()
        if pretrained:
            self.tagger = MobileNetTagger.from_checkpoint(str(resolve_asset(efficientat_asset(name))))
        else:
            efficientat_asset(name)  # validates the name
            self.tagger = MobileNetTagger(WIDTHS[name])
        self.tagger.classifier.requires_grad_(False)
        self.dim = self.tagger.embed_dim

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.tagger.classifier.parameters())

    def forward(self, wave: Tensor) -> tuple[Tensor, Tensor | None]:
        with torch.autocast(wave.device.type, enabled=False):  # log-mels lose too much in half precision
            mel = self.tagger.front_end(wave.float())
        out = self.tagger.forward_features(mel)
        return out.frames, out.logits


class PaSSTBackbone(AudioBackbone):
    """PaSST (Koutini et al., 2022), built in (`encoders.passt`); official weights from the asset folder.

    Options: `tokens` "cls" (default: one frame, the mean of the class and distillation tokens, the
    embedding PaSST was trained to produce) or "patches" (the patch tokens, for attention pooling); the
    network's fstride, tstride, input_tdim, s_patchout_t, s_patchout_f, u_patchout (and embed_dim, depth,
    num_heads for small test networks); the front end's freqm, timem (SpecAugment mask widths; the DCASE
    baseline uses 0) and fmin_aug_range, fmax_aug_range (mel-edge jitter while training).
    """

    _FRONT_END = ("freqm", "timem", "fmin_aug_range", "fmax_aug_range")
    _NET = ("fstride", "tstride", "input_tdim", "s_patchout_t", "s_patchout_f", "u_patchout", "embed_dim",
            "depth", "num_heads")

    def __init__(
        self,
        arch: str = "passt_s_p16_s16_128_ap468",
        pretrained: bool = True,
        options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        from .encoders.passt import ARCHS, PaSST, PaSSTMel, load_passt_weights

        if arch not in ARCHS:
            raise ValueError(f"unknown PaSST arch {arch!r}; known: {', '.join(sorted(ARCHS))}")
        options = dict(options or {})
        self.tokens = options.pop("tokens", "cls")
        if self.tokens not in ("cls", "patches"):
            raise ValueError(f"PaSST option tokens must be 'cls' or 'patches', not {self.tokens!r}")
        unknown = sorted(set(options) - set(self._FRONT_END) - set(self._NET))
        if unknown:
            raise ValueError(f"unknown PaSST option(s) {', '.join(unknown)}; known: tokens, "
                             f"{', '.join(self._NET + self._FRONT_END)}")
        stride = ARCHS[arch][2]
        net_options = {"fstride": stride, "tstride": stride}
        net_options.update({k: options[k] for k in self._NET if k in options})
        if pretrained and (net_options["fstride"], net_options["tstride"]) != (stride, stride):
            raise ValueError(f"{arch} was trained with patch stride {stride}; set fstride/tstride so")
        weights = resolve_asset(ARCHS[arch][0]) if pretrained else None  # fail before building 86 M weights
        self.mel = PaSSTMel(**{k: options[k] for k in self._FRONT_END if k in options})
        self.net = PaSST(**net_options)
        if weights is not None:
            load_passt_weights(self.net, str(weights))
        for head in (self.net.head, self.net.head_dist):
            head.requires_grad_(False)
        self.dim = int(self.net.embed_dim)

    def head_parameters(self) -> list[nn.Parameter]:
        return [*self.net.head.parameters(), *self.net.head_dist.parameters()]

    def forward(self, wave: Tensor) -> tuple[Tensor, Tensor | None]:
        with torch.autocast(wave.device.type, enabled=False):
            spec = self.mel(wave.float()).unsqueeze(1)
        tokens = self.net.tokens(spec)  # (B, 2 + patches, C) after the final norm
        logits, features = self.net.classify(tokens)
        if self.tokens == "cls":
            return features.unsqueeze(-1), logits
        return tokens[:, 2:].transpose(1, 2), logits


class ClapBackbone(AudioBackbone):
    """The audio tower (HTSAT) of a Hugging Face CLAP model, fed 48 kHz log-mels by its own extractor."""

    def __init__(self, source: str, pretrained: bool = True) -> None:
        super().__init__()
        from transformers import ClapAudioConfig, ClapAudioModel, ClapFeatureExtractor

        local = Path(source).expanduser()
        source = str(local) if local.exists() else source
        kwargs = {"local_files_only": True} if local.exists() else {}
        self.features = ClapFeatureExtractor.from_pretrained(source, **kwargs)
        if pretrained:
            self.net = ClapAudioModel.from_pretrained(source, **kwargs)
        else:
            self.net = ClapAudioModel(ClapAudioConfig.from_pretrained(source, **kwargs))
        self.dim = int(self.net.config.hidden_size)

    def forward(self, wave: Tensor) -> tuple[Tensor, Tensor | None]:
        import soxr

        rate = self.features.sampling_rate
        waves = [soxr.resample(w, SAMPLE_RATE, rate) for w in wave.detach().float().cpu().numpy()]
        # an unfused model takes one mel channel; "fusion" would stack four
        truncation = "fusion" if getattr(self.net.config, "enable_fusion", False) else "rand_trunc"
        inputs = self.features(waves, sampling_rate=rate, truncation=truncation, return_tensors="pt")
        kwargs = {"input_features": inputs["input_features"].to(wave.device)}
        if "is_longer" in inputs:
            kwargs["is_longer"] = inputs["is_longer"].to(wave.device)
        hidden = self.net(**kwargs).last_hidden_state  # (B, C, freq bins, time)
        return hidden.mean(dim=2), None


def build_audio_backbone(
    name: str, pretrained: bool = True, options: dict[str, Any] | None = None
) -> AudioBackbone:
    """Audio backbone from its config name (and backbone-specific options)."""
    kind, _, arg = name.partition(":")
    if kind != "passt" and options:
        raise ValueError(f"audio_options are only understood by the PaSST backbone, not {name!r}")
    if kind in WIDTHS:
        return EfficientATBackbone(kind, pretrained)
    if kind == "passt":
        return PaSSTBackbone(arg or "passt_s_p16_s16_128_ap468", pretrained, options)
    if kind == "clap" and arg:
        return ClapBackbone(arg, pretrained)
    raise ValueError(
        f"unknown audio backbone {name!r}: use one of {', '.join(sorted(WIDTHS))}, 'passt[:arch]' "
        "or 'clap:<Hugging Face name or folder>'"
    )
