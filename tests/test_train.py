"""Training: loss, batch sampler, configs, backbones, whole runs (in-process, DDP, resume after a kill)."""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from clotho_fixtures import make_clotho_tree

from audiofind.research.losses import (
    ContrastiveLoss,
    LossConfig,
    NeighbourBatchSampler,
    TeacherBank,
    _extra_negatives,
    distillation_loss,
    positive_mask,
)
from audiofind.research.optim import warmup_cosine
from audiofind.research.train_config import load_config
from audiofind.research.train_data import augment_caption, crop_or_pad

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a busy 2-core machine more threads spin against each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


# ---------------------------------------------------------------- loss


def test_targets_come_from_clip_ids():
    ids = torch.tensor([3, 3, 7])
    assert positive_mask(ids, ids).tolist() == [
        [True, True, False],
        [True, True, False],
        [False, False, True],
    ]


def test_contrastive_loss_hand_checked():
    eye = torch.eye(2)
    one = torch.tensor(1.0)
    # distinct clips: each row is softmax([1, 0]) with the positive first: log(1 + e^-1)
    plain = ContrastiveLoss()(eye, eye, torch.tensor([0, 1]), one)["loss"]
    assert plain.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    # one clip twice: both columns are positives, targets (0.5, 0.5): log(e + 1) - 1/2
    multi = ContrastiveLoss()(eye, eye, torch.tensor([0, 0]), one)["loss"]
    assert multi.item() == pytest.approx(math.log(math.e + 1) - 0.5, abs=1e-6)
    single = ContrastiveLoss(LossConfig(multi_positive=False))(eye, eye, torch.tensor([0, 0]), one)["loss"]
    assert single.item() == pytest.approx(plain.item(), abs=1e-6)  # diagonal only, as in CLIP


def test_contrastive_loss_is_symmetric_and_low_when_aligned():
    gen = torch.Generator().manual_seed(0)
    audio, text = _unit(torch.randn(6, 8, generator=gen)), _unit(torch.randn(6, 8, generator=gen))
    ids, scale = torch.tensor([0, 0, 1, 2, 2, 3]), torch.tensor(20.0)
    loss = ContrastiveLoss()
    assert loss(audio, text, ids, scale)["loss"].item() == pytest.approx(
        loss(text, audio, ids, scale)["loss"].item()
    )
    assert (
        loss(audio, audio, torch.arange(6), scale)["loss"] < loss(audio, text, torch.arange(6), scale)["loss"]
    )


def test_distillation_is_zero_when_student_matches_teacher():
    gen = torch.Generator().manual_seed(1)
    audio, text = _unit(torch.randn(5, 8, generator=gen)), _unit(torch.randn(5, 8, generator=gen))
    config = LossConfig(distill_weight=1.0, distill_temperature=0.05)
    scale = torch.tensor(1 / 0.05)
    same = ContrastiveLoss(config)(audio, text, torch.arange(5), scale, teacher=text @ audio.T)
    assert same["distill"].item() == pytest.approx(0.0, abs=1e-5)
    other = ContrastiveLoss(config)(audio, text, torch.arange(5), scale, teacher=torch.eye(5))
    assert other["distill"].item() > 0.01
    assert other["loss"].item() == pytest.approx(
        other["contrastive"].item() + other["distill"].item(), rel=1e-5
    )
    logits = torch.randn(4, 4, generator=gen)
    assert distillation_loss(logits, logits).item() == pytest.approx(0.0, abs=1e-6)


def test_queue_adds_mined_negatives_without_false_ones():
    query, bank = _unit(torch.tensor([[1.0, 0.0]])), _unit(torch.tensor([[1.0, 0.0], [1.0, 0.2], [0.0, 1.0]]))
    hard = _extra_negatives(
        query, torch.tensor([0]), bank, torch.tensor([0, 1, 2]), torch.tensor(1.0), keep=1
    )
    assert hard.shape == (1, 1)  # the same-clip entry 0 is masked, entry 1 is the hardest negative left
    assert hard.item() == pytest.approx(float(query[0] @ bank[1]), abs=1e-6)
    loss = ContrastiveLoss(LossConfig(queue_size=4, mined_negatives=2))
    gen = torch.Generator().manual_seed(2)
    a, t = _unit(torch.randn(3, 8, generator=gen)), _unit(torch.randn(3, 8, generator=gen))
    same = torch.tensor([5, 5, 5])  # three captions of one clip: every pair is a positive
    first = loss(a, t, same, torch.tensor(10.0))["loss"]
    second = loss(a, t, same, torch.tensor(10.0))["loss"]  # the queue holds that clip only: all masked
    assert second.item() == pytest.approx(first.item(), abs=1e-5)
    third = loss(a, t, same + 1, torch.tensor(10.0))["loss"]  # another clip: queued entries are negatives
    assert third.item() > first.item()


