"""Train a text-audio dual encoder on captioned clips (Clotho, or a CSV of one's own sounds).

    audiofind train CONFIG.yaml [key=value ...]                         # one process (CPU or one GPU)
    torchrun --nproc_per_node 4 -m audiofind.research.train CONFIG.yaml [...]    # DDP, one process per GPU

A run directory holds config.yaml, last.pt (everything needed to resume), best.pt (the checkpoint with the
best validation mAP@10, loadable by `audiofind.models.load_model`), metrics.csv, curves.png and tensorboard/.
Re-running the same command after a crash resumes from last.pt.

It is longer than 400 lines because `Trainer` is one loop (setup, epochs, steps, validation,
checkpointing and resume) that reads best in one piece; its helpers live in `distributed`, `optim`,
`embedding`, `run_logs`, `train_config` and `train_data`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from ..models.dual_encoder import build_model, read_checkpoint, save_checkpoint
from .audio_cache import open_cache
from .distributed import (
    Runtime,
    all_gather_objects,
    rng_state,
    seed_everything,
    set_rng_state,
    setup_runtime,
    storable,
)
from .embedding import build_teacher_bank, evaluate
from .losses import (
    ContrastiveLoss,
    NeighbourBatchSampler,
    gather_no_grad,
    gather_with_grad,
)
from .optim import build_optimizer, warmup_cosine
from .run_logs import open_tensorboard, plot_curves, write_metrics
from .sources import WeightedSourceSampler
from .train_config import (
    TrainConfig,
    as_config,
    load_config,
)
from .train_data import (
    CaptionDataset,
    collate,
    load_split,
    load_training,
    mixup,
)

log = logging.getLogger("audiofind.research.train")


# ---------------------------------------------------------------- the loop


class Trainer:
    """One run: builds everything from the config, resumes when asked, and loops over epochs."""

    def __init__(self, cfg: TrainConfig, rt: Runtime) -> None:
        self.cfg, self.rt = cfg, rt
        self.run_dir = Path(cfg.run_dir).expanduser()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        seed_everything(cfg.seed + rt.rank)
        if cfg.score_checkpoint not in ("best", "last"):
            raise ValueError(f"score_checkpoint must be 'best' or 'last', not {cfg.score_checkpoint!r}")
        self.training_data = load_training(cfg.data)
        self.train_clips = self.training_data.clips
        self.val_clips = load_split(cfg.data, "val")[: cfg.data.max_val_clips or None]
        self.cache = open_cache(cfg.data.audio_cache)
        self.dataset = CaptionDataset(self.train_clips, cfg.model.window_s, cfg.data.items, cfg.augment,
                                      cfg.model.clip_s, self.cache)
        # init_from: no pretrained download (its weights replace them); its tokenizer and config are used
        self._init = self._read_init() if cfg.init_from else None
        pretrained = cfg.pretrained and self._init is None
        text_files = (self._init or {}).get("text_files")
        self.network = build_model(cfg.model, pretrained=pretrained, text_files=text_files).to(rt.device)
        self.network.frozen_batchnorm = cfg.freeze_batchnorm
        self.loss = ContrastiveLoss(cfg.loss)
        self.loader, self.batch_sampler = self._loader()
        self.optimizer = build_optimizer(self.network, cfg.optim)
        self.accum = max(1, cfg.optim.grad_accum)
        self.steps_per_epoch = math.ceil(len(self.loader) / self.accum)
        opt = cfg.optim
        warmup = max(1, round(opt.warmup_epochs * self.steps_per_epoch)) if opt.warmup_epochs > 0 else 0
        decay = (
            self.steps_per_epoch * cfg.epochs - warmup
            if opt.decay_epochs is None
            else round(opt.decay_epochs * self.steps_per_epoch)
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(warmup, decay, opt.min_lr_ratio)
        )
        self.scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.amp == torch.float16)
        self.epoch = self.step = 0
        self.best = -math.inf
        self.history: list[dict[str, float]] = []
        self.clip_vectors: np.ndarray | None = None
        self.ddp: torch.nn.Module | None = None
        self.teacher = None
        if cfg.loss.distill_weight > 0 and cfg.loss.teachers:
            self.teacher = build_teacher_bank(
                cfg.loss.teachers, self.train_clips, rt, cfg.data, self.run_dir / "teacher.pt"
            )

    def _loader(self) -> tuple[DataLoader, Any]:
        cfg, rt = self.cfg, self.rt
        per_rank = max(1, cfg.data.batch_size // rt.world)
        if cfg.data.batch_size % rt.world:
            log.warning(
                "data.batch_size %d is not divisible by %d processes: using %d per process",
                cfg.data.batch_size,
                rt.world,
                per_rank,
            )
        kwargs: dict[str, Any] = {
            "collate_fn": collate,
            "num_workers": cfg.data.num_workers,
            "pin_memory": rt.device.type == "cuda",
        }
        sources = self.training_data.source_of
        weighted = len(self.training_data.weights) > 1 or any(w != 1 for w in self.training_data.weights)
        if weighted and cfg.loss.neighbour_batches:
            raise ValueError("loss.neighbour_batches cannot be combined with several weighted data.sources")
        if cfg.loss.neighbour_batches:
            sampler = NeighbourBatchSampler(
                self.dataset.item_clips(),
                per_rank,
                cfg.loss.neighbour_group,
                cfg.loss.neighbour_k,
                rt.world,
                rt.rank,
                cfg.seed,
            )
            return DataLoader(self.dataset, batch_sampler=sampler, **kwargs), sampler
        sampler: Any = (
            WeightedSourceSampler([sources[c] for c in self.dataset.item_clips()], self.training_data.weights,
                                  rt.world, rt.rank, cfg.seed)
            if weighted
            else DistributedSampler(self.dataset, rt.world, rt.rank, shuffle=True, seed=cfg.seed)
        )
        per_rank = min(per_rank, len(sampler))  # tiny data: one smaller batch rather than none
        return DataLoader(
            self.dataset, batch_size=per_rank, sampler=sampler, drop_last=True, **kwargs
        ), sampler

    # ---- checkpoints

    def resume(self) -> bool:
        """Load last.pt when the config asks (or allows) it; True when a run was resumed."""
        last = self.run_dir / "last.pt"
        wanted = self.cfg.resume
        if wanted is True and not last.is_file():
            raise FileNotFoundError(f"resume requested but {last} does not exist")
        if wanted is False or not last.is_file():
            return False
        payload = torch.load(last, map_location="cpu", weights_only=True)
        state = payload["train"]
        self.network.load_state_dict(payload["state_dict"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step, self.best = int(state["epoch"]), int(state["step"]), float(state["best"])
        self.history = list(state["history"])
        self.loss.load_queue_state(state.get("queue"), self.rt.device)
        if state.get("clip_vectors") is not None:
            self.clip_vectors = state["clip_vectors"].float().numpy()
            if isinstance(self.batch_sampler, NeighbourBatchSampler):
                self.batch_sampler.update(self.clip_vectors)
        rngs = state.get("rng") or []
        if len(rngs) == self.rt.world:
            set_rng_state(rngs[self.rt.rank])
        else:  # another process count: fresh, but distinct, streams
            seed_everything(self.cfg.seed + 1000 * self.epoch + self.rt.rank)
        log.info("resuming from %s at epoch %d, step %d", last, self.epoch, self.step)
        return True

    def _read_init(self) -> dict[str, Any]:
        path = Path(self.cfg.init_from or "").expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"init_from: checkpoint {path} does not exist")
        return read_checkpoint(path)

    def init_weights(self) -> None:
        """init_from: start from another run's weights (stage 2 from stage 1); fresh optimizer, schedule."""
        path, payload = Path(self.cfg.init_from or "").expanduser(), self._init or {}
        missing, unexpected = self.network.load_state_dict(payload["state_dict"], strict=False)
        if missing or unexpected:
            raise ValueError(
                f"init_from: {path} was trained with another model config: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]} (its model section: {payload['config']})"
            )
        log.info("initialised from %s (epoch %s of its run)", path, payload.get("meta", {}).get("epoch"))
        self._init = None

    def _meta(self, metrics: dict[str, float] | None) -> dict[str, Any]:
        from .. import __version__

        return {
            "epoch": self.epoch,
            "step": self.step,
            "metrics": metrics or {},
            "train_config": asdict(self.cfg),
            "audiofind_version": __version__,
            "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "train_clips": len(self.train_clips),
            "sources": self.training_data.report,
            "init_from": self.cfg.init_from,
        }

    def save(self, metrics: dict[str, float] | None, is_best: bool) -> None:
        """last.pt (resumable) every epoch; best.pt (weights only) when the selection metric improved."""
        rngs = [storable(r) for r in all_gather_objects(self.rt, rng_state())]
        if self.rt.main:
            vectors = None if self.clip_vectors is None else torch.from_numpy(self.clip_vectors).half()
            train_state = {
                "epoch": self.epoch,
                "step": self.step,
                "best": self.best,
                "history": self.history,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": rngs,
                "clip_vectors": vectors,
                "queue": self.loss.queue_state(),
                "world": self.rt.world,
            }
            if is_best:
                save_checkpoint(self.run_dir / "best.pt", self.network, self._meta(metrics))
            save_checkpoint(self.run_dir / "last.pt", self.network, self._meta(metrics), train=train_state)
        self.rt.barrier()

    # ---- epochs

    def _wrap(self) -> None:
        """(Re)wrap in DDP; needed whenever freezing changes which parameters need gradients."""
        if self.rt.world == 1:
            self.ddp = self.network
            return
        self.ddp = None
        ids = [self.rt.device.index] if self.rt.device.type == "cuda" else None
        self.ddp = DistributedDataParallel(
            self.network, device_ids=ids, find_unused_parameters=self.cfg.find_unused_parameters
        )

    def _apply_freezing(self) -> None:
        """Follow the freezing schedule; DDP is rewrapped only when the set of trained parameters changes."""
        audio = self.epoch < self.cfg.freeze_audio_epochs
        text = self.epoch < self.cfg.freeze_text_epochs
        wanted = {n for n, on in (("audio_backbone", audio), ("text_backbone", text)) if on}
        if self.ddp is not None and wanted == self.network.frozen:
            return
        log.info("epoch %d: frozen backbones: %s", self.epoch + 1, ", ".join(sorted(wanted)) or "none")
        self.network.set_frozen(audio=audio, text=text)
        self._wrap()

    def run(self) -> Path:
        cfg, rt = self.cfg, self.rt
        if rt.main:
            import yaml

            (self.run_dir / "config.yaml").write_text(
                yaml.safe_dump(asdict(cfg), sort_keys=False), encoding="utf-8"
            )
        if not self.resume() and cfg.init_from:
            self.init_weights()
        if rt.main:
            import json

            (self.run_dir / "sources.json").write_text(json.dumps(self.training_data.report, indent=2) + "\n")
        log.info(
            "%d training clips (%d items, %d steps/epoch), %d validation clips; %d process(es) on %s, "
            "precision %s",
            len(self.train_clips),
            len(self.dataset),
            self.steps_per_epoch,
            len(self.val_clips),
            rt.world,
            rt.device,
            rt.amp or "fp32",
        )
        writer = open_tensorboard(self.run_dir, self.step) if rt.main else None
        try:
            while self.epoch < cfg.epochs:
                self._apply_freezing()
                row = self.train_epoch(writer)
                self.epoch += 1
                metrics = None
                if self.val_clips and (self.epoch % cfg.eval_every == 0 or self.epoch == cfg.epochs):
                    metrics = evaluate(self.network, self.val_clips, rt, cfg.data)
                    row.update(metrics)
                score = (
                    metrics[cfg.select_metric]
                    if metrics
                    else (self.epoch if not self.val_clips else -math.inf)
                )
                is_best = score > self.best
                self.best = max(self.best, score)
                self.history.append(row)
                self.save(metrics, is_best)
                if rt.main:
                    self._report(row, writer)
        finally:
            if writer is not None:
                writer.close()
        best = self.run_dir / "best.pt"
        if cfg.score_checkpoint == "last" or not best.is_file():
            return self.run_dir / "last.pt"
        return best

    def _report(self, row: dict[str, float], writer: Any) -> None:
        write_metrics(self.history, self.run_dir)
        plot_curves(self.history, self.run_dir / "curves.png")
        shown = " ".join(f"{k} {row[k]:.4f}" for k in ("train_loss", "R@1", "R@10", "mAP@10") if k in row)
        log.info(
            "epoch %d/%d step %d: %s (%.1f s, %.1f clips/s)",
            row["epoch"],
            self.cfg.epochs,
            row["step"],
            shown,
            row["epoch_s"],
            row["clips_per_s"],
        )
        if writer is not None:
            for k in ("R@1", "R@5", "R@10", "mAP@10", "mAP@16"):
                if k in row:
                    writer.add_scalar(f"val/{k}", row[k], self.step)
            writer.add_scalar("train/epoch_loss", row["train_loss"], self.step)
            writer.flush()

    def _batches(self) -> Iterator[tuple[int, dict[str, Any]]]:
        self.batch_sampler.set_epoch(self.epoch)
        yield from enumerate(self.loader)

    def train_epoch(self, writer: Any) -> dict[str, float]:
        cfg, rt, net = self.cfg, self.rt, self.network
        model = self.ddp or net
        model.train()
        totals = {"loss": 0.0, "contrastive": 0.0, "distill": 0.0}
        seen, batches, start = 0, 0, time.perf_counter()
        if cfg.loss.neighbour_batches:
            self.clip_vectors = np.full((len(self.train_clips), cfg.model.embed_dim), np.nan, np.float32)
        n_batches = len(self.loader)
        for i, batch in self._batches():
            mixed = (
                mixup(batch, cfg.augment.mixup_prob)
                if cfg.augment.mixup_prob > 0
                else torch.zeros(len(batch["caption"]), dtype=torch.bool)
            )
            waves = batch["wave"].to(rt.device, non_blocking=True)
            durations = batch["duration"].to(rt.device) if cfg.model.clip_s is not None else None
            clip_ids = torch.where(mixed, -1, batch["clip"]).to(rt.device)
            caption_ids = batch["caption_id"].to(rt.device)
            sync = (i + 1) % self.accum == 0 or i + 1 == n_batches
            no_sync = model.no_sync() if (rt.world > 1 and not sync) else contextlib.nullcontext()
            with no_sync:
                with rt.autocast():
                    audio, text, scale = model(waves, batch["caption"], durations)
                out = self._loss(audio, text, scale, clip_ids, caption_ids)
                self.scaler.scale(out["loss"] / self.accum).backward()
            if sync:
                self._optimizer_step(out, writer)
            for k in totals:
                totals[k] += float(out[k].detach()) if k in out else 0.0
            seen += len(waves) * rt.world
            batches += 1
        elapsed = time.perf_counter() - start
        if isinstance(self.batch_sampler, NeighbourBatchSampler) and self.clip_vectors is not None:
            self.batch_sampler.update(self.clip_vectors)
        return {
            "epoch": self.epoch + 1,
            "step": self.step,
            "train_loss": totals["loss"] / max(1, batches),
            "contrastive": totals["contrastive"] / max(1, batches),
            "distill": totals["distill"] / max(1, batches),
            "lr": self.optimizer.param_groups[-1]["lr"],
            "scale": float(net.scale().detach()),
            "epoch_s": elapsed,
            "clips_per_s": seen / max(elapsed, 1e-9),
        }

    def _loss(
        self, audio: Tensor, text: Tensor, scale: Tensor, clip_ids: Tensor, caption_ids: Tensor
    ) -> dict[str, Tensor]:
        """Gather the global batch if asked, give mixed items unique ids, add the teacher; then the loss."""
        if self.cfg.loss.gather:
            audio, text = gather_with_grad(audio), gather_with_grad(text)
            clip_ids, caption_ids = gather_no_grad(clip_ids), gather_no_grad(caption_ids)
        if self.clip_vectors is not None:
            self._remember(audio, text, clip_ids)
        real = clip_ids >= 0
        ids = torch.where(real, clip_ids, -1 - torch.arange(len(clip_ids), device=clip_ids.device))
        teacher = None
        if self.teacher is not None:
            teacher = self.teacher.similarities(caption_ids.clamp(min=0), clip_ids.clamp(min=0))
        return self.loss(audio, text, ids, scale, teacher=teacher, teacher_mask=real)

    @torch.no_grad()
    def _remember(self, audio: Tensor, text: Tensor, clip_ids: Tensor) -> None:
        """Keep each clip's latest (audio + text) vector for next epoch's neighbour batches."""
        vectors = (audio.detach() + text.detach()).float()
        if not self.cfg.loss.gather:
            vectors, clip_ids = gather_no_grad(vectors), gather_no_grad(clip_ids)
        ok = clip_ids >= 0
        assert self.clip_vectors is not None
        self.clip_vectors[clip_ids[ok].cpu().numpy()] = vectors[ok].cpu().numpy()

    def _optimizer_step(self, out: dict[str, Tensor], writer: Any) -> None:
        if self.cfg.optim.clip_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        if self.rt.main and self.cfg.log_every > 0 and self.step % self.cfg.log_every == 0:
            loss, lr = float(out["loss"].detach()), self.optimizer.param_groups[-1]["lr"]
            log.info("step %d: loss %.4f lr %.3g", self.step, loss, lr)
            if writer is not None:
                writer.add_scalar("train/loss", loss, self.step)
                writer.add_scalar("train/lr", lr, self.step)
                writer.add_scalar("train/scale", float(self.network.scale().detach()), self.step)


