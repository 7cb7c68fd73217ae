"""`connect()`: one call that returns a chromadb client, remote through the auth proxy or embedded.

Application code, the Lambdas and the CLI call it without knowing which one they get: with a URL
(argument or CHROMA_URL) it is an HttpClient that sends the token in the X-Chroma-Token header;
without one it is a PersistentClient on a local directory.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from ontosearch.constants import (
    ENV_PATH,
    ENV_TOKEN,
    ENV_TOKEN_SECRET_ARN,
    ENV_URL,
    HEARTBEAT_PATH,
    TOKEN_HEADER,
)

IDENTITY_PATH = "/api/v2/auth/identity"
# Seconds a remote request may take: above the slowest batched query, below "hung".
DEFAULT_TIMEOUT = 120.0

_secret_cache: dict[str, str] = {}
_secret_lock = threading.Lock()


class ConnectError(RuntimeError):
    """No client could be made: the message says what was wrong and what to set."""


def default_local_path() -> Path:
    """Per-user data directory for the embedded store (XDG base directory spec)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "ontosearch" / "chroma"


def _secret_region(arn: str) -> str | None:
    parts = arn.split(":")
    if len(parts) >= 7 and parts[0] == "arn" and parts[2] == "secretsmanager" and parts[3]:
        return parts[3]
    return None


def token_from_secret(arn: str) -> str:
    """The token stored in a Secrets Manager secret, fetched once per process and cached.

    The secret's value is the token itself; a JSON object with a "token" key is accepted too.
    """
    with _secret_lock:
        cached = _secret_cache.get(arn)
        if cached is not None:
            return cached
        region = _secret_region(arn)
        if region is None:
            raise ConnectError(f"{ENV_TOKEN_SECRET_ARN}={arn!r} is not a Secrets Manager secret ARN "
                               "(arn:aws:secretsmanager:<region>:<account>:secret:<name>)")
        import boto3
        import botocore.exceptions

        try:
            response = boto3.client("secretsmanager", region_name=region).get_secret_value(SecretId=arn)
        except botocore.exceptions.ClientError as exc:
            error = exc.response.get("Error", {})
            code, said = error.get("Code", "error"), str(error.get("Message", "")).strip()
            detail = f"{code}: {said}" if said else code
            # The stack's token secrets are encrypted with its own KMS key: reading one needs
            # kms:Decrypt on that key (the stack output kms_key_arn) as well as GetSecretValue.
            raise ConnectError(f"could not read the token secret {arn} ({detail}); "
                               "check the ARN and that this role may call secretsmanager:GetSecretValue on "
                               "it and kms:Decrypt on the stack's key (output kms_key_arn)") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise ConnectError(f"could not read the token secret {arn}: {exc}") from None
        if "SecretString" not in response:
            raise ConnectError(f"the token secret {arn} holds no SecretString (a binary secret?); store the "
                               "proxy's read token as its text value")
        value = response["SecretString"].strip()
        if value.startswith("{"):
            try:
                value = str(json.loads(value).get("token", "")).strip()
            except (ValueError, AttributeError):
                value = ""
        if not value:
            raise ConnectError(f"the token secret {arn} is empty (or a JSON object without a \"token\" "
                               "key); store the proxy's read token as its value")
        _secret_cache[arn] = value
        return value


def clear_secret_cache() -> None:
    with _secret_lock:
        _secret_cache.clear()


def resolve_token(token: str | None = None) -> str | None:
    """The token to send: the argument, CHROMA_TOKEN, or the secret CHROMA_TOKEN_SECRET_ARN names."""
    if token:
        return token
    if os.environ.get(ENV_TOKEN):
        return os.environ[ENV_TOKEN]
    arn = os.environ.get(ENV_TOKEN_SECRET_ARN)
    if arn:
        return token_from_secret(arn)
    return None


def _parse_url(url: str) -> tuple[str, int, bool, str]:
    parsed = urllib.parse.urlsplit(url.strip())
    if parsed.scheme not in {"http", "https"} or not parsed.hostname:
        raise ConnectError(f"{ENV_URL}={url!r} is not an http(s) URL; use e.g. https://chroma.example.org "
                           "or http://127.0.0.1:8080")
    if parsed.path not in {"", "/"} or parsed.query or parsed.fragment:
        raise ConnectError(f"{ENV_URL}={url!r} has a path or query; give only scheme, host and port "
                           "(the client adds /api/v2 itself)")
    if parsed.username or parsed.password:
        raise ConnectError(f"{ENV_URL} must not contain credentials; put the token in {ENV_TOKEN}")
    ssl = parsed.scheme == "https"
    try:
        port = parsed.port or (443 if ssl else 80)
    except ValueError as exc:
        raise ConnectError(f"{ENV_URL}={url!r} has an invalid port: {exc}") from None
    base = f"{parsed.scheme}://{parsed.netloc}"
    return parsed.hostname, port, ssl, base


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects are answered, not followed: urllib would resend the token header to wherever the
    server points (an http:// URL of a stack whose port 80 redirects to https would send the token in
    clear first), and chromadb's client does not follow them at all."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)
