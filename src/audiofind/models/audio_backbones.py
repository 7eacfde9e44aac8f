"""Audio backbones for the dual encoder: EfficientAT, PaSST and CLAP's audio tower behind one interface.

Each takes 32 kHz waveforms and returns frame features (B, C, T) plus AudioSet logits where it has them;
`build_audio_backbone` picks one by name."""

from __future__ import annotations

import contextlib
import io
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
    """PaSST (Koutini et al., 2022) from the optional `hear21passt` package.

    Options: `tokens` "cls" (default: one frame, the mean of the class and distillation tokens, the
    embedding PaSST was trained to produce) or "patches" (the patch tokens, for attention pooling); every
    other option (fstride, tstride, input_tdim, s_patchout_t, s_patchout_f, ...) goes to get_model_passt.
    """

    def __init__(
        self,
        arch: str = "passt_s_swa_p16_128_ap476",
        pretrained: bool = True,
        options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        try:
            from hear21passt.base import AugmentMelSTFT, get_model_passt
        except ImportError as err:
            raise ImportError(
                "the PaSST backbone needs the optional package hear21passt: pip install hear21passt"
            ) from err
        options = dict(options or {})
        self.tokens = options.pop("tokens", "cls")
        if self.tokens not in ("cls", "patches"):
            raise ValueError(f"PaSST option tokens must be 'cls' or 'patches', not {self.tokens!r}")
        # hear21passt prints the whole network while building it
        with contextlib.redirect_stdout(io.StringIO()):
            self.mel = AugmentMelSTFT(
                n_mels=128,
                sr=SAMPLE_RATE,
                win_length=800,
                hopsize=320,
                n_fft=1024,
                freqm=48,
                timem=192,
                htk=False,
                fmin=0.0,
                fmax=None,
                norm=1,
                fmin_aug_range=10,
                fmax_aug_range=2000,
            )
            self.net = get_model_passt(arch=arch, pretrained=pretrained, **options)
        for head in (self.net.head, getattr(self.net, "head_dist", None)):
            if head is not None:
                head.requires_grad_(False)
        self.dim = int(self.net.embed_dim)
        self._tokens: Tensor | None = None
        self.net.norm.register_forward_hook(self._keep_tokens)

    def _keep_tokens(self, module: nn.Module, args: Any, output: Tensor) -> None:
        self._tokens = output

    def head_parameters(self) -> list[nn.Parameter]:
        heads = [self.net.head, getattr(self.net, "head_dist", None)]
        return [p for h in heads if h is not None for p in h.parameters()]

    def forward(self, wave: Tensor) -> tuple[Tensor, Tensor | None]:
        with torch.autocast(wave.device.type, enabled=False):
            spec = self.mel(wave.float()).unsqueeze(1)
        self.net(spec)
        tokens, self._tokens = self._tokens, None  # (B, special + patches, C) after the final norm
        assert tokens is not None
        n_special = int(getattr(self.net, "num_tokens", 1))
        if self.tokens == "cls":
            return tokens[:, :n_special].mean(dim=1, keepdim=True).transpose(1, 2), None
        return tokens[:, n_special:].transpose(1, 2), None


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
        return PaSSTBackbone(arg or "passt_s_swa_p16_128_ap476", pretrained, options)
    if kind == "clap" and arg:
        return ClapBackbone(arg, pretrained)
    raise ValueError(
        f"unknown audio backbone {name!r}: use one of {', '.join(sorted(WIDTHS))}, 'passt[:arch]' "
        "or 'clap:<Hugging Face name or folder>'"
    )
