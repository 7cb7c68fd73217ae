"""Run one benchmark step in a fresh interpreter and bring its result back.

The in-process Chroma client must not share a process (or a persist directory at the same time)
with the server paths, and a build's peak memory is only meaningful for a process of its own.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _entry(func: Callable[..., Any], args: tuple[Any, ...], result_path: str) -> None:
    value = func(*args)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with open(result_path, "wb") as handle:
        pickle.dump({"value": value, "peak_rss_mb": peak_kib / 1024.0}, handle)


def run_in_child(func: Callable[..., Any], *args: Any) -> tuple[Any, float, float]:
    """Call `func(*args)` in a spawned process; returns (its value, seconds, the child's peak RSS in MB).

    `func` must be a module-level function. The child exits normally, so whatever Chroma buffers is
    flushed before the parent goes on.
    """
    fd, result_path = tempfile.mkstemp(prefix="ontosearch-bench-", suffix=".pickle")
    os.close(fd)
    try:
        context = multiprocessing.get_context("spawn")
        child = context.Process(target=_entry, args=(func, args, result_path))
        started = time.perf_counter()
        child.start()
        child.join()
        seconds = time.perf_counter() - started
        if child.exitcode != 0 or Path(result_path).stat().st_size == 0:
            raise RuntimeError(
                f"{func.__module__}.{func.__name__} failed in a child process "
                f"(exit code {child.exitcode}); its messages are above"
            )
        with open(result_path, "rb") as handle:
            result = pickle.load(handle)
        return result["value"], seconds, float(result["peak_rss_mb"])
    finally:
        Path(result_path).unlink(missing_ok=True)
