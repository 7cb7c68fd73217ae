"""Auth, beyond the listed matrix: random requests against the task's proxy, and tokens kept out of logs.

tests/test_proxy_auth.py walks issue 6's auth matrix item by item. This file adds what a list cannot:
hypothesis-generated methods, paths (encodings, dot segments, doubled slashes, odd characters),
header sets and near-miss tokens, sent as raw bytes to the real nginx (the task's config) in front of
a real `chroma run`. Properties: nothing but the heartbeat answers 2xx without a valid token, the read
token never changes data, nothing is a 5xx, and the data is unchanged at the end.

And "the token never appears in any log line" for the processes that handle it besides the proxy
(whose own log test is in test_proxy_auth.py): `serve` (its output, Chroma's log and nginx's logs
while it runs), `loadtest`, and the batch workflow run locally (the runner's output, the Lambda
handlers' logging, the task agent's and restore's logs, the execution result), and the errors the
query step and connect() raise for a wrong token.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from reliability_fixtures import ROOT, ServeProcess, vector_snapshot

from ontosearch.constants import ENV_TOKEN, HEARTBEAT_PATH, TOKEN_HEADER
from ontosearch.serve import LocalTask

pytest_plugins = ["workflow_fixtures"]

READ = "FuzzReadToken0123456789abcdefXYZ"
ADMIN = "FuzzAdminToken9876543210fedcbaQRS"
DB = "/api/v2/tenants/default_tenant/databases/default_database"
COLLECTION = "fuzz_target"
RECORDS = 5
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class Target:
    port: int
    collection_id: str


def raw_request(port: int, data: bytes) -> int:
    """Send bytes as they are; return the HTTP status (0 if the proxy closed without answering)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
    head = b"".join(chunks).split(b"\r\n", 1)[0].decode("latin-1")
    match = re.match(r"HTTP/\d\.\d (\d{3})", head)
    return int(match.group(1)) if match else 0


def build(method: str, target: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body or method in {"POST", "PUT", "PATCH"}:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogatepass") + body


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    persist = tmp_path_factory.mktemp("fuzz-data")
    with LocalTask(persist_dir=persist, read_token=READ, admin_token=ADMIN) as task:
        collection = task.client(admin=True).create_collection(
            COLLECTION, embedding_function=None, configuration={"hnsw": {"space": "cosine"}})
        collection.add(ids=[f"t{i}" for i in range(RECORDS)], embeddings=[[1.0, float(i), 0.5] for i in
                                                                          range(RECORDS)])
        yield Target(task.port, str(collection.id))


def count(t: Target) -> int:
    url = f"http://127.0.0.1:{t.port}{DB}/collections/{t.collection_id}/count"
    with urllib.request.urlopen(urllib.request.Request(url, headers={TOKEN_HEADER: READ}), timeout=10) as r:
        return int(r.read())


# --- strategies ---------------------------------------------------------------------------------

def near_misses(token: str) -> st.SearchStrategy[str]:
    """Strings that look like the token but are not it (whitespace padding is allowed by HTTP)."""
    return st.one_of(
        st.integers(0, len(token) - 1).map(lambda i: token[:i] + token[i].swapcase() + token[i + 1:]),
        st.integers(0, len(token) - 1).map(lambda i: token[:i] + token[i + 1:]),
        st.sampled_from(string_chars()).map(lambda c: token + c),
        st.sampled_from(string_chars()).map(lambda c: c + token),
        st.integers(1, len(token) - 1).map(lambda i: token[:i] + " " + token[i:]),
        st.just(token.lower()), st.just(token.upper()), st.just(f"{token},{token}"),
        st.just(f"{READ} {ADMIN}"), st.text(max_size=40).filter(lambda s: s.strip() != token),
    ).filter(lambda s: s.strip() not in (READ, ADMIN) and "\r" not in s and "\n" not in s)


def string_chars() -> list[str]:
    return list("aZ09 _-.:;,/\\%+=\t\"'*") + ["\u00e9", "\x00"]


segment = st.one_of(
    st.sampled_from(["api", "v2", "v1", "heartbeat", "version", "tenants", "default_tenant", "databases",
                     "default_database", "collections", COLLECTION, "query", "get", "add", "upsert", "delete",
                     "update", "reset", "count", "search", "..", ".", "", "%2e%2e", "%2F", "%00", "%2e",
                     "auth", "identity", "healthcheck", "pre-flight-checks", "docs", "openapi.json"]),
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e, exclude_characters="?#"),
            max_size=12),
)
paths = st.one_of(
    st.lists(segment, min_size=0, max_size=8).map(lambda parts: "/" + "/".join(parts)),
    st.lists(segment, min_size=0, max_size=6).map(lambda parts: "/api/v2/" + "/".join(parts)),
    st.lists(segment, min_size=0, max_size=3).map(lambda parts: f"{DB}/collections/" + "/".join(parts)),
)
queries = st.one_of(st.just(""), st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e,
                                                                 exclude_characters="#"), max_size=20)
                    .map(lambda q: "?" + q))
