"""EmbedderPool: embedding in single-thread worker processes gives the in-process embedder's vectors
exactly, in submission order, reports the same spec, and fails with a clear error instead of hanging."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ontosearch import embedders
from ontosearch.embed_pool import EmbedderPool
from ontosearch.embedders import EmbedderError, get_embedder

REPO = Path(__file__).resolve().parents[1]
TEXTS = [
    "CD4-positive, alpha-beta T cell",
    "hepatocytes",
    "lung adenocarcinoma",
    "left ventricle of heart",
    "Tregs",
    "type II pneumocyte of the alveolus in the adult human lung",
    "x",
    "Crohn's disease",
    "hepatocytes",
    "B cell",
]


@pytest.fixture(scope="module")
def pool():
    with EmbedderPool(workers=2) as running:
        yield running


def test_pool_vectors_equal_the_in_process_embedder_bit_for_bit(pool):
    expected = get_embedder().embed(TEXTS)
    # Chunks submitted together go to whichever worker is free; results come back per ticket.
    tickets = [pool.submit(TEXTS[i:i + 3]) for i in range(0, len(TEXTS), 3)]
    got = np.concatenate([pool.result(t) for t in reversed(tickets)][::-1])
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert np.array_equal(got, expected)
    assert np.array_equal(pool.embed(TEXTS), expected)


def test_pool_reports_the_embedders_spec(pool):
    assert pool.spec() == get_embedder().spec()


def test_workers_stop_on_close_and_close_is_idempotent():
    pool = EmbedderPool(workers=1)
    assert pool.embed(["hepatocyte"]).shape == (1, get_embedder().dimensions)
    processes = list(pool._processes)
    pool.close()
    pool.close()
    assert all(not p.is_alive() for p in processes)
    with pytest.raises(EmbedderError, match="pool is closed"):
        pool.submit(["hepatocyte"])


def test_close_with_results_nobody_read_does_not_wait_for_a_timeout():
    import time

    pool = EmbedderPool(workers=1)
    pool.spec()
    pool.submit(["hepatocyte"] * 50000)  # 77 MB of vectors, more than a pipe holds, never read
    time.sleep(1)
    started = time.monotonic()
    pool.close()
    assert time.monotonic() - started < 5
    assert all(p.exitcode == 0 for p in pool._processes)


def test_an_embedder_that_cannot_load_is_a_clear_error_not_a_hang():
    with EmbedderPool("no-such-embedder", workers=2) as pool:
        with pytest.raises(EmbedderError, match="cannot load embedder no-such-embedder: .*unknown embedder"):
            pool.spec()


def test_session_threads_follow_the_environment(monkeypatch):
    monkeypatch.delenv(embedders.ENV_THREADS, raising=False)
    assert embedders.session_threads() == embedders.cpu_count()
    monkeypatch.setenv(embedders.ENV_THREADS, "1")
    assert embedders.session_threads() == 1
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(embedders.ENV_THREADS, bad)
        with pytest.raises(EmbedderError, match="EMBEDDER_THREADS must be a positive whole number"):
            embedders.session_threads()


WHILE = {
    # 77 MB of vectors the parent never reads
    "results are unread": "pool.submit(['hepatocyte'] * 50000)\npool.spec()\n",
    # killed while the workers still start, with a 1 MB chunk only partly written into the task pipe
    "workers still start": "pool.submit([f'cell type {i}' for i in range(100000)])\n",
}


@pytest.mark.parametrize("moment", sorted(WHILE))
def test_workers_stop_by_themselves_when_their_parent_is_killed(tmp_path, moment):
    """A build killed from outside (OOM killer, kill -9) leaves no embedding workers behind."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = (
        "from ontosearch.embed_pool import EmbedderPool\n"
        "pool = EmbedderPool(workers=2)\n"
        + WHILE[moment]
        + "print(' '.join(str(p.pid) for p in pool._processes), flush=True)\n"
        "import time; time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              cwd=str(tmp_path), env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        # A zombie has exited; it only waits for init to reap it.
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"

    deadline = time.monotonic() + 60
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [pid for pid in pids if alive(pid)]
    for pid in left:  # do not leave them running if the assertion fails
        os.kill(pid, signal.SIGKILL)
    assert not left, f"embedding workers {left} outlived their parent"


def test_default_worker_count_is_one_per_core_within_a_cap(monkeypatch):
    import ontosearch.embed_pool as embed_pool

    started = []
    monkeypatch.setattr(embed_pool.multiprocessing.get_context("spawn").Process, "start",
                        lambda self: started.append(self.name))
    for cores, expected in ((1, 1), (2, 2), (64, embed_pool.MAX_WORKERS)):
        monkeypatch.setattr(embed_pool, "cpu_count", lambda cores=cores: cores)
        started.clear()
        pool = EmbedderPool()
        assert pool.workers == expected and len(started) == expected
        pool._closed = True  # nothing was started, nothing to stop
