"""A local replica of the on-demand ECS task, run as its own process by the local runner's "RunTask".

Containers and their ECS semantics, mirrored:
- restore (not essential): the exact command of the RunTask override, run with this interpreter
  and `--into` pointed at the replica's data directory; chroma only starts if it succeeds
  (dependsOn SUCCESS);
- chroma + proxy (essential): `serve.LocalTask` on the restored directory with the tokens read
  from Secrets Manager at start, as ECS injects `secrets`;
- task-agent (essential): `python -m ontosearch task-agent` with the overrides' environment; it
  talks to the runner's Step Functions endpoint through plain boto3 (AWS_ENDPOINT_URL_SFN).
When an essential part exits, everything stops and this process exits, as an ECS task does.
SIGTERM (the runner's StopTask) stops everything too.

Usage: python -m ontosearch.workflow.local_task SPEC.json   (SPEC written by ontosearch.workflow.local)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ontosearch.constants import (
    CHROMA_CONTAINER,
    DATA_DIR,
    ENV_ADMIN_TOKEN,
    ENV_TASK_URL,
    ENV_TOKEN,
    ENV_WORKFLOW_BUCKET,
    PROXY_CONTAINER,
    RESTORE_CONTAINER,
    TASK_AGENT_CONTAINER,
)


def log(message: str) -> None:
    print(f"local-task: {message}", file=sys.stderr, flush=True)


def _secret(arn: str) -> str:
    import boto3

    return boto3.client("secretsmanager", region_name=arn.split(":")[3]).get_secret_value(
        SecretId=arn)["SecretString"]


def local_restore_command(command: list[str], data_dir: Path) -> list[str]:
    """The restore container's command with this interpreter and the replica's data directory."""
    out = list(command)
    if out and out[0] in {"python", "python3"}:
        out[0] = sys.executable
    for i, part in enumerate(out[:-1]):
        if part == "--into" and out[i + 1] == DATA_DIR:
            out[i + 1] = str(data_dir)
    return out


class Replica:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.workdir = Path(spec["workdir"])
        self.stop_requested = threading.Event()
        self.agent: subprocess.Popen | None = None
        self.restore: subprocess.Popen | None = None
        self.task: Any = None
        self.reason = ""
        self.metadata_server: ThreadingHTTPServer | None = None

    def metadata(self) -> dict[str, Any]:
        """What the ECS task metadata endpoint (v4) `/task` says about this task's containers."""
        def status(process: subprocess.Popen | None) -> dict[str, Any]:
            if process is None:
                return {"KnownStatus": "PENDING"}
            code = process.poll()
            if code is None:
                return {"KnownStatus": "RUNNING"}
            return {"KnownStatus": "STOPPED", "ExitCode": code}

        chroma = getattr(self.task, "chroma", None) if self.task else None
        proxy = getattr(self.task, "proxy", None) if self.task else None
        containers = {
            RESTORE_CONTAINER: status(self.restore),
            CHROMA_CONTAINER: status(chroma.process if chroma else None),
            PROXY_CONTAINER: status(proxy.process if proxy else None),
            TASK_AGENT_CONTAINER: status(self.agent),
        }
        return {"TaskARN": self.spec["task_arn"], "KnownStatus": "RUNNING",
                "Containers": [{"Name": name, **state} for name, state in containers.items()]}

    def start_metadata_endpoint(self) -> str:
        replica = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                data = json.dumps(replica.metadata() if self.path.endswith("/task") else {}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.metadata_server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.metadata_server.daemon_threads = True
        threading.Thread(target=self.metadata_server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.metadata_server.server_address[1]}/v4/local"

    def _env(self, extra: dict[str, str]) -> dict[str, str]:
        return {**os.environ, **extra}

    def start_agent(self, read_token: str) -> None:
        env = self._env({**self.spec["agent_env"], ENV_TOKEN: read_token,
                         "ECS_CONTAINER_METADATA_URI_V4": self.start_metadata_endpoint(),
                         ENV_WORKFLOW_BUCKET: self.spec["bucket"],
                         ENV_TASK_URL: self.spec["proxy_url"], "TASK_ARN": self.spec["task_arn"]})
        env.pop(ENV_ADMIN_TOKEN, None)
        log_file = open(self.workdir / "task-agent.log", "ab")  # noqa: SIM115 - child owns it
        self.agent = subprocess.Popen(
            [sys.executable, "-m", "ontosearch", "task-agent", "--proxy-url", self.spec["proxy_url"],
             "--poll", str(self.spec.get("agent_poll", 0.25)), "--data-dir", str(self.workdir / "data")],
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        )
        log_file.close()

    def run(self) -> int:
        read_token = _secret(self.spec["read_secret_arn"])
        admin_token = _secret(self.spec["admin_secret_arn"])
        # An agent that starts late (a slow image pull on Fargate) sends no heartbeat meanwhile.
        if self.stop_requested.wait(float(self.spec.get("agent_start_delay_seconds", 0))):
            self.shutdown()
            return 0
        self.start_agent(read_token)
        data = self.workdir / "data"
        try:
            if not self._restore(data):
                return self._wait_for_agent_only()
            if self.stop_requested.is_set():
                return 0
            from ontosearch.serve import LocalTask, LocalTaskError

            try:
                self.task = LocalTask(persist_dir=data, port=int(self.spec["proxy_port"]),
                                      read_token=read_token, admin_token=admin_token).start()
            except LocalTaskError as exc:
                self.reason = f"chroma/proxy did not start: {exc}"
                log(self.reason)
                return self._wait_for_agent_only()
            log(f"chroma and proxy up at {self.spec['proxy_url']}")
            self._record_processes()
            while not self.stop_requested.is_set():
                if self.agent.poll() is not None:
                    self.reason = f"essential container task-agent exited with code {self.agent.returncode}"
                    break
                dead = self.task.dead()
                if dead:
                    self.reason = f"essential container exited: {dead}"
                    break
                time.sleep(0.2)
            return 0
        finally:
            self.shutdown()

    def _record_processes(self) -> None:
        """PIDs and paths of the replica's processes, so a test can prove none outlives the task."""
        pids = {"agent": self.agent.pid if self.agent else None,
                "chroma": self.task.chroma.process.pid, "nginx": self.task.proxy.process.pid}
        (self.workdir / "replica.json").write_text(json.dumps(
            {"pids": pids, "serve_workdir": str(self.task.workdir)}))

    def _restore(self, data: Path) -> bool:
        command = local_restore_command(self.spec["restore_command"], data)
        with open(self.workdir / "restore.log", "ab") as log_file:
            self.restore = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=self._env({}))
        while self.restore.poll() is None:
            if self.stop_requested.wait(0.1):
                self.restore.terminate()
                self.restore.wait()
                return False
        if self.restore.returncode != 0:
            tail = (self.workdir / "restore.log").read_text(errors="replace").strip().splitlines()[-3:]
            self.reason = f"restore exited with code {self.restore.returncode}: {' | '.join(tail)}"
            log(self.reason + " (chroma depends on restore SUCCESS and does not start)")
            return False
        return True

    def _wait_for_agent_only(self) -> int:
        while not self.stop_requested.is_set() and self.agent.poll() is None:
            time.sleep(0.2)
        if self.agent.poll() is not None and not self.reason:
            self.reason = f"essential container task-agent exited with code {self.agent.returncode}"
        return 0

    def shutdown(self) -> None:
        if self.task is not None:
            self.task.stop()
            self.task = None
        for process in (self.agent, self.restore):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        if self.metadata_server is not None:
            self.metadata_server.shutdown()
            self.metadata_server.server_close()
        data = self.workdir / "data"
        shutil.rmtree(data, ignore_errors=True)
        log(f"stopped: {self.reason or 'stop requested'}")
        (self.workdir / "stopped.json").write_text(json.dumps({"reason": self.reason or "StopTask"}))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m ontosearch.workflow.local_task SPEC.json", file=sys.stderr)
        return 2
    replica = Replica(json.loads(Path(argv[0]).read_text()))

    def on_signal(signum: int, _frame: object) -> None:
        replica.reason = replica.reason or "StopTask"
        replica.stop_requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return replica.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
