"""SIGTERM as an exception in the main thread, for the length of one command.

A container stop or `kill` sends SIGTERM; the commands that own files or child processes (annotate,
build-snapshot, restore-snapshot) turn it into an exception so their cleanup runs as it does for
Ctrl-C. Only the main thread may install a handler; elsewhere (a command called from a worker
thread) nothing is installed. Standard library only: the task's restore image imports it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def _interrupt(signum: int) -> BaseException:
    return KeyboardInterrupt(f"signal {signum}")


@contextmanager
def sigterm_raises(make: Callable[[int], BaseException] = _interrupt) -> Iterator[None]:
    """While inside, SIGTERM raises `make(signum)` (default KeyboardInterrupt); the previous
    handler is put back on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        raise make(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
