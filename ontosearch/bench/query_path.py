"""Section 1: the same queries down four paths, one dataset at a time.

Paths: the auth proxy of the local task replica (nginx with the task's config in front of `chroma
run`), `chroma run` directly, the in-process `PersistentClient`, and exact numpy search (the floor
and the recall reference). The in-process client runs in a child process while no server has the
directory open; the two HTTP paths are measured alternately at each concurrency so that load from
other processes on the machine hits both alike.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ontosearch.bench.child import run_in_child
from ontosearch.bench.load import (
    TOP_K,
    ExactPath,
    HttpPath,
    LoadResult,
    closed_loop,
    merge,
    query_body,
    recall_at_k,
    timed_batches,
)

PROXY = "proxy"
DIRECT = "direct"
IN_PROCESS = "in-process"
EXACT = "exact"
PATHS = (PROXY, DIRECT, IN_PROCESS, EXACT)


# Slices per HTTP path and concurrency. One second of load from another process used to land in
# one path's half and move the ratio by 0.1 at one client; short alternating slices spread it.
INTERLEAVED_SLICES = 6


def interleaved(names: Sequence[str], slices: int) -> list[str]:
    """Order of the slices: A B, B A, A B, ... so that neither path always goes first.

    Every path gets `slices` slices, each adjacent pair holds both paths, and a linear drift in the
    machine's speed cancels out over each pair of rounds.
    """
    order: list[str] = []
    for round_index in range(slices):
        order += list(names) if round_index % 2 == 0 else list(reversed(names))
    return order


@dataclass
class QuerySettings:
    concurrencies: tuple[int, ...] = (1, 2, 4, 8)
    duration: float = 4.0
    batch: int = 256
    batch_repeats: int = 5
    recall_queries: int = 200


@dataclass
class Dataset:
    """A persist directory with one collection and the queries to send it."""

    name: str
    persist_dir: Path
    collection: str
    queries: np.ndarray
    vectors: np.ndarray | None = None  # for exact search; read from the collection when None
    ids: list[str] | None = None
    notes: dict[str, Any] = field(default_factory=dict)


def _in_process(
    persist_dir: str,
    collection_name: str,
    queries_path: str,
    concurrencies: Sequence[int],
    duration: float,
    batch: int,
    repeats: int,
    dump_dir: str | None,
) -> dict[str, Any]:
    """Child-process body: the embedded client's numbers (and, when asked, the stored vectors)."""
    import chromadb

    client = chromadb.PersistentClient(path=persist_dir)
    collection = client.get_collection(collection_name)
    queries = np.load(queries_path)
    out: dict[str, Any] = {"runs": [], "latencies": {}}
    if dump_dir is not None:
        count = collection.count()
        ids: list[str] = []
        vectors = []
        step = 5000
        for offset in range(0, count, step):
            got = collection.get(include=["embeddings"], limit=step, offset=offset)
            ids += got["ids"]
            vectors.append(np.asarray(got["embeddings"], dtype=np.float32))
        np.save(Path(dump_dir) / "vectors.npy", np.concatenate(vectors))
        Path(dump_dir, "ids.json").write_text(json.dumps(ids))

    def make() -> Any:
        return lambda i: collection.query(
            query_embeddings=queries[i : i + 1], n_results=TOP_K, include=["distances"]
        )

    for concurrency in concurrencies:
        result = closed_loop(IN_PROCESS, make, len(queries), concurrency, duration)
        out["runs"].append(result.summary())
        out["latencies"][concurrency] = result.latencies_ms
    out["batched"] = timed_batches(
        lambda chunk: collection.query(query_embeddings=chunk, n_results=TOP_K, include=["distances"]),
        queries,
        batch,
        repeats,
    )
    return out


