"""`python -m ontosearch task-agent`: the on-demand task's link to its state machine.

It runs as an essential container next to restore, chroma and the proxy, so when it exits the
whole task stops. It
1. waits until the proxy answers authenticated reads and lists the restored collections, sending
   SendTaskHeartbeat meanwhile (the StartTask state has HeartbeatSeconds);
2. reports ready with SendTaskSuccess({"url", "task_arn", "ready_seconds"}) on the token from the
   RunTask overrides, or SendTaskFailure(TaskNotReadyError, why) and exits if it never gets there;
3. then, if the execution asks for it (a save request in S3 carrying a second task token),
   publishes the task's data as a new snapshot version and answers that token;
4. stays up until the execution's deadline (execution start + TASK_DEADLINE_SECONDS) and
   exits: Catch does not run when an execution times out or is stopped by hand, so without this
   a forgotten task would run (and bill) forever. A StopTask from the state machine ends it first.

Only the standard library and boto3: it runs in the task's small project image.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any

from ontosearch.constants import (
    DATA_DIR,
    ENV_TASK_DEADLINE_SECONDS,
    ENV_TASK_EXECUTION_NAME,
    ENV_TASK_EXECUTION_START,
    ENV_TASK_HEARTBEAT_SECONDS,
    ENV_TASK_READY_TIMEOUT_SECONDS,
    ENV_TASK_TOKEN,
    ENV_TASK_URL,
    ENV_TOKEN,
    ENV_WORKFLOW_BUCKET,
    HEARTBEAT_PATH,
    PROXY_PORT,
    TOKEN_HEADER,
)
from ontosearch.workflow.errors import TaskNotReadyError

COLLECTIONS_PATH = "/api/v2/tenants/default_tenant/databases/default_database/collections"
EXIT_NOT_READY = 3
EXIT_DEADLINE = 4
EXIT_ABANDONED = 5
# SendTaskHeartbeat/Success answers meaning the state machine no longer waits for this task
_GONE = {"TaskTimedOut", "TaskDoesNotExist", "InvalidToken"}


class AgentStop(Exception):
    """Raised inside the loops to end the agent with an exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def log(message: str) -> None:
    print(f"task-agent: {message}", file=sys.stderr, flush=True)


def _env_float(name: str, default: float | None = None) -> float:
    value = os.environ.get(name, "")
    if value == "":
        if default is None:
            raise AgentStop(2, f"environment variable {name} is not set; the state machine's RunTask "
                               "overrides set it (is this container started by the batch workflow?)")
        return default
    try:
        return float(value)
    except ValueError:
        raise AgentStop(2, f"environment variable {name}={value!r} is not a number") from None


def execution_start_from_env() -> float | None:
    """Epoch seconds of the execution's start ($$.Execution.StartTime), None when not given."""
    started = os.environ.get(ENV_TASK_EXECUTION_START, "")
    if not started:
        return None
    try:
        start = datetime.fromisoformat(started.replace("Z", "+00:00"))
    except ValueError:
        raise AgentStop(2, f"{ENV_TASK_EXECUTION_START}={started!r} is not an ISO 8601 time") from None
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    return start.timestamp()


def deadline_from_env(now: float | None = None) -> float:
    """Epoch seconds at which the task must be gone: execution start + TASK_DEADLINE_SECONDS."""
    seconds = _env_float(ENV_TASK_DEADLINE_SECONDS)
    start = execution_start_from_env()
    if start is not None:
        return start + seconds
    return (now if now is not None else time.time()) + seconds


def _get(url: str, headers: dict[str, str], timeout: float = 5.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), b""


def readiness_problem(proxy_url: str, token: str) -> str | None:
    """None when the proxy passes an authenticated read that lists at least one collection."""
    try:
        status, _ = _get(proxy_url + HEARTBEAT_PATH, {})
        if status != 200:
            return f"heartbeat through the proxy answered HTTP {status}"
        status, body = _get(proxy_url + COLLECTIONS_PATH, {TOKEN_HEADER: token})
    except (OSError, urllib.error.URLError) as exc:
        return f"the proxy at {proxy_url} did not answer ({getattr(exc, 'reason', exc)})"
    if status in (401, 403):
        return f"the proxy refused the task's own token (HTTP {status})"
    if status != 200:
        return f"listing collections answered HTTP {status}"
    try:
        collections = json.loads(body)
    except ValueError:
        return "listing collections did not return JSON"
    if not collections:
        return "Chroma has no collections (was the snapshot restored?)"
    return None


