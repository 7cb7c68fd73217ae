"""A census of live processes, for tests that must leave nothing running."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that contain `text` (e.g. a replica's work directory)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        if "State:\tZ" in status:
            continue
        cmdline = raw.replace(b"\0", b" ").decode(errors="replace")
        if text in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


def wait_until_gone(text: str, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    left = processes_mentioning(text)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = processes_mentioning(text)
    return left


def replica_leftovers(task: Any, timeout: float = 15) -> list[str]:
    """Processes of a local task replica still alive: by recorded PID and by their working directories."""
    left = wait_until_gone(str(task.workdir), timeout=timeout)
    record = task.workdir / "replica.json"
    if record.exists():
        info = json.loads(record.read_text())
        left += wait_until_gone(info["serve_workdir"], timeout=5)
        for name, pid in info["pids"].items():
            status = Path(f"/proc/{pid}/status")
            if pid and status.exists() and "State:\tZ" not in status.read_text():
                left.append(f"{name} pid {pid}")
    return left
