"""scripts/chroma_client_suite.py: reading a real JUnit report and finding what the proxy loses.

The script itself runs chromadb's whole client suite twice (minutes, in an environment of its own);
here its report reading and comparison are checked on a JUnit file that pytest really writes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from chroma_client_suite import compare, outcomes  # noqa: E402

SAMPLE = '''
import pytest

@pytest.fixture
def broken():
    raise RuntimeError("no server")

def test_ok():
    pass

def test_fails():
    assert 1 == 2, "heartbeat got 404"

@pytest.mark.skip(reason="needs a cluster")
def test_skipped():
    pass

def test_setup_error(broken):
    pass

@pytest.mark.parametrize("client", ["integration", "async_integration"])
def test_heartbeat(client):
    assert client == "integration", "auth proxy: only /api/v2/ is served"
'''


def test_outcomes_and_the_tests_the_proxy_loses(tmp_path: Path) -> None:
    (tmp_path / "test_sample.py").write_text(SAMPLE, encoding="utf-8")
    (tmp_path / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    report = tmp_path / "report.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-c", str(tmp_path / "pytest.ini"), "--rootdir",
                    str(tmp_path), "-p", "no:cacheprovider", "-q", f"--junitxml={report}",
                    str(tmp_path / "test_sample.py")], cwd=tmp_path, capture_output=True, check=False)
    got = outcomes(report)
    assert {test: result["outcome"] for test, result in got.items()} == {
        "test_sample::test_ok": "passed",
        "test_sample::test_fails": "failed",
        "test_sample::test_skipped": "skipped",
        "test_sample::test_setup_error": "error",
        "test_sample::test_heartbeat[integration]": "passed",
        "test_sample::test_heartbeat[async_integration]": "failed",
    }
    assert "only /api/v2/ is served" in got["test_sample::test_heartbeat[async_integration]"]["reason"]

    direct = {test: {"outcome": "passed", "reason": ""} for test in got}
    direct["test_sample::test_skipped"] = {"outcome": "skipped", "reason": ""}
    report_ = compare(direct, got)
    lost = [item["test"] for item in report_["pass_direct_not_proxied"]]
    # a test skipped both ways is not the proxy's fault; one that passes only direct is
    assert lost == ["test_sample::test_fails", "test_sample::test_heartbeat[async_integration]",
                    "test_sample::test_setup_error"]
    assert report_["counts"]["proxied"] == {"passed": 2, "failed": 2, "error": 1, "skipped": 1}
    assert compare(got, got)["pass_direct_not_proxied"] == []