methods = st.one_of(st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE",
                                     "PROPFIND", "MKCOL", "PURGE", "get", "Post"]),
                    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ-_", min_size=1, max_size=10))
bad_credentials = st.one_of(
    st.just([]),
    near_misses(READ).map(lambda t: [(TOKEN_HEADER, t)]),
    near_misses(ADMIN).map(lambda t: [("Authorization", f"Bearer {t}")]),
    near_misses(READ).map(lambda t: [("authorization", f"Basic {t}")]),
    st.just([("x-chroma-token", "")]),
    st.just([("Cookie", f"{TOKEN_HEADER}={ADMIN}")]),
    st.just([("X-Chroma-Token-", READ)]),
    st.just([(TOKEN_HEADER, READ), ("Authorization", f"Bearer {ADMIN}")]),
)
bodies = st.one_of(st.just(b""), st.just(b'{"ids":["t0"]}'), st.binary(max_size=64))


# --- properties ---------------------------------------------------------------------------------

def _is_heartbeat(method: str, path: str) -> bool:
    return method in {"GET", "HEAD"} and path == HEARTBEAT_PATH


@FUZZ
@given(method=methods, path=paths, query=queries, credentials=bad_credentials, body=bodies)
@example(method="GET", path="/api/v2/heartbeat/../version", query="", credentials=[], body=b"")
@example(method="DELETE", path=f"{DB}/collections/{COLLECTION}", query="", credentials=[], body=b"")
@example(method="POST", path="/api/v2/reset", query=f"?{TOKEN_HEADER}={ADMIN}", credentials=[], body=b"")
def test_without_a_valid_token_only_the_heartbeat_answers(target: Target, method, path, query, credentials,
                                                           body) -> None:
    status = raw_request(target.port, build(method, path + query, credentials, body))
    assert status != 0 and status < 500, (method, path, query, credentials, status)
    if not _is_heartbeat(method, path):
        assert not 200 <= status < 300, (method, path, query, credentials, status)


@FUZZ
@given(method=st.sampled_from(["POST", "PUT", "DELETE", "PATCH"]), path=paths, query=queries,
       transport=st.sampled_from(["x", "bearer"]), body=bodies)
@example(method="POST", path=f"{DB}/collections/COLLECTION_ID/delete", query="", transport="x",
         body=b'{"ids":["t0"]}')
@example(method="DELETE", path=f"{DB}/collections/{COLLECTION}", query="", transport="bearer", body=b"")
def test_the_read_token_never_writes(target: Target, method, path, query, transport, body) -> None:
    path = path.replace("COLLECTION_ID", target.collection_id)
    headers = [(TOKEN_HEADER, READ)] if transport == "x" else [("Authorization", f"Bearer {READ}")]
    status = raw_request(target.port, build(method, path + query, headers, body))
    assert status != 0 and status < 500, (method, path, status)
    is_read = method == "POST" and re.fullmatch(rf"{DB}/collections/[^/]+/(query|get|search)", path)
    if not is_read:
        assert not 200 <= status < 300, (method, path, query, status)


def test_fuzzing_changed_nothing(target: Target) -> None:
    """Runs after the properties above (file order): the collection and its records are all there."""
    assert count(target) == RECORDS


# --- tokens in logs -----------------------------------------------------------------------------

