"""The local runner's binding of a Distributed Map (asl/distributed_map.mjs + the bridge's S3 ends).

aws-local-stepfunctions 3.0.0 validates ItemReader, ResultWriter and the tolerated failure
threshold but runs every Map inline (items from ItemsPath, outputs kept in the state, the first
failure fails it). These tests run small definitions through the real runner (Node, the library,
the bridge, moto S3) and check the binding does what the service documents:
https://docs.aws.amazon.com/step-functions/latest/dg/input-output-itemreader.html
https://docs.aws.amazon.com/step-functions/latest/dg/input-output-resultwriter.html
https://docs.aws.amazon.com/step-functions/latest/dg/maprun-fail-threshold.html
"""

from __future__ import annotations

import json
import re

import pytest

from ontosearch.workflow.local import LocalWorkflow

CHILD_PASS = {"StartAt": "Echo", "States": {"Echo": {"Type": "Pass", "End": True}}}
# a child that fails for an item with "fail": true, with that item's own error and cause
CHILD_FAILING = {
    "StartAt": "Check",
    "States": {
        "Check": {"Type": "Choice",
                  "Choices": [{"Variable": "$.value.fail", "BooleanEquals": True, "Next": "Broken"}],
                  "Default": "Echo"},
        "Broken": {"Type": "Fail", "Error": "ChunkQueryError", "Cause": "chunk is broken"},
        "Echo": {"Type": "Pass", "End": True},
    },
}


def distributed_map(child: dict, **fields) -> dict:
    state = {
        "Type": "Map",
        "ItemReader": {"Resource": "arn:aws:states:::s3:getObject", "ReaderConfig": {"InputType": "JSONL"},
                       "Parameters": {"Bucket.$": "$.bucket", "Key.$": "$.key"}},
        "ItemSelector": {"value.$": "$$.Map.Item.Value", "index.$": "$$.Map.Item.Index", "tag.$": "$.tag"},
        "ItemProcessor": {"ProcessorConfig": {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"}, **child},
        "Label": "Chunks",
        "ResultWriter": {"Resource": "arn:aws:states:::s3:putObject",
                         "Parameters": {"Bucket.$": "$.bucket", "Prefix": "out"}},
        "ResultPath": "$.map",
        "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Caught"}],
        "End": True,
    }
    state.update(fields)
    for name, value in list(state.items()):
        if value is None:
            del state[name]
    return {"StartAt": "Map", "TimeoutSeconds": 60,
            "States": {"Map": state, "Caught": {"Type": "Pass", "End": True}}}


@pytest.fixture(scope="module")
def flow():
    with LocalWorkflow() as workflow:
        yield workflow


def put_items(flow: LocalWorkflow, key: str, items: list, jsonl: bool = True) -> dict:
    body = "".join(json.dumps(i) + "\n" for i in items) if jsonl else json.dumps(items)
    flow.s3.put_object(Bucket=flow.bucket, Key=key, Body=body.encode())
    return {"bucket": flow.bucket, "key": key, "tag": "t1"}


def read_json(flow: LocalWorkflow, key: str):
    return json.loads(flow.read_text(key))


def test_items_come_from_the_reader_object_and_results_go_to_s3_not_the_state(flow) -> None:
    items = [{"chunk": i} for i in range(5)]
    run = flow.execute(distributed_map(CHILD_PASS), put_items(flow, "in/items.jsonl", items))
    assert run.status == "SUCCEEDED", run.result()
    result = run.output["map"]
    assert set(result) == {"MapRunArn", "ResultWriterDetails"}
    pattern = r"arn:aws:states:us-east-1:000000000000:mapRun:ontosearch-local/Chunks:([0-9a-f-]{36})"
    match = re.fullmatch(pattern, result["MapRunArn"])
    assert match, result["MapRunArn"]
    run_id = match.group(1)
    details = result["ResultWriterDetails"]
    assert details == {"Bucket": flow.bucket, "Key": f"out/{run_id}/manifest.json"}
    manifest = read_json(flow, details["Key"])
    assert manifest["DestinationBucket"] == flow.bucket and manifest["MapRunArn"] == result["MapRunArn"]
    assert manifest["ResultFiles"]["FAILED"] == [] and manifest["ResultFiles"]["PENDING"] == []
    (succeeded,) = manifest["ResultFiles"]["SUCCEEDED"]
    assert succeeded["Key"] == f"out/{run_id}/SUCCEEDED_0.json"
    body = flow.read_text(succeeded["Key"])
    assert succeeded["Size"] == len(body.encode())
    records = sorted(json.loads(body), key=lambda r: json.loads(r["Input"])["index"])
    assert [json.loads(r["Input"]) for r in records] == [{"value": item, "index": i, "tag": "t1"}
                                                        for i, item in enumerate(items)]
    for record in records:
        assert record["Status"] == "SUCCEEDED"
        assert json.loads(record["Output"]) == json.loads(record["Input"])  # the Pass child echoes
        assert record["ExecutionArn"].startswith(
            "arn:aws:states:us-east-1:000000000000:execution:ontosearch-local/Chunks:")
        assert record["ExecutionArn"].endswith(":" + record["Name"])
    # the children ran as executions of their own: their states are reported as theirs
    child_states = {(e["index"], e["child"]) for e in run.events if e.get("event") == "StateEntered"
                    and e.get("state") == "Echo"}
    assert len(child_states) == 5 and len({child for _, child in child_states}) == 5
    started = [e for e in run.events if e.get("event") == "MapRunStarted"]
    assert started == [{**started[0], "state": "Map", "items": 5, "mapRunArn": result["MapRunArn"]}]
    # the parent's state holds the fixed-size result only
    parent = max(size for _, _, size in run.state_sizes(children=False))
    assert parent < 1000


