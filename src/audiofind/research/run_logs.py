"""What a training run leaves for people to read: metrics.csv, curves.png and TensorBoard logs."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------- logging


_COLUMNS = [
    "epoch",
    "step",
    "train_loss",
    "contrastive",
    "distill",
    "lr",
    "scale",
    "epoch_s",
    "clips_per_s",
    "R@1",
    "R@5",
    "R@10",
    "mAP@10",
    "mAP@16",
]


def write_metrics(history: list[dict[str, float]], run_dir: Path) -> None:
    """Rewrite metrics.csv from the full history, so a resumed run never duplicates rows."""
    tmp = run_dir / ".metrics.csv.tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in history:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    os.replace(tmp, run_dir / "metrics.csv")


def plot_curves(history: list[dict[str, float]], path: Path) -> None:
    """Loss, validation metrics and learning rate per epoch, as a PNG (no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(12, 3.6))
    FigureCanvasAgg(fig)
    ax_loss, ax_val, ax_lr = fig.subplots(1, 3)
    ax_loss.plot(epochs, [r["train_loss"] for r in history], marker="o", label="train loss")
    ax_loss.set_title("training loss")
    for name in ("R@1", "R@10", "mAP@10"):
        points = [(r["epoch"], r[name]) for r in history if name in r]
        if points:
            ax_val.plot(*zip(*points), marker="o", label=name)
    ax_val.set_title("validation")
    ax_lr.plot(epochs, [r["lr"] for r in history], marker="o")
    ax_lr.set_title("head learning rate (end of epoch)")
    for ax in (ax_loss, ax_val, ax_lr):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    os.replace(tmp, path)


def open_tensorboard(run_dir: Path, step: int) -> Any:
    """A SummaryWriter when tensorboard is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=step or None)