def test_teacher_bank_averages_teachers(tmp_path):
    audio = [torch.eye(3), -torch.eye(3)]
    text = [torch.eye(3)[[0, 0, 1]], torch.eye(3)[[0, 0, 1]]]
    bank = TeacherBank(audio, text, key="k")
    bank.save(tmp_path / "t.pt")
    loaded = TeacherBank.load(tmp_path / "t.pt")
    assert loaded.key == "k"
    assert loaded.similarities(torch.tensor([0, 2]), torch.tensor([0, 1])).abs().sum().item() == 0.0


class _Towers(torch.nn.Module):
    """Two linear towers standing in for the dual encoder."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.t = torch.nn.Linear(4, 3), torch.nn.Linear(5, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _unit(self.a(x)), _unit(self.t(y))


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    return torch.randn(4, 4, generator=gen), torch.randn(4, 5, generator=gen), torch.tensor([0, 1, 1, 2])


def _gather_worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from audiofind.research.losses import gather_no_grad, gather_with_grad

    # a client of the store the parent owns (listening before the ranks start): no port to race for
    store = dist.TCPStore("127.0.0.1", port, is_master=False)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=2)
    torch.manual_seed(0)
    model = DistributedDataParallel(_Towers())
    x, y, ids = (t[2 * rank : 2 * rank + 2] for t in _batch())
    audio, text = model(x, y)
    loss = ContrastiveLoss()(
        gather_with_grad(audio), gather_with_grad(text), gather_no_grad(ids), torch.tensor(10.0)
    )["loss"]
    loss.backward()
    if rank == 0:
        torch.save({n: p.grad for n, p in model.module.named_parameters()}, out)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_gathered_loss_under_ddp_matches_one_big_batch(tmp_path):
    """Two ranks with half a batch each get the gradient of the loss over the whole batch."""
    import torch.multiprocessing as mp

    # the rendezvous store listens on a port the kernel picked, held by this process until both ranks are
    # done (picking a free port and letting it go before the ranks bound it raced with other processes)
    store = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    try:
        mp.spawn(_gather_worker, args=(store.port, str(tmp_path / "grads.pt")), nprocs=2)
    finally:
        del store
    torch.manual_seed(0)
    model = _Towers()
    x, y, ids = _batch()
    ContrastiveLoss()(*model(x, y), ids, torch.tensor(10.0))["loss"].backward()
    ddp_grads = torch.load(tmp_path / "grads.pt", weights_only=True)
    for name, p in model.named_parameters():
        assert torch.allclose(ddp_grads[name], p.grad, atol=1e-6), name


# ---------------------------------------------------------------- hard batches


def _two_clusters() -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = np.repeat(np.eye(8)[:2], 4, axis=0)  # clips 0-3 near e0, clips 4-7 near e1
    return (centres + 0.05 * rng.standard_normal(centres.shape)).astype(np.float32)


def test_neighbour_batches_group_nearest_clips():
    sampler = NeighbourBatchSampler(list(range(8)), batch_size=4, group_size=4, k=7, seed=3)
    random_batches = list(sampler)
    assert sorted(i for b in random_batches for i in b) == list(range(8))  # before update: random, complete
    sampler.update(_two_clusters())
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 2
        assert sorted(map(sorted, batches)) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_neighbour_batches_split_across_ranks():
    ranks = [
        NeighbourBatchSampler(list(range(8)), 2, group_size=4, k=7, num_replicas=2, rank=r) for r in (0, 1)
    ]
    for s in ranks:
        s.update(_two_clusters())
    per_rank = [list(s) for s in ranks]
    assert [len(b) for b in per_rank] == [2, 2]
    for step in range(2):
        global_batch = per_rank[0][step] + per_rank[1][step]
        assert not set(per_rank[0][step]) & set(per_rank[1][step])
        assert sorted(global_batch) in ([0, 1, 2, 3], [4, 5, 6, 7])


def test_neighbour_batches_with_several_captions_per_clip():
    items = [c for c in range(4) for _ in range(5)]  # 4 clips x 5 captions
    sampler = NeighbourBatchSampler(items, batch_size=5, group_size=2, k=3)
    vectors = np.eye(4, dtype=np.float32)
    vectors[0] = np.nan  # a clip not seen last epoch gets no neighbours
    sampler.update(vectors)
    batches = list(sampler)
    assert len(batches) == 4 and sorted(i for b in batches for i in b) == list(range(20))


# ---------------------------------------------------------------- config, schedule, augmentation


def test_configs_parse_with_overrides():
    cfg = load_config(
        REPO / "configs/clotho_mn04_minilm.yaml", ["optim.lr=1e-4", "data.batch_size=8", "epochs=3"]
    )
    assert cfg.optim.lr == pytest.approx(1e-4) and isinstance(cfg.optim.lr, float)
    assert (cfg.data.batch_size, cfg.epochs, cfg.model.audio_backbone) == (8, 3, "mn04")
    base = load_config(REPO / "configs/dcase2025_baseline.yaml")
    assert base.model.audio_backbone.startswith("passt") and base.model.text_backbone == "roberta-large"
    assert (base.model.temperature, base.data.batch_size, base.optim.lr) == (0.05, 64, pytest.approx(2e-5))
    assert (base.optim.warmup_epochs, base.precision) == (1, "fp16")  # Lightning's "16-mixed"
    with pytest.raises(ValueError, match="optim.lrr"):
        load_config(None, ["optim.lrr=1"])
    with pytest.raises(ValueError, match="key=value"):
        load_config(None, ["epochs"])


def test_warmup_then_cosine():
    f = warmup_cosine(warmup_steps=4, decay_steps=10, floor=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(14) == pytest.approx(0.1) and f(100) == pytest.approx(0.1)


def test_caption_and_audio_augmentation():
    gen = torch.Generator().manual_seed(0)
    assert augment_caption("a dog barks", gen, 0.0, 0.0) == "a dog barks"
    dropped = augment_caption("one two three four five six", gen, 0.5, 0.0).split()
    assert 1 <= len(dropped) < 6
    assert sorted(augment_caption("a b c", gen, 0.0, 1.0).split()) == ["a", "b", "c"]
    assert augment_caption("word", gen, 0.99, 0.0) == "word"
    wave = np.arange(10, dtype=np.float32)
    assert crop_or_pad(wave, 4, random_offset=False).tolist() == [0, 1, 2, 3]
    assert crop_or_pad(wave, 12, random_offset=True).tolist()[-2:] == [0, 1]  # short clips repeat
    assert len(crop_or_pad(wave, 5, random_offset=True)) == 5


# ---------------------------------------------------------------- backbones


def test_clap_backbone_from_a_local_folder(tmp_path, assets_dir):
    """The CLAP path, with a tiny random HTSAT saved like a Hugging Face model folder."""
    from transformers import ClapAudioConfig, ClapAudioModel, ClapFeatureExtractor

    from audiofind.models.dual_encoder import (
        DualEncoderConfig,
        DualEncoderModel,
        build_model,
        save_checkpoint,
    )

    folder = tmp_path / "tiny-clap"
    tiny = ClapAudioConfig(
        depths=[1, 1], num_attention_heads=[2, 2], patch_embeds_hidden_size=16, hidden_size=32
    )
    ClapAudioModel(tiny).save_pretrained(folder)
    ClapFeatureExtractor().save_pretrained(folder)
    net = build_model(DualEncoderConfig(audio_backbone=f"clap:{folder}", embed_dim=16, pooling="attention"))
    assert net.encode_audio(0.1 * torch.randn(2, 40_000)).shape == (2, 16)
    model = DualEncoderModel.load(save_checkpoint(tmp_path / "clap.pt", net))
    out = model.embed_audio([np.zeros(20_000, np.float32), 0.1 * np.ones(50_000, np.float32)])
    assert out.vectors.shape == (2, 16) and out.tags == [[], []]


def test_passt_offline_without_weights_says_what_to_put_where():
    from audiofind.assets import AssetNotFoundError
    from audiofind.models.audio_backbones import build_audio_backbone

    with pytest.raises(AssetNotFoundError, match="(?s)passt-s-f128-p16-s16-ap.468.pt.*AUDIOFIND_ASSETS"):
        build_audio_backbone("passt")


def test_unknown_backbone_is_refused():
    from audiofind.models.audio_backbones import build_audio_backbone

    with pytest.raises(ValueError, match="mn04"):
        build_audio_backbone("mn99")


# ---------------------------------------------------------------- whole runs


@pytest.fixture(scope="module")
def clotho_tree(tmp_path_factory):
    """Six development clips with distinct synthetic sounds and their real Clotho captions."""
    return make_clotho_tree(tmp_path_factory.mktemp("clotho"), 6, splits=("development",))


def _run_config(root: Path, run_dir: Path, **extra) -> dict:
    """A tiny, fast run: 1.5 s windows, 32-d space, validation on the training clips."""
    config = {
        "data": {
            "clotho_root": str(root),
            "val_split": "development",
            "items": "captions",
            "batch_size": 6,
            "num_workers": 0,
        },
        "model": {"embed_dim": 32, "window_s": 1.5, "hop_s": 1.5},
        "optim": {"lr": 2e-3, "audio_lr": 1e-3, "text_lr": 2e-4, "warmup_epochs": 0.5},
        "run_dir": str(run_dir),
        "log_every": 0,
    }
    for key, value in extra.items():
        section, _, name = key.partition("__")
        if name:
            config.setdefault(section, {})[name] = value
        else:
            config[key] = value
    return config


@pytest.mark.slow
def test_train_overfits_and_checkpoint_serves(clotho_tree, assets_dir, tmp_path):
    from audiofind.audio import load_audio
    from audiofind.models import load_model
    from audiofind.research.data import load_clotho
    from audiofind.research.metrics import retrieval_metrics
    from audiofind.research.train import train

    run = tmp_path / "run"
    # the audio backbone stays frozen (its BatchNorm statistics cannot follow 40 tiny steps); MiniLM trains
    config = _run_config(clotho_tree.root, run, epochs=8, eval_every=4, freeze_audio_epochs=8)
    best = train(config)
    assert best == run / "best.pt"
    for name in ("best.pt", "last.pt", "metrics.csv", "curves.png", "config.yaml"):
        assert (run / name).is_file(), name
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 8 and rows[0].startswith("epoch,step,train_loss")
    if importlib.util.find_spec("tensorboard") is not None:
        assert any((run / "tensorboard").glob("events.out.tfevents.*"))

    model = load_model(str(best))
    assert model.model_id.startswith("dual-") and len(model.model_id) == len("dual-") + 12
    assert model.source == str(best.absolute()) and model.dim == 32 and model.sample_rate == 32_000
    clips = load_clotho(clotho_tree.root, "development")
    emb = model.embed_audio([load_audio(c.audio_path)[0] for c in clips])
    assert np.allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, atol=1e-5)
    assert len(emb.tags) == 6 and len(emb.tags[0]) == 5 and isinstance(emb.tags[0][0][0], str)
    captions = [c for clip in clips for c in clip.captions]
    queries = model.encode_text(captions)
    relevant = [[i] for i, clip in enumerate(clips) for _ in clip.captions]
    assert retrieval_metrics(queries @ emb.vectors.T, relevant)["R@1"] == 1.0

    again = train(config)  # a finished run resumes into nothing and returns the same best.pt
    assert again == best and len((run / "metrics.csv").read_text().splitlines()) == 9

    # distillation from an "ensemble" (the same checkpoint twice), teacher similarities precomputed once
    student = tmp_path / "student"
    train(
        {
            **config,
            "run_dir": str(student),
            "epochs": 1,
            "freeze_text_epochs": 1,
            "loss": {"distill_weight": 1.0, "teachers": [str(best), str(run / "last.pt")]},
        }
    )
    assert (student / "teacher.pt").is_file()
    row = next(csv.DictReader((student / "metrics.csv").read_text().splitlines()))
    assert float(row["distill"]) > 0 and float(row["train_loss"]) > float(row["contrastive"])


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    # torchrun --standalone: the agent's store is bound to port 0 and shared with the workers (no free-port
    # guess); this switch would bring the guess back, so the tests never inherit it
    env.pop("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    return env


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(clotho_tree, assets_dir, tmp_path):
    run = tmp_path / "ddp"
    config = _run_config(
        clotho_tree.root,
        run,
        epochs=2,
        freeze_audio_epochs=1,
        loss__neighbour_batches=True,
        loss__neighbour_group=2,
        data__batch_size=4,
        data__items="clips",
        model__pooling="attention",
        model__projection="mlp",
        model__learnable_temperature=True,
        optim__grad_accum=2,
    )
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(config))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "audiofind.research.train",
        str(path),
    ]
    done = subprocess.run(cmd, env=_subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "best checkpoint" in done.stdout and "2 process(es)" in done.stdout
    last = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert last["train"]["world"] == 2 and last["train"]["epoch"] == 2 and len(last["train"]["rng"]) == 2
    assert last["train"]["clip_vectors"] is not None
    assert len((run / "metrics.csv").read_text().splitlines()) == 3
    assert sorted(p.name for p in run.glob("*.pt")) == ["best.pt", "last.pt"]


@pytest.mark.slow
def test_resume_after_kill_continues(clotho_tree, assets_dir, tmp_path):
    run = tmp_path / "resume"
    config = _run_config(
        clotho_tree.root,
        run,
        epochs=3,
        freeze_text_epochs=3,
        augment__gain_db=3.0,
        augment__word_dropout=0.1,
        augment__mixup_prob=0.3,
        loss__queue_size=12,
        loss__mined_negatives=4,
    )
    path = tmp_path / "resume.yaml"
    path.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "audiofind.research.train", str(path)]
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, env=_subprocess_env(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while not (run / "last.pt").exists():
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no last.pt in time"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    saved = torch.load(run / "last.pt", map_location="cpu", weights_only=True)["train"]
    epoch, step, history = saved["epoch"], saved["step"], saved["history"]
    assert 1 <= epoch < 3, "the first run finished before it could be killed"

    done = subprocess.run(cmd, env=_subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"resuming from {run / 'last.pt'} at epoch {epoch}, step {step}" in done.stdout
    final = torch.load(run / "last.pt", map_location="cpu", weights_only=True)["train"]
    steps_per_epoch = step // epoch
    assert final["epoch"] == 3 and final["step"] == 3 * steps_per_epoch
    assert final["history"][:epoch] == history  # the killed run's epochs are kept, not redone
    assert [r["epoch"] for r in final["history"]] == [1, 2, 3]
    assert len((run / "metrics.csv").read_text().splitlines()) == 4

    # the interrupted run ends where an uninterrupted one does: weights, optimizer, RNG, queue restored
    from audiofind.research.train import train

    config["run_dir"] = str(tmp_path / "straight")
    train(config)
    straight = torch.load(tmp_path / "straight" / "last.pt", map_location="cpu", weights_only=True)["train"]
    for resumed_row, straight_row in zip(final["history"], straight["history"]):
        assert resumed_row["train_loss"] == pytest.approx(straight_row["train_loss"], rel=1e-4)
        assert resumed_row["mAP@10"] == pytest.approx(straight_row["mAP@10"], abs=1e-6)


def test_cli_command_registers_and_reports_bad_keys(tmp_path):
    import typer
    from typer.testing import CliRunner

    from audiofind.cli.train import register

    app = typer.Typer()
    register(app)

    @app.command("other")
    def other() -> None:  # a second command keeps typer from collapsing the app into `train`
        pass

    config = tmp_path / "c.yaml"
    config.write_text("epochs: 1\n")
    result = CliRunner().invoke(app, ["train", str(config), "optim.nope=1"])
    assert result.exit_code == 2 and "optim.nope" in result.output
    assert "torchrun" in CliRunner().invoke(app, ["train", "--help"]).output