def task_identity(proxy_port: int = PROXY_PORT) -> tuple[str, str]:
    """(url the Lambdas use, task ARN): TASK_URL if set, else the task's private IP from ECS metadata."""
    override = os.environ.get(ENV_TASK_URL)
    metadata = os.environ.get("ECS_CONTAINER_METADATA_URI_V4")
    task_arn = os.environ.get("TASK_ARN", "")
    url = override or ""
    if metadata and (not url or not task_arn):
        status, body = _get(metadata + "/task", {})
        if status == 200:
            data = json.loads(body)
            task_arn = task_arn or data.get("TaskARN", "")
            if not url:
                for container in data.get("Containers", []):
                    for network in container.get("Networks", []):
                        addresses = network.get("IPv4Addresses") or []
                        if addresses:
                            url = f"http://{addresses[0]}:{proxy_port}"
                            break
                    if url:
                        break
    if not url:
        raise AgentStop(EXIT_NOT_READY, f"cannot tell the task's address: set {ENV_TASK_URL} or run in ECS "
                                        "(ECS_CONTAINER_METADATA_URI_V4)")
    return url, task_arn


def stopped_containers() -> str:
    """Containers of this task that exited with an error, from the ECS task metadata endpoint (v4).

    A restore that failed is why chroma never started (it depends on restore SUCCESS); naming it
    turns "not ready" into a cause that says where to look.
    """
    metadata = os.environ.get("ECS_CONTAINER_METADATA_URI_V4")
    if not metadata:
        return ""
    try:
        status, body = _get(metadata + "/task", {}, timeout=2)
        containers = json.loads(body).get("Containers", []) if status == 200 else []
    except (OSError, ValueError, urllib.error.URLError):
        return ""
    failed = [f"container {c.get('Name')} exited with code {c.get('ExitCode')}"
              for c in containers
              if c.get("KnownStatus") == "STOPPED" and c.get("ExitCode") not in (None, 0)]
    return "; ".join(failed)


class Agent:
    def __init__(self, sfn: Any, task_token: str, proxy_url: str, chroma_token: str, deadline: float,
                 ready_timeout: float, heartbeat_interval: float, poll: float = 0.5,
                 saver: Any = None) -> None:
        self.sfn = sfn
        self.task_token = task_token
        self.proxy_url = proxy_url.rstrip("/")
        self.chroma_token = chroma_token
        self.deadline = deadline
        self.ready_timeout = ready_timeout
        self.heartbeat_interval = heartbeat_interval
        self.poll = poll
        self.saver = saver
        self.stopping = False

    def _call(self, action: str, token: str | None = None, **kwargs: Any) -> None:
        try:
            getattr(self.sfn, action)(taskToken=token or self.task_token, **kwargs)
        except Exception as exc:
            code = str((getattr(exc, "response", None) or {}).get("Error", {}).get("Code", ""))
            if code in _GONE:
                raise AgentStop(EXIT_ABANDONED, f"the state machine no longer waits for this task ({code}); "
                                                "stopping") from None
            log(f"{action} failed: {exc}")
            if action != "send_task_heartbeat":
                raise AgentStop(EXIT_ABANDONED, f"could not report to the state machine: {exc}") from None

    def wait_ready(self) -> dict[str, Any]:
        started = time.time()
        give_up = min(started + self.ready_timeout, self.deadline)
        next_beat = started
        problem = "not checked yet"
        while not self.stopping:
            now = time.time()
            if now >= next_beat:
                self._call("send_task_heartbeat")
                next_beat = now + self.heartbeat_interval
            problem = readiness_problem(self.proxy_url, self.chroma_token)
            if problem is None:
                return {"ready_seconds": round(time.time() - started, 2)}
            if now >= give_up:
                break
            time.sleep(self.poll)
        stopped = stopped_containers()
        cause = (f"the task did not become ready within {self.ready_timeout:.0f} s: {problem}"
                 + (f"; {stopped}" if stopped else "")
                 + " (see the restore, chroma and proxy container logs)")
        self._call("send_task_failure", error=TaskNotReadyError.__name__, cause=cause[:32768])
        raise AgentStop(EXIT_NOT_READY, cause)

    def run(self) -> int:
        ready = self.wait_ready()
        url, task_arn = task_identity()
        output = {"url": url, "task_arn": task_arn, **ready}
        self._call("send_task_success", output=json.dumps(output))
        log(f"ready after {ready['ready_seconds']} s; reported {url}")
        while not self.stopping and time.time() < self.deadline:
            if self.saver is not None:
                self.saver.poll(self)
            time.sleep(min(self.poll, max(0.0, self.deadline - time.time())))
        if self.stopping:
            return 0
        raise AgentStop(EXIT_DEADLINE, "the execution's deadline passed; stopping the task "
                                       "(nothing stopped it: the execution timed out or was stopped by hand)")


