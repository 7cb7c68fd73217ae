"""The real-AWS integration test's comparison, rehearsed on this machine: local `annotate` and the batch
workflow (the deployed definition in the local runner, the real Lambda handlers, a real task replica)
annotate the bundled example with one snapshot and must agree under tests/result_comparison.py's rule.

If they disagree here, the integration test would fail on AWS for reasons that are not AWS's; when
they agree here, a disagreement there points at what differs on AWS (CPU, images, network, IAM)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from result_comparison import compare_results, parse_results

pytest_plugins = ["workflow_fixtures"]

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "cell_types.txt"


def ontosearch(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("CHROMA_URL", None)
    result = subprocess.run([sys.executable, "-m", "ontosearch", *args], capture_output=True, text=True,
                            timeout=600, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_local_annotate_and_the_batch_workflow_agree_on_the_example(small_snapshot, tmp_path):
    local, batch = tmp_path / "local.csv", tmp_path / "batch.csv"
    common = ("--input", str(EXAMPLE), "--ontology", "cl", "--top-k", "3")
    ontosearch("annotate", *common, "--snapshot", str(small_snapshot), "--output", str(local), "--quiet")
    ontosearch("workflow", *common, "--snapshot", str(small_snapshot), "--output", str(batch))
    expected = parse_results(local.read_text(encoding="utf-8"), "local annotate")
    assert len(expected) == len(EXAMPLE.read_text(encoding="utf-8").splitlines())
    assert sum(len(row.matches) for row in expected) == 3 * len(expected)
    assert compare_results(expected, parse_results(batch.read_text(encoding="utf-8"), "workflow"),
                           "local annotate", "workflow") == []
