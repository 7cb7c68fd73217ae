"""Run chromadb's own client test suite direct against `chroma run` and through the auth proxy.

    .venv/bin/python scripts/chroma_client_suite.py                      # the whole suite, both ways
    .venv/bin/python scripts/chroma_client_suite.py chromadb/test/test_api.py -k heartbeat
    .venv/bin/python scripts/chroma_client_suite.py --json report.json

The suite is the one the installed chromadb package ships (chromadb/test), in its integration mode
(CHROMA_INTEGRATION_TEST_ONLY=1): its `integration` and `async_integration` fixtures, that is
chromadb's HttpClient and AsyncHttpClient, unchanged, configured from the environment. Each way gets
a fresh server with `allow_reset: true` (the suite resets the database between tests):

- direct: CHROMA_SERVER_HOST/CHROMA_SERVER_HTTP_PORT name the `chroma run` port;
- proxied: they name the project's nginx proxy (the task's config, ontosearch/auth_proxy.conf) in
  front of that server, and chromadb's CHROMA_SERVER_HEADERS setting carries the admin token
  (X-Chroma-Token, or with --bearer Authorization: Bearer), as `HttpClient(headers=...)` does. Not
  chromadb's token auth provider settings: its AsyncHttpClient ignores them (only the sync client
  reads CHROMA_CLIENT_AUTH_PROVIDER), so every async test would fail for want of a token.

Then it lists every test that passes direct but not through the proxy (with the proxy run's reason)
and, for information, the reverse. Exit status 0 when the proxy loses no test, 1 when it does, 2 when
the servers or the suite cannot be started.

The suite runs in an environment of its own, pinned in scripts/chroma_client_suite.requirements.txt
(it needs pytest 8 and chromadb's Python server, the project pins pytest 9), made with pip on first
use under the ontosearch cache directory and reused while that file is unchanged. The servers
(`chroma run`, nginx) are the project's. The whole suite takes a while on 2 cores (property tests
use hypothesis's "fast" preset unless PROPERTY_TESTING_PRESET says otherwise); pass paths or -k to
run part of it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from contextlib import ExitStack
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ontosearch.chroma_process import chroma_executable, free_port, wait_for_http  # noqa: E402
from ontosearch.constants import CHROMA_HOST, HEARTBEAT_PATH, TOKEN_HEADER  # noqa: E402
from ontosearch.proxy import NginxProxy, generate_token  # noqa: E402

PER_TEST_TIMEOUT = 600
REQUIREMENTS = Path(__file__).with_name("chroma_client_suite.requirements.txt")


def suite_python() -> Path:
    """The suite environment's python, made (once per requirements file) with the pinned packages."""
    import hashlib

    from ontosearch.embedders import cache_dir

    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:12]
    venv = cache_dir() / "chroma-client-suite" / digest
    python = venv / "bin" / "python"
    if (venv / ".complete").exists():
        return python
    print(f"chroma_client_suite: making the suite's environment in {venv} (once)", file=sys.stderr,
          flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if not line.startswith("WARNING: Location")]
        print("\n".join(lines[-20:]), file=sys.stderr)
        print(f"chroma_client_suite: cannot install {REQUIREMENTS.name} (pip exit {done.returncode})",
              file=sys.stderr)
        raise SystemExit(2)
    (venv / ".complete").write_text(digest, encoding="utf-8")
    return python


def suite_dir(python: Path) -> Path:
    """chromadb/test of the suite environment's chromadb."""
    code = "import chromadb, os; print(os.path.dirname(chromadb.__file__))"
    found = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    return Path(found.stdout.strip()) / "test"


