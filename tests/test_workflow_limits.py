"""Step Functions limits, checked on the deployed definition (issue 11, "Step Functions limits").

Rules, each with its source:
- state, task result and execution input/output: at most 256 KiB of UTF-8 JSON text ("Maximum
  input or output size for a task, state, or execution", service-quotas.html; botocore's
  stepfunctions model: SensitiveData max 262144). States.DataLimitExceeded is not caught by
  States.ALL, so reaching it would leave the task running.
- execution names: 1-80 characters (service-quotas.html "General quotas"; botocore: StartExecution
  name min 1 max 80).
- an error's Cause: at most 32,768 characters, its name 256 (botocore: SensitiveCause max 32768,
  SensitiveError max 256; the Fail state's Cause/CausePath and SendTaskFailure carry the same).
- history: at most 25,000 events per execution; a Distributed Map's children have their own
  (tests/workflow_history.py has the per-state event counts and their sources).
https://docs.aws.amazon.com/step-functions/latest/dg/service-quotas.html

The state sizes are measured, not estimated: the real definition runs in the local runner, which
reports the byte size of every state's input (StateEntered) and output (StateExited), parent and
child executions alike, and of every Task's result before its ResultSelector. Each run uses the
longest execution name allowed and the largest request the Validate step accepts; the failure
runs inject the longest cause allowed at the step whose failure path carries it furthest.
"""

from __future__ import annotations

import csv
import io
import json

import botocore.session
import pytest
from process_census import replica_leftovers
from workflow_history import HISTORY_LIMIT, distributed_children, machine_events

from ontosearch.workflow import definition as wd
from ontosearch.workflow import steps
from ontosearch.workflow.errors import MAX_ERROR_MESSAGE_CHARS, ChunkQueryError, brief_errors
from ontosearch.workflow.local import LocalWorkflow, TaskFailure, lambda_failure, local_settings

pytest_plugins = ["workflow_fixtures"]

_MODEL = botocore.session.get_session().get_service_model("stepfunctions")
STATE_LIMIT = _MODEL.shape_for("SensitiveData").metadata["max"]  # 262144 = 256 KiB
CAUSE_LIMIT = _MODEL.shape_for("SensitiveCause").metadata["max"]  # 32768
NAME_LIMIT = _MODEL.operation_model("StartExecution").input_shape.members["name"].metadata["max"]  # 80
# what the largest state may use of the limit: a quarter stays free
MARGIN = 0.75

LONGEST_NAME = ("e" * 40 + "-" + "9" * 39)[:NAME_LIMIT]
# the largest request Validate accepts: an input key of S3's 1,024 bytes and a column of
# MAX_COLUMN_CHARS, both of '"', which JSON spells in two bytes
LONG_KEY = "inputs/" + '"' * (steps.MAX_INPUT_KEY_BYTES - len("inputs/") - len(".csv")) + ".csv"
LONG_COLUMN = '"' * steps.MAX_COLUMN_CHARS
LABELS = ["T cell", "hepatocyte", "B cells", "astrocyte", "monocytes", "neuron", "", "NK cells",
          "endothelial cells", "regulatory T cells", "macrophage", "fibroblast"]


def test_the_limits_are_the_aws_api_models() -> None:
    assert (STATE_LIMIT, CAUSE_LIMIT, NAME_LIMIT) == (262144, 32768, 80)
    assert len(LONGEST_NAME) == NAME_LIMIT
    assert len(LONG_KEY.encode()) == steps.MAX_INPUT_KEY_BYTES
    # the steps accept the longest name Step Functions allows, and nothing longer
    assert steps.chunk_key(LONGEST_NAME, 0)
    with pytest.raises(Exception, match="1-80"):
        steps.chunk_key(LONGEST_NAME + "x", 0)


def longest_lambda_cause(error: str) -> str:
    """A Lambda error body of exactly CAUSE_LIMIT characters whose message is all '"' and '\\\\',
    the characters JSON doubles: the worst a cause can grow in the state."""
    head = {"errorType": error, "stackTrace": []}
    message = ""
    while True:
        body = json.dumps({"errorMessage": message + '"\\', **head})
        if len(body) > CAUSE_LIMIT:
            break
        message += '"\\'
    body = json.dumps({"errorMessage": message, **head})
    pad = CAUSE_LIMIT - len(body)
    body = json.dumps({"errorMessage": message + "x" * pad, **head})
    assert len(body) == CAUSE_LIMIT
    return body