class Saver:
    """Answers the execution's save request: publish the task's data, then report the version."""

    def __init__(self, s3: Any, bucket: str, execution: str, data_dir: str, every: float = 2.0,
                 execution_start: float | None = None) -> None:
        from ontosearch.workflow.steps import save_request_key

        self.execution_start = execution_start  # a request from before it is an earlier execution's
        self.s3 = s3
        self.bucket = bucket
        self.key = save_request_key(execution)
        self.data_dir = data_dir
        self.every = every
        self.next_check = 0.0
        self.done = False

    def poll(self, agent: Agent) -> None:
        from ontosearch.workflow.save import SnapshotSaveError, read_save_request, save_data_dir

        if self.done or time.time() < self.next_check:
            return
        self.next_check = time.time() + self.every
        try:
            request = read_save_request(self.s3, self.bucket, self.key, not_before=self.execution_start)
        except Exception as exc:  # keep serving; the SaveSnapshot state times out if this persists
            log(f"cannot read the save request s3://{self.bucket}/{self.key}: {exc}")
            return
        if request is None:
            return
        self.done = True
        log("save requested: publishing the task's data as a new snapshot version")
        try:
            version = save_data_dir(self.data_dir, self.bucket, s3=self.s3, log=log)
        except Exception as exc:
            agent._call("send_task_failure", token=request["token"], error=SnapshotSaveError.__name__,
                        cause=f"saving the task's data failed: {exc}"[:32768])
            return
        log(f"published snapshot version {version}")
        agent._call("send_task_success", token=request["token"], output=json.dumps({"version": version}))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ontosearch task-agent",
        description="Report the on-demand task ready to its Step Functions execution and enforce its "
                    "deadline. "
                    f"Reads {ENV_TASK_TOKEN}, {ENV_TASK_EXECUTION_START}, {ENV_TASK_DEADLINE_SECONDS}, "
                    f"{ENV_TASK_READY_TIMEOUT_SECONDS}, {ENV_TASK_HEARTBEAT_SECONDS} and {ENV_TOKEN}.",
    )
    parser.add_argument("--proxy-url", default=f"http://127.0.0.1:{PROXY_PORT}",
                        help="the task's auth proxy as seen from this container (default: %(default)s)")
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between readiness checks")
    parser.add_argument("--data-dir", default=DATA_DIR,
                        help="the task's data volume, for saving a snapshot (default: %(default)s)")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    agent: Agent | None = None

    def on_signal(signum: int, _frame: object) -> None:
        log(f"signal {signum}: stopping")
        if agent is not None:
            agent.stopping = True
        else:
            raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        task_token = os.environ.get(ENV_TASK_TOKEN, "")
        if not task_token:
            raise AgentStop(2, f"{ENV_TASK_TOKEN} is not set; the state machine passes it in the RunTask "
                               "overrides")
        chroma_token = os.environ.get(ENV_TOKEN, "")
        if not chroma_token:
            raise AgentStop(2, f"{ENV_TOKEN} is not set; the task definition passes it from Secrets Manager")
        deadline = deadline_from_env()
        ready_timeout = _env_float(ENV_TASK_READY_TIMEOUT_SECONDS, 600.0)
        heartbeat = _env_float(ENV_TASK_HEARTBEAT_SECONDS, 30.0)
        import boto3

        saver = None
        bucket, execution = os.environ.get(ENV_WORKFLOW_BUCKET), os.environ.get(ENV_TASK_EXECUTION_NAME)
        if bucket and execution:
            saver = Saver(boto3.client("s3"), bucket, execution, args.data_dir,
                          execution_start=execution_start_from_env())
        agent = Agent(boto3.client("stepfunctions"), task_token, args.proxy_url, chroma_token, deadline,
                      ready_timeout, heartbeat, poll=args.poll, saver=saver)
        log(f"waiting for the proxy at {args.proxy_url}; deadline in {deadline - time.time():.0f} s")
        return agent.run()
    except AgentStop as stop:
        log(str(stop))
        return stop.code