def train(config: TrainConfig | dict[str, Any]) -> Path:
    """Run (or resume) training; returns the path of the best checkpoint (best.pt)."""
    cfg = as_config(config)
    rt = setup_runtime(cfg)
    try:
        return Trainer(cfg, rt).run()
    finally:
        if rt.owns_group:
            dist.destroy_process_group()


def run_cli(
    config: str | os.PathLike[str],
    overrides: list[str] | None = None,
    resume: bool = False,
    run_dir: str | None = None,
) -> Path:
    """What both `audiofind train` and `python -m audiofind.research.train` do."""
    extra = list(overrides or [])
    if resume:
        extra.append("resume=true")
    if run_dir:
        extra.append(f"run_dir={run_dir}")
    return train(load_config(config, extra))


def setup_logging() -> None:
    """Log lines from rank 0 only, so torchrun output stays readable."""
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        stream=sys.stdout,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m audiofind.research.train",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("config", help="YAML training config (see configs/)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr=1e-4")
    parser.add_argument("--resume", action="store_true", help="require resuming from RUN_DIR/last.pt")
    parser.add_argument("--run-dir", help="output folder (overrides run_dir)")
    args = parser.parse_args(argv)
    setup_logging()
    best = run_cli(args.config, args.overrides, args.resume, args.run_dir)
    if int(os.environ.get("RANK", "0")) == 0:
        kind = "best checkpoint" if best.name == "best.pt" else "checkpoint to score (last epoch)"
        print(f"{kind}: {best}", flush=True)


if __name__ == "__main__":
    main()
