"""Processes, devices and random state of a training run: one process, or DDP under torchrun."""

from __future__ import annotations

import contextlib
import logging
import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .train_config import (
    TrainConfig,
)

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- processes and devices


@dataclass
class Runtime:
    """Who this process is (DDP rank) and what it computes on."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    amp: torch.dtype | None
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision when configured, else nothing."""
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def setup_runtime(cfg: TrainConfig) -> Runtime:
    """Join the torchrun process group when WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU) and pick the device."""
    if cfg.precision not in ("auto", "bf16", "fp16", "fp32"):
        raise ValueError(f"precision must be auto, bf16, fp16 or fp32, not {cfg.precision!r}")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {cfg.device!r}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if use_cuda:
        check_cuda(local_rank)
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
        owns = True
    return Runtime(rank, world, local_rank, device, choose_precision(cfg.precision, device), owns)


def check_cuda(local_rank: int = 0) -> None:
    """Say plainly why `device: cuda` cannot work here, instead of torch's AttributeError."""
    if not torch.backends.cuda.is_built():
        raise ValueError(
            f"device is cuda, but this torch ({torch.__version__}) is a CPU-only build: install a CUDA build "
            "of torch (https://pytorch.org/get-started/locally/), or set device=cpu / device=auto"
        )
    if not torch.cuda.is_available() or torch.cuda.device_count() <= local_rank:
        raise ValueError(
            f"device is cuda, but {torch.cuda.device_count()} CUDA device(s) are visible (needed: local rank "
            f"{local_rank}): check the driver (nvidia-smi) and CUDA_VISIBLE_DEVICES, or set device=auto"
        )


def choose_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: "auto" is bf16 on GPUs with native bf16 (compute capability 8+, Ampere on) and fp16
    with a GradScaler on older ones (a 2080 Ti would only emulate bf16); fp32 on the CPU."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "fp16":
        return torch.float16
    native_bf16 = device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8
    if precision == "bf16":
        if device.type == "cuda" and not native_bf16:
            log.warning("precision bf16 on a GPU without native bf16 (%s) is emulated and slow; use fp16",
                        torch.cuda.get_device_name(device))
        return torch.bfloat16
    return torch.bfloat16 if native_bf16 else torch.float16


def all_gather_objects(rt: Runtime, obj: Any) -> list[Any]:
    if rt.world == 1:
        return [obj]
    out: list[Any] = [None] * rt.world
    dist.all_gather_object(out, obj)
    return out


def rng_state() -> dict[str, Any]:
    """This process's random generator states as numpy arrays and plain values (safe to all_gather_object)."""
    name, keys, *rest = np.random.get_state()
    state = {
        "torch": torch.get_rng_state().numpy(),
        "python": random.getstate(),
        "numpy": (name, keys, *rest),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state().numpy()
    return state


def storable(state: dict[str, Any]) -> dict[str, Any]:
    """Arrays to tensors, so the state loads with torch.load(weights_only=True)."""
    name, keys, *rest = state["numpy"]
    out = {k: torch.from_numpy(np.array(v)) for k, v in state.items() if k in ("torch", "cuda")}
    return {**out, "python": state["python"], "numpy": (name, torch.from_numpy(np.array(keys)), *rest)}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
