"""Options several commands share, and the checks behind them: `--device`, `--version`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

DEVICES = ("auto", "cpu", "cuda", "mps")

DEVICE_METAVAR = "auto|cpu|cuda|mps"
DEVICE_HELP = "Where the model runs; auto picks a CUDA or Apple GPU when torch sees one, else the CPU."
DeviceOpt = Annotated[str, typer.Option("--device", metavar=DEVICE_METAVAR, help=DEVICE_HELP)]
RAY_HELP = ("Hash, decode and embed on a Ray cluster: 'auto', ray://HEAD:10001, HEAD:6379 or 'local'; PATHS "
            "must be readable there at the same place. -j: its workers (default: one per CPU, or per GPU).")
RayOpt = Annotated[str | None, typer.Option("--ray", metavar="ADDRESS", help=RAY_HELP)]


def resolve_device(device: str) -> str:
    """'auto' -> the GPU torch can use, else 'cpu'; a GPU that is not there is a ValueError (one line)."""
    device = device.strip().lower()
    if device not in DEVICES:
        raise ValueError(f"--device must be one of {', '.join(DEVICES)}, not {device!r}")
    if device == "cpu":
        return device
    import torch

    cuda, mps = torch.cuda.is_available(), _mps_available(torch)
    if device == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if device == "cuda" and not cuda:
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise ValueError(f"--device cuda: torch sees no CUDA GPU here (torch {torch.__version__}, {build}); "
                         "use --device cpu or auto")
    if device == "mps" and not mps:
        raise ValueError("--device mps: torch sees no Apple GPU (MPS) here; use --device cpu or auto")
    return device


def _mps_available(torch: object) -> bool:
    backend = getattr(getattr(torch, "backends", None), "mps", None)
    return bool(backend is not None and backend.is_available())


def default_index_help() -> str:
    """The per-user index folder as --help shows it (~ for the home folder)."""
    import platformdirs

    path = str(Path(platformdirs.user_data_dir("audiofind")) / "index")
    home = str(Path.home())
    return "~" + path[len(home):] if home != os.sep and path.startswith(home + os.sep) else path
