"""`python -m ontosearch loadtest`: many concurrent query clients against a Chroma server or its proxy.

It sends what the matcher sends in production (POST .../collections/<id>/query with an embedding of
the collection's own dimension, with the read token), from keep-alive connections, one per client
thread, so the numbers describe the server and the proxy rather than connection setup. It is bounded
on purpose: a fixed duration, a per-request timeout (a dead server shows up as errors within that
timeout, never as a hang), and loopback targets only unless --allow-remote is given, so nobody
load-tests a shared deployment by accident. Any error makes the exit status non-zero.
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import math
import os
import random
import socket
import sys
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field

from ontosearch.constants import ENV_TOKEN, TOKEN_HEADER

COLLECTIONS_PATH = "/api/v2/tenants/default_tenant/databases/default_database/collections"
MAX_CONCURRENCY = 512
MAX_DURATION_SECONDS = 3600.0
# Distinct query vectors, serialised once up front so the clients spend their time waiting on the
# server rather than building JSON.
QUERY_POOL_SIZE = 256
# Error events kept with their timestamps (the rest are only counted).
ERROR_EVENTS_KEPT = 1000


class LoadTestError(RuntimeError):
    """The load test could not start: bad URL, no token, no collection to query."""


@dataclass
class Target:
    """Where to send queries: the server, its collection and the JSON bodies to send."""

    scheme: str
    host: str
    port: int
    base_path: str
    collection_id: str
    collection_name: str
    dimension: int
    headers: dict[str, str]


@dataclass
class LoadResult:
    """What happened during a run. Latencies in seconds; times relative to the run's start."""

    requests: int = 0
    errors: int = 0
    duration: float = 0.0
    latencies: list[float] = field(default_factory=list)
    error_kinds: Counter = field(default_factory=Counter)
    # (seconds since start at which the failed request ended, kind, seconds the request took)
    error_events: list[tuple[float, str, float]] = field(default_factory=list)
    started_at: float = 0.0  # time.monotonic() at the start
    started_unix: float = 0.0  # time.time() at the start (to line events up with other processes)

    def percentile(self, fraction: float) -> float:
        """Nearest-rank percentile of the successful requests' latencies (0.0 if none)."""
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        rank = max(1, math.ceil(fraction * len(ordered)))
        return ordered[min(rank, len(ordered)) - 1]

    @property
    def qps(self) -> float:
        return (self.requests - self.errors) / self.duration if self.duration > 0 else 0.0

    def summary(self) -> dict:
        first_error = self.error_events[0][0] if self.error_events else None
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_kinds": dict(self.error_kinds),
            "duration_s": round(self.duration, 3),
            "qps": round(self.qps, 1),
            "p50_ms": round(self.percentile(0.50) * 1000, 2),
            "p99_ms": round(self.percentile(0.99) * 1000, 2),
            "max_ms": round(max(self.latencies, default=0.0) * 1000, 2),
            # When the first request failed (Unix time) and the slowest failure: a dead server must
            # show up as errors within the client timeout, never as a hang.
            "first_error_unix": None if first_error is None else round(self.started_unix + first_error, 3),
            "max_error_ms": round(max((e[2] for e in self.error_events), default=0.0) * 1000, 2),
        }


def is_loopback_host(host: str) -> bool:
    """True if every address `host` resolves to is a loopback address."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def parse_url(url: str, allow_remote: bool = False) -> tuple[str, str, int, str]:
    """Split a server URL into (scheme, host, port, base path); refuse non-loopback hosts by default."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in {"http", "https"} or not parsed.hostname:
        raise LoadTestError(f"--url {url!r} is not an http(s) URL; give e.g. http://127.0.0.1:8080")
    if parsed.query or parsed.fragment or parsed.username or parsed.password:
        raise LoadTestError("--url must not carry a query string, fragment or credentials; "
                            "the token is read from the environment (--token-env)")
    if not allow_remote and not is_loopback_host(parsed.hostname):
        raise LoadTestError(
            f"--url host {parsed.hostname!r} is not a loopback address; load tests run against a local "
            "`ontosearch serve` by default. Pass --allow-remote to load a remote server you are responsible "
            "for")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return parsed.scheme, parsed.hostname, port, parsed.path.rstrip("/")


