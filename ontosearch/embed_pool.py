"""Embedding in worker processes, so a snapshot build embeds while Chroma inserts.

Why processes and not threads: `collection.add` of an embedded Chroma client holds the GIL for the
whole call (SQLite log, metadata segment, HNSW insert), so an embedding thread next to it stalls after
every batch. Why one ONNX thread per worker: on a busy machine a two-thread session wastes about a third
of its CPU on threads waiting (and spinning) for each other, while single-thread workers run as fast as
the cores they get. The vectors are the very ones the embedder gives in-process: a worker is the same
embedder (`get_embedder(name)`), only with one intra-op thread, and neither the thread count nor the
batch a text lands in changes its vector.

Use: `submit(texts)` returns a ticket at once; `result(ticket)` waits for that chunk's vectors. Chunks
are handed to whichever worker is free, so callers submit everything ahead and collect in order.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import queue
import threading
import time
from typing import Any

import numpy as np

from ontosearch.embedders import ENV_THREADS, EmbedderError, cpu_count

# Default worker count is one per core up to this: the inserting process takes about 1 ms per record
# and a single-thread worker embeds one text in about 2.5 ms, so more workers would only wait (and
# each holds a few hundred MB).
MAX_WORKERS = 4
# How long `result` waits between checks that the workers are still alive.
_POLL_SECONDS = 1.0
# How long a worker may take to load its embedder (an ONNX export on first use takes about a minute).
_START_TIMEOUT = 600.0


def _worker(name: str | None, tasks: Any, results: Any, loaded: Any, wait_for: Any) -> None:
    """Worker process: load the embedder with one thread, then embed chunks until told to stop.

    A worker whose parent is gone (killed, out of memory) stops by itself: nothing else would stop it.
    """
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_when_gone, args=(parent,), name="parent-watch", daemon=True).start()
    try:
        _serve(name, tasks, results, loaded, wait_for)
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the parent reports it
        pass


def _exit_when_gone(parent: Any) -> None:
    """Exit at once when the parent process is gone, wherever the worker's main thread is blocked.

    The main thread may be loading the model, embedding, or blocked in a queue read or write (a
    result nobody will read, a chunk a killed parent never finished sending); checking for the
    parent between chunks would miss all of those. Nothing the worker holds needs flushing.
    """
    multiprocessing.connection.wait([parent.sentinel])
    os._exit(0)


def _serve(name: str | None, tasks: Any, results: Any, loaded: Any, wait_for: Any) -> None:
    os.environ[ENV_THREADS] = "1"
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the torch backend's thread pool
    if wait_for is not None:
        # The first worker loads (and, on first use, exports) the model alone; no duplicate export.
        wait_for.wait()
    try:
        from ontosearch.embedders import get_embedder

        embedder = get_embedder(name)
        results.put(("spec", None, embedder.spec()))
    except Exception as exc:  # noqa: BLE001 - reported to the parent with the cause
        results.put(("error", None, f"cannot load embedder {name or 'default'}: {type(exc).__name__}: {exc}"))
        return
    finally:
        if loaded is not None:
            loaded.set()
    while True:
        task = tasks.get()
        if task is None:
            return
        ticket, texts = task
        try:
            vectors = embedder.embed(texts)
            # Each text of a build is embedded once; remembering it would only hold memory.
            embedder.clear_cache()
            results.put(("vectors", ticket, vectors))
        except Exception as exc:  # noqa: BLE001 - reported to the parent with the cause
            results.put(("error", ticket, f"{type(exc).__name__}: {exc}"))


class EmbedderPool:
    """`workers` processes (default one per core, at most `MAX_WORKERS`) that embed with the embedder
    called `name`, one thread each."""

    def __init__(self, name: str | None = None, workers: int | None = None) -> None:
        self.name = name
        self.workers = max(1, workers if workers is not None else min(cpu_count(), MAX_WORKERS))
        context = multiprocessing.get_context("spawn")
        self._tasks = context.Queue()
        self._results = context.Queue()
        self._spec: dict[str, Any] | None = None
        self._done: dict[int, np.ndarray] = {}
        self._next_ticket = 0
        self._closed = False
        # Kept on self: a synchronisation object collected before a spawned child unpickles it is gone.
        self._first_loaded = first_loaded = context.Event()
        self._processes = []
        for index in range(self.workers):
            process = context.Process(
                target=_worker,
                args=(name, self._tasks, self._results, first_loaded if index == 0 else None,
                      None if index == 0 else first_loaded),
                name=f"ontosearch-embed-{index}",
                daemon=True,
            )
            process.start()
            self._processes.append(process)

    def __enter__(self) -> EmbedderPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def spec(self) -> dict[str, Any]:
        """The workers' embedder spec (what the snapshot manifest records)."""
        while self._spec is None:
            self._receive(deadline=time.monotonic() + _START_TIMEOUT, waiting_for="the embedder to load")
        return dict(self._spec)

    def submit(self, texts: list[str]) -> int:
        """Queue one chunk of texts; returns the ticket `result` takes."""
        if self._closed:
            raise EmbedderError("the embedding pool is closed")
        ticket = self._next_ticket
        self._next_ticket += 1
        self._tasks.put((ticket, list(texts)))
        return ticket

    def result(self, ticket: int) -> np.ndarray:
        """The vectors of a submitted chunk, in its order (waits for them)."""
        while ticket not in self._done:
            self._receive(deadline=None, waiting_for=f"chunk {ticket}")
        return self._done.pop(ticket)

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embed one chunk and wait for it (the `Embedder.embed` shape, for sequential callers)."""
        return self.result(self.submit(texts))

    def _receive(self, deadline: float | None, waiting_for: str) -> None:
        while True:
            try:
                kind, ticket, payload = self._results.get(timeout=_POLL_SECONDS)
                break
            except queue.Empty:
                dead = [p for p in self._processes if not p.is_alive()]
                if dead:
                    try:  # what a worker said before it exited (e.g. why it could not load) comes first
                        kind, ticket, payload = self._results.get(timeout=_POLL_SECONDS)
                        break
                    except queue.Empty:
                        pass
                    code = dead[0].exitcode
                    hint = "; killed (out of memory?)" if code is not None and code < 0 else ""
                    raise EmbedderError(f"embedding worker {dead[0].name} exited (code {code}) while "
                                        f"waiting for {waiting_for}{hint}; see the messages above") from None
                if deadline is not None and time.monotonic() > deadline:
                    raise EmbedderError(f"timed out waiting for {waiting_for}") from None
        if kind == "spec":
            self._spec = payload
        elif kind == "vectors":
            self._done[ticket] = payload
        else:
            raise EmbedderError(f"embedding failed: {payload}")

    def close(self) -> None:
        """Stop the workers (idempotent); a worker that does not stop in time is terminated."""
        if self._closed:
            return
        self._closed = True
        for _ in self._processes:
            try:
                self._tasks.put(None)
            except (OSError, ValueError):  # queue already broken: the join below still ends them
                break
        # Results nobody asked for (after an error) are drained, so no worker waits to flush them.
        deadline = time.monotonic() + 10
        while any(p.is_alive() for p in self._processes) and time.monotonic() < deadline:
            try:
                self._results.get(timeout=0.1)
            except (queue.Empty, OSError, ValueError, EOFError):
                pass
        for process in self._processes:
            if process.is_alive():
                process.terminate()
            process.join(5)
        for q in (self._tasks, self._results):
            q.cancel_join_thread()
            q.close()

