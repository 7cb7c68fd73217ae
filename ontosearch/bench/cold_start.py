"""Section 2: from an archive on disk to the first query answered through the auth proxy.

The phases are the task's: restore (checksum, safe unpack, catalogue check, atomic move), Chroma
started and answering its heartbeat, the proxy answering the heartbeat, the first authenticated
query answered. Timed with the same parts `serve` and the Fargate task use. The archive was just
written, so it is in the page cache: a real disk or S3 download adds its read time (estimated
separately below).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ontosearch.archive import available_compressions, create_archive, directory_bytes, extract_archive
from ontosearch.constants import HEARTBEAT_PATH

# Assumptions of the Fargate estimate, each stated in the output next to its use.
FARGATE_ASSUMPTIONS = {
    "task_provisioning_s": 20.0,  # RunTask to PENDING->image pull start (ENI attach, capacity)
    "image_pull_mb_per_s": 60.0,  # ECR in-region pull, layers decompressed in parallel
    "images_mb": {"chroma": 220.0, "nginx": 70.0, "ontosearch (restore)": 150.0},  # compressed sizes
    "s3_download_mb_per_s": 90.0,  # single-stream GetObject inside a region on a 1-4 vCPU task
    "fargate_cpu_slowdown": 1.3,  # Graviton vCPU vs this machine's core for gunzip + tar
}


def time_cold_start(
    snapshot_dir: str | Path, collection: str, query: np.ndarray, workdir: str | Path
) -> dict[str, Any]:
    """Seconds from nothing running to the first query answered through the proxy, by phase."""
    from ontosearch.bench.load import HttpPath
    from ontosearch.chroma_process import ChromaServer, wait_for_http
    from ontosearch.proxy import NginxProxy, generate_token
    from ontosearch.restore import restore_from_dir

    into = Path(workdir) / "data"
    read_token, admin_token = generate_token(), generate_token()
    marks: dict[str, float] = {}
    t0 = time.perf_counter()
    restore_from_dir(snapshot_dir, into, log=lambda _m: None)
    marks["restored_verified"] = time.perf_counter() - t0
    server = ChromaServer(into).start(timeout=120)
    try:
        marks["chroma_heartbeat"] = time.perf_counter() - t0
        with NginxProxy(server.port, read_token, admin_token) as proxy:
            wait_for_http(proxy.url + HEARTBEAT_PATH, 30, what="proxy heartbeat")
            marks["proxy_healthy"] = time.perf_counter() - t0
            path = HttpPath(proxy.url, collection, token=read_token)
            ids = path.query_ids(query[None, :])
            marks["first_query"] = time.perf_counter() - t0
            second = time.perf_counter()
            path.query_ids(query[None, :])
            marks["second_query_ms"] = (time.perf_counter() - second) * 1000.0
            if not ids or not ids[0]:
                raise RuntimeError(f"the first query against {collection} returned no results")
    finally:
        server.stop()
    phases = {
        "restore_s": marks["restored_verified"],
        "chroma_start_s": marks["chroma_heartbeat"] - marks["restored_verified"],
        "proxy_start_s": marks["proxy_healthy"] - marks["chroma_heartbeat"],
        "first_query_s": marks["first_query"] - marks["proxy_healthy"],
    }
    return {"total_s": marks["first_query"], "phases": phases, "second_query_ms": marks["second_query_ms"]}


# xz packs at about 1 MB/s on one of these cores: above this size it would dominate the run.
SLOW_COMPRESSION_LIMIT_MB = 120.0


def compression_table(
    persist_dir: str | Path, compressions: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Archive size against the persist directory, and pack/unpack seconds, per compression choice."""
    persist_bytes = directory_bytes(persist_dir)
    rows: list[dict[str, Any]] = []
    for compression in compressions or available_compressions():
        if compression == "xz" and persist_bytes / 1e6 > SLOW_COMPRESSION_LIMIT_MB:
            rows.append(
                {
                    "compression": compression,
                    "persist_mb": persist_bytes / 1e6,
                    "archive_mb": None,
                    "ratio": None,
                    "pack_s": None,
                    "unpack_s": None,
                    "note": f"skipped: more than {SLOW_COMPRESSION_LIMIT_MB:.0f} MB takes minutes",
                }
            )
            continue
        with tempfile.TemporaryDirectory(prefix="ontosearch-bench-z-") as scratch:
            archive = Path(scratch) / f"persist.tar.{compression}"
            t0 = time.perf_counter()
            _sha, size = create_archive(persist_dir, archive, compression)
            pack = time.perf_counter() - t0
            out = Path(scratch) / "out"
            out.mkdir()
            t0 = time.perf_counter()
            extract_archive(archive, compression, out)
            unpack = time.perf_counter() - t0
        rows.append(
            {
                "compression": compression,
                "persist_mb": persist_bytes / 1e6,
                "archive_mb": size / 1e6,
                "ratio": size / persist_bytes,
                "pack_s": pack,
                "unpack_s": unpack,
            }
        )
    return rows


def fargate_estimate(
    archive_mb: float, local: dict[str, Any], assumptions: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Cold start of one Fargate task from the measured local phases and stated bandwidths."""
    a = dict(FARGATE_ASSUMPTIONS, **(assumptions or {}))
    image_mb = sum(a["images_mb"].values())
    pull = image_mb / a["image_pull_mb_per_s"]
    download = archive_mb / a["s3_download_mb_per_s"]
    restore = local["phases"]["restore_s"] * a["fargate_cpu_slowdown"]
    start = (
        local["phases"]["chroma_start_s"]
        + local["phases"]["proxy_start_s"]
        + local["phases"]["first_query_s"]
    ) * a["fargate_cpu_slowdown"]
    total = a["task_provisioning_s"] + pull + download + restore + start
    arithmetic = (
        f"{a['task_provisioning_s']:.0f} s provisioning"
        f" + {image_mb:.0f} MB images / {a['image_pull_mb_per_s']:.0f} MB/s = {pull:.1f} s pull"
        f" + {archive_mb:.1f} MB archive / {a['s3_download_mb_per_s']:.0f} MB/s"
        f" = {download:.1f} s S3 download"
        f" + {local['phases']['restore_s']:.2f} s restore x {a['fargate_cpu_slowdown']} = {restore:.1f} s"
        f" + chroma/proxy/first query {start:.1f} s"
        f" = {total:.0f} s"
    )
    return {"total_s": total, "arithmetic": arithmetic, "assumptions": a}


def time_serve(snapshot_dir: str | Path, collection: str, query: np.ndarray) -> dict[str, Any]:
    """The same cold start through `serve`'s LocalTask: restore, chroma, proxy, a query per collection."""
    from ontosearch.bench.load import HttpPath
    from ontosearch.proxy import generate_token
    from ontosearch.serve import LocalTask

    read_token = generate_token()
    t0 = time.perf_counter()
    with LocalTask(snapshot=snapshot_dir, read_token=read_token, admin_token=generate_token()) as task:
        ready = time.perf_counter() - t0
        HttpPath(task.url, collection, token=read_token).query_ids(query[None, :])
        first = time.perf_counter() - t0
    return {"ready_s": ready, "first_query_s": first}