def test_a_json_array_is_read_too_and_max_items_limits_the_items(flow) -> None:
    items = list(range(10))
    definition = distributed_map(CHILD_PASS, ResultWriter=None)
    definition["States"]["Map"]["ItemReader"]["ReaderConfig"] = {"InputType": "JSON", "MaxItems": 3}
    run = flow.execute(definition, put_items(flow, "in/items.json", items, jsonl=False))
    assert run.status == "SUCCEEDED", run.result()
    # without a ResultWriter the Map's result is the children's outputs, in item order
    assert run.output["map"] == [{"value": i, "index": i, "tag": "t1"} for i in range(3)]


def test_max_concurrency_one_runs_the_children_one_after_another(flow) -> None:
    run = flow.execute(distributed_map(CHILD_PASS, MaxConcurrency=1),
                       put_items(flow, "in/serial.jsonl", list(range(4))))
    assert run.status == "SUCCEEDED", run.result()
    order = [(e["event"], e["index"]) for e in run.events
             if e.get("state") == "Echo" and e.get("event") in {"StateEntered", "StateExited"}]
    assert order == [(kind, i) for i in range(4) for kind in ("StateEntered", "StateExited")]


def test_a_failed_child_fails_the_map_run_with_the_threshold_error_and_its_record(flow) -> None:
    items = [{"fail": False}, {"fail": True}, {"fail": False}]
    run = flow.execute(distributed_map(CHILD_FAILING, MaxConcurrency=1),
                       put_items(flow, "in/failing.jsonl", items))
    assert run.status == "SUCCEEDED", run.result()  # the Catch took it
    error = run.output["error"]
    assert error["Error"] == "States.ExceedToleratedFailureThreshold"
    assert "1 of 3 child executions failed" in error["Cause"]
    assert "map" not in run.output
    (key,) = [k for k in flow.keys("out/") if k.endswith("FAILED_0.json")
              and error["Cause"].rstrip(")").rsplit(":", 1)[-1] in k]
    (failed,) = read_json(flow, key)
    assert failed["Status"] == "FAILED" and failed["Error"] == "ChunkQueryError"
    assert failed["Cause"] == "chunk is broken"
    assert json.loads(failed["Input"])["index"] == 1
    # no child starts once the threshold is exceeded: the third item is left pending
    pending = read_json(flow, key.replace("FAILED_0", "PENDING_0"))
    assert [json.loads(p["Input"]) for p in pending] == [{"fail": False}]


def test_a_tolerated_failure_count_lets_the_map_run_succeed(flow) -> None:
    items = [{"fail": True}, {"fail": False}]
    run = flow.execute(distributed_map(CHILD_FAILING, ToleratedFailureCount=1),
                       put_items(flow, "in/tolerated.jsonl", items))
    assert run.status == "SUCCEEDED", run.result()
    manifest = read_json(flow, run.output["map"]["ResultWriterDetails"]["Key"])
    assert len(manifest["ResultFiles"]["FAILED"]) == 1 and len(manifest["ResultFiles"]["SUCCEEDED"]) == 1


def test_an_item_reader_that_cannot_read_fails_with_states_item_reader_failed(flow) -> None:
    request = {"bucket": flow.bucket, "key": "in/no-such-object.jsonl", "tag": "t"}
    run = flow.execute(distributed_map(CHILD_PASS), request)
    assert run.status == "SUCCEEDED", run.result()
    assert run.output["error"]["Error"] == "States.ItemReaderFailed"
    assert "in/no-such-object.jsonl" in run.output["error"]["Cause"]
    flow.s3.put_object(Bucket=flow.bucket, Key="in/broken.jsonl", Body=b'{"a": 1}\nnot json\n')
    run = flow.execute(distributed_map(CHILD_PASS), {**request, "key": "in/broken.jsonl"})
    assert run.output["error"]["Error"] == "States.ItemReaderFailed"


def test_a_field_the_runner_does_not_bind_fails_the_execution_past_any_catch(flow) -> None:
    run = flow.execute(distributed_map(CHILD_PASS, ItemBatcher={"MaxItemsPerBatch": 2}),
                       put_items(flow, "in/batched.jsonl", [1, 2, 3]))
    assert run.status == "FAILED"
    assert run.error == "LocalRunnerError" and "ItemBatcher" in run.cause


def test_an_inline_map_keeps_the_library_behaviour(flow) -> None:
    definition = {"StartAt": "Map", "States": {"Map": {
        "Type": "Map", "ItemsPath": "$.items",
        "ItemProcessor": {"ProcessorConfig": {"Mode": "INLINE"}, **CHILD_PASS}, "End": True}}}
    run = flow.execute(definition, {"items": [1, 2, 3]})
    assert run.status == "SUCCEEDED" and run.output == [1, 2, 3]
    assert not [e for e in run.events if e.get("event") == "MapRunStarted"]
