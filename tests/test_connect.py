"""connect(): the same call gives a remote client through the real auth proxy or an embedded store."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from ontosearch.chroma_process import free_port
from ontosearch.connect import ConnectError, clear_secret_cache, connect, default_local_path
from ontosearch.constants import ENV_ADMIN_TOKEN, ENV_PATH, ENV_TOKEN, ENV_TOKEN_SECRET_ARN, ENV_URL
from ontosearch.serve import LocalTask

READ = "ConnectReadToken0123456789"
ADMIN = "ConnectAdminToken0123456789"
VARIABLES = (ENV_URL, ENV_TOKEN, ENV_ADMIN_TOKEN, ENV_TOKEN_SECRET_ARN, ENV_PATH, "XDG_DATA_HOME")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    clear_secret_cache()
    yield
    clear_secret_cache()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTask]:
    with LocalTask(persist_dir=tmp_path_factory.mktemp("connect-data"), read_token=READ,
                   admin_token=ADMIN) as task:
        collection = task.client(admin=True).create_collection("connect_terms", embedding_function=None)
        collection.add(ids=["a", "b"], embeddings=[[1.0, 0.0], [0.0, 1.0]], documents=["alpha", "beta"])
        yield task


# --- embedded ---------------------------------------------------------------------------------------

def _is_persistent_at(client: object, path: Path) -> bool:
    settings = client.get_settings()
    return bool(settings.is_persistent) and Path(settings.persist_directory) == path


def test_without_a_url_connect_opens_an_embedded_store_at_the_given_path(tmp_path: Path) -> None:
    client = connect(path=tmp_path / "store")
    assert _is_persistent_at(client, tmp_path / "store")
    collection = client.get_or_create_collection("local_terms", embedding_function=None)
    collection.add(ids=["x"], embeddings=[[0.5, 0.5]])
    assert collection.count() == 1


def test_chroma_path_variable_chooses_the_embedded_store(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_PATH, str(tmp_path / "from-env"))
    assert _is_persistent_at(connect(), tmp_path / "from-env")


def test_default_store_is_a_per_user_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_local_path() == tmp_path / "home" / ".local" / "share" / "ontosearch" / "chroma"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_local_path() == tmp_path / "xdg" / "ontosearch" / "chroma"
    assert _is_persistent_at(connect(), tmp_path / "xdg" / "ontosearch" / "chroma")


def test_an_unusable_local_path_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ConnectError, match=f"cannot create the local store .*set {ENV_PATH}"):
        connect(path=blocker / "store")


def test_url_and_path_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConnectError, match="not both"):
        connect(url="http://127.0.0.1:1", path=tmp_path)


def test_an_explicit_path_wins_over_chroma_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_URL, "http://127.0.0.1:1")
    assert _is_persistent_at(connect(path=tmp_path / "explicit"), tmp_path / "explicit")


# --- remote -----------------------------------------------------------------------------------------

def test_chroma_url_gives_a_client_through_the_proxy_with_the_read_token(
        server: LocalTask, monkeypatch: pytest.MonkeyPatch) -> None:
    from chromadb.errors import ChromaAuthError

    monkeypatch.setenv(ENV_URL, server.url)
    monkeypatch.setenv(ENV_TOKEN, READ)
    client = connect()
    assert not client.get_settings().is_persistent
    collection = client.get_collection("connect_terms")
    assert collection.query(query_embeddings=[[0.9, 0.1]], n_results=1)["ids"] == [["a"]]
    with pytest.raises(ChromaAuthError):
        collection.add(ids=["c"], embeddings=[[0.3, 0.3]])


def test_arguments_win_over_the_environment(server: LocalTask, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_URL, "http://127.0.0.1:1")
    monkeypatch.setenv(ENV_TOKEN, "WrongTokenFromTheEnvironment")
    client = connect(url=server.url + "/", token=ADMIN)
    scratch = client.get_or_create_collection("connect_admin_scratch", embedding_function=None)
    scratch.add(ids=["z"], embeddings=[[0.1, 0.9]])
    assert scratch.count() == 1
    client.delete_collection("connect_admin_scratch")


def test_a_url_without_a_token_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_URL, "http://127.0.0.1:1")
    with pytest.raises(ConnectError, match=f"no token was given; set {ENV_TOKEN} or {ENV_TOKEN_SECRET_ARN}"):
        connect()


def test_an_unreachable_server_is_a_clear_error_not_a_hang() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(ConnectError, match=f"Chroma at {url} is not reachable.*check {ENV_URL}"):
        connect(url=url, token=READ)
    assert time.monotonic() - started < 5


def test_a_refused_token_is_a_clear_error(server: LocalTask) -> None:
    with pytest.raises(ConnectError, match=r"refused the token \(HTTP 401\); check CHROMA_TOKEN"):
        connect(url=server.url, token="WrongToken0123456789abc")


@pytest.mark.parametrize(
    ("url", "problem"),
    [("localhost:8080", "not an http"), ("ftp://example.org", "not an http"),
     ("http://127.0.0.1:8080/api/v2", "has a path"), ("http://user:pw@127.0.0.1:8080", "credentials"),
     ("http://127.0.0.1:99999", "invalid port")],
)
def test_malformed_urls_are_clear_errors(url: str, problem: str) -> None:
    with pytest.raises(ConnectError, match=problem):
        connect(url=url, token=READ)


def test_a_stalled_server_gives_the_caller_an_error_not_a_hang(server: LocalTask) -> None:
    import os
    import signal

    import httpx

    collection = connect(url=server.url, token=READ, timeout=2).get_collection("connect_terms")
    assert server.chroma is not None and server.chroma.process is not None
    os.kill(server.chroma.process.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(httpx.TimeoutException):
            collection.query(query_embeddings=[[0.9, 0.1]], n_results=1)
        assert time.monotonic() - started < 5
    finally:
        os.kill(server.chroma.process.pid, signal.SIGCONT)
    assert collection.count() == 2


@pytest.mark.slow
def test_wait_gives_a_starting_server_time(tmp_path: Path) -> None:
    port = free_port()
    task = LocalTask(persist_dir=tmp_path, port=port, read_token=READ, admin_token=ADMIN)
    starter = threading.Timer(1.0, task.start)
    starter.start()
    try:
        client = connect(url=f"http://127.0.0.1:{port}", token=READ, wait=90)
        assert client.heartbeat() > 0
    finally:
        starter.join()
        task.stop()


# --- token from Secrets Manager -----------------------------------------------------------------------

@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "eu-west-1"}.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        yield boto3.client("secretsmanager", region_name="us-east-2")


def test_token_is_read_once_from_secrets_manager(server: LocalTask, aws,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    arn = aws.create_secret(Name="ontosearch/chroma-read-token", SecretString=READ)["ARN"]
    assert ":us-east-2:" in arn  # the region comes from the ARN, not from AWS_DEFAULT_REGION
    monkeypatch.setenv(ENV_URL, server.url)
    monkeypatch.setenv(ENV_TOKEN_SECRET_ARN, arn)
    assert connect().get_collection("connect_terms").count() == 2
    aws.delete_secret(SecretId=arn, ForceDeleteWithoutRecovery=True)
    assert connect().get_collection("connect_terms").count() == 2, "the token must be cached"
    clear_secret_cache()
    with pytest.raises(ConnectError, match=r"could not read the token secret .*ResourceNotFoundException"):
        connect()


def test_token_secret_may_be_a_json_object(server: LocalTask, aws, monkeypatch: pytest.MonkeyPatch) -> None:
    arn = aws.create_secret(Name="json-token", SecretString=json.dumps({"token": READ}))["ARN"]
    monkeypatch.setenv(ENV_TOKEN_SECRET_ARN, arn)
    assert connect(url=server.url).heartbeat() > 0


def test_chroma_token_wins_over_the_secret(server: LocalTask, aws, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = "arn:aws:secretsmanager:us-east-2:123456789012:secret:gone-AbCdEf"
    monkeypatch.setenv(ENV_TOKEN_SECRET_ARN, missing)
    monkeypatch.setenv(ENV_TOKEN, READ)
    assert connect(url=server.url).heartbeat() > 0


@pytest.mark.parametrize(
    ("secret", "problem"),
    [("   ", "is empty"), (b"binary", "holds no SecretString"), ('{"other": "x"}', "without a \"token\" key"),
     ('{"token": ""}', "is empty")],
)
def test_an_unusable_secret_is_a_clear_error(aws, monkeypatch: pytest.MonkeyPatch, secret: str | bytes,
                                             problem: str) -> None:
    value = {"SecretBinary": secret} if isinstance(secret, bytes) else {"SecretString": secret}
    arn = aws.create_secret(Name="odd-token", **value)["ARN"]
    monkeypatch.setenv(ENV_TOKEN_SECRET_ARN, arn)
    with pytest.raises(ConnectError, match=problem):
        connect(url="http://127.0.0.1:1")


def test_a_malformed_secret_arn_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_TOKEN_SECRET_ARN, "my-secret")
    with pytest.raises(ConnectError, match="is not a Secrets Manager secret ARN"):
        connect(url="http://127.0.0.1:1")


def test_a_server_that_redirects_is_named_and_never_gets_the_token() -> None:
    """A stack's ALB answers http:// with a redirect to https:// (components/chroma_service.py). urllib
    would follow it and resend the token header, in clear first; chromadb's client then fails with a
    bare ValueError. The check follows no redirect: it names the URL to use, and nothing, neither the
    redirecting server nor its target, has seen the token."""
    import http.server

    seen: list[tuple[str, dict[str, str]]] = []

    class Target(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            seen.append(("target", dict(self.headers)))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    target = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Target)
    target_url = f"http://127.0.0.1:{target.server_address[1]}"

    class Redirect(Target):
        def do_GET(self) -> None:  # noqa: N802
            seen.append(("redirect", dict(self.headers)))
            self.send_response(301)
            self.send_header("Location", target_url + self.path)
            self.end_headers()

    redirect = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (target, redirect)]
    for thread in threads:
        thread.start()
    try:
        with pytest.raises(ConnectError) as refused:
            connect(url=f"http://127.0.0.1:{redirect.server_address[1]}", token=READ)
        assert "redirects (HTTP 301)" in str(refused.value) and f"to {target_url}" in str(refused.value)
        assert [where for where, _ in seen] == ["redirect"]
        assert all(READ not in json.dumps(headers) for _, headers in seen)
    finally:
        for s in (target, redirect):
            s.shutdown()
            s.server_close()
