"""Snapshot numbers: build time, size and peak memory; restore + open + first query time.

    .venv/bin/python bench/snapshot_numbers.py [--ontologies cl,uberon,mondo] [--embedder NAME]
        [--compression gz] [--workdir DIR] [--json OUT.json]

Builds one snapshot of the ontologies with build-snapshot's own code (indexing in a child process,
archive, verification with a fresh `chroma run`), then times what a server start does with it:
restore (checksum, safe unpack, catalogue check, atomic placement), `chroma run` until its heartbeat
answers, and the first query of each collection over HTTP. Peak memory is the largest resident set of
any child (the indexing process dominates) and of this process. Numbers depend on the machine and on
what else runs on it; the output says which machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ontosearch.constants import ONTOLOGIES  # noqa: E402


def _mib(value: int) -> float:
    return round(value / 2**20, 1)


def build(ontologies: list[str], out: Path, embedder: str | None, compression: str) -> dict:
    from ontosearch.snapshot_build import build_snapshot

    started = time.perf_counter()
    manifest = build_snapshot(ontologies, out, embedder_name=embedder, compression=compression)
    seconds = time.perf_counter() - started
    children_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    own_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "manifest": manifest,
        "build_s": round(seconds, 1),
        "archive_mib": _mib(manifest.archive.bytes),
        "persist_mib": _mib(manifest.persist_bytes),
        "compression": compression,
        "peak_rss_mib_children": round(children_peak, 1),
        "peak_rss_mib_self": round(own_peak, 1),
        "collections": [
            {"name": c.name, "ontology": c.ontology, "source_version": c.source_version, "terms": c.terms,
             "records": c.records}
            for c in manifest.collections
        ],
    }


def restore_open_query(snapshot: Path, workdir: Path, embedder_name: str | None) -> dict:
    import chromadb

    from ontosearch.chroma_process import ChromaServer
    from ontosearch.embedders import get_embedder
    from ontosearch.manifest import Manifest
    from ontosearch.restore import restore_from_dir

    manifest = Manifest.load(snapshot)
    started = time.perf_counter()
    embedder = get_embedder(embedder_name or manifest.embedder["name"])
    query = embedder.embed(["hepatocyte"])  # also warms the model, timed apart from the server path
    embedder_s = time.perf_counter() - started

    into = workdir / "restored"
    t0 = time.perf_counter()
    restore_from_dir(snapshot, into, log=lambda _m: None)
    restored = time.perf_counter()
    server = ChromaServer(into).start(timeout=300)
    try:
        heartbeat = time.perf_counter()
        client = chromadb.HttpClient(host=server.host, port=server.port)
        connected = time.perf_counter()
        first: dict[str, float] = {}
        for entry in manifest.collections:
            q0 = time.perf_counter()
            hits = client.get_collection(entry.name).query(query_embeddings=query, n_results=5)
            first[entry.name] = round((time.perf_counter() - q0) * 1000, 1)
            if not hits["ids"][0]:
                raise RuntimeError(f"the first query on {entry.name} returned nothing")
        done = time.perf_counter()
        q0 = time.perf_counter()
        client.get_collection(manifest.collections[0].name).query(query_embeddings=query, n_results=5)
        warm_ms = (time.perf_counter() - q0) * 1000
    finally:
        server.stop()
    return {
        "restore_s": round(restored - t0, 2),
        "chroma_start_s": round(heartbeat - restored, 2),
        "client_connect_s": round(connected - heartbeat, 2),
        "first_query_ms": first,
        "restore_to_first_answers_s": round(done - t0, 2),
        "warm_query_ms": round(warm_ms, 1),
        "embedder_load_s": round(embedder_s, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ontologies", default=",".join(ONTOLOGIES))
    parser.add_argument("--embedder", default=None, help="embedder name (default: the default embedder)")
    parser.add_argument("--compression", default="gz", choices=["gz", "xz", "zst"])
    parser.add_argument("--workdir", default=None, help="keep the snapshot here (default: a temp dir)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.ontologies.split(",") if n.strip()]

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="ontosearch-snapbench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    snapshot = workdir / "snapshot"
    if snapshot.exists():
        shutil.rmtree(snapshot)
    shutil.rmtree(workdir / "restored", ignore_errors=True)
    try:
        built = build(names, snapshot, args.embedder, args.compression)
        manifest = built.pop("manifest")
        opened = restore_open_query(snapshot, workdir, args.embedder)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "load_avg_1m": round(os.getloadavg()[0], 2)},
        "embedder": manifest.embedder,
        "chroma_version": manifest.chroma_version,
        "build": built,
        "restore_open_query": opened,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
