"""`python -m ontosearch serve`: the Fargate task's three steps on this machine.

Restore a snapshot, run `chroma run` on loopback, and put the task's nginx auth proxy in front of it.
`LocalTask` is the reusable core: the workflow, the benchmarks and the reliability tests start it
in-process (a context manager) or run this command as a subprocess and wait for its `ready` line.
Like an ECS task whose essential container exits, the whole thing stops when Chroma or nginx dies.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ontosearch.chroma_process import ChromaServer, ChromaServerError, free_port
from ontosearch.constants import (
    CHROMA_HOST,
    ENV_ADMIN_TOKEN,
    ENV_TOKEN,
    ENV_URL,
    RESTORED_MANIFEST_NAME,
    TOKEN_HEADER,
)
from ontosearch.proxy import NginxProxy, ProxyError, generate_token, validate_token_pair

TOKEN_FILE_NAME = "tokens.env"


class LocalTaskError(RuntimeError):
    """The local task could not start, or one of its processes died."""


def write_token_file(path: Path, url: str, read_token: str, admin_token: str) -> Path:
    """A shell-sourceable env file (mode 0600): `set -a; . FILE` gives connect() what it needs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(f"{ENV_URL}={url}\n{ENV_TOKEN}={read_token}\n{ENV_ADMIN_TOKEN}={admin_token}\n")
    return path


