"""The training objective: multi-positive symmetric InfoNCE, hard negatives, ensemble distillation.

One module, `ContrastiveLoss(config)`, with the options switched on by `LossConfig`. The batch sampler
that builds hard batches and the teacher bank for distillation live here too, since they only exist to
feed this loss.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Sampler

_MASKED = -1e9  # logit for excluded pairs: finite, so 0 * log_softmax stays 0 instead of NaN


@dataclass
class LossConfig:
    """Which parts of the objective are on; with everything off it is plain CLIP-style InfoNCE."""

    multi_positive: bool = True  # every caption of the same clip in the batch counts as a positive
    gather: bool = True  # under DDP, contrast against the whole global batch, not the local one
    queue_size: int = 0  # keep this many past (audio, text) embeddings as extra negatives; 0 = off
    mined_negatives: int = (
        0  # of the queue, keep only the k most similar non-matching entries per row; 0 = all
    )
    neighbour_batches: bool = False  # compose batches from nearest neighbours (NeighbourBatchSampler)
    neighbour_group: int = 4  # items per neighbourhood inside one batch
    neighbour_k: int = 16  # neighbours kept per clip when the index is refreshed
    contrastive_weight: float = 1.0  # weight of InfoNCE on the captions' own clips (0: stage 2)
    positive_average: str = "row"  # "row": each query's positives share one unit | "pair": every positive
    #                                pair counts once over the batch (the DCASE baseline's mean over I)
    distill_weight: float = 0.0  # weight of the KL term towards teacher similarities; 0 = off
    distill_temperature: float = 0.05  # teacher similarities are divided by this before the softmax
    teachers: list[str] = field(default_factory=list)  # checkpoints whose mean similarity is the teacher


# ---------------------------------------------------------------- pieces of the objective


def positive_mask(row_ids: Tensor, col_ids: Tensor) -> Tensor:
    """(rows, cols) bool: same clip id means a positive pair."""
    return row_ids[:, None] == col_ids[None, :]


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy against a target distribution per row (uniform over that row's positives)."""
    return -(targets * logits.log_softmax(dim=-1)).sum(dim=-1).mean()


def distillation_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """KL(teacher || student) over the batch, text->audio rows and audio->text columns, averaged."""
    rows = F.kl_div(student.log_softmax(-1), teacher.log_softmax(-1), log_target=True, reduction="batchmean")
    cols = F.kl_div(
        student.T.log_softmax(-1), teacher.T.log_softmax(-1), log_target=True, reduction="batchmean"
    )
    return 0.5 * (rows + cols)


def _targets(pos: Tensor, multi_positive: bool) -> Tensor:
    """Row-normalised targets; without multi-positive only the diagonal pair is a positive."""
    if not multi_positive:
        pos = torch.eye(pos.shape[0], pos.shape[1], dtype=torch.bool, device=pos.device)
    pos = pos.float()
    return pos / pos.sum(dim=1, keepdim=True).clamp(min=1.0)


def _extra_negatives(
    query: Tensor, query_ids: Tensor, bank: Tensor, bank_ids: Tensor, scale: Tensor, keep: int
) -> Tensor:
    """Logits of queries against banked embeddings, same-clip entries masked, optionally the hardest k."""
    logits = scale * query @ bank.T
    logits = logits.masked_fill(positive_mask(query_ids, bank_ids), _MASKED)
    if 0 < keep < logits.shape[1]:
        logits = logits.topk(keep, dim=1).values
    return logits