@pytest.mark.slow
def test_serve_and_loadtest_never_log_a_token(tmp_path: Path) -> None:
    snapshot = tmp_path / "snapshot"
    vector_snapshot(tmp_path, snapshot, {"cl_log_test": 300})
    tmpdir = tmp_path / "tmp"
    serve = ServeProcess(snapshot, tmpdir).start()
    logs: dict[str, str] = {}
    try:
        env = {**os.environ, ENV_TOKEN: serve.read_token, "PYTHONPATH": str(ROOT)}
        load = subprocess.run(
            [sys.executable, "-m", "ontosearch", "loadtest", "--url", serve.url, "--concurrency", "4",
             "--duration", "2"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
        assert load.returncode == 0, load.stderr
        logs["loadtest"] = load.stdout + load.stderr
        bad = subprocess.run(
            [sys.executable, "-m", "ontosearch", "loadtest", "--url", f"{serve.url}/?t={serve.admin_token}",
             "--duration", "1"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
        assert bad.returncode == 2
        logs["loadtest-refused"] = bad.stdout + bad.stderr
        # Requests that carry tokens where they do not belong, so the logs have something to leak.
        for request in (build("GET", f"/api/v2/version?{TOKEN_HEADER}={serve.read_token}", []),
                        build("GET", f"/api/v2/{serve.admin_token}", [(TOKEN_HEADER, serve.read_token)]),
                        build("POST", f"{DB}/collections/x/add", [(TOKEN_HEADER, serve.read_token)],
                              json.dumps({"ids": [serve.admin_token]}).encode()),
                        build("GET", "/api/v2/version", [("Authorization", f"Bearer {serve.admin_token}x")])):
            raw_request(int(serve.url.rsplit(":", 1)[1]), request)
        for path in tmpdir.rglob("*"):
            if path.is_file() and (path.suffix == ".log" or path.name.endswith(".log")):
                logs[str(path.relative_to(tmpdir))] = path.read_text(errors="replace")
        assert any(name.endswith("access.log") for name in logs) and any("chroma.log" in n for n in logs)
        serve.process.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=20) == 0
    finally:
        serve.stop()
    logs["serve"] = "\n".join(serve.stdout + serve.stderr)
    for name, text in logs.items():
        for token in (serve.read_token, serve.admin_token):
            assert token.lower() not in text.lower(), f"a token appears in {name}"


def _workflow_logs(flow_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(flow_dir)): p.read_text(errors="replace")
            for p in flow_dir.rglob("*") if p.is_file() and p.suffix in {".log", ".json", ".txt", ".csv", ""}
            and p.stat().st_size < 5_000_000}


@pytest.mark.slow
def test_workflow_and_lambdas_never_log_a_token(small_snapshot: Path, tmp_path: Path, capfd, caplog) -> None:
    """A whole execution: the runner's output, the Lambdas' logging, the task agent's and restore's logs,
    the execution's events and result carry neither token."""
    import logging

    import boto3

    from ontosearch.workflow.local import LocalWorkflow

    caplog.set_level(logging.INFO)
    labels = tmp_path / "labels.txt"
    labels.write_text("T cell\nhepatocytes\n\nB cells\n")
    flow_dir = tmp_path / "flow"
    with LocalWorkflow(workdir=flow_dir, chunk_size=2, progress=lambda m: print(f"workflow: {m}")) as flow:
        flow.publish_snapshot(small_snapshot)
        secrets = boto3.client("secretsmanager")
        tokens = [secrets.get_secret_value(SecretId=arn)["SecretString"]
                  for arn in (flow.read_secret_arn, flow.admin_secret_arn)]
        run = flow.run({"input": flow.upload_input(labels), "ontology": "cl", "top_k": 2})
    assert run.status == "SUCCEEDED", run.result()
    texts = {f"flow/{name}": text for name, text in _workflow_logs(flow_dir).items()}
    texts["result"] = json.dumps(run.result()) + json.dumps(run.events)
    out, err = capfd.readouterr()
    texts["stdout"], texts["stderr"], texts["logging"] = out, err, caplog.text
    assert any("task-agent.log" in name for name in texts) and "state QueryChunk" in out
    for name, text in texts.items():
        for token in tokens:
            assert token.lower() not in text.lower(), f"a token appears in {name}"


def test_a_refused_token_is_not_echoed_in_errors(target: Target, caplog) -> None:
    """What the query Lambda and connect() raise for a wrong token (it ends up in an execution's cause or
    on a user's screen) names the problem, not the token."""
    import logging

    from ontosearch.connect import connect
    from ontosearch.workflow import chroma_access
    from ontosearch.workflow.errors import ChromaAuthError

    caplog.set_level(logging.DEBUG)
    url = f"http://127.0.0.1:{target.port}"
    wrong = READ[:-1] + ("x" if READ[-1] != "x" else "y")
    messages = []
    with pytest.raises(ChromaAuthError) as refused:
        chroma_access.client_for(url, wrong)
    messages.append(str(refused.value))
    with pytest.raises(Exception) as refused_connect:  # noqa: B017 - any error type, checked by message
        connect(url=url, token=wrong)
    messages.append(str(refused_connect.value))
    assert "401" in messages[0]
    assert "401" in messages[1] or "refused" in messages[1].lower(), messages[1]
    for text in [*messages, caplog.text]:
        for token in (wrong, READ, ADMIN):
            assert token.lower() not in text.lower()


def test_a_warm_query_container_keeps_few_task_clients_and_lets_the_others_connections_go(
    target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each execution's task has a URL of its own; a container that served many keeps at most
    MAX_CLIENTS clients, so the sockets of tasks long gone do not pile up toward Lambda's 1,024
    file descriptors. An evicted task's client is closed and its sockets are released; asking
    for that URL again gives a new, working client."""
    import gc

    from ontosearch.workflow import chroma_access

    def sockets() -> set[str]:
        found = set()
        for fd in os.listdir("/proc/self/fd"):
            try:
                link = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:"):
                found.add(link)
        return found

    monkeypatch.setattr(chroma_access, "MAX_CLIENTS", 1)
    chroma_access.forget_clients()
    # two names of the one local task stand for the tasks of two executions
    first_url, second_url = f"http://localhost:{target.port}", f"http://127.0.0.1:{target.port}"
    before = sockets()
    first = chroma_access.client_for(first_url, READ)
    assert chroma_access.client_for(first_url, READ) is first  # cached while it is kept
    first.get_collection(COLLECTION).count()
    first_sockets = sockets() - before
    assert first_sockets  # its connection to the task is open
    del first
    second = chroma_access.client_for(second_url, READ)
    second.get_collection(COLLECTION).count()
    gc.collect()
    assert list(chroma_access._clients) == [(second_url, READ)]
    assert not first_sockets & sockets(), "the evicted task's connection is still open"
    again = chroma_access.client_for(first_url, READ)
    assert again.get_collection(COLLECTION).count() == RECORDS
    chroma_access.forget_clients()
