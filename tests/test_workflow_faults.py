"""Faults of the batch workflow (issue 4 "Verification"), each run through the real local state machine.

Each ends with the execution failed (or timed out) with a cause naming the problem, the parts of the
chunks that succeeded kept in S3, and no Chroma or nginx process of the task left behind.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import boto3
import pytest
from process_census import processes_mentioning, replica_leftovers

from ontosearch.chroma_process import free_port
from ontosearch.embedders import get_embedder
from ontosearch.proxy import generate_token
from ontosearch.workflow import steps
from ontosearch.workflow.local import LocalWorkflow

pytest_plugins = ["workflow_fixtures"]

pytestmark = pytest.mark.slow

LABELS = ["T cell", "hepatocyte", "B cells", "astrocyte", "monocytes", "neuron"]


def start(flow: LocalWorkflow, snapshot: Path, tmp_path: Path) -> str:
    flow.publish_snapshot(snapshot)
    source = tmp_path / "labels.txt"
    source.write_text("\n".join(LABELS) + "\n")
    return flow.upload_input(source)


def lambda_message(cause: str) -> str:
    """lambda:invoke reports a function error's JSON body; the execution keeps only its message."""
    assert "stackTrace" not in cause and not cause.startswith("{"), cause
    return cause


def test_a_chunk_that_keeps_failing_fails_the_execution_and_keeps_finished_parts(small_snapshot, tmp_path):
    def lose_second_chunk(split):
        def handler(event, context):
            result = split(event, context)
            assert result["chunks"] > 1
            second = steps.chunk_key(event["execution"], 1)
            boto3.client("s3").delete_object(Bucket=event["job"]["bucket"], Key=second)
            return result
        return handler

    with LocalWorkflow(chunk_size=2, map_concurrency=1, wrap={"split": lose_second_chunk}) as flow:
        uri = start(flow, small_snapshot, tmp_path)
        run = flow.run({"input": uri, "ontology": "cl", "top_k": 2})
        assert run.status == "FAILED"
        assert run.error == "ChunkQueryError"
        assert f"work/{run.execution}/chunks/00001.jsonl is missing" in lambda_message(run.cause)
        # the chunk before it finished and its part is kept; the failed one has none; nothing was merged
        # (the local Map may still run an iteration queued before the failure; AWS would not start it)
        parts = flow.keys(f"work/{run.execution}/parts/")
        assert steps.part_key(run.execution, 0) in parts
        assert steps.part_key(run.execution, 1) not in parts
        assert flow.keys("results/") == []
        (task,) = run.tasks
        assert task.stopped_reason() == "StopTask"
        assert not replica_leftovers(task)
        entered = [e["state"] for e in run.events if e.get("event") == "StateEntered"]
        assert "StopTaskAfterFailure" in entered and "Merge" not in entered


def test_a_chunk_whose_proxy_keeps_failing_is_retried_with_backoff_then_fails(small_snapshot, tmp_path):
    attempts: dict[int, list[float]] = {}

    def unreachable_for_second_chunk(query):
        def handler(event, context):
            index = event["chunk"]["index"]
            attempts.setdefault(index, []).append(time.monotonic())
            if index == 1:  # this invocation's network path to the task is down
                event = {**event, "url": f"http://127.0.0.1:{free_port()}"}
            return query(event, context)
        return handler

    with LocalWorkflow(chunk_size=3, map_concurrency=1, query_max_attempts=2, query_retry_interval_seconds=1,
                       wrap={"query": unreachable_for_second_chunk}) as flow:
        uri = start(flow, small_snapshot, tmp_path)
        run = flow.run({"input": uri, "ontology": "cl", "top_k": 2})
        assert run.status == "FAILED"
        assert run.error == "ChromaUnavailableError"
        assert "did not answer" in lambda_message(run.cause)
        assert len(attempts[1]) == 3, "one try and two retries"
        assert len(attempts[0]) == 1
        parts = flow.keys(f"work/{run.execution}/parts/")
        assert steps.part_key(run.execution, 0) in parts
        assert steps.part_key(run.execution, 1) not in parts
        (task,) = run.tasks
        assert task.stopped_reason() == "StopTask"
        assert not replica_leftovers(task)


