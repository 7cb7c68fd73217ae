"""Run a real `chroma run` server process on loopback: the same Rust server as the official image.

Used by `serve` (the local replica of the task), snapshot verification, benchmarks and tests.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ontosearch.constants import CHROMA_HOST, HEARTBEAT_PATH


class ChromaServerError(RuntimeError):
    """The Chroma server could not be started or stopped working."""


def free_port(host: str = CHROMA_HOST) -> int:
    """A TCP port that is free on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def chroma_executable() -> str:
    """The `chroma` CLI of the chromadb package installed next to this interpreter."""
    candidate = Path(sys.executable).with_name("chroma")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("chroma")
    if found is None:
        raise ChromaServerError("the `chroma` command was not found; install the pinned chromadb package")
    return found


def wait_for_http(url: str, timeout: float, process: subprocess.Popen | None = None, what: str = "") -> None:
    """Poll `url` until it answers 200, the process exits, or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    last_error = "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ChromaServerError(
                f"{what or 'process'} exited with code {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
                last_error = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            last_error = f"HTTP {exc.code}"
        except (OSError, urllib.error.URLError) as exc:
            last_error = str(exc)
        time.sleep(0.05)
    raise ChromaServerError(f"{what or url} not ready after {timeout:.0f} s ({last_error})")


class ChromaServer:
    """A `chroma run --path PATH --host 127.0.0.1 --port PORT` process.

    Use as a context manager; `start()` returns once the heartbeat answers.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        port: int | None = None,
        host: str = CHROMA_HOST,
        log_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.host = host
        self.port = port or free_port(host)
        self.log_path = Path(log_path) if log_path else None
        self.process: subprocess.Popen | None = None
        self._log_file = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> ChromaServer:
        self.path.mkdir(parents=True, exist_ok=True)
        command = [
            chroma_executable(), "run",
            "--path", str(self.path), "--host", self.host, "--port", str(self.port),
        ]
        if self.log_path is not None:
            self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
            output = self._log_file
        else:
            output = subprocess.DEVNULL
        env = {**os.environ, "ANONYMIZED_TELEMETRY": "False"}
        self.process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,
        )
        try:
            wait_for_http(self.url + HEARTBEAT_PATH, timeout, self.process, what="chroma run")
        except BaseException:
            self.stop()
            raise
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> ChromaServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