def failing(error: str, cause: str):
    def wrap(handler):
        def fail(event, context):
            raise TaskFailure(error, cause)
        return fail
    return wrap


def upload_largest_request(flow: LocalWorkflow, labels: list[str]) -> dict:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([LONG_COLUMN, "other"])
    writer.writerows([label, "x"] for label in labels)
    flow.s3.put_object(Bucket=flow.bucket, Key=LONG_KEY, Body=out.getvalue().encode())
    return {"input": f"s3://{flow.bucket}/{LONG_KEY}", "ontology": "cell_type", "top_k": steps.MAX_TOP_K,
            "snapshot": "latest", "column": LONG_COLUMN, "save_snapshot": True}


def largest(run, flow) -> dict[str, int]:
    sizes = {
        "parent state": max(size for _, _, size in run.state_sizes(children=False)),
        "child state": max((size for _, _, size in run.state_sizes(children=True)), default=0),
        "task result": max(flow.bridge.result_bytes.values()),
    }
    for what, size in sizes.items():
        assert size < STATE_LIMIT * MARGIN, (what, size, sorted(flow.bridge.result_bytes.items()))
    return sizes


@pytest.mark.slow
def test_no_state_grows_with_the_input_and_the_largest_request_stays_below_256_kib(small_snapshot) -> None:
    """Point 6: the same execution over 12 chunks and over 1 carries states of the same size
    (before, the chunk list travelled in the state and grew by ~80 bytes a chunk)."""
    found = {}
    for chunk_size in (1, len(LABELS)):
        with LocalWorkflow(chunk_size=chunk_size, map_concurrency=4) as flow:
            flow.publish_snapshot(small_snapshot)
            request = upload_largest_request(flow, LABELS)
            run = flow.run(request, execution=LONGEST_NAME)
            assert run.status == "SUCCEEDED", run.result()
            assert run.output["rows"] == len(LABELS) and run.output["saved_snapshot"]
            (task,) = run.tasks
            assert not replica_leftovers(task)
            found[chunk_size] = largest(run, flow)
            queried = [e for e in run.events
                       if e.get("event") == "StateEntered" and e.get("state") == "QueryChunk"]
            distinct = len({label for label in LABELS if label})  # the empty label is an error row
            assert len(queried) == -(-distinct // chunk_size)
    many, one = found[1], found[len(LABELS)]
    # "chunks": 12 and "chunks": 1 differ by a digit; nothing else in the parent's state may differ
    assert abs(many["parent state"] - one["parent state"]) <= 2, found
    assert many["parent state"] < 16 * 1024, found
    print(f"\nlargest request, 80-character name: {found}")


@pytest.mark.slow
def test_the_longest_cause_of_a_failed_chunk_stays_far_below_256_kib(small_snapshot) -> None:
    cause = longest_lambda_cause(ChunkQueryError.__name__)
    with LocalWorkflow(chunk_size=4, map_concurrency=2,
                       wrap={"query": failing(ChunkQueryError.__name__, cause)}) as flow:
        flow.publish_snapshot(small_snapshot)
        run = flow.run(upload_largest_request(flow, LABELS), execution=LONGEST_NAME)
        assert run.status == "FAILED", run.result()
        # the chunk's own error, reduced to its message, not the Map Run's threshold error
        assert run.error == ChunkQueryError.__name__
        assert run.cause == json.loads(cause)["errorMessage"]
        (task,) = run.tasks
        assert task.stopped_reason() == "StopTask" and not replica_leftovers(task)
        sizes = largest(run, flow)
    print(f"\nlongest cause in a chunk: {sizes}")


@pytest.mark.slow
@pytest.mark.parametrize("step", ["merge", "split"])
def test_the_longest_cause_of_merge_or_split_stays_far_below_256_kib(small_snapshot, step) -> None:
    error = "MergeError" if step == "merge" else "InvalidInputError"
    cause = longest_lambda_cause(error)
    with LocalWorkflow(chunk_size=4, wrap={step: failing(error, cause)}) as flow:
        flow.publish_snapshot(small_snapshot)
        run = flow.run(upload_largest_request(flow, LABELS), execution=LONGEST_NAME)
        assert run.status == "FAILED" and run.error == error, run.result()
        assert run.cause == json.loads(cause)["errorMessage"]
        assert [t for t in run.tasks if t.running()] == []
        sizes = largest(run, flow)
    print(f"\nlongest cause in {step}: {sizes}")


def test_a_lambda_error_body_stays_within_the_cause_limit() -> None:
    """Our handlers raise messages of any length (a user's value, a list of keys); brief_errors
    keeps the body lambda:invoke hands over within CAUSE_LIMIT even when every character takes
    json.dumps' six (\\uXXXX), and keeps the error's class for Retry/Catch."""

    @brief_errors
    def handler(event, context):
        raise ChunkQueryError("\x01" * 100_000)

    with pytest.raises(ChunkQueryError) as raised:
        handler({}, None)
    failure = lambda_failure(raised.value)
    assert failure.error == "ChunkQueryError"
    assert len(json.loads(failure.cause)["errorMessage"]) == MAX_ERROR_MESSAGE_CHARS
    body = json.loads(failure.cause)
    for ensure_ascii in (True, False):
        assert len(json.dumps(body, ensure_ascii=ensure_ascii)) < CAUSE_LIMIT


# the inline Maps of the stop fallback: one item per task ListTasks returns, at most one page (100)
# (https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_ListTasks.html, maxResults)
STOP_FALLBACK_ITEMS = {"StopTaskFindEach": 100, "StopTaskAfterFailureFindEach": 100}


def test_history_events_stay_below_25000_whatever_the_input() -> None:
    """The parent's history does not depend on the number of chunks (a Distributed Map); one child
    execution's does not either (one chunk, retries included). The only inline Map, the stop
    fallback, iterates over the tasks ListTasks returns: at most 100 (one page), though one
    execution starts one task."""
    definition = wd.build_definition(local_settings(**dict(
        map_concurrency=10, workflow_timeout_seconds=3600, ready_timeout_seconds=600, heartbeat_seconds=300,
        query_max_attempts=4)))
    parent = machine_events(definition, inline_items=STOP_FALLBACK_ITEMS)
    children = {name: machine_events(processor, inline_items={})
                for name, processor in distributed_children(definition).items()}
    assert set(children) == {"QueryChunks"}
    assert parent < HISTORY_LIMIT and children["QueryChunks"] < HISTORY_LIMIT, (parent, children)
    assert parent < 5_000 and children["QueryChunks"] < 100, (parent, children)
    print(f"\nhistory bound: parent {parent} events, one QueryChunks child {children['QueryChunks']}")


def test_the_history_bound_counts_an_inline_map_per_item() -> None:
    """The bound has teeth: the same chunk Map run inline over 2,500 chunks (the old design) would
    pass 25,000 events with its retries."""
    definition = wd.build_definition(local_settings(query_max_attempts=4))
    inline = json.loads(json.dumps(definition))
    inline["States"]["QueryChunks"]["ItemProcessor"]["ProcessorConfig"] = {"Mode": "INLINE"}
    assert machine_events(inline, inline_items={**STOP_FALLBACK_ITEMS, "QueryChunks": 2500}) > HISTORY_LIMIT
    assert machine_events(definition, inline_items=STOP_FALLBACK_ITEMS) < HISTORY_LIMIT


def test_the_history_bound_refuses_a_cycle() -> None:
    looping = {"StartAt": "A", "States": {"A": {"Type": "Pass", "Next": "B"},
                                          "B": {"Type": "Choice", "Choices": [{"Variable": "$.x",
                                                "BooleanEquals": True, "Next": "A"}], "Default": "C"},
                                          "C": {"Type": "Succeed"}}}
    with pytest.raises(AssertionError, match="cycle"):
        machine_events(looping, inline_items={})


def test_split_returns_the_same_fields_however_large_the_input() -> None:
    """What Split puts in the state is keys (bounded by the 80-character execution name) and
    three counts: at the largest counts a 32-bit count can hold it is a few hundred bytes."""
    fields = {"manifest": steps.chunk_manifest_key(LONGEST_NAME), "chunks": 2**31, "rows": 2**31,
              "labels": 2**31,
              "results_prefix": steps.map_results_prefix(LONGEST_NAME),
              "failure_key": steps.chunk_failure_key(LONGEST_NAME)}
    assert {f"{k}.$" for k in fields} == set(wd.SPLIT_FIELDS)
    assert len(json.dumps(fields)) < 600

