"""The optimiser and learning-rate schedule of the training recipe."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..models.dual_encoder import DualEncoder
from .train_config import (
    OptimConfig,
)

# ---------------------------------------------------------------- optimisation


def build_optimizer(network: DualEncoder, optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW with one group per role (backbone lr vs head lr), each split into decayed and not decayed."""
    lrs = {
        "audio_backbone": optim.audio_lr or optim.lr,
        "text_backbone": optim.text_lr or optim.lr,
        "heads": optim.lr,
    }
    groups = []
    for role, params in network.parameter_groups().items():
        decay = [p for p in params if p.ndim >= 2]
        plain = [p for p in params if p.ndim < 2]
        for suffix, ps, wd in (("", decay, optim.weight_decay), ("/no_decay", plain, 0.0)):
            if ps:
                groups.append({"params": ps, "lr": lrs[role], "weight_decay": wd, "name": role + suffix})
    return torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps)  # type: ignore[arg-type]


def warmup_cosine(warmup_steps: int, decay_steps: int, floor: float = 0.0) -> Any:
    """LR multiplier per step: linear warm-up to 1, cosine down to `floor` over `decay_steps`, then flat."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, decay_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
