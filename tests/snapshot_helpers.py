"""Helpers for the snapshot, publish and restore tests: small real persist directories and snapshots.

The persist directories are written by a real chromadb PersistentClient in a child process (the same
close-by-exiting rule build-snapshot follows), with random unit vectors: fast, and independent of the
ontology loaders and embedders, which have their own tests.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from ontosearch.manifest import CollectionInfo, Manifest

DIMENSIONS = 16
TEST_EMBEDDER = {"name": "random-unit-test", "dimensions": DIMENSIONS, "pooling": "mean", "normalize": True}

_WRITER = r"""
import json, os, sys
os.environ["ANONYMIZED_TELEMETRY"] = "False"
import chromadb, numpy as np
path, spec = sys.argv[1], json.loads(sys.argv[2])
rng = np.random.default_rng(spec["seed"])
client = chromadb.PersistentClient(path=path)
for name, count in spec["collections"].items():
    col = client.create_collection(name, metadata={"hnsw:space": "cosine"}, embedding_function=None)
    vectors = rng.normal(size=(count, spec["dimensions"])).astype("float32")
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    for start in range(0, count, 1000):
        stop = min(count, start + 1000)
        col.add(ids=[f"T:{i:07d}" for i in range(start, stop)], embeddings=vectors[start:stop],
                documents=[f"term {i}" for i in range(start, stop)],
                metadatas=[{"label": f"term {i}", "term_id": f"T:{i:07d}"} for i in range(start, stop)])
"""


def write_persist_dir(path: Path, collections: dict[str, int], seed: int = 0,
                      dimensions: int = DIMENSIONS) -> list[CollectionInfo]:
    """Fill `path` with collections of random vectors; returns their manifest entries."""
    spec = {"collections": collections, "dimensions": dimensions, "seed": seed}
    subprocess.run([sys.executable, "-c", _WRITER, str(path), json.dumps(spec)], check=True, timeout=300)
    return [CollectionInfo(name=name, ontology=name.split("_")[0], source_version="test", terms=count,
                           records=count) for name, count in collections.items()]


def make_snapshot(work: Path, out: Path, collections: dict[str, int], seed: int = 0,
                  compression: str = "gz", verify: bool = True) -> Manifest:
    """A real snapshot directory built by build-snapshot's archiving and verification code."""
    from ontosearch.snapshot_build import snapshot_from_persist_dir

    persist = work / f"persist-{seed}"
    persist.mkdir(parents=True)
    entries = write_persist_dir(persist, collections, seed)
    manifest = snapshot_from_persist_dir(persist, out, entries, TEST_EMBEDDER, compression=compression,
                                         verify=verify, log=lambda _m: None, progress=False)
    shutil.rmtree(persist)
    return manifest


def copy_snapshot(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


SNAPSHOT_COLLECTIONS = {"cl_test": 40, "uberon_test": 1500}