class ChromaForSuite:
    """`chroma run CONFIG` with a fresh persist directory and `allow_reset: true`."""

    def __init__(self, workdir: Path, log: Path) -> None:
        self.port = free_port(CHROMA_HOST)
        self.workdir = workdir
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ChromaForSuite:
        import yaml

        config = self.workdir / "chroma.yaml"
        config.write_text(yaml.safe_dump({
            "port": self.port, "listen_address": CHROMA_HOST, "persist_path": str(self.workdir / "data"),
            "allow_reset": True,
        }), encoding="utf-8")
        with open(self.log, "ab") as output:
            self.process = subprocess.Popen(
                [chroma_executable(), "run", str(config)], stdout=output, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
                start_new_session=True)
        try:
            wait_for_http(f"http://{CHROMA_HOST}:{self.port}{HEARTBEAT_PATH}", 60, self.process,
                          what="chroma run")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def run_suite(python: Path, name: str, port: int, auth: dict[str, str], tests: list[str], extra: list[str],
              workdir: Path, base: Path) -> dict[str, dict[str, str]]:
    """Run the suite against `port`; returns {test id: {"outcome", "reason"}} from its JUnit report.

    The root directory is the one holding chromadb/, so test ids read chromadb.test.<module>."""
    report = workdir / f"{name}.xml"
    (workdir / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")  # none of the project's options
    env = {
        **os.environ, "CHROMA_INTEGRATION_TEST_ONLY": "1", "CHROMA_SERVER_HOST": CHROMA_HOST,
        "CHROMA_SERVER_HTTP_PORT": str(port), "ANONYMIZED_TELEMETRY": "False", **auth,
    }
    for key in ("CHROMA_SERVER_HEADERS", "CHROMA_CLIENT_AUTH_PROVIDER", "CHROMA_CLIENT_AUTH_CREDENTIALS"):
        if key not in auth:
            env.pop(key, None)
    command = [
        str(python), "-m", "pytest", "-c", str(workdir / "pytest.ini"), "--rootdir", str(base),
        # Some modules of the suite need what only chromadb's own CI has (hnswlib, the distributed
        # log service's protos, pandas): they fail to import both ways and the rest still runs.
        "--continue-on-collection-errors",
        "-p", "no:cacheprovider", "-q", "-rN", f"--junitxml={report}", f"--timeout={PER_TEST_TIMEOUT}",
        *tests, *extra,
    ]
    started = time.monotonic()
    print(f"chroma_client_suite: {name}: running the suite against 127.0.0.1:{port}", file=sys.stderr,
          flush=True)
    done = subprocess.run(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    tail = done.stdout.strip().splitlines()[-1:] or ["(no output)"]
    print(f"chroma_client_suite: {name}: {tail[0]} ({time.monotonic() - started:.0f} s)", file=sys.stderr)
    if not report.exists():
        print(f"chroma_client_suite: {name}: the suite did not run (pytest exit {done.returncode}):\n"
              + done.stdout[-3000:], file=sys.stderr)
        raise SystemExit(2)
    return outcomes(report)


def outcomes(report: Path) -> dict[str, dict[str, str]]:
    """Test id -> outcome ("passed", "failed", "error", "skipped") and the first line of the reason."""
    out: dict[str, dict[str, str]] = {}
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        test_id = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome, reason = "passed", ""
        for tag in ("failure", "error", "skipped"):
            child = case.find(tag)
            if child is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                reason = (child.get("message") or child.text or "").strip().splitlines()[0:1]
                reason = reason[0][:300] if reason else ""
                break
        out[test_id] = {"outcome": outcome, "reason": reason}
    return out


def compare(direct: dict[str, dict[str, str]], proxied: dict[str, dict[str, str]]) -> dict[str, Any]:
    """Tests that pass direct but not through the proxy (the proxy's fault), and the reverse."""
    lost = sorted(t for t, r in direct.items() if r["outcome"] == "passed"
                  and proxied.get(t, {}).get("outcome") != "passed")
    gained = sorted(t for t, r in proxied.items() if r["outcome"] == "passed"
                    and direct.get(t, {}).get("outcome") != "passed")
    count = {name: {kind: sum(1 for r in results.values() if r["outcome"] == kind)
                    for kind in ("passed", "failed", "error", "skipped")}
             for name, results in (("direct", direct), ("proxied", proxied))}
    return {
        "counts": count,
        "pass_direct_not_proxied": [{"test": t, **proxied.get(t, {"outcome": "missing", "reason": ""})}
                                    for t in lost],
        "pass_proxied_not_direct": gained,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tests", nargs="*", help="test paths or ids, relative to the chromadb package's "
                        "parent (default: chromadb/test, the whole suite)")
    parser.add_argument("-k", dest="keyword", help="only tests matching this pytest -k expression")
    parser.add_argument("--bearer", action="store_true",
                        help="send the token as Authorization: Bearer (default: X-Chroma-Token)")
    parser.add_argument("--json", type=Path, help="also write the comparison here")
    args = parser.parse_args(argv)

    python = suite_python()
    base = suite_dir(python).parent.parent  # the site-packages directory that holds chromadb/
    tests = [str(base / t) for t in (args.tests or ["chromadb/test"])]
    missing = [t for t in tests if not Path(t.split("::", 1)[0]).exists()]
    if missing:
        parser.error(f"not in the installed chromadb: {', '.join(missing)}")
    extra = ["-k", args.keyword] if args.keyword else []
    admin, read = generate_token(), generate_token()
    header = {"Authorization": f"Bearer {admin}"} if args.bearer else {TOKEN_HEADER: admin}
    auth = {"CHROMA_SERVER_HEADERS": json.dumps(header)}
    with tempfile.TemporaryDirectory(prefix="chroma-client-suite-") as tmp:
        work = Path(tmp)
        results = {}
        for name in ("direct", "proxied"):
            run_dir = work / name
            run_dir.mkdir()
            with ExitStack() as stack:
                chroma = stack.enter_context(ChromaForSuite(run_dir, run_dir / "chroma.log"))
                port, env = chroma.port, {}
                if name == "proxied":
                    proxy = NginxProxy(chroma.port, read, admin, workdir=run_dir / "proxy")
                    stack.enter_context(proxy)
                    port, env = proxy.port, auth
                results[name] = run_suite(python, name, port, env, tests, extra, run_dir, base)
    report = compare(results["direct"], results["proxied"])
    for name, count in report["counts"].items():
        print(f"{name}: " + ", ".join(f"{n} {kind}" for kind, n in count.items()))
    lost = report["pass_direct_not_proxied"]
    print(f"pass direct but not through the proxy: {len(lost)}")
    for item in lost:
        print(f"  {item['test']}: {item['outcome']}: {item['reason']}")
    if report["pass_proxied_not_direct"]:
        print(f"pass through the proxy but not direct (flaky?): {len(report['pass_proxied_not_direct'])}")
        for test in report["pass_proxied_not_direct"]:
            print(f"  {test}")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
