"""The real-AWS integration test's comparisons, rehearsed on this machine: local `annotate`, `annotate`
through a server (`serve`: real `chroma run` behind the real nginx auth proxy) and the batch workflow
(the deployed definition in the local runner, the real Lambda handlers, a real task replica) annotate
the bundled example with one snapshot and must agree under tests/result_comparison.py's rule.

If they disagree here, the integration test would fail on AWS for reasons that are not AWS's; when
they agree here, a disagreement there points at what differs on AWS (CPU, images, network, IAM)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from reliability_fixtures import ServeProcess
from result_comparison import LabelResult, compare_results, parse_results

from ontosearch.constants import ENV_TOKEN, ENV_URL

pytest_plugins = ["workflow_fixtures"]

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "cell_types.txt"


def ontosearch(*args: str, **env_extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in {ENV_URL, ENV_TOKEN}}
    env.update(PYTHONPATH=str(ROOT), **env_extra)
    result = subprocess.run([sys.executable, "-m", "ontosearch", *args], capture_output=True, text=True,
                            timeout=600, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


COMMON = ("--input", str(EXAMPLE), "--ontology", "cl", "--top-k", "3")


@pytest.fixture(scope="module")
def local_results(small_snapshot: Path, tmp_path_factory: pytest.TempPathFactory) -> list[LabelResult]:
    out = tmp_path_factory.mktemp("rehearsal") / "local.csv"
    ontosearch("annotate", *COMMON, "--snapshot", str(small_snapshot), "--output", str(out), "--quiet")
    results = parse_results(out.read_text(encoding="utf-8"), "local annotate")
    assert len(results) == len(EXAMPLE.read_text(encoding="utf-8").splitlines())
    assert sum(len(row.matches) for row in results) == 3 * len(results)
    return results


@pytest.mark.slow
def test_local_annotate_and_the_batch_workflow_agree_on_the_example(small_snapshot, local_results, tmp_path):
    out = tmp_path / "batch.csv"
    ontosearch("workflow", *COMMON, "--snapshot", str(small_snapshot), "--output", str(out))
    assert compare_results(local_results, parse_results(out.read_text(encoding="utf-8"), "workflow"),
                           "local annotate", "workflow") == []


@pytest.mark.slow
def test_local_annotate_and_annotate_through_a_server_agree_on_the_example(small_snapshot, local_results,
                                                                          tmp_path):
    server = ServeProcess(small_snapshot, tmp_path / "serve").start()
    try:
        out = tmp_path / "service.csv"
        ontosearch("annotate", *COMMON, "--output", str(out), "--quiet",
                   **{ENV_URL: server.url, ENV_TOKEN: server.read_token})
    finally:
        server.stop()
    assert compare_results(local_results, parse_results(out.read_text(encoding="utf-8"), "server"),
                           "local annotate", "server") == []
