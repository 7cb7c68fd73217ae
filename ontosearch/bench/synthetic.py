"""The seed-scale synthetic collection: 65,000 x 768 cosine vectors with structure like real embeddings.

Uniform random 768-d vectors are the worst case for any nearest-neighbour index and unlike text
embeddings, whose neighbourhoods live in a few dozen effective dimensions. So the vectors are drawn
from a 48-dimensional latent space mapped into 768 dimensions plus isotropic noise, and queries are
stored vectors moved by noise (a label written differently from the term it should find). The data
is deterministic for a seed, so runs compare.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from ontosearch.bench.child import run_in_child
from ontosearch.indexing import HNSW_METADATA

COLLECTION = "synthetic_768"
LATENT_DIMENSIONS = 48
NOISE = 0.35
QUERY_NOISE = 0.5


def make_vectors(n: int, dimensions: int = 768, seed: int = 0) -> np.ndarray:
    """`n` L2-normalised float32 vectors with a low-dimensional structure."""
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((LATENT_DIMENSIONS, dimensions), dtype=np.float32)
    out = np.empty((n, dimensions), dtype=np.float32)
    step = 8192
    for start in range(0, n, step):
        m = min(step, n - start)
        latent = rng.standard_normal((m, LATENT_DIMENSIONS), dtype=np.float32)
        block = latent @ mixing
        block += NOISE * np.sqrt(LATENT_DIMENSIONS) * rng.standard_normal((m, dimensions), dtype=np.float32)
        out[start : start + m] = block
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def make_queries(vectors: np.ndarray, n: int, seed: int = 1) -> np.ndarray:
    """`n` queries near stored vectors (not equal to them), L2-normalised."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(vectors), size=n, replace=len(vectors) < n)
    noise = rng.standard_normal((n, vectors.shape[1]), dtype=np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    queries = vectors[picks] + QUERY_NOISE * noise
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return queries.astype(np.float32)


def ids(n: int) -> list[str]:
    return [f"v{i}" for i in range(n)]


def _fill(persist_dir: str, vectors_path: str, name: str, metadata: dict[str, Any]) -> float:
    """Child-process body: write the collection and exit, so Chroma flushes everything to disk."""
    import chromadb

    vectors = np.load(vectors_path)
    started = time.perf_counter()
    client = chromadb.PersistentClient(path=persist_dir)
    collection = client.create_collection(name=name, metadata=metadata, embedding_function=None)
    step = int(client.get_max_batch_size())
    all_ids = ids(len(vectors))
    for start in range(0, len(vectors), step):
        collection.add(ids=all_ids[start : start + step], embeddings=vectors[start : start + step])
    count = collection.count()
    if count != len(vectors):
        raise RuntimeError(f"synthetic collection holds {count} vectors, expected {len(vectors)}")
    return time.perf_counter() - started


def build_persist_dir(
    persist_dir: str | Path,
    vectors: np.ndarray,
    name: str = COLLECTION,
    metadata: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Fill a fresh persist directory with `vectors` in a child process.

    A child process because the writing client must be gone before anyone archives or serves the
    directory (ARCHITECTURE.md section 2: the HNSW index reaches disk on flush, not on every add).
    Returns the seconds spent adding and the child's peak RSS.
    """
    persist_dir = Path(persist_dir)
    persist_dir.mkdir(parents=True, exist_ok=True)
    vectors_path = persist_dir.parent / f".{persist_dir.name}.vectors.npy"
    np.save(vectors_path, np.ascontiguousarray(vectors, dtype=np.float32))
    try:
        seconds, _wall, peak = run_in_child(
            _fill, str(persist_dir), str(vectors_path), name, dict(metadata or HNSW_METADATA)
        )
    finally:
        vectors_path.unlink(missing_ok=True)
    return {"build_s": float(seconds), "build_peak_rss_mb": peak}


def cached_persist_dir(
    vectors: np.ndarray, cache_root: str | Path, metadata: dict[str, Any], log: Any = print
) -> tuple[Path, dict[str, Any]]:
    """The persist directory for these vectors and HNSW settings, built once and kept in `cache_root`.

    Building 65,000 x 768 with construction_ef=200 takes minutes on two cores; the vectors are
    deterministic, so a directory built for the same size and settings holds the same data. A build
    lands under a temporary name and is renamed when complete, so a half-built one is never reused.
    """
    n, d = vectors.shape
    settings = "-".join(f"{k.split(':', 1)[1]}{v}" for k, v in sorted(metadata.items()))
    persist = Path(cache_root) / f"synthetic-{n}x{d}-{settings}"
    if (persist / "chroma.sqlite3").exists():
        return persist, {"cached": True}
    staging = persist.with_name(persist.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    log(f"building {n:,} x {d} synthetic collection in {persist} (kept for later runs)")
    build = build_persist_dir(staging, vectors, metadata=metadata)
    staging.rename(persist)
    build["cached"] = False
    return persist, build