def _connection(scheme: str, host: str, port: int, timeout: float) -> http.client.HTTPConnection:
    if scheme == "https":
        return http.client.HTTPSConnection(host, port, timeout=timeout)
    return http.client.HTTPConnection(host, port, timeout=timeout)


def _get_json(scheme: str, host: str, port: int, path: str, headers: dict[str, str], timeout: float):
    connection = _connection(scheme, host, port, timeout)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        body = response.read()
    except OSError as exc:
        raise LoadTestError(f"cannot reach {scheme}://{host}:{port}: {exc}") from exc
    finally:
        connection.close()
    if response.status == 401:
        raise LoadTestError(f"the server answered 401 to GET {path}: the token is missing or wrong")
    if response.status != 200:
        raise LoadTestError(f"the server answered {response.status} to GET {path}: "
                            f"{body[:200].decode(errors='replace')}")
    return json.loads(body)


def resolve_target(
    url: str,
    token: str | None,
    collection: str | None = None,
    allow_remote: bool = False,
    timeout: float = 10.0,
) -> Target:
    """Find the collection to query and its dimension (an empty collection cannot be queried)."""
    scheme, host, port, base_path = parse_url(url, allow_remote)
    headers = {"Content-Type": "application/json"}
    if token:
        headers[TOKEN_HEADER] = token
    collections = _get_json(scheme, host, port, base_path + COLLECTIONS_PATH, headers, timeout)
    if not collections:
        raise LoadTestError(f"the server at {url} has no collections; serve a snapshot first")
    if collection is not None:
        chosen = [c for c in collections if c.get("name") == collection or c.get("id") == collection]
        if not chosen:
            names = ", ".join(sorted(str(c.get("name")) for c in collections))
            raise LoadTestError(f"collection {collection!r} not found on {url}; it has: {names}")
    else:
        chosen = [c for c in collections if c.get("dimension")] or collections
    picked = chosen[0]
    dimension = picked.get("dimension")
    if not dimension:
        raise LoadTestError(f"collection {picked.get('name')!r} is empty (no dimension yet); "
                            "pick one with records via --collection")
    return Target(scheme, host, port, base_path, str(picked["id"]), str(picked["name"]), int(dimension),
                  headers)


def query_bodies(dimension: int, n_results: int, count: int = QUERY_POOL_SIZE, seed: int = 0) -> list[bytes]:
    """Unit-length random query embeddings as ready-to-send JSON bodies."""
    rng = random.Random(seed)
    bodies = []
    for _ in range(count):
        vector = [rng.gauss(0.0, 1.0) for _ in range(dimension)]
        norm = sum(x * x for x in vector) ** 0.5 or 1.0
        body = {
            "query_embeddings": [[round(x / norm, 6) for x in vector]],
            "n_results": n_results,
            "include": ["distances", "metadatas"],
        }
        bodies.append(json.dumps(body).encode())
    return bodies


