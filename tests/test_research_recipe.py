"""The DCASE recipe end to end on synthetic audio: the YAMLs' values, caption cleaning, devices and
precision, whole-clip training with init_from and a stage-2 distillation run, checkpoints that load with
no hub, a clean `evaluate --json`, the submission format and the GPU check's CPU mode."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from clotho_fixtures import make_clotho_tree, tiny_text_model

from audiofind.models.dual_encoder import DualEncoderConfig, clean_caption
from audiofind.research import distributed
from audiofind.research.train_config import TrainConfig, load_config

REPO = Path(__file__).resolve().parents[1]
TINY_PASST = {
    "embed_dim": 32,
    "depth": 1,
    "num_heads": 2,
    "input_tdim": 1000,
    "s_patchout_t": 15,
    "s_patchout_f": 2,
}


@pytest.fixture(autouse=True)
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_baseline_yaml_carries_the_baseline_values():
    cfg = load_config(REPO / "configs/dcase2025_baseline.yaml")
    m, o = cfg.model, cfg.model.audio_options
    assert (o["freqm"], o["timem"], o["s_patchout_t"], o["s_patchout_f"]) == (0, 0, 15, 2)
    assert (m.text_dropout, m.clean_text, m.clip_s, m.window_s, m.segment_weighting) == (
        0.2,
        "baseline",
        30,
        10,
        "count",
    )
    assert (m.embed_dim, m.temperature, m.max_text_length, m.text_pooling) == (1024, 0.05, 32, "cls")
    assert (cfg.precision, cfg.seed, cfg.epochs, cfg.score_checkpoint, cfg.loss.positive_average) == (
        "fp16",
        13,
        20,
        "last",
        "pair",
    )
    assert (cfg.optim.lr, cfg.optim.decay_epochs, cfg.data.items, cfg.data.batch_size) == (
        2e-5,
        15,
        "captions",
        64,
    )
    stage2 = load_config(REPO / "configs/dcase2025_stage2.yaml")
    assert (stage2.loss.contrastive_weight, stage2.loss.distill_weight, stage2.loss.distill_temperature) == (
        0,
        1,
        0.05,
    )
    assert stage2.init_from and stage2.loss.teachers
    assert [s["kind"] for s in load_config(REPO / "configs/dcase2025_stage1_all.yaml").data.sources] == [
        "clotho",
        "audiocaps",
        "wavcaps",
    ]


def test_caption_cleaning_deletes_punctuation_as_the_baseline():
    assert clean_caption("A door-bell rings, twice!", mode="baseline") == "a doorbell rings twice"
    assert clean_caption("  A door-bell  rings. ", True) == "a door bell rings"
    assert clean_caption("Keep It", mode="none") == "Keep It"
    assert DualEncoderConfig.from_dict({"clean_text": True}).clean_text == "normalise"  # old checkpoints
    with pytest.raises(ValueError, match="clean_text"):
        DualEncoderConfig(clean_text="strip")


def test_cuda_without_cuda_is_said_plainly(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: False)
    with pytest.raises(ValueError, match="CPU-only build"):
        distributed.setup_runtime(TrainConfig(device="cuda"))
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="nvidia-smi"):
        distributed.setup_runtime(TrainConfig(device="cuda"))


@pytest.mark.parametrize(("capability", "expected"), [((7, 5), torch.float16), ((8, 0), torch.bfloat16)])
def test_auto_precision_uses_fp16_before_ampere(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert distributed.choose_precision("auto", torch.device("cuda", 0)) == expected
    assert distributed.choose_precision("auto", torch.device("cpu")) is None
    assert distributed.choose_precision("fp16", torch.device("cuda", 0)) == torch.float16


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("clotho")
    tree = make_clotho_tree(
        root,
        4,
        splits=("development", "evaluation"),
        seconds=(3.0, 14.0),
        include=("FREEZER_DOOR_OPEN_CLOSE.wav",),
    )
    return tree


def _config(tree, tmp: Path, run: str, **extra) -> dict:
    config = {
        "model": {
            "audio_backbone": "passt",
            "audio_options": TINY_PASST,
            "text_backbone": str(tiny_text_model(tmp / "text")),
            "text_pooling": "cls",
            "text_dropout": 0.2,
            "embed_dim": 16,
            "clip_s": 15.0,
            "window_s": 5.0,
            "hop_s": 5.0,
            "clean_text": "baseline",
            "max_text_length": 32,
        },
        "loss": {"positive_average": "pair"},
        "data": {
            "clotho_root": str(tree.root),
            "val_split": "development",
            "items": "captions",
            "batch_size": 5,
            "num_workers": 0,
            "audio_cache": str(tmp / "cache"),
        },
        "optim": {"lr": 1e-3, "warmup_epochs": 0.5},
        "run_dir": str(tmp / run),
        "epochs": 1,
        "log_every": 0,
        "pretrained": False,
    }
    for key, value in extra.items():
        section, _, name = key.partition("__")
        if name:
            config.setdefault(section, {})[name] = value
        else:
            config[key] = value
    return config


@pytest.mark.slow
def test_whole_clip_training_init_from_and_stage_two(tree, tmp_path):
    from audiofind.models.dual_encoder import read_checkpoint
    from audiofind.research.train import train

    stage1 = train(_config(tree, tmp_path, "stage1", score_checkpoint="last"))
    assert stage1.name == "last.pt"
    sources = json.loads((tmp_path / "stage1" / "sources.json").read_text())
    assert sources[0]["clips"] == 3 and sources[0]["excluded"] == ["FREEZER_DOOR_OPEN_CLOSE.wav (137692)"]
    payload = read_checkpoint(stage1)
    assert payload["meta"]["sources"][0]["excluded"] and "tokenizer_config.json" in payload["text_files"]

    stage2_cfg = _config(
        tree,
        tmp_path,
        "stage2",
        init_from=str(stage1),
        loss__contrastive_weight=0.0,
        loss__distill_weight=1.0,
        loss__teachers=[str(stage1)],
        optim__lr=0.0,
    )
    stage2 = train(stage2_cfg)
    row = next(csv.DictReader((tmp_path / "stage2" / "metrics.csv").read_text().splitlines()))
    assert float(row["train_loss"]) == pytest.approx(float(row["distill"]), rel=1e-5)  # contrastive weight 0
    assert float(row["distill"]) >= 0 and float(row["contrastive"]) > 0
    # lr 0: the stage-2 weights are exactly the stage-1 weights it was initialised from
    before, after = payload["state_dict"], read_checkpoint(stage2)["state_dict"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert read_checkpoint(stage2)["meta"]["init_from"] == str(stage1)
    with pytest.raises(FileNotFoundError, match="init_from"):
        train(_config(tree, tmp_path, "stage3", init_from=str(tmp_path / "nope.pt")))

    # the checkpoint rebuilds with no hub and no text folder: it carries its tokenizer and config
    ckpt = torch.load(stage1, map_location="cpu", weights_only=True)
    ckpt["config"]["text_backbone"] = "roberta-large"  # a hub name that cannot be fetched here
    torch.save(ckpt, tmp_path / "moved.pt")
    from audiofind.models.dual_encoder import DualEncoderModel

    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        model = DualEncoderModel.load(tmp_path / "moved.pt")
    finally:
        del os.environ["HF_HUB_OFFLINE"]
    assert model.encode_text(["a door-bell"]).shape == (1, 16)

    # evaluate --json prints only JSON; predict writes the organisers' format (header cell "index")
    from typer.testing import CliRunner

    from audiofind.cli import evaluate as cli_eval

    runner = CliRunner()
    done = runner.invoke(
        cli_eval.app, ["evaluate", "--model", str(stage1), "--clotho-root", str(tree.root), "--json", "-q"]
    )
    assert done.exit_code == 0, done.output[-2000:]
    assert set(json.loads(done.stdout)) == {"single_positive", "multi_positive"}
    out = tmp_path / "scores.csv"
    done = runner.invoke(
        cli_eval.app,
        ["predict", "--model", str(stage1), "--clotho-root", str(tree.root), "--out", str(out), "-q"],
    )
    assert done.exit_code == 0, done.output[-2000:]
    rows = list(csv.reader(out.read_text(encoding="utf-8").splitlines()))
    assert rows[0] == ["index", *tree.files("evaluation")] and len(rows[1]) == 1 + len(
        tree.files("evaluation")
    )


@pytest.mark.slow
def test_gpu_check_runs_tiny_on_the_cpu(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="2", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu-check.sh"), "--tiny", "--work", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (
        "gpu-check train fp32" in done.stdout
        and "clips/s" in done.stdout
        and "gpu-check passed" in done.stdout
    )
    assert (tmp_path / "scores.csv").read_text().startswith("index,")


def test_pair_averaged_loss_is_the_baselines_mean_over_positive_pairs():
    from audiofind.research.losses import ContrastiveLoss, LossConfig

    gen = torch.Generator().manual_seed(3)
    audio = torch.nn.functional.normalize(torch.randn(4, 8, generator=gen), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(4, 8, generator=gen), dim=-1)
    ids = torch.tensor([0, 0, 1, 2])
    c = audio @ text.T / 0.05  # the baseline: C = A T^T / tau, I = same file
    same = ids[:, None] == ids[None, :]
    expected = -0.5 * (c.log_softmax(0)[same].mean() + c.log_softmax(1)[same].mean())
    got = ContrastiveLoss(LossConfig(positive_average="pair"))(audio, text, ids, torch.tensor(20.0))["loss"]
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    row = ContrastiveLoss(LossConfig(positive_average="row"))(audio, text, ids, torch.tensor(20.0))["loss"]
    assert row.item() != pytest.approx(expected.item(), rel=1e-5)  # rows with 2 positives weigh differently
