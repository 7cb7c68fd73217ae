"""`python -m ontosearch embedder-bundle`: an embedder's ONNX export, shipped ready to run.

The Lambda image answers queries with onnxruntime and the `tokenizers` library only: torch and
transformers are several hundred MB and seconds of import that a cold start would pay. So the
image's build stage (which has torch) exports each embedder once into a *bundle*, a directory of

- `model.onnx`      the encoder's last hidden state (dynamic batch and token axes);
- `tokenizer.json`  the model's own tokenizer, read by `tokenizers`;
- `bundle.json`     name, pooling, dimensions, token limit, and the torch vectors of the probe
                    texts, so any later machine can check its onnxruntime against torch without
                    torch (`check`, run by the image's runtime stage on the target platform).

`get_embedder(name)` uses the bundle named `name` under `$ONTOSEARCH_EMBEDDER_BUNDLES` before any
other source. Loading one imports numpy, onnxruntime and tokenizers, nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ontosearch import embedders as emb

BUNDLE_FORMAT = 1
BUNDLE_FILE = "bundle.json"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"


class BundleError(emb.EmbedderError):
    """A bundle is missing, incomplete or disagrees with torch; the message says what to rebuild."""


def bundle_slug(name: str) -> str:
    """Directory name of an embedder's bundle (an embedder name may be a path or a hub id)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name).strip("._") or "embedder"


def bundles_root() -> Path | None:
    value = os.environ.get(emb.ENV_EMBEDDER_BUNDLES, "").strip()
    return Path(value).expanduser() if value else None


def find_bundle(name: str, root: Path | None = None) -> Path | None:
    """The bundle directory of embedder `name` under `root` (default: the env setting), if any."""
    root = root if root is not None else bundles_root()
    if root is None:
        return None
    path = root / bundle_slug(name)
    meta = path / BUNDLE_FILE
    if not meta.is_file():
        return None
    if json.loads(meta.read_text()).get("name") != name:
        return None
    return path