def run_load(
    target: Target,
    concurrency: int = 32,
    duration: float = 60.0,
    timeout: float = 5.0,
    n_results: int = 10,
    stop: threading.Event | None = None,
) -> LoadResult:
    """Run `concurrency` client threads for `duration` seconds (or until `stop` is set)."""
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise LoadTestError(f"--concurrency must be between 1 and {MAX_CONCURRENCY}, got {concurrency}")
    if not 0 < duration <= MAX_DURATION_SECONDS:
        raise LoadTestError(f"--duration must be between 0 and {MAX_DURATION_SECONDS:.0f} s, got {duration}")
    if timeout <= 0:
        raise LoadTestError(f"--timeout must be positive, got {timeout}")
    bodies = query_bodies(target.dimension, n_results)
    path = f"{target.base_path}{COLLECTIONS_PATH}/{target.collection_id}/query"
    stop = stop or threading.Event()
    result = LoadResult()
    lock = threading.Lock()
    start = time.monotonic()
    result.started_at, result.started_unix = start, time.time()
    deadline = start + duration

    def client(index: int) -> None:
        latencies: list[float] = []
        requests = 0
        connection: http.client.HTTPConnection | None = None
        position = index * 7
        while not stop.is_set() and time.monotonic() < deadline:
            body = bodies[position % len(bodies)]
            position += 1
            if connection is None:
                connection = _connection(target.scheme, target.host, target.port, timeout)
            began = time.monotonic()
            kind = None
            try:
                connection.request("POST", path, body=body, headers=target.headers)
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    kind = f"HTTP {response.status}"
                if response.will_close:
                    connection.close()
                    connection = None
            except (OSError, http.client.HTTPException) as exc:
                kind = type(exc).__name__
                if isinstance(exc, TimeoutError):
                    kind = "timeout"
                connection.close()
                connection = None
            ended = time.monotonic()
            requests += 1
            if kind is None:
                latencies.append(ended - began)
                continue
            with lock:
                result.errors += 1
                result.error_kinds[kind] += 1
                if len(result.error_events) < ERROR_EVENTS_KEPT:
                    result.error_events.append((ended - start, kind, ended - began))
            if kind != "timeout":
                # A refused connection fails in microseconds; do not spin on it.
                stop.wait(0.01)
        if connection is not None:
            connection.close()
        with lock:
            result.requests += requests
            result.latencies.extend(latencies)

    threads = [threading.Thread(target=client, args=(i,), name=f"loadtest-{i}", daemon=True)
               for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        # Every request is bounded by `timeout`, so this join is bounded too.
        thread.join()
    result.duration = time.monotonic() - start
    result.error_events.sort()
    return result


def format_summary(result: LoadResult, target: Target, concurrency: int) -> str:
    s = result.summary()
    lines = [
        f"loadtest: {target.collection_name} ({target.dimension}-d) at {target.scheme}://{target.host}:"
        f"{target.port}, {concurrency} clients, {s['duration_s']:.1f} s",
        f"requests {s['requests']}  errors {s['errors']}  qps {s['qps']:.1f}  "
        f"p50 {s['p50_ms']:.1f} ms  p99 {s['p99_ms']:.1f} ms  max {s['max_ms']:.1f} ms",
    ]
    if result.error_kinds:
        kinds = ", ".join(f"{kind}: {count}" for kind, count in result.error_kinds.most_common())
        lines.append(f"errors by kind: {kinds}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ontosearch loadtest",
        description="Concurrent query load against an ontosearch server (through its auth proxy).",
    )
    parser.add_argument("--url", required=True, help="server URL, e.g. http://127.0.0.1:8080 (loopback only "
                        "unless --allow-remote)")
    parser.add_argument("--concurrency", type=int, default=32, help="client threads (default 32)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds to run (default 60)")
    parser.add_argument("--token-env", default=ENV_TOKEN, help=f"environment variable holding the read token "
                        f"(default {ENV_TOKEN}); the token itself is never printed")
    parser.add_argument("--collection", help="collection name or id (default: the first non-empty one)")
    parser.add_argument("--n-results", type=int, default=10, help="results per query (default 10)")
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="per-request timeout in seconds (default 5); a slower answer counts as an error")
    parser.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --url")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON line instead")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    token = os.environ.get(args.token_env)
    if not token:
        print(f"loadtest: environment variable {args.token_env} is not set; export the read token there "
              "(ontosearch serve prints the path of its token file)", file=sys.stderr)
        return 2
    try:
        target = resolve_target(args.url, token, args.collection, args.allow_remote)
        print(f"loadtest: {args.concurrency} clients for {args.duration:g} s against collection "
              f"{target.collection_name!r} ...", file=sys.stderr, flush=True)
        result = run_load(target, args.concurrency, args.duration, args.timeout, args.n_results)
    except LoadTestError as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("loadtest: interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps({"collection": target.collection_name, "concurrency": args.concurrency,
                          **result.summary()}))
    else:
        print(format_summary(result, target, args.concurrency))
    if result.requests == 0:
        print("loadtest: no request completed", file=sys.stderr)
        return 1
    return 1 if result.errors else 0