def measure(dataset: Dataset, settings: QuerySettings, log: Any = print) -> dict[str, Any]:
    """All four paths for one dataset: load runs, batched per-label cost, recall@10."""
    from ontosearch.proxy import generate_token
    from ontosearch.serve import LocalTask

    runs: list[dict[str, Any]] = []
    latencies: dict[str, dict[int, list[float]]] = {p: {} for p in PATHS}
    batched: dict[str, dict[str, float]] = {}
    queries = np.ascontiguousarray(dataset.queries, dtype=np.float32)

    with tempfile.TemporaryDirectory(prefix="ontosearch-bench-q-") as scratch:
        queries_path = str(Path(scratch) / "queries.npy")
        np.save(queries_path, queries)
        dump_dir = scratch if dataset.vectors is None else None
        log(f"  {dataset.name}: in-process client (child process)")
        child, _seconds, _peak = run_in_child(
            _in_process,
            str(dataset.persist_dir),
            dataset.collection,
            queries_path,
            tuple(settings.concurrencies),
            settings.duration,
            settings.batch,
            settings.batch_repeats,
            dump_dir,
        )
        runs += child["runs"]
        latencies[IN_PROCESS] = {int(k): v for k, v in child["latencies"].items()}
        batched[IN_PROCESS] = child["batched"]
        if dataset.vectors is None:
            dataset.vectors = np.load(Path(scratch) / "vectors.npy")
            dataset.ids = json.loads(Path(scratch, "ids.json").read_text())

    assert dataset.vectors is not None and dataset.ids is not None
    exact = ExactPath(dataset.vectors, dataset.ids)
    read_token, admin_token = generate_token(), generate_token()
    bodies = [query_body(q[None, :]) for q in queries]
    # The local replica of the Fargate task (`serve`): chroma run on loopback behind nginx with the
    # task's config. The direct path talks to the very same chroma process.
    with LocalTask(persist_dir=dataset.persist_dir, read_token=read_token, admin_token=admin_token) as task:
        server = task.chroma
        assert server is not None
        direct = HttpPath(server.url, dataset.collection)
        proxied = HttpPath(task.url, dataset.collection, token=read_token)
        http_paths = {DIRECT: direct, PROXY: proxied}
        for concurrency in settings.concurrencies:
            log(f"  {dataset.name}: direct and proxy x{concurrency}, {INTERLEAVED_SLICES} slices each")
            parts: dict[str, list[LoadResult]] = {DIRECT: [], PROXY: []}
            for name in interleaved((DIRECT, PROXY), INTERLEAVED_SLICES):
                parts[name].append(
                    closed_loop(
                        name,
                        http_paths[name].client_factory(bodies),
                        len(queries),
                        concurrency,
                        settings.duration / INTERLEAVED_SLICES,
                    )
                )
            for name, halves in parts.items():
                result = merge(halves)
                runs.append(result.summary())
                latencies[name][concurrency] = result.latencies_ms
        for name, path in ((DIRECT, direct), (PROXY, proxied)):
            batched[name] = timed_batches(
                path.query_batch, queries, settings.batch, settings.batch_repeats, prepare=query_body
            )
        n_recall = min(settings.recall_queries, len(queries))
        found: list[list[str]] = []
        for start in range(0, n_recall, 100):
            found += proxied.query_ids(queries[start : min(n_recall, start + 100)])
        server_rss_mb = _rss_mb(server.process.pid if server.process else None)

    log(f"  {dataset.name}: exact numpy")
    with _one_blas_thread():
        # One BLAS thread per client: concurrency is the only parallelism, as on the other paths.
        for concurrency in settings.concurrencies:
            result = closed_loop(
                EXACT, exact.client_factory(queries), len(queries), concurrency, settings.duration
            )
            runs.append(result.summary())
            latencies[EXACT][concurrency] = result.latencies_ms
    batched[EXACT] = timed_batches(exact.top, queries, settings.batch, settings.batch_repeats)
    truth = exact.query_ids(queries[:n_recall])
    return {
        "dataset": dataset.name,
        "collection": dataset.collection,
        "vectors": int(dataset.vectors.shape[0]),
        "dimensions": int(dataset.vectors.shape[1]),
        "queries": int(len(queries)),
        "runs": runs,
        "batched": batched,
        "recall_at_10": recall_at_k(found, truth),
        "recall_queries": n_recall,
        "chroma_rss_mb": server_rss_mb,
        "notes": dataset.notes,
        "_latencies": latencies,  # dropped from the JSON, used by the plots
    }


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: without it BLAS threads compete with the client threads
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def run_result(results: dict[str, Any], path: str, concurrency: int) -> dict[str, Any] | None:
    for run in results["runs"]:
        if run["path"] == path and run["concurrency"] == concurrency:
            return run
    return None


__all__ = ["Dataset", "QuerySettings", "measure", "run_result", "LoadResult", "PATHS"]
