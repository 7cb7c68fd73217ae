"""`python -m ontosearch serve` as users and the workflow run it: a subprocess that prints `ready <url>`.

Real restore, real `chroma run`, real nginx. The process checks read /proc, so they see grandchildren
(nginx workers) too: nothing may outlive `serve`.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from snapshot_helpers import make_snapshot

from ontosearch.constants import ENV_ADMIN_TOKEN, ENV_TOKEN, ENV_URL, TOKEN_HEADER
from ontosearch.serve import LocalTask, LocalTaskError

REPO = Path(__file__).resolve().parents[1]
READY_TIMEOUT = 120.0
COLLECTIONS = {"cl_serve": 30, "mondo_serve": 20}


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("serve-snapshot")
    make_snapshot(work, work / "snapshot", COLLECTIONS, seed=3)
    return work / "snapshot"


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in {ENV_TOKEN, ENV_ADMIN_TOKEN, ENV_URL, "CHROMA_TOKEN_SECRET_ARN"}}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


@dataclass
class Serve:
    process: subprocess.Popen
    stderr_path: Path
    lines: queue.Queue = field(default_factory=queue.Queue)
    stdout_lines: list[str] = field(default_factory=list)

    def read_ready(self, timeout: float = READY_TIMEOUT) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no ready line within {timeout} s; stderr:\n{self.stderr()}") from None
        assert line is not None, f"serve exited before ready; stderr:\n{self.stderr()}"
        return line

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def pids(self) -> tuple[int, int]:
        match = re.search(r"chroma pid (\d+) .* auth proxy pid (\d+)", self.stderr())
        assert match, self.stderr()
        return int(match.group(1)), int(match.group(2))

    def token_file(self) -> Path | None:
        match = re.search(r"tokens in (\S+) \(mode 0600", self.stderr())
        return Path(match.group(1)) if match else None

    def wait(self, timeout: float) -> int:
        code = self.process.wait(timeout=timeout)
        time.sleep(0.1)  # let the reader thread collect the last stdout lines
        return code


def start_serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Serve:
    stderr_path = tmp_path / "serve.stderr"
    stderr_file = open(stderr_path, "wb")  # noqa: SIM115 - handed to the child, closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "ontosearch", "serve", *args], cwd=REPO, env=env or _clean_env(),
        stdout=subprocess.PIPE, stderr=stderr_file, stdin=subprocess.DEVNULL, text=True,
    )
    stderr_file.close()
    serve = Serve(process, stderr_path)

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            serve.stdout_lines.append(line)
            serve.lines.put(line.rstrip("\n"))
        serve.lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return serve


@pytest.fixture
def serves() -> Iterator[list[Serve]]:
    """Every serve a test starts is killed at the end, whatever the test did."""
    started: list[Serve] = []
    yield started
    for serve in started:
        if serve.process.poll() is None:
            serve.process.kill()
            serve.process.wait()
        for pid in _pids_of_serve(serve):
            _kill_group(pid)


def _pids_of_serve(serve: Serve) -> list[int]:
    try:
        return list(serve.pids())
    except AssertionError:
        return []


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _running_in_group(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is `pgid` (nginx master + workers, chroma)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            found.append(int(entry.name))
    return found


def _assert_all_gone(pids: tuple[int, ...], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        left = [p for pgid in pids for p in _running_in_group(pgid)]
        if not left:
            return
        time.sleep(0.1)
    raise AssertionError(f"processes left running: {left}")


def _query_through(url: str, token: str, collection: str = "cl_serve") -> list[str]:
    import chromadb

    host, port = url.removeprefix("http://").split(":")
    client = chromadb.HttpClient(host=host, port=int(port), headers={TOKEN_HEADER: token})
    col = client.get_collection(collection)
    sample = col.get(limit=1, include=["embeddings"])
    result = col.query(query_embeddings=[list(sample["embeddings"][0])], n_results=3)
    return result["ids"][0]


def _read_env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line)


@pytest.mark.slow
def test_serve_restores_answers_and_stops_cleanly_on_sigterm(tmp_path: Path, snapshot: Path,
                                                             serves: list[Serve]) -> None:
    serve = start_serve(tmp_path, "--snapshot", str(snapshot))
    serves.append(serve)
    line = serve.read_ready()
    match = re.fullmatch(r"ready (http://127\.0\.0\.1:(\d+))", line)
    assert match, line
    url = match.group(1)
    chroma_pid, nginx_pid = serve.pids()

    token_file = serve.token_file()
    assert token_file is not None and token_file.exists()
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    values = _read_env_file(token_file)
    assert values[ENV_URL] == url
    read_token, admin_token = values[ENV_TOKEN], values[ENV_ADMIN_TOKEN]
    assert len(_query_through(url, read_token)) == 3
    assert len(_query_through(url, read_token, "mondo_serve")) == 3
    workdir = Path(re.search(r"work dir (\S+) ", serve.stderr()).group(1))
    access_log = (workdir / "proxy" / "access.log").read_text()
    assert "role=read" in access_log and "/query" in access_log

    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url + "/api/v2/version", timeout=5)
    assert refused.value.code == 401

    serve.process.send_signal(signal.SIGTERM)
    assert serve.wait(timeout=30) == 0
    _assert_all_gone((chroma_pid, nginx_pid))
    assert not workdir.exists(), "the private work dir (restored data, tokens, logs) must be removed"
    assert token_file.parent == workdir
    assert "".join(serve.stdout_lines) == f"ready {url}\n"
    everything = "".join(serve.stdout_lines) + serve.stderr()
    assert read_token not in everything and admin_token not in everything
    assert "stopping on SIGTERM" in serve.stderr()


@pytest.mark.slow
def test_serve_uses_tokens_from_the_environment_and_stops_on_sigint(tmp_path: Path, snapshot: Path,
                                                                     serves: list[Serve]) -> None:
    read_token, admin_token = "EnvReadToken0123456789", "EnvAdminToken0123456789"
    env = _clean_env(**{ENV_TOKEN: read_token, ENV_ADMIN_TOKEN: admin_token})
    from ontosearch.chroma_process import free_port

    port = free_port()
    serve = start_serve(tmp_path, "--snapshot", str(snapshot), "--port", str(port), env=env)
    serves.append(serve)
    assert serve.read_ready() == f"ready http://127.0.0.1:{port}"
    assert serve.token_file() is None, "no token file when the tokens come from the environment"
    assert _query_through(f"http://127.0.0.1:{port}", read_token)
    pids = serve.pids()
    serve.process.send_signal(signal.SIGINT)
    assert serve.wait(timeout=30) == 0
    _assert_all_gone(pids)
    assert read_token not in serve.stderr() and admin_token not in serve.stderr()


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["chroma", "nginx"])
def test_serve_exits_non_zero_when_an_essential_process_dies(tmp_path: Path, snapshot: Path,
                                                             serves: list[Serve], victim: str) -> None:
    serve = start_serve(tmp_path, "--snapshot", str(snapshot))
    serves.append(serve)
    serve.read_ready()
    chroma_pid, nginx_pid = serve.pids()
    os.kill(chroma_pid if victim == "chroma" else nginx_pid, signal.SIGKILL)
    started = time.monotonic()
    code = serve.wait(timeout=30)
    assert code != 0
    assert time.monotonic() - started < 10
    message = serve.stderr()
    expected = "chroma exited with code" if victim == "chroma" else "the auth proxy (nginx) exited with code"
    assert expected in message
    assert "as an ECS task stops when an essential container exits" in message
    _assert_all_gone((chroma_pid, nginx_pid))


def _processes_with_marker(marker: str) -> list[int]:
    """Processes whose environment carries `marker` (serve's children inherit it)."""
    found = []
    needle = f"ONTOSEARCH_TEST_MARK={marker}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append(int(entry.name))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.5])
def test_a_signal_during_startup_stops_cleanly(tmp_path: Path, snapshot: Path, serves: list[Serve],
                                               delay: float) -> None:
    marker = f"startup-{os.getpid()}-{delay}"
    serve = start_serve(tmp_path, "--snapshot", str(snapshot), env=_clean_env(ONTOSEARCH_TEST_MARK=marker))
    serves.append(serve)
    deadline = time.monotonic() + 60
    while "serve: starting" not in serve.stderr() and time.monotonic() < deadline:
        time.sleep(0.02)  # the signal handlers are installed once this line is printed
    time.sleep(delay)
    serve.process.send_signal(signal.SIGTERM)
    code = serve.wait(timeout=30)
    deadline = time.monotonic() + 10
    while _processes_with_marker(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_with_marker(marker) == []
    if serve.stdout_lines:  # the machine was fast enough to be ready first: a normal stop
        assert code == 0 and "stopping on SIGTERM" in serve.stderr()
    else:
        assert code == 0, serve.stderr()
        assert "before it was ready" in serve.stderr()


def test_serve_refuses_a_malformed_token_before_starting_anything(tmp_path: Path,
                                                                 serves: list[Serve]) -> None:
    env = _clean_env(**{ENV_TOKEN: "not a token!", ENV_ADMIN_TOKEN: "AdminToken0123456789"})
    serve = start_serve(tmp_path, "--persist-dir", str(tmp_path), env=env)
    serves.append(serve)
    assert serve.wait(timeout=60) == 2
    assert "CHROMA_TOKEN may contain only letters and digits" in serve.stderr()
    assert "not a token!" not in serve.stderr()
    assert serve.stdout_lines == []


def test_serve_reports_a_busy_port(tmp_path: Path, snapshot: Path, serves: list[Serve]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        serve = start_serve(tmp_path, "--snapshot", str(snapshot), "--port", str(port))
        serves.append(serve)
        assert serve.wait(timeout=60) == 1
    assert f"port {port} on 127.0.0.1 is not available" in serve.stderr()
    assert serve.stdout_lines == []


def test_serve_reports_a_snapshot_it_cannot_restore(tmp_path: Path, serves: list[Serve]) -> None:
    serve = start_serve(tmp_path, "--snapshot", str(tmp_path / "missing"))
    serves.append(serve)
    assert serve.wait(timeout=60) == 1
    assert "could not start" in serve.stderr() and "manifest.json" in serve.stderr()
    assert serve.stdout_lines == []


def test_serve_needs_a_snapshot_or_persist_dir(tmp_path: Path, serves: list[Serve]) -> None:
    serve = start_serve(tmp_path)
    serves.append(serve)
    assert serve.wait(timeout=60) == 2
    assert "--snapshot" in serve.stderr()


@pytest.mark.slow
def test_local_task_in_process_serves_the_snapshot_collections(snapshot: Path) -> None:
    with LocalTask(snapshot=snapshot) as task:
        assert sorted(task.collection_names()) == sorted(COLLECTIONS)
        assert task.token_file is not None and stat.S_IMODE(task.token_file.stat().st_mode) == 0o600
        client = task.client()
        assert client.get_collection("cl_serve").count() == COLLECTIONS["cl_serve"]
        logs = task.logs()
        assert "role=read" in logs and task.read_token not in logs
        assert task.dead() is None
        workdir = task.workdir
        assert workdir is not None
    assert not workdir.exists()
    assert task.chroma is None and task.proxy is None


def test_local_task_refuses_equal_tokens() -> None:
    with pytest.raises(LocalTaskError, match="different values"):
        LocalTask(persist_dir=".", read_token="SameToken0123456789", admin_token="SameToken0123456789")
