"""Load and faults against the local task replica: `ontosearch serve` (restore + chroma + auth proxy).

CI runs the bounded versions of issue 6's "Load and faults": a 15 s `loadtest` at concurrency 32
through the proxy with zero errors, and Chroma killed under load: clients see errors within 2 s (no
hang), `serve` exits non-zero with a clear message like an ECS task whose essential container died,
no process is left and nothing half-written remains. Everything runs on loopback with real
processes: `chroma run`, Debian's nginx with the task's config, `serve` and `loadtest` as the CLI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from reliability_fixtures import ROOT, ServeProcess, pid_alive, tree_state, vector_snapshot

from ontosearch import loadtest
from ontosearch.constants import ENV_TOKEN

KILL_DETECTION_LIMIT_S = 2.0
CLIENT_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def snapshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("load-snapshot")
    out = work / "snapshot"
    vector_snapshot(work, out, {"cl_load_test": 5000})
    return out


def run_loadtest(url: str, token: str, duration: float, concurrency: int = 32,
                 timeout: float = 120.0, extra: list[str] | None = None) -> tuple[int, dict | None, str]:
    env = {**os.environ, ENV_TOKEN: token, "PYTHONPATH": str(ROOT)}
    completed = subprocess.run(
        [sys.executable, "-m", "ontosearch", "loadtest", "--url", url, "--concurrency", str(concurrency),
         "--duration", str(duration), "--timeout", str(CLIENT_TIMEOUT_S), "--json", *(extra or [])],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout,
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    return completed.returncode, (json.loads(lines[-1]) if lines else None), completed.stderr


# --- the loadtest command itself ----------------------------------------------------------------

def test_loadtest_refuses_non_loopback_urls_unless_allowed(monkeypatch, capsys) -> None:
    monkeypatch.setenv(ENV_TOKEN, "a" * 20)
    assert loadtest.main(["--url", "http://10.20.30.40:8080", "--duration", "1"]) == 2
    assert "not a loopback address" in capsys.readouterr().err
    assert loadtest.parse_url("http://10.20.30.40:8080", allow_remote=True)[1] == "10.20.30.40"
    assert loadtest.parse_url("http://127.0.0.1:9/", allow_remote=False) == ("http", "127.0.0.1", 9, "")
    assert loadtest.parse_url("http://[::1]:9", allow_remote=False)[1] == "::1"
    with pytest.raises(loadtest.LoadTestError, match="query string"):
        loadtest.parse_url(f"http://127.0.0.1:9/?token={'a' * 20}")


def test_loadtest_needs_the_token_in_the_environment_and_never_prints_it(monkeypatch, capsys) -> None:
    monkeypatch.delenv("ONTOSEARCH_TEST_TOKEN", raising=False)
    assert loadtest.main(["--url", "http://127.0.0.1:9", "--token-env", "ONTOSEARCH_TEST_TOKEN"]) == 2
    assert "ONTOSEARCH_TEST_TOKEN is not set" in capsys.readouterr().err


def test_loadtest_bounds_concurrency_and_duration() -> None:
    target = loadtest.Target("http", "127.0.0.1", 9, "", "id", "c", 4, {})
    for kwargs in ({"concurrency": 0}, {"concurrency": loadtest.MAX_CONCURRENCY + 1}, {"duration": 0},
                   {"duration": loadtest.MAX_DURATION_SECONDS + 1}, {"timeout": 0}):
        with pytest.raises(loadtest.LoadTestError):
            loadtest.run_load(target, **kwargs)


def test_loadtest_percentiles_are_nearest_rank() -> None:
    result = loadtest.LoadResult(requests=100, latencies=[i / 1000 for i in range(100, 0, -1)], duration=2.0)
    summary = result.summary()
    assert (summary["p50_ms"], summary["p99_ms"], summary["max_ms"]) == (50.0, 99.0, 100.0)
    assert summary["qps"] == 50.0


def test_query_bodies_are_unit_vectors_of_the_collection_dimension() -> None:
    bodies = loadtest.query_bodies(384, n_results=7, count=3)
    assert len(set(bodies)) == 3
    for body in bodies:
        document = json.loads(body)
        (vector,) = document["query_embeddings"]
        assert len(vector) == 384 and document["n_results"] == 7
        assert abs(sum(x * x for x in vector) - 1.0) < 1e-3


# --- load against serve -------------------------------------------------------------------------

@pytest.mark.slow
def test_loadtest_15s_at_32_clients_through_serve_has_zero_errors(snapshot_dir: Path, tmp_path: Path) -> None:
    serve = ServeProcess(snapshot_dir, tmp_path / "tmp").start()
    try:
        code, summary, stderr = run_loadtest(serve.url, serve.read_token, duration=15)
        print("\nloadtest 15 s x 32 through serve:", json.dumps(summary))
        assert code == 0, stderr
        assert summary is not None and summary["errors"] == 0
        assert summary["requests"] > 32 and summary["qps"] > 0
        assert 0 < summary["p50_ms"] <= summary["p99_ms"] <= summary["max_ms"]
        assert serve.read_token not in stderr + json.dumps(summary)

        # The admin token is not needed for queries; a wrong token is refused before any load.
        code, summary, stderr = run_loadtest(serve.url, "Wrong" + serve.read_token[5:], duration=1)
        assert code == 2 and summary is None and "401" in stderr

        serve.process.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=20) == 0
        assert any("stopping on SIGTERM" in line for line in serve.stderr)
    finally:
        serve.stop()


@pytest.mark.slow
def test_killing_chroma_under_load_fails_fast_and_leaves_nothing_behind(snapshot_dir: Path,
                                                                         tmp_path: Path) -> None:
    snapshot_before = tree_state(snapshot_dir)
    tmpdir = tmp_path / "tmp"
    serve = ServeProcess(snapshot_dir, tmpdir).start()
    try:
        chroma_pid, proxy_pid = serve.pid_of("chroma"), serve.pid_of("auth proxy")
        assert [p.name for p in tmpdir.iterdir() if p.name.startswith("ontosearch-serve-")]
        env = {**os.environ, ENV_TOKEN: serve.read_token, "PYTHONPATH": str(ROOT)}
        load = subprocess.Popen(
            [sys.executable, "-m", "ontosearch", "loadtest", "--url", serve.url, "--concurrency", "32",
             "--duration", "10", "--timeout", str(CLIENT_TIMEOUT_S), "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        try:
            time.sleep(4)  # under load
            assert load.poll() is None and pid_alive(chroma_pid)
            killed_at = time.time()
            os.kill(chroma_pid, signal.SIGKILL)
            serve_code = serve.wait(timeout=15)
            serve_exited_after = time.time() - killed_at
            out, err = load.communicate(timeout=60)
        finally:
            if load.poll() is None:
                load.kill()
                load.wait()
        summary = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
        detection = summary["first_error_unix"] - killed_at
        print(f"\nchroma killed under load: first client error after {detection:.3f} s, serve exited "
              f"after {serve_exited_after:.2f} s with {serve_code}; load summary {json.dumps(summary)}")

        # Clients: errors, quickly, and no request hung beyond its timeout.
        assert load.returncode == 1, err
        assert summary["errors"] > 0 and summary["requests"] > summary["errors"]
        assert 0 <= detection < KILL_DETECTION_LIMIT_S
        assert summary["max_error_ms"] <= CLIENT_TIMEOUT_S * 1000 + 500

        # serve: non-zero with a clear message, as an ECS task stops when an essential container exits.
        stderr = "\n".join(serve.stderr)
        assert serve_code != 0
        assert "chroma exited with code" in stderr
        assert "as an ECS task stops when an essential container exits" in stderr
        assert "Traceback" not in stderr

        # Nothing left: no process, no work directory (restored data, proxy config with the tokens),
        # and the snapshot it restored from is untouched.
        deadline = time.monotonic() + 5
        while (pid_alive(chroma_pid) or pid_alive(proxy_pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not pid_alive(chroma_pid) and not pid_alive(proxy_pid)
        assert list(tmpdir.iterdir()) == []
        assert tree_state(snapshot_dir) == snapshot_before
    finally:
        serve.stop()
