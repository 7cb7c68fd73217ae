"""`python -m ontosearch workflow`: run the batch workflow's real state machine on this machine.

What runs is the deployed definition (`definition.build_definition`), executed by
aws-local-stepfunctions (asl/run.mjs) with every Task state sent to a bridge in this process:

- lambda:invoke                      -> the handler in lambdas/ (the code the Lambda image runs)
- ecs:runTask.waitForTaskToken       -> a local replica of the task (ontosearch.workflow.local_task:
                                        real restore from S3, `chroma run`, nginx with the token,
                                        the task agent reporting back with the task token)
- aws-sdk:ecs:listTasks / stopTask   -> the replicas started by this execution / stopping one
- aws-sdk:s3:putObject / getObject   -> the local S3 (moto)
- a Distributed Map's ItemReader and ResultWriter (asl/distributed_map.mjs runs the Map Run)
                                     -> POST /item-reader, /result-writer: the local S3
- SendTaskSuccess/Failure/Heartbeat  -> served on the same bridge in the AWS JSON protocol, so
                                        the agent uses plain boto3 with AWS_ENDPOINT_URL_SFN
S3 and Secrets Manager are a moto server. Nothing here reaches AWS.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ontosearch.chroma_process import free_port
from ontosearch.constants import (
    ENV_TASK_TOKEN,
    ENV_TOKEN_SECRET_ARN,
    ENV_WORKFLOW_BUCKET,
    ENV_WORKFLOW_CHUNK_SIZE,
    RESTORE_CONTAINER,
    TASK_AGENT_CONTAINER,
    WORKFLOW_INPUT_PREFIX,
)
from ontosearch.workflow import definition as wd
from ontosearch.workflow.node import NodeToolsMissing, asl_dir, node_command

REGION = "us-east-1"
ACCOUNT = "000000000000"
CLUSTER = f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/ontosearch-local"
TASK_DEFINITION = f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/ontosearch-local-batch:1"
STEPS = ("validate", "split", "query", "merge", "save")

Handler = Callable[[dict[str, Any], Any], Any]


def function_arn(step: str) -> str:
    return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:ontosearch-local-{step}"


def local_settings(**overrides: Any) -> wd.WorkflowSettings:
    """Workflow settings whose ARNs the bridge understands; timings suited to one machine."""
    values: dict[str, Any] = dict(
        cluster_arn=CLUSTER,
        task_definition_arn=TASK_DEFINITION,
        subnet_ids=["subnet-local"],
        security_group_ids=["sg-local"],
        map_concurrency=4,
        workflow_timeout_seconds=1800,
        ready_timeout_seconds=240,
        heartbeat_seconds=60,
        task_deadline_grace_seconds=15,
        query_retry_interval_seconds=1,
        query_max_attempts=3,
        **{f"{step}_function": function_arn(step) for step in STEPS},
    )
    values.update(overrides)
    if "heartbeat_seconds" not in overrides:
        # a local task starts in seconds; HeartbeatSeconds must stay below the state's TimeoutSeconds
        values["heartbeat_seconds"] = min(60, max(1, int(values["ready_timeout_seconds"]) // 2))
    return wd.WorkflowSettings(**values)


class TaskFailure(Exception):
    """An error to hand back to the state machine as (Error, Cause)."""

    def __init__(self, error: str, cause: str) -> None:
        super().__init__(cause)
        self.error = error
        self.cause = cause


def lambda_failure(exc: BaseException) -> TaskFailure:
    """What lambda:invoke reports for a function error: errorType as Error, the JSON body as Cause.

    The body as the Python runtime (awslambdaric) writes it: the message, the class name and the
    traceback's frames (traceback.format_list, without the message line), with json.dumps."""
    name = type(exc).__name__
    body = {"errorMessage": str(exc), "errorType": name, "requestId": str(uuid.uuid4()),
            "stackTrace": traceback.format_list(traceback.extract_tb(exc.__traceback__))}
    return TaskFailure(name, json.dumps(body))


# --- callbacks (task tokens) ------------------------------------------------------------------------

@dataclass
class _Callback:
    done: threading.Event = field(default_factory=threading.Event)
    last_beat: float = field(default_factory=time.monotonic)
    output: Any = None
    error: TaskFailure | None = None
    closed: str | None = None  # set once the state stopped waiting (TaskTimedOut)