class ContrastiveLoss(nn.Module):
    """Symmetric multi-positive InfoNCE, plus optional queued/mined negatives and teacher distillation."""

    def __init__(self, config: LossConfig | None = None) -> None:
        super().__init__()
        self.config = config or LossConfig()
        self._queue: tuple[Tensor, Tensor, Tensor] | None = None  # audio, text, ids (detached, newest last)

    def forward(
        self,
        audio: Tensor,
        text: Tensor,
        clip_ids: Tensor,
        scale: Tensor,
        teacher: Tensor | None = None,
        teacher_mask: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """audio, text: (B, d) normalised, row i of each from batch item i; clip_ids: (B,);
        teacher: (B, B) text-by-audio similarities, or None; teacher_mask: (B,) items the teacher covers."""
        cfg = self.config
        audio, text, scale = audio.float(), text.float(), scale.float()
        pos = positive_mask(clip_ids, clip_ids)
        targets = _targets(pos, cfg.multi_positive)
        text_to_audio = scale * text @ audio.T
        audio_to_text = text_to_audio.T
        t2a_targets, a2t_targets = targets, targets.T.contiguous()
        if self._queue is not None and cfg.queue_size > 0:
            q_audio, q_text, q_ids = self._queue
            extra_a = _extra_negatives(text, clip_ids, q_audio, q_ids, scale, cfg.mined_negatives)
            extra_t = _extra_negatives(audio, clip_ids, q_text, q_ids, scale, cfg.mined_negatives)
            text_to_audio = torch.cat([text_to_audio, extra_a], dim=1)
            audio_to_text = torch.cat([audio_to_text, extra_t], dim=1)
            t2a_targets = F.pad(t2a_targets, (0, extra_a.shape[1]))
            a2t_targets = F.pad(a2t_targets, (0, extra_t.shape[1]))
        if cfg.positive_average == "pair":  # mean of log p over all positive pairs, as the baseline
            n_pos = (t2a_targets > 0).sum().clamp(min=1)
            contrastive = -0.5 * (
                ((t2a_targets > 0) * text_to_audio.log_softmax(-1)).sum() / n_pos
                + ((a2t_targets > 0) * audio_to_text.log_softmax(-1)).sum() / n_pos
            )
        else:
            contrastive = 0.5 * (
                soft_cross_entropy(text_to_audio, t2a_targets)
                + soft_cross_entropy(audio_to_text, a2t_targets)
            )
        out = {"contrastive": contrastive}
        loss = cfg.contrastive_weight * contrastive
        if teacher is not None and cfg.distill_weight > 0:
            student = scale * text @ audio.T
            teacher = teacher.float() / cfg.distill_temperature
            if teacher_mask is not None:
                keep = teacher_mask.nonzero().squeeze(1)
                student, teacher = student[keep][:, keep], teacher[keep][:, keep]
            distill = distillation_loss(student, teacher) if student.shape[0] > 1 else student.new_zeros(())
            out["distill"] = distill
            loss = loss + cfg.distill_weight * distill
        out["loss"] = loss
        self._push(audio, text, clip_ids)
        return out

    @torch.no_grad()
    def _push(self, audio: Tensor, text: Tensor, ids: Tensor) -> None:
        """Remember this batch as negatives for the next ones (FIFO of `queue_size`)."""
        size = self.config.queue_size
        if size <= 0:
            return
        new = (audio.detach(), text.detach(), ids.detach())
        if self._queue is not None:
            new = tuple(torch.cat([old, n])[-size:] for old, n in zip(self._queue, new))  # type: ignore[assignment]
        self._queue = tuple(t[-size:] for t in new)  # type: ignore[assignment]

    def queue_state(self) -> list[Tensor] | None:
        """The queued negatives (audio, text, ids) on the CPU, to save with a resumable checkpoint."""
        return None if self._queue is None else [t.cpu() for t in self._queue]

    def load_queue_state(self, state: list[Tensor] | None, device: torch.device | None = None) -> None:
        self._queue = None if state is None else tuple(t.to(device) for t in state)  # type: ignore[assignment]


# ---------------------------------------------------------------- distributed gathering


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate a tensor over all ranks; gradients flow back to each rank's own slice."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def gather_no_grad(x: Tensor) -> Tensor:
    """Concatenate a tensor over all ranks (ids, indices); no autograd."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


# ---------------------------------------------------------------- hard batches


class NeighbourBatchSampler(Sampler[list[int]]):
    """Batches made of groups of nearest-neighbour clips, so in-batch negatives are hard ones.

    The neighbour index comes from `update(vectors)` (one row per clip, NaN rows for clips not yet seen),
    which the trainer calls at the end of each epoch with the embeddings it saw; until then batches are
    random. Under DDP every rank builds the same global batch order and takes its own contiguous slice.
    """

    def __init__(
        self,
        item_clips: Sequence[int],
        batch_size: int,
        group_size: int = 4,
        k: int = 16,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
    ) -> None:
        self.item_clips = np.asarray(item_clips, dtype=np.int64)
        self.batch_size, self.group_size, self.k = batch_size, max(1, group_size), k
        self.num_replicas, self.rank, self.seed = num_replicas, rank, seed
        self.epoch = 0
        self.neighbours: list[np.ndarray] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def update(self, vectors: np.ndarray) -> None:
        """Rebuild the neighbour lists from per-clip vectors (cosine similarity, in row chunks)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        seen = ~np.isnan(vectors).any(axis=1)
        unit = np.where(seen[:, None], vectors, 0.0)
        unit /= np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
        k = min(self.k, max(0, int(seen.sum()) - 1))
        neighbours: list[np.ndarray] = []
        for start in range(0, len(unit), 1024):
            sims = unit[start : start + 1024] @ unit.T
            sims[:, ~seen] = -np.inf
            rows = np.arange(start, min(start + 1024, len(unit)))
            sims[rows - start, rows] = -np.inf  # a clip is not its own neighbour
            if k == 0:
                neighbours += [np.zeros(0, np.int64)] * len(rows)
                continue
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            order = np.take_along_axis(-sims, top, axis=1).argsort(axis=1, kind="stable")
            best = np.take_along_axis(top, order, axis=1)
            neighbours += [b if seen[r] else np.zeros(0, np.int64) for r, b in zip(rows, best)]
        self.neighbours = neighbours

    def _global_order(self) -> np.ndarray:
        """All items once: random seeds, each followed by items of its nearest unused neighbour clips."""
        rng = np.random.default_rng((self.seed, self.epoch))
        seeds = rng.permutation(len(self.item_clips))
        if self.neighbours is None:
            return seeds
        by_clip: dict[int, list[int]] = {}
        for item in seeds:
            by_clip.setdefault(int(self.item_clips[item]), []).append(int(item))
        used = np.zeros(len(self.item_clips), dtype=bool)
        order: list[int] = []
        for seed in seeds:
            if used[seed]:
                continue
            group = [int(seed)]
            used[seed] = True
            by_clip[int(self.item_clips[seed])].remove(int(seed))
            for clip in self.neighbours[int(self.item_clips[seed])]:
                if len(group) >= self.group_size:
                    break
                free = by_clip.get(int(clip))
                if free:
                    item = free.pop()
                    used[item] = True
                    group.append(item)
            order += group
        return np.asarray(order, dtype=np.int64)

    def __len__(self) -> int:
        return max(1, len(self.item_clips) // (self.batch_size * self.num_replicas))

    def __iter__(self) -> Iterator[list[int]]:
        order = self._global_order()
        per_step = self.batch_size * self.num_replicas
        if len(order) < per_step:  # tiny data: repeat items so every rank gets a full batch
            order = np.resize(order, per_step)
        for b in range(len(self)):
            chunk = order[b * per_step : (b + 1) * per_step]
            yield chunk[self.rank * self.batch_size : (self.rank + 1) * self.batch_size].tolist()


# ---------------------------------------------------------------- distillation teacher


@dataclass
class TeacherBank:
    """Each teacher's vectors of all training clips and captions; a batch's teacher is the mean similarity."""

    audio: list[Tensor]  # per teacher: (n_clips, d_m) normalised
    text: list[Tensor]  # per teacher: (n_captions, d_m) normalised, captions numbered clip by clip
    key: str = ""  # what the bank was computed from, to detect a stale cache

    def similarities(self, caption_ids: Tensor, clip_ids: Tensor) -> Tensor:
        """(B, B) mean over teachers of caption_i . clip_j."""
        cap, clip = caption_ids.cpu(), clip_ids.cpu()
        sims = [t[cap].float() @ a[clip].float().T for a, t in zip(self.audio, self.text)]
        return torch.stack(sims).mean(0).to(caption_ids.device)

    def save(self, path: str | os.PathLike[str]) -> None:
        tmp = Path(path).with_name(f".{Path(path).name}.tmp")
        torch.save({"audio": self.audio, "text": self.text, "key": self.key}, tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TeacherBank:
        data = torch.load(path, map_location="cpu", weights_only=True)
        return cls(list(data["audio"]), list(data["text"]), str(data.get("key", "")))