def test_a_task_that_never_becomes_ready_fails_with_the_reason(small_snapshot, tmp_path):
    # HeartbeatSeconds=6 while the agent waits 16 s: only its heartbeats keep the state from failing
    # with States.HeartbeatTimeout before the agent reports why the task is not ready
    with LocalWorkflow(ready_timeout_seconds=20, heartbeat_seconds=6, workflow_timeout_seconds=120) as flow:
        uri = start(flow, small_snapshot, tmp_path)
        # damage the published archive: restore refuses it, so chroma never starts
        key = next(k for k in flow.keys("snapshots/") if k.endswith(".tar.gz"))
        data = bytearray(flow.s3.get_object(Bucket=flow.bucket, Key=key)["Body"].read())
        data[len(data) // 2] ^= 0xFF
        flow.s3.put_object(Bucket=flow.bucket, Key=key, Body=bytes(data))
        started = time.monotonic()
        run = flow.run({"input": uri, "ontology": "cl", "top_k": 2})
        assert run.status == "FAILED"
        assert run.error == "TaskNotReadyError"
        assert "did not become ready" in run.cause
        assert "container restore exited with code" in run.cause
        assert time.monotonic() - started < 60
        (task,) = run.tasks
        assert "sha256" in task.log("restore.log") or "checksum" in task.log("restore.log").lower()
        assert not replica_leftovers(task)
        assert flow.keys(f"work/{run.execution}/parts/") == []


def test_a_task_that_never_reports_is_found_by_started_by_and_stopped(small_snapshot, tmp_path):
    """Issue 11 point 5, the fallback: no heartbeat within HeartbeatSeconds (the agent container
    starts late, as after a slow image pull), so no task ARN reached the state: the failure path
    lists the execution's tasks (startedBy = execution name) and stops each, while it still runs."""
    with LocalWorkflow(ready_timeout_seconds=30, heartbeat_seconds=3, workflow_timeout_seconds=120,
                       task_options={"agent_start_delay_seconds": 40}) as flow:
        uri = start(flow, small_snapshot, tmp_path)
        started = time.monotonic()
        run = flow.run({"input": uri, "ontology": "cl", "top_k": 2})
        assert run.status == "FAILED", run.result()
        assert run.error == "States.HeartbeatTimeout"
        assert time.monotonic() - started < 30, "the stop must not wait for the agent"
        (task,) = run.tasks
        entered = [e["state"] for e in run.events if e.get("event") == "StateEntered"]
        assert "StopTaskAfterFailureFind" in entered and "StopTaskAfterFailureByArn" not in entered
        assert flow.fleet.calls == [
            ("ListTasks", {"Cluster": flow.settings.cluster_arn, "StartedBy": run.execution}),
            ("StopTask", {"Cluster": flow.settings.cluster_arn, "Task": task.arn,
                          "Reason": f"batch workflow {run.execution} finished"}),
        ]
        assert task.stopped_reason() == "StopTask"  # stopped by the state machine, not by itself
        assert not replica_leftovers(task)
        assert not (task.workdir / "task-agent.log").exists(), "the agent never started"


def test_a_wrong_token_fails_without_retries_and_names_the_secret_mismatch(small_snapshot, tmp_path):
    calls = []

    def count_calls(query):
        def handler(event, context):
            calls.append(event["chunk"]["index"])
            return query(event, context)
        return handler

    with LocalWorkflow(lambda_token=generate_token(), chunk_size=3, map_concurrency=1,
                       wrap={"query": count_calls}) as flow:
        uri = start(flow, small_snapshot, tmp_path)
        run = flow.run({"input": uri, "ontology": "cl", "top_k": 2})
        assert run.status == "FAILED"
        assert run.error == "ChromaAuthError"
        message = lambda_message(run.cause)
        assert "refused the token (HTTP 401)" in message and "secret" in message
        assert calls[:1] == [0] and calls.count(0) == 1, f"an auth error must not be retried: {calls}"
        (task,) = run.tasks
        assert task.stopped_reason() == "StopTask"
        assert not replica_leftovers(task)


def test_a_run_past_its_timeout_is_stopped_by_the_task_itself(small_snapshot, tmp_path):
    release = threading.Event()

    def slow_merge(merge):
        def handler(event, context):
            release.wait(60)  # far longer than the execution may run
            raise RuntimeError("merge released after the test")
        return handler

    with LocalWorkflow(workflow_timeout_seconds=16, ready_timeout_seconds=12, task_deadline_grace_seconds=4,
                       wrap={"merge": slow_merge}) as flow:
        try:
            uri = start(flow, small_snapshot, tmp_path)
            get_embedder().embed(["warm"])  # the query step's cold start must not eat the 16 s
            run = flow.run({"input": uri, "ontology": "cl", "top_k": 2})
            assert run.status == "TIMED_OUT"
            assert run.error == "States.Timeout"
            assert "TimeoutSeconds (16 s)" in run.cause
            (task,) = run.tasks
            # Catch does not run on a timeout: nothing stopped the task, it stops at its own deadline
            assert task.running(), "the runner must not have stopped the task"
            assert not replica_leftovers(task, timeout=30)
            assert not task.running()
            assert "task-agent exited with code 4" in task.stopped_reason()
            assert "deadline passed" in task.log("task-agent.log")
            # the finished parts are kept
            assert len(flow.keys(f"work/{run.execution}/parts/")) == 1
        finally:
            release.set()
    assert not processes_mentioning(str(flow.workdir))