class Callbacks:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, _Callback] = {}

    def open(self, token: str) -> _Callback:
        with self._lock:
            return self._waiting.setdefault(token, _Callback())

    def close(self, token: str, why: str = "TaskTimedOut") -> None:
        with self._lock:
            callback = self._waiting.get(token)
            if callback is not None and callback.closed is None:
                callback.closed = why

    def close_all(self) -> None:
        with self._lock:
            tokens = list(self._waiting)
        for token in tokens:
            self.close(token)

    def answer(self, action: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """SendTaskSuccess/Failure/Heartbeat as the AWS JSON protocol answers them."""
        token = body.get("taskToken", "")
        with self._lock:
            callback = self._waiting.get(token)
        if callback is None:
            return 400, {"__type": "InvalidToken", "message": "unknown task token"}
        if callback.closed or callback.done.is_set():
            return 400, {"__type": "TaskTimedOut", "message": "the state no longer waits for this token"}
        if action == "SendTaskHeartbeat":
            callback.last_beat = time.monotonic()
        elif action == "SendTaskSuccess":
            try:
                callback.output = json.loads(body.get("output", "null"))
            except ValueError:
                return 400, {"__type": "InvalidOutput", "message": "output is not JSON"}
            callback.done.set()
        elif action == "SendTaskFailure":
            callback.error = TaskFailure(body.get("error") or "TaskFailed", body.get("cause") or "")
            callback.done.set()
        else:
            return 400, {"__type": "UnknownOperationException", "message": action}
        return 200, {}

    def wait(self, token: str, heartbeat: float | None, timeout: float | None) -> Any:
        callback = self.open(token)
        started = time.monotonic()
        try:
            while not callback.done.wait(0.1):
                now = time.monotonic()
                if heartbeat and now - callback.last_beat > heartbeat:
                    raise TaskFailure("States.HeartbeatTimeout",
                                      f"no heartbeat from the task for {heartbeat:.0f} s (HeartbeatSeconds)")
                if timeout and now - started > timeout + 5:
                    raise TaskFailure("States.Timeout", f"no answer within {timeout:.0f} s")
                if callback.closed:
                    raise TaskFailure("States.Timeout", "the execution stopped waiting")
            if callback.error is not None:
                raise callback.error
            return callback.output
        finally:
            self.close(token)


# --- local ECS ----------------------------------------------------------------------------------------

@dataclass
class LocalTaskHandle:
    arn: str
    started_by: str
    workdir: Path
    process: subprocess.Popen
    proxy_port: int

    def running(self) -> bool:
        return self.process.poll() is None

    def stopped_reason(self) -> str:
        path = self.workdir / "stopped.json"
        if path.exists():
            return str(json.loads(path.read_text()).get("reason", ""))
        return ""

    def log(self, name: str) -> str:
        path = self.workdir / name
        return path.read_text(errors="replace") if path.exists() else ""


class LocalFleet:
    """RunTask/ListTasks/StopTask over local replicas of the task."""

    def __init__(self, root: Path, read_secret_arn: str, admin_secret_arn: str, env: dict[str, str],
                 bucket: str = "", task_options: dict[str, Any] | None = None) -> None:
        self.root = root
        self.bucket = bucket
        # extra replica settings (ontosearch.workflow.local_task), e.g. a slow agent start
        self.task_options = dict(task_options or {})
        # every ListTasks / StopTask the state machine made, in order: (operation, parameters)
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.read_secret_arn = read_secret_arn
        self.admin_secret_arn = admin_secret_arn
        self.env = env
        self.tasks: list[LocalTaskHandle] = []
        self._lock = threading.Lock()

    def run_task(self, params: dict[str, Any]) -> LocalTaskHandle:
        vpc = params["NetworkConfiguration"]["AwsvpcConfiguration"]
        if vpc.get("AssignPublicIp") != "DISABLED":
            raise TaskFailure("ECS.InvalidParameterException", "tasks of this workflow never get a public IP")
        overrides = {c["Name"]: c for c in params.get("Overrides", {}).get("ContainerOverrides", [])}
        restore = overrides.get(RESTORE_CONTAINER, {}).get("Command")
        agent_env = {e["Name"]: e["Value"]
                     for e in overrides.get(TASK_AGENT_CONTAINER, {}).get("Environment", [])}
        if not restore or ENV_TASK_TOKEN not in agent_env:
            raise TaskFailure("ECS.InvalidParameterException",
                              "RunTask overrides lack the restore command or the agent's task token")
        task_id = uuid.uuid4().hex
        arn = f"arn:aws:ecs:{REGION}:{ACCOUNT}:task/ontosearch-local/{task_id}"
        workdir = self.root / f"task-{task_id[:12]}"
        workdir.mkdir(parents=True)
        port = free_port()
        spec = {
            "workdir": str(workdir), "task_arn": arn, "restore_command": restore, "agent_env": agent_env,
            "proxy_port": port, "proxy_url": f"http://127.0.0.1:{port}",
            "read_secret_arn": self.read_secret_arn, "admin_secret_arn": self.admin_secret_arn,
            "bucket": self.bucket, **self.task_options,
        }
        (workdir / "spec.json").write_text(json.dumps(spec))
        with open(workdir / "local-task.log", "ab") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "ontosearch.workflow.local_task", str(workdir / "spec.json")],
                stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env}, start_new_session=True,
            )
        handle = LocalTaskHandle(arn, params.get("StartedBy", ""), workdir, process, port)
        with self._lock:
            self.tasks.append(handle)
        return handle

    def list_tasks(self, params: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.calls.append(("ListTasks", dict(params)))
            arns = [t.arn for t in self.tasks if t.running() and t.started_by == params.get("StartedBy")]
        return {"TaskArns": arns}

    def stop_task(self, params: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        with self._lock:
            self.calls.append(("StopTask", dict(params)))
            handle = next((t for t in self.tasks if t.arn == params.get("Task")), None)
        if handle is None:
            raise TaskFailure("ECS.InvalidParameterException", f"task {params.get('Task')} not found")
        self._stop(handle, timeout)
        return {"Task": {"TaskArn": handle.arn, "LastStatus": "STOPPED", "DesiredStatus": "STOPPED",
                         "StoppedReason": params.get("Reason", "")}}

    @staticmethod
    def _stop(handle: LocalTaskHandle, timeout: float) -> None:
        if handle.process.poll() is None:
            handle.process.send_signal(signal.SIGTERM)
            try:
                handle.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:  # ECS sends SIGKILL after stopTimeout, too
                os.killpg(handle.process.pid, signal.SIGKILL)
                handle.process.wait()

    def stop_all(self) -> None:
        with self._lock:
            tasks = list(self.tasks)
        for handle in tasks:
            self._stop(handle, 30.0)


# --- the bridge ---------------------------------------------------------------------------------------

class Bridge:
    """HTTP endpoint for asl/run.mjs (POST /task, /item-reader, /result-writer) and the task agent
    (Step Functions JSON protocol)."""

    def __init__(self, fleet: LocalFleet, handlers: dict[str, Handler], s3: Any = None) -> None:
        self.fleet = fleet
        self.handlers = handlers
        self.s3 = s3
        self.callbacks = Callbacks()
        # the largest result (JSON bytes, UTF-8) each Task state got back, before its ResultSelector
        self.result_bytes: dict[str, int] = {}
        self._token_lock = threading.Lock()
        self._token_uses = 0
        bridge = self

        class RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                target = self.headers.get("x-amz-target", "")
                if target.startswith("AWSStepFunctions."):
                    status, answer = bridge.callbacks.answer(target.split(".", 1)[1], body)
                    content_type = "application/x-amz-json-1.0"
                elif self.path == "/item-reader":
                    status, answer = 200, bridge.guarded(bridge.read_items, body)
                    content_type = "application/json"
                elif self.path == "/result-writer":
                    status, answer = 200, bridge.guarded(bridge.write_results, body)
                    content_type = "application/json"
                else:
                    status, answer = 200, bridge.run_state(body)
                    content_type = "application/json"
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), RequestHandler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> Bridge:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.callbacks.close_all()
        self.server.shutdown()
        self.server.server_close()

    def run_state(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            output = self.dispatch(request)
        except TaskFailure as failure:
            return {"error": failure.error, "cause": failure.cause}
        except Exception as exc:  # a bug in the bridge itself: show it as the state's failure
            return {"error": "LocalRunnerError", "cause": "".join(traceback.format_exception(exc))[-4000:]}
        size = len(json.dumps(output, ensure_ascii=False).encode("utf-8"))
        state = request["state"]
        self.result_bytes[state] = max(size, self.result_bytes.get(state, 0))
        return {"output": output}

    @staticmethod
    def guarded(action: Callable[[dict[str, Any]], dict[str, Any]], request: dict[str, Any]
                ) -> dict[str, Any]:
        try:
            return action(request)
        except TaskFailure as failure:
            return {"error": failure.error, "cause": failure.cause}
        except Exception as exc:
            return {"error": "LocalRunnerError", "catchable": False,
                    "cause": "".join(traceback.format_exception(exc))[-4000:]}

    # Distributed Map (asl/distributed_map.mjs): the two S3 ends of a Map Run

    def read_items(self, request: dict[str, Any]) -> dict[str, Any]:
        """ItemReader over one S3 object: InputType JSON (an array) or JSONL (one value a line),
        then MaxItems. A failed read is States.ItemReaderFailed, as on AWS."""
        state, config, params = request["state"], request.get("readerConfig") or {}, request["parameters"]
        if request["resource"] != wd.S3_ITEM_READER:
            return {"error": "LocalRunnerError", "catchable": False,
                    "cause": f"state {state}: the local runner reads items only with {wd.S3_ITEM_READER}"}
        input_type = config.get("InputType")
        if input_type not in {"JSON", "JSONL"}:
            return {"error": "LocalRunnerError", "catchable": False,
                    "cause": f"state {state}: ReaderConfig InputType {input_type!r} is not bound locally "
                             "(JSON and JSONL are)"}
        where = f"s3://{params.get('Bucket')}/{params.get('Key')}"
        extra = {"VersionId": params["VersionId"]} if params.get("VersionId") else {}
        try:
            body = self.s3.get_object(Bucket=params["Bucket"], Key=params["Key"], **extra)["Body"].read()
        except Exception as exc:
            raise TaskFailure("States.ItemReaderFailed",
                              f"could not read the items at {where}: {exc}") from None
        try:
            text = body.decode("utf-8")
            if input_type == "JSON":
                items = json.loads(text)
                if not isinstance(items, list):
                    raise ValueError("the object is not a JSON array")
            else:
                items = [json.loads(line) for line in text.split("\n") if line.strip()]
        except ValueError as exc:
            raise TaskFailure("States.ItemReaderFailed",
                              f"the items at {where} are not {input_type}: {exc}") from None
        if config.get("MaxItems"):
            items = items[: int(config["MaxItems"])]
        return {"items": items}

    def write_results(self, request: dict[str, Any]) -> dict[str, Any]:
        """ResultWriter: <Prefix>/<map run id>/{SUCCEEDED,FAILED,PENDING}_0.json and manifest.json;
        the state's ResultWriterDetails name the manifest."""
        state, params = request["state"], request["parameters"]
        if request["resource"] != wd.S3_RESULT_WRITER:
            return {"error": "LocalRunnerError", "catchable": False,
                    "cause": f"state {state}: the local runner writes results only with "
                             f"{wd.S3_RESULT_WRITER}"}
        bucket = params["Bucket"]
        prefix = str(params.get("Prefix") or "").strip("/")
        base = f"{prefix}/{request['mapRunId']}" if prefix else request["mapRunId"]
        files: dict[str, list[dict[str, Any]]] = {}
        try:
            for status in ("FAILED", "PENDING", "SUCCEEDED"):
                records = request["results"].get(status) or []
                files[status] = []
                if records:
                    key = f"{base}/{status}_0.json"
                    data = json.dumps(records, ensure_ascii=False).encode("utf-8")
                    self.s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType="application/json")
                    files[status].append({"Key": key, "Size": len(data)})
            manifest = {"DestinationBucket": bucket, "MapRunArn": request["mapRunArn"], "ResultFiles": files}
            key = f"{base}/manifest.json"
            self.s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(manifest).encode("utf-8"),
                               ContentType="application/json")
        except Exception as exc:
            raise TaskFailure("States.ResultWriterFailed", f"could not write the Map Run's results to "
                                                          f"s3://{bucket}/{base}/: {exc}") from None
        return {"details": {"Bucket": bucket, "Key": key}}

    def s3_call(self, resource: str, params: dict[str, Any]) -> dict[str, Any]:
        """aws-sdk:s3:putObject / getObject as the SDK integration answers: PascalCase members, the
        GetObject Body as text, an S3 error as S3.<Code>Exception."""
        try:
            if resource == wd.S3_PUT_OBJECT:
                body = params.get("Body", "")
                if not isinstance(body, str | bytes):
                    body = json.dumps(body, ensure_ascii=False)
                answer = self.s3.put_object(
                    Bucket=params["Bucket"], Key=params["Key"],
                    Body=body.encode("utf-8") if isinstance(body, str) else body,
                    **({"ContentType": params["ContentType"]} if "ContentType" in params else {}))
                return {"ETag": answer.get("ETag", "")}
            answer = self.s3.get_object(Bucket=params["Bucket"], Key=params["Key"])
            return {"Body": answer["Body"].read().decode("utf-8"),
                    "ContentLength": answer.get("ContentLength"),
                    "ContentType": answer.get("ContentType", ""), "ETag": answer.get("ETag", "")}
        except Exception as exc:
            code = str((getattr(exc, "response", None) or {}).get("Error", {}).get("Code", "")) or "S3"
            raise TaskFailure(f"S3.{code.removesuffix('Exception')}Exception", str(exc)) from None

    def dispatch(self, request: dict[str, Any]) -> Any:
        resource, params, state = request["resource"], request["input"], request["state"]
        if resource in (wd.LAMBDA_INVOKE_WAIT, wd.ECS_RUN_TASK_WAIT):
            params = self._fresh_token(params, request.get("token"))
        heartbeat, timeout = request.get("heartbeatSeconds"), request.get("timeoutSeconds")
        if resource == wd.LAMBDA_INVOKE:
            return {"StatusCode": 200, "Payload": self.invoke(state, params)}
        if resource == wd.LAMBDA_INVOKE_WAIT:
            token = params["Payload"]["token"]
            self.callbacks.open(token)
            self.invoke(state, params)
            return self.callbacks.wait(token, heartbeat, timeout)
        if resource == wd.ECS_RUN_TASK_WAIT:
            handle = self.fleet.run_task(params)
            token = next(e["Value"] for c in params["Overrides"]["ContainerOverrides"]
                         for e in c.get("Environment", []) if e["Name"] == ENV_TASK_TOKEN)
            self.callbacks.open(token)
            try:
                return self.callbacks.wait(token, heartbeat, timeout)
            except TaskFailure as failure:
                if handle.stopped_reason() and failure.error.startswith("States."):
                    failure.cause += f" (the task stopped: {handle.stopped_reason()})"
                raise
        if resource == wd.ECS_LIST_TASKS:
            return self.fleet.list_tasks(params)
        if resource == wd.ECS_STOP_TASK:
            return self.fleet.stop_task(params)
        if resource in (wd.S3_PUT_OBJECT, wd.S3_GET_OBJECT):
            return self.s3_call(resource, params)
        raise TaskFailure("States.Runtime", f"the local runner has no binding for {resource} (state {state})")

    def _fresh_token(self, params: dict[str, Any], token: str | None) -> dict[str, Any]:
        """Step Functions gives every waiting Task its own token; the local context has one, so
        each use gets a unique suffix (else a second wait would find the first one's answer)."""
        if not token:
            return params
        with self._token_lock:
            self._token_uses += 1
            fresh = f"{token}-{self._token_uses}"
        return json.loads(json.dumps(params).replace(json.dumps(token)[1:-1], fresh))

    def invoke(self, state: str, params: dict[str, Any]) -> Any:
        name = params["FunctionName"].rsplit(":", 1)[-1]
        handler = self.handlers.get(name)
        if handler is None:
            raise TaskFailure("Lambda.ResourceNotFoundException", f"function {name} not found")
        try:
            return json.loads(json.dumps(handler(params["Payload"], None)))
        except TaskFailure:
            raise
        except Exception as exc:
            raise lambda_failure(exc) from None


