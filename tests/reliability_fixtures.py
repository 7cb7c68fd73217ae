"""Shared pieces of the reliability tests: real snapshots of random vectors and `serve` as a subprocess.

Snapshots are written by a real chromadb PersistentClient in a child process (closed by exiting, as
build-snapshot does) and archived, verified and described by the snapshot helper's own
`snapshot_from_persist_dir`, so `serve` restores them exactly as it restores a real build. Vectors are
384-d like the default embedder's, which keeps query bodies realistic for the load tests.
"""

from __future__ import annotations

import os
import queue
import secrets
import signal
import string
import subprocess
import sys
import threading
import time
from pathlib import Path

from snapshot_helpers import write_persist_dir

from ontosearch.constants import ENV_ADMIN_TOKEN, ENV_TOKEN
from ontosearch.manifest import Manifest

ROOT = Path(__file__).resolve().parent.parent
DIMENSIONS = 384
EMBEDDER = {"name": "random-unit-vectors", "dimensions": DIMENSIONS, "pooling": "mean", "normalize": True}

def alphanumeric_token(length: int = 32) -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


def vector_snapshot(work: Path, out: Path, collections: dict[str, int], seed: int = 0) -> Manifest:
    """A real snapshot directory (archive + manifest) of collections of random unit vectors."""
    from ontosearch.snapshot_build import snapshot_from_persist_dir

    persist = work / f"persist-{seed}"
    persist.mkdir(parents=True)
    entries = write_persist_dir(persist, collections, seed=seed, dimensions=DIMENSIONS)
    return snapshot_from_persist_dir(persist, out, entries, EMBEDDER, compression="gz", verify=True,
                                     log=lambda _m: None, progress=False)


def tree_state(path: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every file under `path`: equal before and after means untouched."""
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*")) if p.is_file()}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie has exited but not been reaped: count it as gone.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class ServeProcess:
    """`python -m ontosearch serve --snapshot DIR` with known tokens and a private TMPDIR.

    stdout lines go to a queue (the `ready <url>` line), stderr to a list (the messages tests check).
    """

    def __init__(self, snapshot: Path, tmpdir: Path, read_token: str | None = None,
                 admin_token: str | None = None, extra_env: dict[str, str] | None = None,
                 args: list[str] | None = None) -> None:
        self.snapshot = snapshot
        self.tmpdir = tmpdir
        self.read_token = read_token or alphanumeric_token()
        self.admin_token = admin_token or alphanumeric_token()
        self.extra_env = extra_env or {}
        self.args = args or []
        self.process: subprocess.Popen | None = None
        self.stdout_lines: queue.Queue[str] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.url: str | None = None
        self._threads: list[threading.Thread] = []

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in (ENV_TOKEN, ENV_ADMIN_TOKEN)}
        env.update({ENV_TOKEN: self.read_token, ENV_ADMIN_TOKEN: self.admin_token, "TMPDIR": str(self.tmpdir),
                    "PYTHONPATH": str(ROOT), "ANONYMIZED_TELEMETRY": "False"})
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 120.0) -> ServeProcess:
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ontosearch", "serve", "--snapshot", str(self.snapshot), *self.args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=self.env, cwd=ROOT,
            text=True, start_new_session=True,
        )
        self._threads = [
            threading.Thread(target=self._pump, args=(self.process.stdout, self.stdout, self.stdout_lines),
                             daemon=True),
            threading.Thread(target=self._pump, args=(self.process.stderr, self.stderr, None), daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        self.url = self.wait_ready(timeout)
        return self

    @staticmethod
    def _pump(stream, lines: list[str], q: queue.Queue | None) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))
            if q is not None:
                q.put(line.rstrip("\n"))

    def wait_ready(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.stdout_lines.get(timeout=0.2)
            except queue.Empty:
                if self.process.poll() is not None:
                    self.join_output()
                    raise AssertionError(f"serve exited with {self.process.returncode} before ready:\n"
                                         + "\n".join(self.stderr)) from None
                continue
            if line.startswith("ready "):
                return line.split(" ", 1)[1].strip()
        raise AssertionError("serve not ready in time:\n" + "\n".join(self.stderr))

    def pid_of(self, what: str, timeout: float = 10.0) -> int:
        """The pid serve reports for `chroma` or `auth proxy` on stderr. Serve writes it before the
        "ready" line, but on another pipe, read by another thread: on a busy machine that thread
        may not have read it yet when "ready" arrives, so this waits for it a while."""
        marker = f"{what} pid "
        deadline = time.monotonic() + timeout
        while True:
            for line in list(self.stderr):
                if marker in line:
                    return int(line.split(marker, 1)[1].split()[0])
            if time.monotonic() >= deadline:
                raise AssertionError(f"serve did not report a {what} pid:\n" + "\n".join(self.stderr))
            time.sleep(0.05)

    def join_output(self, timeout: float = 5.0) -> None:
        for thread in self._threads:
            thread.join(timeout)

    def wait(self, timeout: float) -> int:
        code = self.process.wait(timeout=timeout)
        self.join_output()
        return code

    def stop(self) -> None:
        """SIGTERM, then SIGKILL of the whole process group if it lingers (tests must not leak)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.process.poll() is None:
            self.process.wait(timeout=10)
        # chroma and nginx run in sessions of their own: if serve could not stop them, do it here.
        # Once serve's stderr is read to its end, a pid it never reported (it failed before starting
        # that child) is not waited for.
        stderr_read = len(self._threads) == 2 and not self._threads[1].is_alive()
        for what in ("chroma", "auth proxy"):
            try:
                pid = self.pid_of(what, timeout=0.0 if stderr_read else 10.0)
            except AssertionError:
                continue
            if pid_alive(pid):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        self.join_output()