class LocalTask:
    """Chroma behind the auth proxy on loopback, started from a snapshot or an existing persist dir.

    Tokens come from the arguments, else from CHROMA_TOKEN / CHROMA_ADMIN_TOKEN, else are generated
    (then `token_file` holds them). The restored data and nginx's files live in a private work
    directory that is removed on stop; an existing `persist_dir` is used in place and kept.
    """

    def __init__(
        self,
        snapshot: str | os.PathLike[str] | None = None,
        persist_dir: str | os.PathLike[str] | None = None,
        port: int | None = None,
        read_token: str | None = None,
        admin_token: str | None = None,
        token_file: str | os.PathLike[str] | None = None,
        host: str = CHROMA_HOST,
        startup_timeout: float = 120.0,
    ) -> None:
        if (snapshot is None) == (persist_dir is None):
            raise LocalTaskError("give exactly one of a snapshot directory or a persist directory")
        self.snapshot = Path(snapshot) if snapshot is not None else None
        self.persist_dir = Path(persist_dir) if persist_dir is not None else None
        self.host = host
        self.port = int(port) if port else free_port(host)
        read_token = read_token or os.environ.get(ENV_TOKEN) or None
        admin_token = admin_token or os.environ.get(ENV_ADMIN_TOKEN) or None
        self.generated_tokens = read_token is None or admin_token is None
        self.read_token = read_token or generate_token()
        self.admin_token = admin_token or generate_token()
        try:
            validate_token_pair(self.read_token, self.admin_token)
        except ProxyError as exc:
            raise LocalTaskError(str(exc)) from exc
        self._token_file_arg = Path(token_file) if token_file is not None else None
        self.token_file: Path | None = None
        self.startup_timeout = startup_timeout
        self.workdir: Path | None = None
        self.manifest: Any = None
        self.chroma: ChromaServer | None = None
        self.proxy: NginxProxy | None = None
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def data_dir(self) -> Path:
        if self.persist_dir is not None:
            return self.persist_dir
        if self.workdir is None:
            raise LocalTaskError("the task has not been started")
        return self.workdir / "data"

    def start(self) -> LocalTask:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _check_port_free(self) -> None:
        """Fail before a long restore, not after it, when the proxy port is taken."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((self.host, self.port))
            except OSError as exc:
                raise LocalTaskError(f"port {self.port} on {self.host} is not available ({exc.strerror}); "
                                     "pick another --port or stop what uses it") from None

    def _start(self) -> None:
        self._check_port_free()
        self.workdir = Path(tempfile.mkdtemp(prefix="ontosearch-serve-"))
        if self.snapshot is not None:
            self._restore()
        elif not self.persist_dir.is_dir():
            raise LocalTaskError(f"persist directory {self.persist_dir} does not exist")
        self.chroma = ChromaServer(self.data_dir, log_path=self.workdir / "chroma.log")
        try:
            self.chroma.start(timeout=self.startup_timeout)
        except ChromaServerError as exc:
            raise LocalTaskError(f"chroma did not start: {exc}{self._chroma_log_tail()}") from exc
        self.proxy = NginxProxy(self.chroma.port, self.read_token, self.admin_token, port=self.port,
                                host=self.host, workdir=self.workdir / "proxy")
        try:
            self.proxy.start()
        except ProxyError as exc:
            raise LocalTaskError(f"the auth proxy did not start: {exc}") from exc
        if self.generated_tokens or self._token_file_arg is not None:
            path = self._token_file_arg or self.workdir / TOKEN_FILE_NAME
            self.token_file = write_token_file(path, self.url, self.read_token, self.admin_token)
        self.check_queries()

    def _restore(self) -> None:
        try:
            from ontosearch.restore import restore_from_dir
        except ImportError as exc:  # pragma: no cover - only while the restore module is missing
            raise LocalTaskError(f"snapshot restore is not available: {exc}") from exc
        self.manifest = restore_from_dir(self.snapshot, self.data_dir)

    def collection_names(self) -> list[str]:
        if self.manifest is not None:
            return [c.name for c in self.manifest.collections]
        marker = self.data_dir / RESTORED_MANIFEST_NAME
        if marker.exists():
            from ontosearch.manifest import Manifest

            try:
                return [c.name for c in Manifest.from_json(marker.read_text()).collections]
            except Exception:  # noqa: BLE001 - fall back to asking the server
                pass
        return []

    def client(self, admin: bool = False) -> Any:
        """A chromadb HttpClient through the proxy (read token unless `admin`)."""
        import chromadb

        token = self.admin_token if admin else self.read_token
        return chromadb.HttpClient(host=self.host, port=self.port, headers={TOKEN_HEADER: token})

    def check_queries(self) -> None:
        """Ready means queries answer through the proxy: one nearest-neighbour query per collection."""
        deadline = time.monotonic() + self.startup_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            self.raise_if_dead()
            try:
                self._query_every_collection()
                return
            except Exception as exc:  # noqa: BLE001 - retried until the deadline
                last = exc
                time.sleep(0.2)
        raise LocalTaskError("queries through the proxy did not succeed within "
                             f"{self.startup_timeout:.0f} s: {last}")

    def _query_every_collection(self) -> None:
        client = self.client()
        names = self.collection_names() or [c.name for c in client.list_collections()]
        for name in names:
            collection = client.get_collection(name, embedding_function=None)
            sample = collection.get(limit=1, include=["embeddings"])
            embeddings = sample.get("embeddings")
            if embeddings is None or len(embeddings) == 0:
                continue
            collection.query(query_embeddings=[list(embeddings[0])], n_results=1, include=["distances"])

    def dead(self) -> str | None:
        """Which essential process exited, as a message, or None while both run."""
        for name, process in (("chroma", self.chroma), ("the auth proxy (nginx)", self.proxy)):
            if process is None or process.process is None:
                continue
            code = process.process.poll()
            if code is not None:
                extra = self._chroma_log_tail() if process is self.chroma else ""
                return f"{name} exited with code {code}{extra}"
        return None

    def raise_if_dead(self) -> None:
        message = self.dead()
        if message is not None:
            raise LocalTaskError(message)

    def _chroma_log_tail(self, lines: int = 5) -> str:
        if self.workdir is None:
            return ""
        path = self.workdir / "chroma.log"
        if not path.exists():
            return ""
        tail = [line for line in path.read_text(errors="replace").splitlines() if line.strip()][-lines:]
        return ("; last chroma log lines:\n  " + "\n  ".join(tail)) if tail else ""

    def logs(self) -> str:
        """The proxy's access and error logs and Chroma's output so far (gone after stop())."""
        text = self.proxy.logs() if self.proxy is not None else ""
        if self.workdir is not None and (self.workdir / "chroma.log").exists():
            text += (self.workdir / "chroma.log").read_text(errors="replace")
        return text

    def wait(self, poll: float = 0.2) -> str | None:
        """Block until stop() is called (returns None) or a process dies (returns why)."""
        while not self._stopped.wait(poll):
            message = self.dead()
            if message is not None:
                return message
        return None

    def request_stop(self) -> None:
        self._stopped.set()

    def stop(self) -> None:
        self._stopped.set()
        proxy, self.proxy = self.proxy, None
        chroma, self.chroma = self.chroma, None
        if proxy is not None:
            proxy.stop()
        if chroma is not None:
            chroma.stop()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> LocalTask:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ontosearch serve",
        description="Run the task locally: restore a snapshot, start Chroma on loopback and the auth "
                    "proxy in front of it. Prints `ready <url>` when queries succeed; stop with Ctrl-C.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--snapshot", type=Path, help="snapshot directory (manifest.json + archive)")
    source.add_argument("--persist-dir", type=Path,
                        help="serve an existing Chroma persist directory in place, without a restore")
    parser.add_argument("--port", type=int, default=0, help="proxy port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--token-file", type=Path,
                        help=f"write {ENV_URL}, {ENV_TOKEN} and {ENV_ADMIN_TOKEN} to this 0600 file "
                             "(default: a file in the private work dir when the tokens are generated)")
    parser.add_argument("--startup-timeout", type=float, default=120.0,
                        help="seconds to wait for Chroma and the first queries (default: 120)")
    return parser


def _say(message: str) -> None:
    print(f"serve: {message}", file=sys.stderr, flush=True)


class _StopDuringStartup(BaseException):
    """Raised from the signal handler to abandon a restore or startup in progress (cleaned up by stop)."""


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.port and not 0 < args.port < 65536:
        _say(f"--port {args.port} is not a TCP port; give 1-65535 or leave it out")
        return 2
    try:
        task = LocalTask(snapshot=args.snapshot, persist_dir=args.persist_dir, port=args.port or None,
                         token_file=args.token_file, startup_timeout=args.startup_timeout)
    except LocalTaskError as exc:
        _say(str(exc))
        return 2
    stop_signal: list[int] = []
    ready = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        first = not stop_signal
        stop_signal.append(signum)
        task.request_stop()
        if first and not ready.is_set():
            raise _StopDuringStartup()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            source = f"snapshot {args.snapshot}" if args.snapshot else f"persist dir {args.persist_dir}"
            _say(f"starting from {source}: restore, chroma, auth proxy on {task.url}")
            task.start()
            ready.set()
        except _StopDuringStartup:
            _say(f"stopped on {signal.Signals(stop_signal[0]).name} before it was ready")
            return 0
        except LocalTaskError as exc:
            _say(f"could not start: {exc}")
            return 1
        except Exception as exc:  # noqa: BLE001 - restore errors carry their own messages
            _say(f"could not start: {type(exc).__name__}: {exc}")
            return 1
        assert task.chroma is not None and task.chroma.process is not None
        assert task.proxy is not None and task.proxy.process is not None
        _say(f"chroma pid {task.chroma.process.pid} on {task.chroma.url} (loopback only); "
             f"auth proxy pid {task.proxy.process.pid} on {task.url}")
        _say(f"work dir {task.workdir} (restored data, logs: proxy/access.log, proxy/error.log, chroma.log; "
             "removed on exit)")
        if task.token_file is not None:
            _say(f"tokens in {task.token_file} (mode 0600; `set -a; . {task.token_file}` to use them)")
        print(f"ready {task.url}", flush=True)
        died = task.wait()
        if died is not None:
            _say(f"{died}; stopping, as an ECS task stops when an essential container exits")
            return 1
        _say(f"stopping on {signal.Signals(stop_signal[0]).name}" if stop_signal else "stopping")
        return 0
    finally:
        # A second signal while stopping must not interrupt the cleanup.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        task.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
