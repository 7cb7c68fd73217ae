"""The restore container stops when ECS stops the task, though it runs as its container's PID 1.

The kernel delivers to a PID namespace's init process no signal it has no handler for (pid_namespaces(7),
"signals ... only if the init process has established a handler"). The restore command runs as PID 1
(no init process in the task definition), so without its own SIGTERM handler ECS's stop signal is
ignored and the container dies only at SIGKILL, stopTimeout later (30 s on Fargate by default). Run
here as PID 1 of a new PID namespace (`unshare`, as root: CI runs as root), waiting for a first
snapshot in an empty bucket of a moto server.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _can_unshare() -> str:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return "needs root and util-linux unshare for a PID namespace"
    done = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True)
    return "" if done.returncode == 0 else f"unshare refused: {done.stderr.decode()[-200:]}"


_CANNOT = _can_unshare()


@pytest.mark.skipif(bool(_CANNOT), reason=_CANNOT or "-")
def test_a_waiting_restore_running_as_pid_1_ends_at_sigterm(tmp_path: Path) -> None:
    from moto.server import ThreadedMotoServer

    from ontosearch.chroma_process import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    proc = None
    try:
        endpoint = f"http://127.0.0.1:{port}"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "AWS_ENDPOINT_URL": endpoint,
               "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
               "AWS_DEFAULT_REGION": "us-east-1",
               "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                     aws_secret_access_key="test").create_bucket(Bucket="empty-store")
        proc = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc",
             sys.executable, "-m", "ontosearch", "restore-snapshot", "--bucket", "empty-store",
             "--wait-for-snapshot", "--poll-seconds", "30", "--into", str(tmp_path / "data")],
            cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
        waiting = proc.stderr.readline()
        assert "checking again every 30 s" in waiting, waiting
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        (restore,) = children
        ns_pids = next(line for line in Path(f"/proc/{restore}/status").read_text().splitlines()
                       if line.startswith("NSpid:")).split()[1:]
        assert ns_pids[-1] == "1", "the restore process is its namespace's PID 1"
        started = time.monotonic()
        os.kill(int(restore), signal.SIGTERM)
        code = proc.wait(timeout=10)
        assert time.monotonic() - started < 5
        assert code == 128 + signal.SIGTERM
        assert "stopped by SIGTERM" in proc.stderr.read()
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        server.stop()