REDIRECTS = {301, 302, 303, 307, 308}


def _get(url: str, headers: dict[str, str], timeout: float) -> tuple[int, str]:
    """(HTTP status, Location header or "") of a GET that follows no redirect."""
    request = urllib.request.Request(url, headers=headers)
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return int(response.status), ""
    except urllib.error.HTTPError as exc:
        return int(exc.code), str(exc.headers.get("Location") or "")


def _redirect_problem(base_url: str, status: int, location: str) -> str:
    target = urllib.parse.urlsplit(location)
    suggestion = f"{target.scheme}://{target.netloc}" if target.scheme and target.netloc else location
    return (f"Chroma at {base_url} redirects (HTTP {status}) to {location or 'another URL'}; set {ENV_URL} "
            f"to {suggestion or 'the URL it redirects to'} (the token is sent only where {ENV_URL} points)")


def check_server(base_url: str, token: str, timeout: float = 5.0, wait: float = 0.0) -> None:
    """Make sure the server answers and accepts the token before a client is built.

    The chromadb HttpClient makes requests in its constructor; checking first turns a connection
    refused or a 401 into a message that says which variable to fix.
    """
    import time

    deadline = time.monotonic() + max(wait, 0.0)
    while True:
        try:
            status, location = _get(base_url + HEARTBEAT_PATH, {}, timeout)
            if status in REDIRECTS:
                raise ConnectError(_redirect_problem(base_url, status, location))
            problem = None if status == 200 else f"heartbeat answered HTTP {status}"
        except (OSError, urllib.error.URLError) as exc:
            reason = getattr(exc, "reason", exc)
            problem = f"cannot connect ({reason})"
        if problem is None:
            break
        if time.monotonic() >= deadline:
            raise ConnectError(f"Chroma at {base_url} is not reachable or not healthy: {problem}; check "
                               f"{ENV_URL} and that the server (or `python -m ontosearch serve`) is running")
        time.sleep(0.25)
    try:
        status, location = _get(base_url + IDENTITY_PATH, {TOKEN_HEADER: token}, timeout)
    except (OSError, urllib.error.URLError) as exc:
        raise ConnectError(f"Chroma at {base_url} stopped answering: {getattr(exc, 'reason', exc)}") from None
    if status in REDIRECTS:
        raise ConnectError(_redirect_problem(base_url, status, location))
    if status == 401:
        raise ConnectError(f"the server at {base_url} refused the token (HTTP 401); check {ENV_TOKEN} or "
                           f"{ENV_TOKEN_SECRET_ARN} (serve prints where its tokens are)")
    if status != 200:
        raise ConnectError(f"the server at {base_url} answered HTTP {status} to an authenticated request; "
                           "is this the ontosearch auth proxy?")


def _set_request_timeout(client: Any, timeout: float) -> None:
    """Bound the HTTP client's requests; chromadb exposes no setting for it, so set it on its session."""
    import httpx

    session = getattr(getattr(client, "_server", None), "_session", None)
    if isinstance(session, httpx.Client):
        session.timeout = httpx.Timeout(timeout, connect=min(timeout, 10.0))


def connect(
    url: str | None = None,
    token: str | None = None,
    path: str | os.PathLike[str] | None = None,
    wait: float = 0.0,
    timeout: float | None = DEFAULT_TIMEOUT,
) -> Any:
    """A chromadb client: remote when a URL is given or CHROMA_URL is set, else embedded on disk.

    Arguments win over the environment. `wait` gives a server that is starting that many seconds to
    become healthy. `timeout` bounds every remote request (chromadb's own default is no timeout, so
    a stalled server would hang the caller forever); None keeps chromadb's behaviour. Raises
    ConnectError with what to fix.
    """
    if url and path is not None:
        raise ConnectError("give either url (a remote server) or path (an embedded store), not both")
    if path is None:
        url = url or os.environ.get(ENV_URL) or None
    if url:
        host, port, ssl, base = _parse_url(url)
        resolved = resolve_token(token)
        if not resolved:
            raise ConnectError(f"{ENV_URL} is {base} but no token was given; set {ENV_TOKEN} or "
                               f"{ENV_TOKEN_SECRET_ARN} (or pass token=...)")
        check_server(base, resolved, wait=wait)
        import chromadb

        try:
            client = chromadb.HttpClient(host=host, port=port, ssl=ssl, headers={TOKEN_HEADER: resolved})
        except Exception as exc:  # noqa: BLE001 - the constructor's own requests; say what failed
            raise ConnectError(f"the Chroma client could not open {base}: {type(exc).__name__}: "
                               f"{exc or 'no message'}") from None
        if timeout is not None:
            _set_request_timeout(client, timeout)
        return client
    local = Path(path) if path is not None else Path(os.environ.get(ENV_PATH) or default_local_path())
    local = local.expanduser()
    try:
        local.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConnectError(f"cannot create the local store {local}: {exc.strerror}; set {ENV_PATH} to a "
                           "writable directory") from None
    import chromadb

    return chromadb.PersistentClient(path=str(local))
