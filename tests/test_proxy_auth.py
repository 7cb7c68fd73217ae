"""The auth matrix: the task's nginx config (real nginx) in front of a real `chroma run` server.

Every request goes through a raw socket so that the tests control exactly what is sent (duplicate
headers, odd methods, unnormalised paths), plus the real chromadb HttpClient for what users do.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ontosearch.chroma_process import free_port
from ontosearch.constants import HEARTBEAT_PATH, TOKEN_HEADER
from ontosearch.proxy import NginxProxy, nginx_executable
from ontosearch.serve import LocalTask

READ = "ReadTokenForTheMatrix0123456789"
API_ROOT = "/api/v2"
ADMIN = "AdminTokenForTheMatrix987654321"
WRONG = "WrongTokenForTheMatrix000000000"
DB = "/api/v2/tenants/default_tenant/databases/default_database"
COLLECTION = "auth_matrix"
RECORDS = 4


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


def send(port: int, method: str, target: str, headers: list[tuple[str, str]] | None = None,
         body: bytes = b"", raw_request: bytes | None = None) -> Response:
    """One HTTP/1.1 request on a fresh connection, exactly as written."""
    if raw_request is None:
        lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in headers or []]
        if body or method in {"POST", "PUT", "PATCH"}:
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        raw_request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw_request)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    data = b"".join(chunks)
    head, _, payload = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ")
    assert len(parts) >= 2 and parts[0].startswith("HTTP/"), f"no HTTP status line in {data[:200]!r}"
    headers_out = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers_out[name.strip().lower()] = value.strip()
    return Response(int(parts[1]), headers_out, payload)


def x_token(token: str) -> list[tuple[str, str]]:
    return [(TOKEN_HEADER, token)]


def bearer(token: str) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {token}")]


@dataclass
class Stack:
    task: LocalTask
    port: int
    collection_id: str

    def count(self) -> int:
        response = send(self.port, "GET", f"{DB}/collections/{self.collection_id}/count", x_token(READ))
        assert response.status == 200
        return int(response.json())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    persist = tmp_path_factory.mktemp("auth-matrix-data")
    with LocalTask(persist_dir=persist, read_token=READ, admin_token=ADMIN) as task:
        admin = task.client(admin=True)
        collection = admin.create_collection(COLLECTION, embedding_function=None,
                                             configuration={"hnsw": {"space": "cosine"}})
        collection.add(ids=[f"t{i}" for i in range(RECORDS)],
                       embeddings=[[1.0, float(i), 0.5] for i in range(RECORDS)],
                       documents=[f"term {i}" for i in range(RECORDS)])
        yield Stack(task, task.port, str(collection.id))


# --- reads ------------------------------------------------------------------------------------------

def read_requests(cid: str) -> list[tuple[str, str, bytes]]:
    return [
        ("GET", "/api/v2/version", b""),
        ("GET", "/api/v2/auth/identity", b""),
        ("GET", "/api/v2/tenants/default_tenant", b""),
        ("GET", DB, b""),
        ("GET", f"{DB}/collections", b""),
        ("GET", f"{DB}/collections?limit=10&offset=0", b""),
        ("GET", f"{DB}/collections_count", b""),
        ("GET", f"{DB}/collections/{COLLECTION}", b""),
        ("GET", f"{DB}/collections/{cid}/count", b""),
        ("POST", f"{DB}/collections/{cid}/query",
         b'{"query_embeddings":[[1.0,0.0,0.5]],"n_results":2,"include":["distances"]}'),
        ("POST", f"{DB}/collections/{cid}/get", b'{"ids":["t1"],"include":["documents"]}'),
    ]


READ_NAMES = ["version", "identity", "tenant", "database", "list", "list-paged", "count-collections",
              "get-collection", "count", "query", "get"]


@pytest.mark.parametrize("index", range(len(READ_NAMES)), ids=READ_NAMES)
@pytest.mark.parametrize("transport", [x_token, bearer], ids=["x-chroma-token", "bearer"])
@pytest.mark.parametrize("token", [READ, ADMIN], ids=["read-token", "admin-token"])
def test_reads_succeed_with_either_token_on_either_transport(stack: Stack, index: int, transport, token: str
                                                             ) -> None:
    method, target, body = read_requests(stack.collection_id)[index]
    response = send(stack.port, method, target, transport(token), body)
    assert response.status == 200, response.body


REFUSED_CREDENTIALS = {
    "none": [],
    "wrong": x_token(WRONG),
    "empty": [(TOKEN_HEADER, "")],
    "swapped-case": x_token(READ.swapcase()),
    "lower-case": x_token(READ.lower()),
    "upper-case": x_token(READ.upper()),
    "prefix-only": x_token(READ[:-1]),
    "extra-suffix": x_token(READ + "x"),
    "extra-prefix": x_token("x" + READ),
    "inner-space": x_token(READ[:10] + " " + READ[10:]),
    "two-tokens": x_token(f"{READ} {ADMIN}"),
    "comma-list": x_token(f"{WRONG}, {READ}"),
    "bearer-wrong": bearer(WRONG),
    "bearer-case": bearer(READ.swapcase()),
    "bearer-double-space": [("Authorization", f"Bearer  {READ}")],
    "bearer-no-space": [("Authorization", f"Bearer{READ}")],
    "bearer-bare-token": [("Authorization", READ)],
    "bearer-empty": [("Authorization", "Bearer ")],
    "token-scheme": [("Authorization", f"Token {READ}")],
    "basic-scheme": [("Authorization", "Basic " + base64.b64encode(f"user:{READ}".encode()).decode())],
    "both-headers": x_token(READ) + bearer(READ),
    "wrong-header-name": [("X-Chroma-Tokens", READ)],
    "cookie": [("Cookie", f"{TOKEN_HEADER}={READ}")],
}


@pytest.mark.parametrize("index", range(len(READ_NAMES)), ids=READ_NAMES)
@pytest.mark.parametrize("credentials", list(REFUSED_CREDENTIALS), ids=list(REFUSED_CREDENTIALS))
def test_reads_without_a_valid_token_get_401(stack: Stack, index: int, credentials: str) -> None:
    method, target, body = read_requests(stack.collection_id)[index]
    response = send(stack.port, method, target, REFUSED_CREDENTIALS[credentials], body)
    assert response.status == 401, response.body
    assert response.headers.get("www-authenticate", "").startswith("Bearer")
    assert json.loads(response.body)["error"] == "AuthorizationError"


def test_bearer_scheme_name_is_case_insensitive(stack: Stack) -> None:
    response = send(stack.port, "GET", "/api/v2/version", [("Authorization", f"bearer {READ}")])
    assert response.status == 200


def test_header_whitespace_is_not_part_of_the_token(stack: Stack) -> None:
    """RFC 9110 5.5: leading/trailing whitespace around a field value is not part of it (nginx strips
    it before any rule sees the value), so padding grants exactly what the bare token grants."""
    padded = [(TOKEN_HEADER, f"   {READ}   ")]
    assert send(stack.port, "GET", "/api/v2/version", padded).status == 200
    target = f"{DB}/collections/{stack.collection_id}/delete"
    write = send(stack.port, "POST", target, padded, b'{"ids":["t0"]}')
    assert write.status == 403
    assert stack.count() == RECORDS


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("credentials", ["none", "wrong", "read", "admin"])
@pytest.mark.parametrize("path", [HEARTBEAT_PATH, API_ROOT], ids=["heartbeat", "api-root"])
def test_heartbeat_is_open(stack: Stack, method: str, credentials: str, path: str) -> None:
    """Chroma answers its heartbeat on /api/v2/heartbeat and on the bare /api/v2, which chromadb's
    AsyncHttpClient.heartbeat() requests; both pass without a token."""
    headers = {"none": [], "wrong": x_token(WRONG), "read": x_token(READ),
               "admin": bearer(ADMIN)}[credentials]
    response = send(stack.port, method, path, headers)
    assert response.status == 200
    if method == "GET":
        assert "nanosecond heartbeat" in response.json()


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_the_api_root_serves_only_the_heartbeat(stack: Stack, method: str) -> None:
    response = send(stack.port, method, API_ROOT, x_token(ADMIN), b"{}" if method != "OPTIONS" else b"")
    assert response.status == 405
    assert send(stack.port, "GET", API_ROOT + "/", x_token(READ)).status == 404  # as Chroma itself
    assert stack.count() == RECORDS


def test_healthcheck_is_not_open(stack: Stack) -> None:
    assert send(stack.port, "GET", "/api/v2/healthcheck").status == 401
    assert send(stack.port, "GET", "/api/v2/healthcheck", x_token(READ)).status == 200


# --- writes -----------------------------------------------------------------------------------------

def write_requests(cid: str) -> dict[str, tuple[str, str, bytes]]:
    new_record = b'{"ids":["w1"],"embeddings":[[0.1,0.2,0.3]]}'
    return {
        "add": ("POST", f"{DB}/collections/{cid}/add", new_record),
        "upsert": ("POST", f"{DB}/collections/{cid}/upsert", new_record),
        "update": ("POST", f"{DB}/collections/{cid}/update", b'{"ids":["t0"],"documents":["changed"]}'),
        "delete-records": ("POST", f"{DB}/collections/{cid}/delete", b'{"ids":["t0"]}'),
        "create-collection": ("POST", f"{DB}/collections", b'{"name":"created_by_attacker"}'),
        "get-or-create": ("POST", f"{DB}/collections", b'{"name":"auth_matrix","get_or_create":true}'),
        "modify-collection": ("PUT", f"{DB}/collections/{cid}", b'{"new_name":"renamed"}'),
        "delete-collection": ("DELETE", f"{DB}/collections/{COLLECTION}", b""),
        "fork": ("POST", f"{DB}/collections/{cid}/fork", b'{"new_name":"forked"}'),
        "create-database": ("POST", "/api/v2/tenants/default_tenant/databases", b'{"name":"attacker_db"}'),
        "delete-database": ("DELETE", DB, b""),
        "create-tenant": ("POST", "/api/v2/tenants", b'{"name":"attacker_tenant"}'),
        "reset": ("POST", "/api/v2/reset", b""),
        "attach-function": ("POST", f"{DB}/collections/{cid}/functions/attach", b"{}"),
    }


WRITE_NAMES = list(write_requests("x"))


@pytest.mark.parametrize("name", WRITE_NAMES)
@pytest.mark.parametrize(
    ("credentials", "status"),
    [("none", 401), ("wrong", 401), ("read-x-header", 403), ("read-bearer", 403),
     ("admin-in-wrong-case", 401), ("read-and-admin-headers", 401)],
)
def test_writes_need_the_admin_token(stack: Stack, name: str, credentials: str, status: int) -> None:
    headers = {
        "none": [], "wrong": x_token(WRONG), "read-x-header": x_token(READ), "read-bearer": bearer(READ),
        "admin-in-wrong-case": x_token(ADMIN.lower()),
        "read-and-admin-headers": x_token(READ) + bearer(ADMIN),
    }[credentials]
    method, target, body = write_requests(stack.collection_id)[name]
    response = send(stack.port, method, target, headers, body)
    assert response.status == status, response.body
    if status == 403:
        assert json.loads(response.body) == {
            "error": "AuthError",
            "message": "auth proxy: this request changes data and needs the admin token",
        }
    assert stack.count() == RECORDS


def test_admin_token_can_write_everything(stack: Stack) -> None:
    port, headers = stack.port, bearer(ADMIN)
    created = send(port, "POST", f"{DB}/collections", x_token(ADMIN),
                   b'{"name":"admin_writes","configuration":{"hnsw":{"space":"cosine"}}}')
    assert created.status == 200, created.body
    cid = created.json()["id"]
    record = b'{"ids":["a"],"embeddings":[[0.1,0.2,0.3]],"documents":["x"]}'
    assert send(port, "POST", f"{DB}/collections/{cid}/add", headers, record).status in (200, 201)
    assert send(port, "POST", f"{DB}/collections/{cid}/upsert", headers,
                b'{"ids":["b"],"embeddings":[[0.3,0.2,0.1]]}').status == 200
    assert send(port, "POST", f"{DB}/collections/{cid}/update", headers,
                b'{"ids":["a"],"documents":["y"]}').status == 200
    assert send(port, "GET", f"{DB}/collections/{cid}/count", headers).json() == 2
    assert send(port, "POST", f"{DB}/collections/{cid}/delete", headers, b'{"ids":["a"]}').status == 200
    renamed = send(port, "PUT", f"{DB}/collections/{cid}", headers, b'{"new_name":"admin_writes2"}')
    assert renamed.status == 200
    assert send(port, "DELETE", f"{DB}/collections/admin_writes2", headers).status == 200
    assert send(port, "POST", "/api/v2/tenants/default_tenant/databases", headers,
                b'{"name":"admin_db"}').status == 200
    assert send(port, "DELETE", "/api/v2/tenants/default_tenant/databases/admin_db", headers).status == 200
    assert send(port, "POST", "/api/v2/tenants", headers, b'{"name":"admin_tenant"}').status == 200
    # Reset reaches Chroma, which refuses it by its own config (allow_reset is off).
    reset = send(port, "POST", "/api/v2/reset", headers)
    assert reset.status == 403 and b"auth proxy" not in reset.body
    assert stack.count() == RECORDS


# --- methods, paths, headers ------------------------------------------------------------------------

METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "PROPFIND",
           "MKCOL", "COPY", "MOVE", "LOCK", "PURGE", "FOO", "M-SEARCH"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("credentials", ["none", "read", "admin"])
@pytest.mark.parametrize("target", ["/api/v2/version", "collection", "count", HEARTBEAT_PATH, API_ROOT, "/"])
def test_every_method_is_refused_unless_the_rules_allow_it(stack: Stack, method: str, credentials: str,
                                                           target: str) -> None:
    # An admin's DELETE/PUT on the shared collection would really change it: aim at a missing one.
    name = "no_such_collection" if credentials == "admin" else COLLECTION
    target = {"collection": f"{DB}/collections/{name}",
              "count": f"{DB}/collections/{stack.collection_id}/count"}.get(target, target)
    headers = {"none": [], "read": x_token(READ), "admin": x_token(ADMIN)}[credentials]
    response = send(stack.port, method, target, headers, b"{}" if method in {"POST", "PUT", "PATCH"} else b"")
    assert response.status < 500, response.body
    reads = {"GET", "HEAD"}
    allowed = (
        (target in (HEARTBEAT_PATH, API_ROOT) and method in reads)
        or (target.startswith("/api/v2/") and credentials != "none" and method in reads)
        or (target.startswith("/api/v2/") and credentials == "admin" and method in {"POST", "PUT", "DELETE"})
    )
    if not allowed:
        assert not 200 <= response.status < 300, (method, target, credentials, response.status)
    if method not in {"GET", "HEAD", "POST", "PUT", "DELETE", "TRACE", "CONNECT"} and target != "/":
        assert response.status == 405
    assert stack.count() == RECORDS


PATH_TRICKS = [
    "/api/v2/heartbeat/../version",
    "/api/v2/heartbeat/..%2Fversion",
    "/api/v2/heartbeat%2F..%2Fversion",
    "/api/v2/./version",
    "/api/v2//version",
    "//api/v2/version",
    "/api/v2/%76ersion",
    "/api%2Fv2/version",
    "/api/v2/tenants%2Fdefault_tenant",
    "/%2e%2e/api/v2/version",
    "/api/v2/heartbeat/..",
    "/api/v2/heartbeat/.",
    "/api/v2/../../etc/passwd",
    "/api/v2/version%00",
    "/api/v2/heartbeat%00",
    "/api/v1/heartbeat",
    "/api/v1/collections",
    "/api/v1",
    "/API/V2/version",
    "/docs",
    "/openapi.json",
    "/api/v2/openapi.json/../version",
    "*",
]


@pytest.mark.parametrize("path", PATH_TRICKS)
@pytest.mark.parametrize("credentials", ["none", "read"])
def test_path_tricks_are_refused(stack: Stack, path: str, credentials: str) -> None:
    headers = x_token(READ) if credentials == "read" else []
    response = send(stack.port, "GET", path, headers)
    assert 400 <= response.status < 500, (path, response.status, response.body)
    if path.startswith("/api/v1"):
        assert response.status == 410


@pytest.mark.parametrize(
    "suffix",
    ["query/../add", "query/..%2Fadd", "add/../query", "add%2F..%2Fquery", "query/%2e%2e/add", "add;/query",
     "add?x=/query", "add#/query", "add/", "QUERY/../add"],
)
def test_a_read_token_cannot_reach_a_write_through_the_path(stack: Stack, suffix: str) -> None:
    body = b'{"ids":["sneaky"],"embeddings":[[0.1,0.2,0.3]]}'
    target = f"{DB}/collections/{stack.collection_id}/{suffix}"
    response = send(stack.port, "POST", target, x_token(READ), body)
    assert response.status in (400, 403, 404), (suffix, response.status, response.body)
    assert stack.count() == RECORDS


@pytest.mark.parametrize("where", ["query-string", "path", "referer", "host"])
def test_tokens_outside_the_auth_headers_are_refused(stack: Stack, where: str) -> None:
    target, headers = "/api/v2/version", x_token(READ)
    if where == "query-string":
        target += f"?{TOKEN_HEADER}={ADMIN}"
    elif where == "path":
        target = f"/api/v2/{READ}"
    elif where == "referer":
        headers = headers + [("Referer", f"http://example.org/?t={ADMIN}")]
    response = send(stack.port, "GET", target, headers) if where != "host" else send(
        stack.port, "", "", raw_request=(f"GET /api/v2/version HTTP/1.1\r\nHost: {READ}\r\n"
                                         f"{TOKEN_HEADER}: {READ}\r\nConnection: close\r\n\r\n").encode())
    assert response.status == 400


def test_a_token_only_in_the_query_string_is_not_accepted(stack: Stack) -> None:
    response = send(stack.port, "GET", f"/api/v2/version?token={WRONG}&{TOKEN_HEADER}={WRONG}")
    assert response.status == 401


def _nginx_joins_duplicate_headers() -> bool:
    """nginx >= 1.23 joins repeated headers into one value (so a repeated token never matches)."""
    version = subprocess.run([nginx_executable(), "-v"], capture_output=True, text=True).stderr
    major, minor = (int(x) for x in version.split("/")[1].split(".")[:2])
    return (major, minor) >= (1, 23)


def test_duplicated_token_headers_never_grant_more_than_the_first(stack: Stack) -> None:
    port = stack.port
    wrong_first = [(TOKEN_HEADER, WRONG), (TOKEN_HEADER, READ)]
    assert send(port, "GET", "/api/v2/version", wrong_first).status == 401
    read_then_admin = [(TOKEN_HEADER, READ), (TOKEN_HEADER, ADMIN)]
    target = f"{DB}/collections/{stack.collection_id}/delete"
    write = send(port, "POST", target, read_then_admin, b'{"ids":["t0"]}')
    assert write.status in (401, 403)
    same_twice = send(port, "GET", "/api/v2/version", [(TOKEN_HEADER, READ), (TOKEN_HEADER, READ)])
    # The pinned nginx image (1.28) joins the values and refuses; Debian's 1.22 reads the first one.
    assert same_twice.status == (401 if _nginx_joins_duplicate_headers() else 200)
    two_authorizations = bearer(READ) + bearer(ADMIN)
    assert send(port, "DELETE", f"{DB}/collections/{COLLECTION}", two_authorizations).status in (400, 401)
    assert stack.count() == RECORDS


@pytest.mark.parametrize("header", ["X-Padding", TOKEN_HEADER, "Authorization"])
@pytest.mark.parametrize("credentials", ["none", "read"])
def test_a_64_kib_header_gets_a_4xx(stack: Stack, header: str, credentials: str) -> None:
    headers = (x_token(READ) if credentials == "read" and header != TOKEN_HEADER else [])
    headers = headers + [(header, "a" * 65536)]
    response = send(stack.port, "GET", "/api/v2/version", headers)
    assert 400 <= response.status < 500


def test_many_large_headers_and_a_long_url_get_a_4xx(stack: Stack) -> None:
    many = [(f"X-Filler-{i}", "b" * 4000) for i in range(40)]
    assert 400 <= send(stack.port, "GET", "/api/v2/version", x_token(READ) + many).status < 500
    assert 400 <= send(stack.port, "GET", "/api/v2/" + "a" * 70000, x_token(READ)).status < 500


@pytest.mark.parametrize(
    "raw",
    [b"\x00\x01\x02garbage\r\n\r\n",
     b"GET\r\n\r\n",
     b"get /api/v2/version HTTP/1.1\r\nHost: x\r\n\r\n",
     b"GET /api/v2/version HTTP/9.9\r\nHost: x\r\n\r\n",
     b"GET /api/v2/version HTTP/1.1\r\nBad Header\r\n\r\n",
     b"POST /api/v2/reset HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
     b"POST /api/v2/reset HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
     b"POST /api/v2/reset HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
     b"GET /api/v2/version HTTP/2.0\r\nHost: x\r\n\r\n",
     b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"],
    ids=["binary", "no-target", "lower-case-method", "http-9", "bad-header", "cl-and-te", "negative-length",
         "unknown-transfer-encoding", "http-2-version", "http-2-preface"],
)
def test_malformed_requests_get_a_4xx(stack: Stack, raw: bytes) -> None:
    response = send(stack.port, "", "", raw_request=raw)
    assert 400 <= response.status < 500


def test_anonymous_large_body_is_refused_without_reaching_chroma(stack: Stack) -> None:
    body = b'{"ids":[' + b'"x",' * 500000 + b'"y"]}'
    response = send(stack.port, "POST", f"{DB}/collections/{stack.collection_id}/add", [], body)
    assert response.status == 401


def test_garbage_json_from_an_admin_is_a_4xx_not_a_5xx(stack: Stack) -> None:
    target = f"{DB}/collections/{stack.collection_id}/add"
    for body in [b"garbage", b"{}", b"[]", b"\xff\xfe", b'{"ids":["z"],"embeddings":[[1e400,0,0]]}',
                 b'{"ids":["z"],"embeddings":[[1,2]]}']:
        response = send(stack.port, "POST", target, x_token(ADMIN), body)
        assert 400 <= response.status < 500, (body, response.status)
    assert stack.count() == RECORDS


# --- the real client ----------------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [{TOKEN_HEADER: READ}, {"Authorization": f"Bearer {READ}"}],
                         ids=["x-chroma-token", "bearer"])
def test_chromadb_client_reads_with_the_read_token(stack: Stack, headers: dict[str, str]) -> None:
    import chromadb

    client = chromadb.HttpClient(host="127.0.0.1", port=stack.port, headers=headers)
    assert client.heartbeat() > 0
    assert COLLECTION in [c.name for c in client.list_collections()]
    collection = client.get_collection(COLLECTION)
    assert collection.count() == RECORDS
    result = collection.query(query_embeddings=[[1.0, 2.0, 0.5]], n_results=2)
    assert result["ids"][0][0] == "t2"
    assert collection.get(ids=["t3"])["documents"] == ["term 3"]
    assert collection.peek(limit=1)["ids"]


@pytest.mark.parametrize("headers", [{TOKEN_HEADER: READ}, {"Authorization": f"Bearer {ADMIN}"}],
                         ids=["read-token", "admin-token"])
def test_chromadb_async_client_heartbeat_and_reads(stack: Stack, headers: dict[str, str]) -> None:
    """chromadb's AsyncHttpClient, unchanged (its constructor needs a token, as HttpClient's does):
    its heartbeat() is a bare GET /api/v2."""
    import asyncio

    import chromadb

    async def use() -> tuple[int, int]:
        client = await chromadb.AsyncHttpClient(host="127.0.0.1", port=stack.port, headers=headers)
        beat = await client.heartbeat()
        collection = await client.get_collection(COLLECTION)
        return beat, await collection.count()

    beat, count = asyncio.run(use())
    assert beat > 0 and count == RECORDS


def test_chromadb_client_writes_are_refused_with_the_read_token(stack: Stack) -> None:
    import chromadb
    from chromadb.errors import ChromaAuthError

    client = chromadb.HttpClient(host="127.0.0.1", port=stack.port, headers={TOKEN_HEADER: READ})
    collection = client.get_collection(COLLECTION)
    with pytest.raises(ChromaAuthError, match="needs the admin token"):
        collection.add(ids=["nope"], embeddings=[[0.0, 0.0, 1.0]])
    with pytest.raises(ChromaAuthError):
        collection.delete(ids=["t0"])
    with pytest.raises(ChromaAuthError):
        client.create_collection("not_allowed", embedding_function=None)
    with pytest.raises(ChromaAuthError):
        client.get_or_create_collection(COLLECTION, embedding_function=None)
    with pytest.raises(ChromaAuthError):
        client.delete_collection(COLLECTION)
    assert stack.count() == RECORDS


def test_chromadb_client_with_a_wrong_token_fails_at_construction(stack: Stack) -> None:
    import chromadb
    from chromadb.errors import AuthorizationError

    with pytest.raises(AuthorizationError, match="valid token"):
        chromadb.HttpClient(host="127.0.0.1", port=stack.port, headers={TOKEN_HEADER: WRONG})


def test_chromadb_client_writes_with_the_admin_token(stack: Stack) -> None:
    import chromadb

    headers = {"Authorization": f"Bearer {ADMIN}"}
    client = chromadb.HttpClient(host="127.0.0.1", port=stack.port, headers=headers)
    collection = client.get_or_create_collection("client_admin", embedding_function=None)
    collection.add(ids=["a", "b"], embeddings=[[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]])
    assert collection.count() == 2
    client.delete_collection("client_admin")


# --- logs ---------------------------------------------------------------------------------------------

def test_tokens_never_reach_a_log_line(stack: Stack) -> None:
    port, cid = stack.port, stack.collection_id
    send(port, "GET", "/api/v2/version", x_token(READ))
    send(port, "GET", "/api/v2/version", bearer(ADMIN))
    send(port, "GET", f"/api/v2/version?{TOKEN_HEADER}={READ}")
    send(port, "GET", f"/api/v2/{ADMIN}/x", x_token(READ))
    send(port, "GET", f"/api/v2/{READ.lower()}", x_token(WRONG))
    send(port, "GET", "/api/v2/version", x_token(READ) + [("Referer", f"http://x/{ADMIN}")])
    send(port, "GET", "/api/v2/version", x_token(READ) + [("User-Agent", ADMIN)])
    send(port, "GET", "/api/v2/version", [(TOKEN_HEADER, READ + "a" * 65536)])
    send(port, "POST", f"{DB}/collections/{cid}/add", x_token(READ), b'{"ids":["x"]}')
    send(port, "POST", f"{DB}/collections/{cid}/query", x_token(ADMIN), json.dumps({"x": READ}).encode())
    assert stack.task.proxy is not None and stack.task.workdir is not None
    proxy_logs = stack.task.proxy.logs()
    chroma_log = (stack.task.workdir / "chroma.log").read_text(errors="replace")
    assert "role=read" in proxy_logs and "role=admin" in proxy_logs and "[redacted]" in proxy_logs
    for token in (READ, ADMIN):
        for text in (proxy_logs, chroma_log):
            assert token.lower() not in text.lower()


def test_upstream_errors_do_not_log_the_token(tmp_path: Path) -> None:
    """With Chroma down, nginx logs an error naming the request; it must not carry the token."""
    with NginxProxy(free_port(), READ, ADMIN, workdir=tmp_path / "proxy") as proxy:
        response = send(proxy.port, "GET", "/api/v2/version?limit=1", x_token(READ))
        assert response.status == 502
        send(proxy.port, "GET", "/api/v2/version", bearer(ADMIN) + [("Referer", f"http://x/?{READ}")])
        logs = proxy.logs()
    assert "connect() failed" in logs
    for token in (READ, ADMIN):
        assert token.lower() not in logs.lower()
