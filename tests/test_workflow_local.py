"""The batch workflow end to end on this machine: the deployed definition run by aws-local-stepfunctions,
the real Lambda handlers, a real replica of the task (restore from S3, `chroma run`, nginx, task agent)
and S3 / Secrets Manager served by moto."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from process_census import processes_mentioning, replica_leftovers

from ontosearch.restore import restore_from_s3
from ontosearch.workflow.local import LocalWorkflow

pytest_plugins = ["workflow_fixtures"]

ROOT = Path(__file__).resolve().parent.parent
LABELS = ["T cell", "hepatocytes", "", "B cells", "x" * 2000, "astrocyte", "T cell", "NK cells", "monocytes",
          "endothelial cells", "regulatory T cells"]


def output_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def check_every_row_once(rows: list[dict[str, str]], labels: list[str], top_k: int) -> None:
    """Each input row appears once per rank (rank 1..n in order) or once as an error/no_match row."""
    position = 0
    for label in labels:
        first = rows[position]
        shown = first["input"].removesuffix("…")  # long labels are echoed shortened
        shortened = first["input"].endswith("…") and label.startswith(shown)
        assert shown == label or shortened, (label[:40], first)
        if first["status"] != "ok":
            position += 1
            continue
        ranks = []
        while position < len(rows) and rows[position]["status"] == "ok" and rows[position]["input"] == label:
            rank = int(rows[position]["rank"])
            if ranks and rank != ranks[-1] + 1:
                break
            ranks.append(rank)
            position += 1
        assert ranks == list(range(1, len(ranks) + 1)) and 1 <= len(ranks) <= top_k, (label, ranks)
    assert position == len(rows), "the output has rows that belong to no input row"


@pytest.mark.slow
def test_execution_annotates_every_row_saves_a_snapshot_and_stops_the_task(small_snapshot, tmp_path) -> None:
    source = tmp_path / "labels.txt"
    source.write_text("\n".join(LABELS) + "\n")
    with LocalWorkflow(chunk_size=4, map_concurrency=2) as flow:
        first = flow.publish_snapshot(small_snapshot)
        uri = flow.upload_input(source)
        run = flow.run({"input": uri, "ontology": "cell_type", "top_k": 2, "snapshot": "latest",
                        "save_snapshot": True})
        assert run.status == "SUCCEEDED", run.result()
        out = run.output
        assert out["output"] == f"s3://{flow.bucket}/results/{run.execution}/annotations.csv"
        assert out["rows"] == len(LABELS)
        assert out["errors"] == 2  # the empty line and the 2000-character one
        assert out["annotated"] == len(LABELS) - 2
        assert out["snapshot"] == first
        rows = output_rows(flow.read_text(out["output"]))
        check_every_row_once(rows, LABELS, top_k=2)
        best = {r["input"]: r["term_label"] for r in rows if r["rank"] == "1"}
        assert best["hepatocytes"] == "hepatocyte" and best["NK cells"] == "natural killer cell"
        assert {r["error"] for r in rows if r["status"] == "error"} >= {"empty label"}
        # each distinct label queried once: 8 labels ("T cell" twice, two error rows not queried) in
        # two chunks of at most four, each with its own part
        assert len(flow.keys(f"work/{run.execution}/parts/")) == 2
        queried = [e for e in run.events
                   if e.get("event") == "StateEntered" and e.get("state") == "QueryChunk"]
        assert len(queried) == 2
        # the saved version is published, pointed to, and restores
        saved = out["saved_snapshot"]
        assert saved and saved != first
        assert json.loads(flow.read_text("snapshots/LATEST"))["version"] == saved
        manifest = restore_from_s3(flow.bucket, saved, tmp_path / "restored", s3=flow.s3, log=lambda _m: None)
        assert manifest.collection_names() == [c.name for c in manifest.collections]
        (task,) = run.tasks
        assert not task.running()
        assert task.stopped_reason() == "StopTask"
        assert not replica_leftovers(task)
        entered = [e["state"] for e in run.events if e.get("event") == "StateEntered"]
        assert entered.index("Split") < entered.index("StartTask") < entered.index("QueryChunks")
        assert entered.index("Merge") < entered.index("SaveSnapshot") < entered.index("StopTask")
        # the agent reported its task's ARN: one StopTask on exactly that task, no ListTasks
        assert "StopTaskByArn" in entered and "StopTaskFind" not in entered
        assert [(op, params.get("Task")) for op, params in flow.fleet.calls] == [("StopTask", task.arn)]


def test_invalid_input_fails_before_any_task_starts(small_snapshot, tmp_path) -> None:
    source = tmp_path / "labels.csv"
    source.write_text("label\nT cell\n")
    with LocalWorkflow() as flow:
        flow.publish_snapshot(small_snapshot)
        uri = flow.upload_input(source)
        run = flow.run({"input": uri, "ontology": "zebrafish", "top_k": 0})
    assert run.status == "FAILED"
    assert run.error == "InvalidInputError"
    cause = run.cause  # the Lambda error's message, without its stack trace
    assert "stackTrace" not in cause and "Traceback" not in cause
    assert "unknown ontology 'zebrafish'" in cause and "top_k must be an integer" in cause
    assert run.tasks == []


@pytest.mark.slow
def test_workflow_command_runs_the_state_machine_and_writes_the_output(small_snapshot, tmp_path) -> None:
    source = tmp_path / "tissues.csv"
    source.write_text("sample,cell type\ns1,hepatocyte\ns2,\ns3,B cells\n")
    out = tmp_path / "out.csv"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "ontosearch", "workflow", "--input", str(source), "--ontology", "cl",
         "--top-k", "3", "--output", str(out), "--column", "cell type", "--snapshot", str(small_snapshot)],
        capture_output=True, text=True, timeout=240, cwd=ROOT, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout)
    assert printed["status"] == "SUCCEEDED"
    assert printed["output"]["rows"] == 3 and printed["output"]["errors"] == 1
    assert printed["output"]["local_output"] == str(out.resolve())
    rows = output_rows(out.read_text())
    check_every_row_once(rows, ["hepatocyte", "", "B cells"], top_k=3)
    assert "state StartTask" in result.stderr  # progress is shown
    assert not processes_mentioning("ontosearch-workflow-")