def default_handlers() -> dict[str, Handler]:
    return {f"ontosearch-local-{step}": importlib.import_module(f"lambdas.{step}").handler for step in STEPS}


# --- a run ----------------------------------------------------------------------------------------------

@dataclass
class LocalRun:
    execution: str
    status: str
    output: Any = None
    error: str | None = None
    cause: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    tasks: list[LocalTaskHandle] = field(default_factory=list)
    seconds: float = 0.0

    def state_sizes(self, children: bool | None = None) -> list[tuple[str, str, int]]:
        """(event, state, bytes) of every StateEntered input and StateExited output the runner
        reported; `children` True: only a Distributed Map's child executions, False: only the
        parent, None: both (each execution's states are under the same 256 KiB limit)."""
        found = []
        for event in self.events:
            entered = event.get("event") == "StateEntered"
            size = event.get("inputBytes") if entered else event.get("outputBytes")
            if size is None or (children is not None and bool(event.get("child")) != children):
                continue
            found.append((event["event"], event.get("state", ""), int(size)))
        return found

    def result(self) -> dict[str, Any]:
        """What `workflow` prints; `seconds` is the execution alone (start to end state)."""
        head = {"status": self.status, "execution": self.execution, "seconds": round(self.seconds, 2)}
        if self.status == "SUCCEEDED":
            return {**head, "output": self.output}
        return {**head, "error": self.error, "cause": self.cause}


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class LocalWorkflow:
    """S3 and Secrets Manager (moto), a bucket, the token secrets and the bridge: run executions in it.

    `lambda_token` gives the query Lambda its own secret with that value (a wrong token, for tests);
    `wrap` maps a step ("validate", "split", ...) to a function that wraps its real handler;
    `task_options` go to every task replica's spec (e.g. {"agent_start_delay_seconds": 20}: the
    agent container starts late, as after a slow image pull).
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str] | None = None,
        bucket: str = "ontosearch-local",
        chunk_size: int = 500,
        lambda_token: str | None = None,
        wrap: dict[str, Callable[[Handler], Handler]] | None = None,
        progress: Callable[[str], None] | None = None,
        task_options: dict[str, Any] | None = None,
        **settings: Any,
    ) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="ontosearch-workflow-"))
        self.bucket = bucket
        self.chunk_size = chunk_size
        self.lambda_token = lambda_token
        self.wrap = wrap or {}
        self.progress = progress
        self.task_options = task_options
        self.settings = local_settings(**settings)
        self.moto: Any = None
        self.endpoint = ""
        self.fleet: LocalFleet | None = None
        self.bridge: Bridge | None = None
        self._env_cm: Any = None
        self.runs: list[LocalRun] = []

    # lifecycle
    def __enter__(self) -> LocalWorkflow:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> LocalWorkflow:
        from moto.server import ThreadedMotoServer

        port = free_port()
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.moto.start()
        self.endpoint = f"http://127.0.0.1:{port}"
        # moto keeps its state per process, not per server: start from an empty account
        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST"),
                               timeout=10).read()
        base_env = {
            "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local", "AWS_SESSION_TOKEN": "local",
            "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION, "AWS_ENDPOINT_URL": self.endpoint,
        }
        self._env_cm = _environment(base_env)
        self._env_cm.__enter__()
        import boto3

        self.s3 = boto3.client("s3")
        self.s3.create_bucket(Bucket=self.bucket)
        secrets = boto3.client("secretsmanager")
        from ontosearch.proxy import generate_token

        self.read_secret_arn = secrets.create_secret(Name="ontosearch-local-read-token",
                                                     SecretString=generate_token())["ARN"]
        self.admin_secret_arn = secrets.create_secret(Name="ontosearch-local-admin-token",
                                                      SecretString=generate_token())["ARN"]
        self.lambda_secret_arn = self.read_secret_arn
        if self.lambda_token is not None:
            self.lambda_secret_arn = secrets.create_secret(Name="ontosearch-local-lambda-token",
                                                           SecretString=self.lambda_token)["ARN"]
        handlers = default_handlers()
        for step, wrapper in self.wrap.items():
            handlers[f"ontosearch-local-{step}"] = wrapper(handlers[f"ontosearch-local-{step}"])
        fleet = LocalFleet(self.workdir / "tasks", self.read_secret_arn, self.admin_secret_arn, {},
                           bucket=self.bucket, task_options=self.task_options)
        self.bridge = Bridge(fleet, handlers, s3=self.s3).start()
        self.fleet = self.bridge.fleet
        self.fleet.env = {**base_env, "AWS_ENDPOINT_URL_SFN": self.bridge.url}
        os.environ.update({
            ENV_WORKFLOW_BUCKET: self.bucket,
            ENV_TOKEN_SECRET_ARN: self.lambda_secret_arn,
            ENV_WORKFLOW_CHUNK_SIZE: str(self.chunk_size),
        })
        self._lambda_env = (ENV_WORKFLOW_BUCKET, ENV_TOKEN_SECRET_ARN, ENV_WORKFLOW_CHUNK_SIZE)
        from ontosearch.connect import clear_secret_cache
        from ontosearch.workflow.chroma_access import forget_clients

        clear_secret_cache()
        forget_clients()
        return self

    def close(self, stop_tasks: bool = True) -> None:
        if self.fleet is not None and stop_tasks:
            self.fleet.stop_all()
        if self.bridge is not None:
            self.bridge.stop()
            self.bridge = None
        for name in getattr(self, "_lambda_env", ()):
            os.environ.pop(name, None)
        if self._env_cm is not None:
            self._env_cm.__exit__(None, None, None)
            self._env_cm = None
        if self.moto is not None:
            self.moto.stop()
            self.moto = None
        from ontosearch.connect import clear_secret_cache

        clear_secret_cache()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # data in and out
    def publish_snapshot(self, snapshot_dir: str | os.PathLike[str]) -> str:
        from ontosearch.snapshot_store import publish_snapshot

        say = self.progress or (lambda _message: None)
        result = publish_snapshot(snapshot_dir, self.bucket, s3=self.s3, log=say)
        return str(getattr(result, "version", result))

    def upload_input(self, path: str | os.PathLike[str], name: str | None = None) -> str:
        key = f"{WORKFLOW_INPUT_PREFIX}{name or Path(path).name}"
        self.s3.upload_file(str(path), self.bucket, key)
        return f"s3://{self.bucket}/{key}"

    def download(self, uri: str, path: str | os.PathLike[str]) -> Path:
        bucket, _, key = uri[len("s3://"):].partition("/")
        self.s3.download_file(bucket, key, str(path))
        return Path(path)

    def read_text(self, uri_or_key: str) -> str:
        key = uri_or_key.split(f"s3://{self.bucket}/", 1)[-1]
        return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read().decode("utf-8")

    def keys(self, prefix: str) -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    # executions
    def definition(self) -> dict[str, Any]:
        return wd.build_definition(self.settings)

    def run(self, request: dict[str, Any], execution: str | None = None, timeout: float | None = None
            ) -> LocalRun:
        """One execution of the deployed definition (`definition()`)."""
        return self.execute(self.definition(), request, execution, timeout)

    def execute(self, definition: dict[str, Any], request: Any, execution: str | None = None,
                timeout: float | None = None) -> LocalRun:
        """One execution of `definition` with this runner's bindings (the workflow runs only its
        own definition, through `run`; tests of the bindings run small ones of their own)."""
        assert self.bridge is not None, "start() the LocalWorkflow first"
        execution = execution or f"local-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
        context = {
            "Execution": {"Id": f"arn:aws:states:{REGION}:{ACCOUNT}:execution:ontosearch-local:{execution}",
                          "Name": execution},
            "StateMachine": {"Name": "ontosearch-local"},
            "Task": {"Token": f"local-{uuid.uuid4().hex}{uuid.uuid4().hex}"},
        }
        job = {"definition": definition, "input": request, "context": context, "bridge": self.bridge.url}
        started = time.monotonic()
        process = subprocess.Popen(
            [*node_command(), str(asl_dir() / "run.mjs")], cwd=str(asl_dir()), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        events: list[dict[str, Any]] = []
        reader = threading.Thread(target=self._read_events, args=(process.stderr, events), daemon=True)
        reader.start()
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(json.dumps(job))
        process.stdin.close()
        machine_timeout = int(definition.get("TimeoutSeconds") or self.settings.workflow_timeout_seconds)
        limit = timeout or machine_timeout + 60
        try:
            line = _read_line(process.stdout, limit)
            if line:  # the runner exits by itself once its event lines are flushed
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
            reader.join(timeout=10)
        self.bridge.callbacks.close_all()
        try:
            result = json.loads(line)
        except ValueError:
            noise = " | ".join(e.get("raw", "") for e in events if "raw" in e)[-2000:]
            result = {"status": "FAILED", "error": "LocalRunnerError",
                      "cause": f"the Node runner gave no result (exit {process.returncode}): {noise}"}
        tasks = [t for t in self.fleet.tasks if t.started_by == execution] if self.fleet else []
        run = LocalRun(execution, result["status"], result.get("output"), result.get("error"),
                       result.get("cause"), events, tasks, time.monotonic() - started)
        self.runs.append(run)
        return run

    def _read_events(self, stream: Any, events: list[dict[str, Any]]) -> None:
        for raw in stream:
            raw = raw.strip()
            if not raw:
                continue
            try:
                event = json.loads(raw)
            except ValueError:
                event = {"raw": raw}
            events.append(event)
            if self.progress and event.get("event") == "StateEntered" and event.get("state"):
                self.progress(f"state {event['state']}")
            elif self.progress and event.get("event") in {"StateRetried", "StateFailed"}:
                self.progress(f"{event['event']} {event.get('state')}: {event.get('error') or ''}")


def _read_line(stream: Any, timeout: float) -> str:
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return box[0] if box else ""


# --- the command ------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ontosearch workflow",
        description="Run the batch annotation state machine locally: the deployed definition, executed by "
                    "aws-local-stepfunctions, with the real Lambda handlers, a local replica of the task "
                    "(restore + chroma + auth proxy + task agent) and S3 served by moto. Prints the "
                    "execution's output as JSON.",
    )
    parser.add_argument("--input", required=True, help="labels file (.txt, .csv, .tsv, .jsonl)")
    parser.add_argument("--ontology", required=True, help="cl, uberon, mondo or an alias")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--output", required=True, help="where to write the annotations CSV")
    parser.add_argument("--column", help="column (csv/tsv) or key (jsonl) holding the labels")
    parser.add_argument("--snapshot", help="snapshot directory (build-snapshot --out); default: a cached "
                                           "snapshot of the ontology, built on first use")
    parser.add_argument("--embedder", help="embedder for a snapshot built on first use")
    parser.add_argument("--save-snapshot", action="store_true",
                        help="publish the task's data as a new snapshot version")
    parser.add_argument("--map-concurrency", type=int, default=4)
    parser.add_argument("--chunk-size", type=int, default=500)
    parser.add_argument("--timeout", type=int, default=1800, help="the state machine's TimeoutSeconds")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return parser


def _default_snapshot(ontology: str, embedder: str | None) -> Path:
    from ontosearch.embedders import cache_dir
    from ontosearch.ontologies import resolve_ontology

    canonical = resolve_ontology(ontology)
    target = cache_dir() / "workflow-snapshots" / f"{canonical}-{embedder or 'default'}"
    if (target / "manifest.json").exists():
        return target
    from ontosearch.snapshot_build import build_snapshot

    print(f"workflow: building a {canonical} snapshot in {target} (first use only)", file=sys.stderr)
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    build_snapshot([canonical], staging, embedder_name=embedder)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    source = Path(args.input)
    if not source.is_file():
        print(f"workflow: input file {source} does not exist", file=sys.stderr)
        return 2

    def say(message: str) -> None:
        if not args.quiet:
            print(f"workflow: {message}", file=sys.stderr, flush=True)

    try:
        node_command()
        local_settings(map_concurrency=args.map_concurrency, workflow_timeout_seconds=args.timeout)
    except (NodeToolsMissing, ValueError) as exc:
        print(f"workflow: {exc}", file=sys.stderr)
        return 2
    try:
        snapshot = Path(args.snapshot) if args.snapshot else _default_snapshot(args.ontology, args.embedder)
    except Exception as exc:
        print(f"workflow: cannot prepare a snapshot: {exc}", file=sys.stderr)
        return 2
    with LocalWorkflow(chunk_size=args.chunk_size, progress=say, map_concurrency=args.map_concurrency,
                       workflow_timeout_seconds=args.timeout) as flow:
        try:
            version = flow.publish_snapshot(snapshot)
        except Exception as exc:
            print(f"workflow: cannot use the snapshot at {snapshot}: {exc}", file=sys.stderr)
            return 2
        say(f"snapshot {version} published to the local bucket")
        uri = flow.upload_input(source)
        request = {"input": uri, "ontology": args.ontology, "top_k": args.top_k, "snapshot": "latest",
                   "save_snapshot": bool(args.save_snapshot)}
        if args.column:
            request["column"] = args.column
        run = flow.run(request)
        say(f"execution {run.execution} {run.status} in {run.seconds:.1f} s")
        if run.status == "SUCCEEDED":
            flow.download(run.output["output"], args.output)
            run.output["local_output"] = str(Path(args.output).resolve())
        print(json.dumps(run.result(), indent=2))
        return 0 if run.status == "SUCCEEDED" else 1
