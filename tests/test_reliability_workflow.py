"""The batch workflow when its task dies in the middle of the Map (issue 6, "Load and faults").

Run through the real local state machine (the deployed definition, aws-local-stepfunctions, the real
Lambda handlers, a local replica of the task): after two chunks are written, the task's Chroma is
killed, which stops the task as ECS stops a task whose essential container exits. Expected: the
execution fails with that cause (the task stopped / its proxy does not answer), the stop is still
attempted and does not fail on a task that is already gone, the parts already written are kept, no
process is left, and running the same input again completes with every row.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from process_census import replica_leftovers

from ontosearch.workflow import steps
from ontosearch.workflow.local import LocalTaskHandle, LocalWorkflow

pytest_plugins = ["workflow_fixtures"]

LABELS = ["T cell", "hepatocyte", "B cells", "astrocyte", "monocytes", "neuron"]


def _kill_chroma(task: LocalTaskHandle) -> int:
    path = task.workdir / "replica.json"  # written by the replica once chroma and the proxy are up
    deadline = time.monotonic() + 30
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert path.exists(), f"no replica record in {sorted(p.name for p in task.workdir.iterdir())}"
    record = json.loads(path.read_text())
    pid = int(record["pids"]["chroma"])
    os.kill(pid, signal.SIGKILL)
    return pid


@pytest.mark.slow
def test_task_dying_mid_map_fails_with_that_cause_keeps_parts_and_a_rerun_completes(small_snapshot: Path,
                                                                                     tmp_path: Path) -> None:
    killed = threading.Event()
    flows: list[LocalWorkflow] = []

    def kill_the_task_before_the_third_chunk(query):
        def handler(event, context):
            if event["chunk"]["index"] == 2 and not killed.is_set():
                task = flows[0].fleet.tasks[-1]
                _kill_chroma(task)
                killed.set()
                deadline = time.monotonic() + 20
                while task.running() and time.monotonic() < deadline:  # the replica stops like ECS
                    time.sleep(0.1)
                assert not task.running(), "the task did not stop when its essential container died"
            return query(event, context)
        return handler

    source = tmp_path / "labels.txt"
    source.write_text("\n".join(LABELS) + "\n")
    with LocalWorkflow(chunk_size=1, map_concurrency=1, query_max_attempts=2, query_retry_interval_seconds=1,
                       wrap={"query": kill_the_task_before_the_third_chunk}) as flow:
        flows.append(flow)
        flow.publish_snapshot(small_snapshot)
        uri = flow.upload_input(source)
        request = {"input": uri, "ontology": "cl", "top_k": 2}
        run = flow.run(request)

        # Fails with the cause: the task is gone, its proxy does not answer.
        assert killed.is_set(), run.result()
        assert run.status == "FAILED", run.result()
        assert run.error == "ChromaUnavailableError", run.result()
        assert "did not answer" in run.cause and "Traceback" not in run.cause
        (task,) = run.tasks
        assert not task.running()
        # The stop is still attempted after the failure, and finding the task already stopped is fine:
        # the execution ends with the query's error, not a stop error.
        entered = [e["state"] for e in run.events if e.get("event") == "StateEntered"]
        assert "StopTaskAfterFailure" in entered and "Merge" not in entered and "StopFailed" not in entered
        # Stopping a task that is already gone is not an error (as with ECS StopTask), twice over.
        for _ in range(2):
            stopped = flow.fleet.stop_task({"Task": task.arn, "Reason": "again"})
            assert stopped["Task"]["LastStatus"] == "STOPPED"
        # Parts written before the task died are kept; nothing was merged.
        parts = flow.keys(f"work/{run.execution}/parts/")
        written = {steps.part_key(run.execution, i) for i in (0, 1)}
        assert written <= set(parts)
        assert steps.part_key(run.execution, 2) not in parts
        assert flow.keys("results/") == []
        assert not replica_leftovers(task)

        # A rerun of the same input completes, with every row.
        rerun = flow.run(request)
        assert rerun.status == "SUCCEEDED", rerun.result()
        assert rerun.output["rows"] == len(LABELS) and rerun.output["errors"] == 0
        rows = list(csv.DictReader(io.StringIO(flow.read_text(rerun.output["output"]))))
        assert [r["input"] for r in rows if r["rank"] == "1"] == LABELS
        (second,) = rerun.tasks
        assert second.arn != task.arn and not replica_leftovers(second)