def bundled_names(root: Path | None = None) -> list[str]:
    """Names of the embedders with a bundle under `root` (default: the env setting), sorted."""
    root = root if root is not None else bundles_root()
    if root is None or not root.is_dir():
        return []
    names = []
    for meta in root.glob(f"*/{BUNDLE_FILE}"):
        try:
            names.append(str(json.loads(meta.read_text())["name"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(names)


def read_meta(path: Path) -> dict[str, Any]:
    meta_path = path / BUNDLE_FILE
    missing = [n for n in (BUNDLE_FILE, MODEL_FILE, TOKENIZER_FILE) if not (path / n).is_file()]
    if missing:
        raise BundleError(f"embedder bundle {path} lacks {', '.join(missing)}; export it again with "
                          "`python -m ontosearch embedder-bundle export`")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"embedder bundle {path} has format {meta.get('format')!r}, this ontosearch reads "
                          f"format {BUNDLE_FORMAT}; export it again with this version")
    return meta


def load_bundle(path: Path) -> emb.OnnxEmbedder:
    """The embedder stored in a bundle, run by onnxruntime (no torch, no transformers)."""
    meta = read_meta(path)
    return emb.OnnxEmbedder(meta["name"], path, path / MODEL_FILE, meta["pooling"], int(meta["dimensions"]),
                            int(meta["max_length"]))


def _gap(reference: np.ndarray, vectors: np.ndarray) -> float:
    """Largest cosine distance between matching unit rows."""
    return float(1.0 - np.min(np.sum(reference * vectors, axis=1)))


def export_bundle(name: str | None, root: Path) -> Path:
    """Export embedder `name` (default: the default embedder) from torch into `root/<slug>`.

    The export is checked against torch on the probe texts before it replaces an earlier bundle;
    it is written to a temporary sibling first, so a failed export leaves nothing half-written.
    The int8 embedder (`constants.INT8_EMBEDDER`) is the checked float32 export quantized here; its
    reference vectors are its own on this machine (integer sums are the same on every CPU, see
    `embedders.INT8_QUANTIZATION`), and its cosine gap to torch is recorded beside them.
    """
    name = name or emb.constants.DEFAULT_EMBEDDER
    model_dir, pooling, max_length = emb.model_source(name)
    if not (model_dir / TOKENIZER_FILE).is_file():
        raise BundleError(f"{model_dir} has no {TOKENIZER_FILE}; an ONNX bundle reads its tokenizer with the "
                          "`tokenizers` library only. Save the model's fast tokenizer there first")
    quantized = name == emb.constants.INT8_EMBEDDER
    root.mkdir(parents=True, exist_ok=True)
    target = root / bundle_slug(name)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
    try:
        exported = work / ("float32.onnx" if quantized else MODEL_FILE)
        emb.export_onnx(model_dir, exported)
        shutil.copyfile(model_dir / TOKENIZER_FILE, work / TOKENIZER_FILE)
        reference = emb.TorchEmbedder(name, model_dir, pooling, max_length)
        fast = emb.OnnxEmbedder(name, work, exported, pooling, reference.dimensions, max_length)
        probes = list(emb.PROBE_TEXTS)
        expected = reference.embed(probes)
        gap = _gap(expected, fast.embed(probes))
        if gap > emb.ONNX_MAX_COSINE_GAP:
            raise BundleError(f"the ONNX export of {name} differs from torch by {gap:.2e} cosine "
                              f"(limit {emb.ONNX_MAX_COSINE_GAP:.0e}); it is not used")
        extra: dict[str, Any] = {}
        if quantized:
            emb.quantize_int8(exported, work / MODEL_FILE)
            exported.unlink()
            int8 = emb.OnnxEmbedder(name, work, work / MODEL_FILE, pooling, reference.dimensions, max_length)
            torch_vectors, expected = expected, int8.embed(probes)
            extra = {"quantization": emb.INT8_QUANTIZATION,
                     "cosine_gap_to_torch": _gap(torch_vectors, expected)}
        import onnxruntime

        meta = {
            "format": BUNDLE_FORMAT,
            "name": name,
            "pooling": pooling,
            "dimensions": reference.dimensions,
            "max_length": max_length,
            "weights_sha256": emb.file_digest(emb.weights_file(model_dir)),
            "exported_with": {"onnxruntime": onnxruntime.__version__},
            "max_cosine_gap": gap,
            "probes": probes,
            # float32 values written as exact decimal floats, so a check elsewhere compares like with like
            "reference": [[float(x) for x in row] for row in expected],
            **extra,
        }
        (work / BUNDLE_FILE).write_text(json.dumps(meta))
        for child in work.iterdir():
            os.chmod(child, 0o644)  # an image's files are read by the function's unprivileged user
        os.chmod(work, 0o755)
        if target.exists():
            shutil.rmtree(target)
        os.replace(work, target)
    finally:
        if work.exists():
            shutil.rmtree(work)
    return target


def check_bundle(path: Path) -> float:
    """Embed the probe texts with this machine's onnxruntime and compare with the stored reference
    vectors: torch's, or for the int8 embedder its own on the machine that exported it.

    Returns the largest cosine gap; raises BundleError past `ONNX_MAX_COSINE_GAP`. Needs no torch.
    """
    meta = read_meta(path)
    embedder = load_bundle(path)
    vectors = embedder.embed(list(meta["probes"]))
    reference = np.asarray(meta["reference"], dtype=np.float32)
    if vectors.shape != reference.shape:
        raise BundleError(f"embedder bundle {path} gives {vectors.shape[1]}-d vectors but stores "
                          f"{reference.shape[1]}-d references; export it again")
    gap = _gap(reference, vectors)
    if gap > emb.ONNX_MAX_COSINE_GAP:
        raise BundleError(f"on this machine the bundle of {meta['name']} differs from its reference vectors "
                          f"by {gap:.2e} cosine (limit {emb.ONNX_MAX_COSINE_GAP:.0e}); export it with this "
                          "onnxruntime")
    return gap


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ontosearch embedder-bundle",
        description="Export an embedder to an ONNX bundle (needs torch), or check one (needs onnxruntime).")
    sub = parser.add_subparsers(dest="action", required=True)
    export = sub.add_parser("export", help="export from torch and verify against it")
    export.add_argument("--embedder", default=None, help="embedder name (default: the default embedder)")
    export.add_argument("--into", required=True, type=Path, help="bundles directory")
    check = sub.add_parser("check", help="verify every bundle under a directory on this machine")
    check.add_argument("--into", required=True, type=Path, help="bundles directory")
    args = parser.parse_args(argv)
    try:
        if args.action == "export":
            path = export_bundle(args.embedder, args.into)
            meta = read_meta(path)
            print(f"exported {meta['name']} -> {path} (max cosine gap to torch {meta['max_cosine_gap']:.1e})")
            return 0
        bundles = sorted(p.parent for p in args.into.glob(f"*/{BUNDLE_FILE}"))
        if not bundles:
            print(f"embedder-bundle: no bundles under {args.into}", file=sys.stderr)
            return 1
        for path in bundles:
            print(f"checked {path}: max cosine gap to its reference vectors {check_bundle(path):.1e}")
        return 0
    except emb.EmbedderError as exc:
        print(f"embedder-bundle: {exc}", file=sys.stderr)
        return 1
