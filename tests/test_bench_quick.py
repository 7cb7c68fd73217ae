"""`python -m ontosearch bench --quick`: the CI smoke test of the benchmark.

Runs the real thing (chroma run, nginx with the task's proxy config, in-process client, numpy,
archive + restore, the embedder, the cost command) on a small collection and checks that every
output is produced and well-formed. It asserts nothing about speed: CI machines differ.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MARK_ENV = "ONTOSEARCH_BENCH_TEST_RUN"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _marked_processes(mark: str) -> list[str]:
    """Command names of live processes whose environment carries `mark` (inherited from the bench)."""
    found = []
    needle = f"{MARK_ENV}={mark}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append((entry / "comm").read_text().strip())
        except OSError:
            continue
    return found


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("bench-quick")
    mark = uuid.uuid4().hex
    done = subprocess.run(
        [sys.executable, "-m", "ontosearch", "bench", "--quick", "--out-dir", str(out_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, MARK_ENV: mark},
    )
    return done, out_dir, mark


@pytest.mark.slow
def test_quick_bench_exits_zero_and_prints_every_target(quick_run):
    done, out_dir, _ = quick_run
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line[:4] in ("PASS", "MISS", "n/a ")]
    assert len(lines) >= 6, done.stdout
    assert any("recall@10" in line for line in lines)
    assert f"wrote {out_dir / 'bench-quick.json'}" in done.stdout


@pytest.mark.slow
def test_quick_bench_json_holds_every_path_and_section(quick_run):
    _, out_dir, _ = quick_run
    data = json.loads((out_dir / "bench-quick.json").read_text())
    assert data["meta"]["quick"] is True and "cores" in data["meta"]["machine"]
    assert data["errors"] == {}
    (dataset,) = data["query"]
    runs = {(run["path"], run["concurrency"]) for run in dataset["runs"]}
    assert runs == {(p, c) for p in ("proxy", "direct", "in-process", "exact") for c in (1, 2, 4, 8)}
    for run in dataset["runs"]:
        assert run["requests"] > 0 and run["errors"] == 0, run
        assert 0 < run["p50_ms"] <= run["p99_ms"] <= run["max_ms"]
    assert set(dataset["batched"]) == {"proxy", "direct", "in-process", "exact"}
    assert 0.0 <= dataset["recall_at_10"] <= 1.0
    cold = data["cold_start"]
    (run,) = cold["runs"]
    assert run["total_s"] > 0 and set(run["phases"]) == {
        "restore_s",
        "chroma_start_s",
        "proxy_start_s",
        "first_query_s",
    }
    assert {row["compression"] for row in cold["compression"][run["snapshot"]]} >= {"gz"}
    assert "MB/s" in cold["fargate"][run["snapshot"]]["arithmetic"]
    alone = data["annotation"]["embedder_alone"]
    assert alone["texts_per_s"] > 0 and alone["embedder"]["dimensions"] > 0
    assert data["cost"]["always_on_monthly"] > 0 and data["cost"]["per_execution"] > 0
    statuses = {target["status"] for target in data["targets"]}
    assert statuses <= {"PASS", "MISS", "n/a"}


@pytest.mark.slow
def test_quick_bench_writes_markdown_and_png_plots(quick_run):
    _, out_dir, _ = quick_run
    text = (out_dir / "bench-quick.md").read_text()
    for heading in ("## Targets", "## Query path", "## Cold start", "## Annotation throughput", "## Cost"):
        assert heading in text
    for name in ("bench-quick-latency.png", "bench-quick-throughput.png"):
        data = (out_dir / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, name


@pytest.mark.slow
def test_quick_bench_leaves_no_process_behind(quick_run):
    _, _, mark = quick_run
    assert _marked_processes(mark) == []
