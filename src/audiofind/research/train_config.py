"""Training-run config: YAML and key=value overrides become dataclasses, kept apart from the loop."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from ..models.dual_encoder import DualEncoderConfig
from .losses import LossConfig

__all__ = [
    "AugmentConfig",
    "DataConfig",
    "OptimConfig",
    "TrainConfig",
    "apply_overrides",
    "as_config",
    "load_config",
]


@dataclass
class DataConfig:
    """Where the captioned clips come from and how they are batched."""

    clotho_root: str | None = None  # folder with clotho_captions_<split>.csv and <split>/ audio
    train_split: str = "development"
    val_split: str | None = "validation"  # None: no validation (best.pt = latest epoch)
    train_csv: str | None = None  # instead of Clotho: CSV of audio_path,caption rows
    val_csv: str | None = None
    audio_root: str | None = None  # base folder for relative paths in the CSVs
    items: str = "clips"  # "clips": one random caption per clip per epoch; "captions": every pair once
    batch_size: int = 32  # global: split across DDP processes, so a recipe means the same on any GPU count
    num_workers: int = 2
    val_batch_size: int = 16  # windows per forward pass when embedding validation clips
    max_val_clips: int | None = None  # cap for quick checks
    # several training sources with sampling weights (see research.sources); when empty, the training
    # data is clotho_root/train_split or train_csv as above
    sources: list[dict[str, Any]] = field(default_factory=list)
    exclude: str | None = "auto"  # DCASE 2025 exclusion list: "auto" (beside Clotho, else the asset folders),
    #                               a CSV path, or "none"; applied to every training source
    audio_cache: str | None = "auto"  # decoded 32 kHz audio, decoded once per run: "auto", a folder, or null


@dataclass
class AugmentConfig:
    """Light augmentation; everything off but the random crop by default."""

    random_crop: bool = True  # crop long clips at a random offset (else from the start)
    gain_db: float = 0.0  # random gain in [-gain_db, +gain_db]
    mixup_prob: float = 0.0  # share of batch items replaced by a 50/50 mix with another item, captions joined
    word_dropout: float = 0.0  # probability of dropping each caption word
    word_swap: float = 0.0  # probability of swapping one random pair of neighbouring words


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay, stepped per optimizer step."""

    lr: float = 1e-4  # heads: pooling, projections, temperature
    audio_lr: float | None = None  # audio backbone; None = lr
    text_lr: float | None = None  # text backbone; None = lr
    weight_decay: float = 0.01  # not applied to biases and norm weights
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_epochs: float = 1.0
    decay_epochs: float | None = (
        None  # length of the cosine after warm-up (then flat at the floor); None = to the end
    )
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of each group's peak
    grad_accum: int = 1  # micro-batches per optimizer step
    clip_grad_norm: float = 0.0  # 0 = off


@dataclass
class TrainConfig:
    """A whole training run; YAML files and key=value overrides map onto these fields."""

    model: DualEncoderConfig = field(default_factory=DualEncoderConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run_dir: str = "runs/dual-encoder"
    epochs: int = 10
    freeze_audio_epochs: int = 0  # keep the audio backbone frozen (and in eval mode) for the first N epochs
    freeze_text_epochs: int = 0
    freeze_batchnorm: bool = False  # audio backbone BatchNorm in eval mode throughout (small batches)
    precision: str = "auto"  # auto (bf16 on Ampere+, else fp16 + GradScaler; CPU fp32) | bf16 | fp16 | fp32
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    seed: int = 0
    resume: Any = "auto"  # "auto": resume when run_dir has last.pt; true: require it; false: start afresh
    pretrained: bool = True  # backbones start from their pretrained weights; false: random (gpu-check)
    init_from: str | None = None  # start from this checkpoint's weights (fresh optimizer/schedule; stage 2)
    score_checkpoint: str = "best"  # which checkpoint `train` returns to score: "best" on validation, or
    #                                 "last" (the final epoch, which the DCASE baseline's numbers use)
    log_every: int = 10  # optimizer steps between log lines / TensorBoard points
    eval_every: int = 1  # epochs between validations
    select_metric: str = "mAP@10"  # validation metric that picks best.pt
    find_unused_parameters: bool = False  # DDP option, for backbones with layers outside the loss


def _from_dict(cls: type, values: dict[str, Any], where: str = "") -> Any:
    """Nested dataclass from a dict, refusing unknown keys and coercing YAML strings like 2e-5 to numbers."""
    if not isinstance(values, dict):
        raise ValueError(f"config section {where or 'root'} must be a mapping, got {values!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(
            f"unknown config key(s) {', '.join(where + k for k in unknown)}; "
            f"known in {where or 'root'}: {', '.join(sorted(known))}"
        )
    kwargs = {}
    for name, value in values.items():
        f = known[name]
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        if is_dataclass(default):
            kwargs[name] = _from_dict(type(default), value or {}, f"{where}{name}.")
        else:
            kwargs[name] = _coerce(value, str(f.type), where + name)
    return cls(**kwargs)


def _coerce(value: Any, annotation: str, key: str) -> Any:
    """Numbers given as text (PyYAML reads 2e-5 as a string) become numbers when the field wants one."""
    if not isinstance(value, str) or "str" in annotation:
        if "float" in annotation and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value
    try:
        if "float" in annotation:
            return float(value)
        if "int" in annotation:
            return int(value)
    except ValueError:
        raise ValueError(f"config key {key}: expected a number, got {value!r}") from None
    return value


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted key=value overrides (values parsed as YAML) to a nested dict."""
    import yaml

    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} is not of the form key=value (e.g. optim.lr=1e-4)")
        node = values
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part} is not a section")
        node[leaf] = yaml.safe_load(raw) if raw.strip() else None
    return values


def load_config(path: str | os.PathLike[str] | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (or none: defaults) and apply overrides."""
    import yaml

    values: dict[str, Any] = {}
    if path is not None:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    return _from_dict(TrainConfig, apply_overrides(values, list(overrides or [])))


def as_config(config: TrainConfig | dict[str, Any]) -> TrainConfig:
    return config if isinstance(config, TrainConfig) else _from_dict(TrainConfig, config)
