"""How the query step reaches the task's Chroma: token from Secrets Manager, errors sorted by retry policy.

A Lambda container serves many chunks, so the client is cached per container (the token is
read once by ontosearch.connect.token_from_secret), for the last MAX_CLIENTS task URLs it served.
Errors are translated into the workflow's names: a refused token is a configuration mistake
(ChromaAuthError, not retried); a proxy that does not answer or answers 5xx is transient
(ChromaUnavailableError, retried with backoff by the state machine).
"""

from __future__ import annotations

import contextlib
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from ontosearch.constants import TOKEN_HEADER
from ontosearch.workflow.errors import ChromaAuthError, ChromaUnavailableError

COLLECTIONS_PATH = "/api/v2/tenants/default_tenant/databases/default_database/collections"
_clients: OrderedDict[tuple[str, str], Any] = OrderedDict()
_lock = threading.Lock()
# Clients kept, most recently used last. Every execution has a task of its own (a new URL), and a
# warm container may serve chunks of many executions: a client kept for each would hold its
# connection's file descriptor after the task is gone, and a Lambda execution environment has
# 1,024 file descriptors (https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html).
MAX_CLIENTS = 4


def check_access(url: str, token: str, timeout: float = 10.0) -> None:
    """One authenticated read through the proxy; raises the workflow error that fits the answer."""
    request = urllib.request.Request(url.rstrip("/") + COLLECTIONS_PATH + "?limit=1",
                                     headers={TOKEN_HEADER: token})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise ChromaAuthError(
                f"the task's proxy at {url} refused the token (HTTP {exc.code}); the query Lambda reads a "
                "different secret than the task's proxy uses; point both at the same Secrets Manager secret"
            ) from None
        if exc.code >= 500 or exc.code == 429:
            raise ChromaUnavailableError(f"the task's proxy at {url} answered HTTP {exc.code}") from None
        raise ChromaUnavailableError(f"the task's proxy at {url} answered HTTP {exc.code}") from None
    except (OSError, urllib.error.URLError) as exc:
        raise ChromaUnavailableError(f"the task's proxy at {url} did not answer: {exc}") from None


def client_for(url: str, token: str) -> Any:
    """A chromadb HttpClient through the proxy, created once per (url, token) after a checked read."""
    key = (url, token)
    with _lock:
        cached = _clients.get(key)
        if cached is not None:
            _clients.move_to_end(key)
    if cached is not None:
        return cached
    check_access(url, token)
    import chromadb
    from chromadb.config import Settings

    parts = urllib.parse.urlsplit(url)
    with translate_client_errors():
        client = chromadb.HttpClient(
            host=parts.hostname, port=parts.port or (443 if parts.scheme == "https" else 80),
            ssl=parts.scheme == "https", headers={TOKEN_HEADER: token},
            settings=Settings(anonymized_telemetry=False),
        )
    with _lock:
        _clients[key] = client
        evicted = [_clients.popitem(last=False)[1] for _ in range(len(_clients) - MAX_CLIENTS)]
    for old in evicted:
        _close(old)
    return client


def _close(client: Any) -> None:
    """Release an evicted client's connections now.

    Client.close only gives back chromadb's reference to the client's system, whose HTTP session
    stays open while anything still refers to it (a cached matcher does, until it is replaced).
    Every chromadb HttpClient has a system and a session of its own (its identifier is a fresh
    uuid4: chromadb/api/shared_system_client.py), so closing the session here touches no other client.
    """
    with contextlib.suppress(Exception):
        client.close()
    session = getattr(getattr(client, "_server", None), "_session", None)
    if session is not None:
        with contextlib.suppress(Exception):
            session.close()


def forget_clients() -> None:
    with _lock:
        forgotten = list(_clients.values())
        _clients.clear()
    for old in forgotten:
        _close(old)


@contextlib.contextmanager
def translate_client_errors() -> Iterator[None]:
    """chromadb/httpx failures while talking to the task -> the workflow's transient/auth errors."""
    try:
        yield
    except (ChromaAuthError, ChromaUnavailableError):
        raise
    except Exception as exc:
        text = f"{type(exc).__name__}: {exc}"
        lowered = text.lower()
        if "401" in text or "403" in text or "unauthorized" in lowered or "forbidden" in lowered:
            raise ChromaAuthError(f"the task's proxy refused the token: {text}") from None
        module = type(exc).__module__.split(".")[0]
        if module in {"httpx", "httpcore"} or isinstance(exc, OSError) or any(
            marker in lowered for marker in ("connect", "timeout", "timed out", "502", "503", "504")
        ):
            raise ChromaUnavailableError(f"the task's Chroma did not answer: {text}") from None
        raise
