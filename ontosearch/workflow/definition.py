"""The ONE function that produces the batch workflow's Amazon States Language definition.

The Pulumi component deploys exactly what `build_definition` returns, the tests validate it
(asl-validator, botocore shapes of every service-integration Parameters block) and the local
runner executes it with aws-local-stepfunctions, so there is no second copy that could drift.

Shape of an execution (ARCHITECTURE.md section 2):

    Validate -> Split -> StartTask (ecs:runTask.waitForTaskToken)
      -> QueryChunks (Distributed Map: items from the chunk manifest in S3, one child execution
         per chunk, results to S3) -> Merge -> [SaveSnapshot] -> StopTask -> Done
    any failure after the task may have started -> StopTaskAfterFailure -> Failed (original cause;
      for a failed chunk, the error its child execution recorded)
    a failure of Validate or Split -> InputRefused (no task exists yet)
No state grows with the input: Split returns keys and counts, the chunk list is an S3 object, and
the Map's per-chunk results go to S3.
Lambda error causes are reduced to their message (the Explain* states), so a failed execution
says what was wrong without a stack trace.

Split runs before the task starts: a file that cannot be read fails before any Fargate second is
paid for, and the task does not idle while the input is chunked. The task is stopped by the ARN
its agent reports with the task token ($.task.task_arn); a task that never reported (with
waitForTaskToken the RunTask response never reaches the state machine) is found by `startedBy` =
the execution name (ListTasks) instead.
`Catch` does not run on an execution timeout, so the task agent gets the execution start and a
deadline and stops the task itself (ontosearch.task_agent).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ontosearch.constants import (
    DATA_DIR,
    ENV_TASK_DEADLINE_SECONDS,
    ENV_TASK_EXECUTION_NAME,
    ENV_TASK_EXECUTION_START,
    ENV_TASK_HEARTBEAT_SECONDS,
    ENV_TASK_READY_TIMEOUT_SECONDS,
    ENV_TASK_TOKEN,
    RESTORE_CONTAINER,
    TASK_AGENT_CONTAINER,
)
from ontosearch.workflow.errors import (
    ChromaUnavailableError,
    InvalidInputError,
)

LAMBDA_INVOKE = "arn:aws:states:::lambda:invoke"
LAMBDA_INVOKE_WAIT = "arn:aws:states:::lambda:invoke.waitForTaskToken"
ECS_RUN_TASK_WAIT = "arn:aws:states:::ecs:runTask.waitForTaskToken"
ECS_LIST_TASKS = "arn:aws:states:::aws-sdk:ecs:listTasks"
ECS_STOP_TASK = "arn:aws:states:::aws-sdk:ecs:stopTask"
S3_PUT_OBJECT = "arn:aws:states:::aws-sdk:s3:putObject"
S3_GET_OBJECT = "arn:aws:states:::aws-sdk:s3:getObject"
# Distributed Map: ItemReader reading one S3 object, ResultWriter writing the Map Run's results
S3_ITEM_READER = "arn:aws:states:::s3:getObject"
S3_RESULT_WRITER = "arn:aws:states:::s3:putObject"
# The chunk manifest is JSON Lines; ItemReader's InputType accepts CSV, JSON, JSONL, PARQUET and
# MANIFEST (https://docs.aws.amazon.com/step-functions/latest/dg/input-output-itemreader.html).
CHUNK_MANIFEST_INPUT_TYPE = "JSONL"
# Distributed Map: up to 10,000 child executions at a time
# (https://docs.aws.amazon.com/step-functions/latest/dg/state-map-distributed.html).
MAX_MAP_CONCURRENCY = 10000

# Lambda service errors worth retrying (the names Step Functions gives them).
LAMBDA_TRANSIENT = [
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
]

# A lambda:invoke failure's Cause: the function's whole error body as JSON, {"errorMessage": ...}.
LAMBDA_ERROR_BODY_PATTERN = '{*"errorMessage"*}'

# The task agent's SendTaskHeartbeat interval is this fraction of HeartbeatSeconds, so one lost
# heartbeat does not fail the execution.
HEARTBEAT_FRACTION = 3

# HeartbeatSeconds of StartTask on AWS. The first heartbeat can only come once the agent container
# runs, i.e. after Fargate has provisioned the task and pulled all four containers' images (restore,
# chroma, proxy, agent). ARCHITECTURE.md ("Cold start"): RunTask to RUNNING is typically 30-60 s,
# image pull dominating; the ECS docs name no upper bound (large images and a cold registry take
# minutes: https://docs.aws.amazon.com/AmazonECS/latest/developerguide/task-lifecycle-explanation.html).
# 300 s is five times the typical start, so a slow pull does not end the execution with
# States.HeartbeatTimeout before the task could say anything.
START_HEARTBEAT_SECONDS = 300


@dataclass(frozen=True)
class WorkflowSettings:
    """Plain values (resolved ARNs and ids) the definition is built from.

    The component fills it inside `Output.all(...).apply(...)`; the local runner fills it with
    names its bridge understands. Defaults are the stack-config defaults.
    """

    cluster_arn: str
    task_definition_arn: str
    subnet_ids: Sequence[str]
    security_group_ids: Sequence[str]
    validate_function: str
    split_function: str
    query_function: str
    merge_function: str
    save_function: str
    map_concurrency: int = 10
    workflow_timeout_seconds: int = 3600
    ready_timeout_seconds: int = 600
    heartbeat_seconds: int = START_HEARTBEAT_SECONDS
    chunk_timeout_seconds: int = 300
    save_timeout_seconds: int = 900
    # extra life the task gives itself past the execution's TimeoutSeconds before it exits,
    # so a Catch-driven StopTask normally comes first
    task_deadline_grace_seconds: int = 120
    platform_version: str = "LATEST"
    query_retry_interval_seconds: int = 2
    query_max_attempts: int = 4
    tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.map_concurrency <= MAX_MAP_CONCURRENCY:
            problems.append(f"map_concurrency must be 1..{MAX_MAP_CONCURRENCY} (Distributed Map), "
                            f"got {self.map_concurrency}")
        if not self.subnet_ids:
            problems.append("subnet_ids is empty: the task needs private subnets")
        if not self.security_group_ids:
            problems.append("security_group_ids is empty: the task needs its security group")
        for name in ("workflow_timeout_seconds", "ready_timeout_seconds", "heartbeat_seconds",
                     "chunk_timeout_seconds", "save_timeout_seconds"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.ready_timeout_seconds < 10:
            problems.append(f"ready_timeout_seconds must be >= 10, got {self.ready_timeout_seconds}")
        if self.heartbeat_seconds >= self.ready_timeout_seconds:
            # ASL: "HeartbeatSeconds ... MUST be smaller than TimeoutSeconds"
            # (https://states-language.net/spec.html#task-state)
            problems.append(
                f"heartbeat_seconds ({self.heartbeat_seconds}) must be below "
                f"ready_timeout_seconds ({self.ready_timeout_seconds})"
            )
        if self.ready_timeout_seconds >= self.workflow_timeout_seconds:
            problems.append(
                f"ready_timeout_seconds ({self.ready_timeout_seconds}) must be below "
                f"workflow_timeout_seconds ({self.workflow_timeout_seconds})"
            )
        if self.chunk_timeout_seconds > 900:
            problems.append(
                f"chunk_timeout_seconds is {self.chunk_timeout_seconds}; Lambda allows at most 900"
            )
        if problems:
            raise ValueError("invalid workflow settings: " + "; ".join(problems))

    @property
    def agent_ready_timeout_seconds(self) -> int:
        """The agent gives up before the state times out, so its cause (what is not ready) reaches the
        execution instead of a bare States.Timeout. Its clock starts when its container starts,
        after the image pull, hence a margin of a fifth (3 to 60 s)."""
        return self.ready_timeout_seconds - max(3, min(60, self.ready_timeout_seconds // 5))

    @property
    def task_deadline_seconds(self) -> int:
        """Seconds after the execution start at which the task stops itself."""
        return self.workflow_timeout_seconds + self.task_deadline_grace_seconds


def _lambda_task(function: str, payload: dict[str, Any], **rest: Any) -> dict[str, Any]:
    """A lambda:invoke Task; callers pick OutputPath (replace) or ResultSelector+ResultPath (add)."""
    state: dict[str, Any] = {
        "Type": "Task",
        "Resource": LAMBDA_INVOKE,
        "Parameters": {"FunctionName": function, "Payload": payload},
        "Retry": [{
            "ErrorEquals": LAMBDA_TRANSIENT,
            "IntervalSeconds": 2, "MaxAttempts": 3, "BackoffRate": 2.0, "JitterStrategy": "FULL",
        }],
    }
    state.update(rest)
    return state


def _catch_to(next_state: str) -> list[dict[str, Any]]:
    return [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": next_state}]


def _explain_states(prefix: str, then: str) -> dict[str, dict[str, Any]]:
    """Reduce a Lambda error's cause (a JSON body with errorType and stackTrace) to its message.

    Other causes (the task agent's SendTaskFailure, States.Timeout) are plain text and pass as
    they are; the error name is kept either way.
    """
    return {
        # Parsing a cause that is not JSON is States.Runtime, which no Catch takes (and a Pass state
        # has none): only a complete Lambda error body is parsed. Presence is tested on its own
        # first, as a comparison on an absent path is a runtime error too.
        f"Explain{prefix}": {
            "Type": "Choice",
            "Choices": [{"Variable": "$.error.Cause", "IsPresent": True, "Next": f"Explain{prefix}Cause"}],
            "Default": then,
        },
        f"Explain{prefix}Cause": {
            "Type": "Choice",
            "Choices": [{"And": [{"Variable": "$.error.Cause", "IsString": True},
                                 {"Variable": "$.error.Cause", "StringMatches": LAMBDA_ERROR_BODY_PATTERN}],
                         "Next": f"Parse{prefix}Cause"}],
            "Default": then,
        },
        f"Parse{prefix}Cause": {
            "Type": "Pass",
            "Parameters": {"Error.$": "$.error.Error", "Cause.$": "States.StringToJson($.error.Cause)"},
            "ResultPath": "$.error",
            "Next": f"Keep{prefix}Message",
        },
        f"Keep{prefix}Message": {
            "Type": "Pass",
            "Parameters": {"Error.$": "$.error.Error", "Cause.$": "$.error.Cause.errorMessage"},
            "ResultPath": "$.error",
            "Next": then,
        },
    }


def restore_command_expression() -> str:
    """RunTask override for the restore container: restore the version Validate resolved."""
    return (
        "States.Array('python', '-m', 'ontosearch', 'restore-snapshot', '--bucket', $.job.bucket, "
        f"'--version', $.job.snapshot, '--into', '{DATA_DIR}')"
    )


# A task ARN as ECS reports it (arn:aws:ecs:region:account:task/cluster/id, any partition).
TASK_ARN_PATTERN = "arn:aws*:ecs:*:task/*"


def _stop_states(prefix: str, then: str, *, on_error: str, cluster: str) -> dict[str, dict[str, Any]]:
    """Stop the task by the ARN its agent reported ($.task.task_arn); ListTasks only as the fallback.

    The agent's SendTaskSuccess output carries the task ARN, so a task that reported is stopped
    with one StopTask on exactly that task. A task that never reported (RunTask failed, or the
    state timed out or lost its heartbeat while the task was still starting) has no ARN in the
    state: it is found by `startedBy` = the execution name, the one key RunTask set that the
    state machine knows without the RunTask response (waitForTaskToken never returns it).
    """
    by_arn, find, each = f"{prefix}ByArn", f"{prefix}Find", f"{prefix}FindEach"
    reason = "States.Format('batch workflow {} finished', $$.Execution.Name)"
    retry = [{"ErrorEquals": ["States.ALL"], "IntervalSeconds": 2, "MaxAttempts": 3, "BackoffRate": 2.0}]
    catch = [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.stop_error", "Next": on_error}]
    return {
        # Two Choice states: a comparison on a path that is absent is a runtime error, so presence is
        # tested on its own first.
        prefix: {
            "Type": "Choice",
            "Comment": "Did the agent report the task ARN?",
            "Choices": [{"Variable": "$.task.task_arn", "IsPresent": True, "Next": f"{prefix}CheckArn"}],
            "Default": find,
        },
        f"{prefix}CheckArn": {
            "Type": "Choice",
            "Choices": [{"And": [{"Variable": "$.task.task_arn", "IsString": True},
                                 {"Variable": "$.task.task_arn", "StringMatches": TASK_ARN_PATTERN}],
                         "Next": by_arn}],
            "Default": find,
        },
        by_arn: {
            "Type": "Task",
            "Resource": ECS_STOP_TASK,
            "Parameters": {"Cluster": cluster, "Task.$": "$.task.task_arn", "Reason.$": reason},
            "ResultPath": None,
            "Retry": retry,
            "Catch": catch,
            "Next": then,
        },
        find: {
            "Type": "Task",
            "Comment": "Fallback for a task that never reported: find it by startedBy.",
            "Resource": ECS_LIST_TASKS,
            "Parameters": {"Cluster": cluster, "StartedBy.$": "$$.Execution.Name"},
            "ResultSelector": {"arns.$": "$.TaskArns"},
            "ResultPath": "$.running",
            "Retry": retry,
            "Catch": catch,
            "Next": each,
        },
        each: {
            "Type": "Map",
            "ItemsPath": "$.running.arns",
            "MaxConcurrency": 5,
            "ItemProcessor": {
                "ProcessorConfig": {"Mode": "INLINE"},
                "StartAt": f"{prefix}FindOne",
                "States": {
                    f"{prefix}FindOne": {
                        "Type": "Task",
                        "Resource": ECS_STOP_TASK,
                        "Parameters": {"Cluster": cluster, "Task.$": "$", "Reason.$": reason},
                        "ResultSelector": {"stopped.$": "$.Task.TaskArn"},
                        "Retry": retry,
                        "End": True,
                    },
                },
            },
            "ResultPath": None,
            "Catch": catch,
            "Next": then,
        },
    }


# What Split returns into $.split: S3 keys of bounded length (the execution name is at most 80
# characters) and three counts (chunks, rows, distinct labels), whatever the input's size.
SPLIT_FIELDS = ("manifest.$", "chunks.$", "rows.$", "labels.$", "results_prefix.$", "failure_key.$")


def _query_chunks(s: WorkflowSettings) -> dict[str, Any]:
    """QueryChunks: a Distributed Map over the chunk manifest, one child execution per chunk.

    Why distributed: an inline Map keeps every iteration in the parent (its items in the state, its
    ~7 events per item in the parent's 25,000-event history, at most 40 at a time); here the items
    are read from S3 (ItemReader), each child execution has its own history, the results go to S3
    (ResultWriter) and the state gets a fixed-size result back.
    https://docs.aws.amazon.com/step-functions/latest/dg/state-map-distributed.html
    Why STANDARD children: one chunk's query may take TimeoutSeconds (the query Lambda's timeout)
    per attempt, with retries after it; an EXPRESS child ends at 5 minutes, which one slow attempt
    plus a retry exceeds. STANDARD children are billed per state transition (a few per chunk).
    https://docs.aws.amazon.com/step-functions/latest/dg/concepts-standard-vs-express.html
    A failed child fails the Map Run (no failure tolerated) with
    States.ExceedToleratedFailureThreshold; the child first records its own error in S3
    (RecordChunkFailure) so the execution can fail with it (ReadChunkFailure).
    """
    return {
        "Type": "Map",
        "Comment": "One child execution per chunk; each writes its own part (a retry overwrites it).",
        "ItemReader": {
            "Resource": S3_ITEM_READER,
            "ReaderConfig": {"InputType": CHUNK_MANIFEST_INPUT_TYPE},
            "Parameters": {"Bucket.$": "$.job.bucket", "Key.$": "$.split.manifest"},
        },
        "ItemSelector": {
            "chunk.$": "$$.Map.Item.Value",
            "job.$": "$.job",
            "url.$": "$.task.url",
            "execution.$": "$$.Execution.Name",
            "failure_key.$": "$.split.failure_key",
        },
        "ItemProcessor": {
            "ProcessorConfig": {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"},
            "StartAt": "QueryChunk",
            "States": {
                "QueryChunk": {
                    "Type": "Task",
                    "Resource": LAMBDA_INVOKE,
                    "Parameters": {"FunctionName": s.query_function, "Payload.$": "$"},
                    "OutputPath": "$.Payload",
                    "TimeoutSeconds": s.chunk_timeout_seconds,
                    "Retry": [
                        {
                            "ErrorEquals": [*LAMBDA_TRANSIENT, ChromaUnavailableError.__name__],
                            "IntervalSeconds": s.query_retry_interval_seconds,
                            "MaxAttempts": s.query_max_attempts,
                            "BackoffRate": 2.0,
                            "JitterStrategy": "FULL",
                        },
                    ],
                    "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error",
                               "Next": "ExplainChunkFailure"}],
                    "End": True,
                },
                # the record keeps the message, not the Lambda's whole error body
                **_explain_states("ChunkFailure", "RecordChunkFailure"),
                "RecordChunkFailure": {
                    "Type": "Task",
                    "Comment": "Leaves the chunk's error where the parent execution reads it.",
                    "Resource": S3_PUT_OBJECT,
                    "Parameters": {
                        "Bucket.$": "$.job.bucket",
                        "Key.$": "$.failure_key",
                        # a JSON object as Body is written as its JSON text
                        "Body.$": "$.error",
                        "ContentType": "application/json",
                    },
                    "ResultPath": None,
                    "Retry": [{"ErrorEquals": ["States.ALL"], "IntervalSeconds": 1, "MaxAttempts": 2,
                               "BackoffRate": 2.0}],
                    "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": None, "Next": "ChunkFailed"}],
                    "Next": "ChunkFailed",
                },
                "ChunkFailed": {
                    "Type": "Fail",
                    "ErrorPath": "$.error.Error",
                    "CausePath": "$.error.Cause",
                },
            },
        },
        "MaxConcurrency": s.map_concurrency,
        "Label": "QueryChunks",
        "ToleratedFailurePercentage": 0,
        "ResultWriter": {
            "Resource": S3_RESULT_WRITER,
            "Parameters": {"Bucket.$": "$.job.bucket", "Prefix.$": "$.split.results_prefix"},
        },
        "ResultPath": None,
        "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "ReadChunkFailure"}],
        "Next": "Merge",
    }


def _chunk_failure_states(then: str) -> dict[str, dict[str, Any]]:
    """After a failed Map Run: replace its States.ExceedToleratedFailureThreshold by the error a
    failed chunk recorded, when there is one (else the Map's own error goes on unchanged)."""
    return {
        "ReadChunkFailure": {
            "Type": "Task",
            "Resource": S3_GET_OBJECT,
            "Parameters": {"Bucket.$": "$.job.bucket", "Key.$": "$.split.failure_key"},
            "ResultSelector": {"recorded.$": "States.StringToJson($.Body)"},
            "ResultPath": "$.error",
            "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": None, "Next": then}],
            "Next": "UseChunkFailure",
        },
        "UseChunkFailure": {
            "Type": "Pass",
            "InputPath": "$.error.recorded",
            "ResultPath": "$.error",
            "Next": then,
        },
    }


def build_definition(settings: WorkflowSettings) -> dict[str, Any]:
    """The state machine definition (a dict; `definition_json` gives the deployable string)."""
    s = settings
    job_payload = {"job.$": "$.job", "execution.$": "$$.Execution.Name"}
    states: dict[str, Any] = {
        "Validate": _lambda_task(
            s.validate_function,
            {"request.$": "$", "execution.$": "$$.Execution.Name"},
            Comment=f"Checks the input and resolves the snapshot; {InvalidInputError.__name__} "
            "ends the execution before any task starts.",
            OutputPath="$.Payload",
            Catch=_catch_to("ExplainInputFailure"),
            Next="Split",
        ),
        "Split": _lambda_task(
            s.split_function,
            job_payload,
            Comment="Reads the input once, writes its chunks and their manifest to S3; returns only "
            "fixed-size fields (keys and counts).",
            ResultSelector={name: f"$.Payload.{name[:-2]}" for name in SPLIT_FIELDS},
            ResultPath="$.split",
            Catch=_catch_to("ExplainInputFailure"),
            Next="StartTask",
        ),
        "StartTask": {
            "Type": "Task",
            "Comment": "Runs the snapshot-loaded task; its agent reports ready with the task token.",
            "Resource": ECS_RUN_TASK_WAIT,
            "Parameters": {
                "Cluster": s.cluster_arn,
                "TaskDefinition": s.task_definition_arn,
                "LaunchType": "FARGATE",
                "PlatformVersion": s.platform_version,
                "StartedBy.$": "$$.Execution.Name",
                "PropagateTags": "TASK_DEFINITION",
                "NetworkConfiguration": {
                    "AwsvpcConfiguration": {
                        "Subnets": list(s.subnet_ids),
                        "SecurityGroups": list(s.security_group_ids),
                        "AssignPublicIp": "DISABLED",
                    },
                },
                "Overrides": {
                    "ContainerOverrides": [
                        {"Name": RESTORE_CONTAINER, "Command.$": restore_command_expression()},
                        {
                            "Name": TASK_AGENT_CONTAINER,
                            "Environment": [
                                {"Name": ENV_TASK_TOKEN, "Value.$": "$$.Task.Token"},
                                {"Name": ENV_TASK_EXECUTION_NAME, "Value.$": "$$.Execution.Name"},
                                {"Name": ENV_TASK_EXECUTION_START, "Value.$": "$$.Execution.StartTime"},
                                {"Name": ENV_TASK_DEADLINE_SECONDS, "Value": str(s.task_deadline_seconds)},
                                {"Name": ENV_TASK_READY_TIMEOUT_SECONDS,
                                 "Value": str(s.agent_ready_timeout_seconds)},
                                {"Name": ENV_TASK_HEARTBEAT_SECONDS,
                                 "Value": str(max(1, s.heartbeat_seconds // HEARTBEAT_FRACTION))},
                            ],
                        },
                    ],
                },
            },
            "HeartbeatSeconds": s.heartbeat_seconds,
            "TimeoutSeconds": s.ready_timeout_seconds,
            "ResultPath": "$.task",
            "Catch": _catch_to("ExplainFailure"),
            "Next": "QueryChunks",
        },
        "QueryChunks": _query_chunks(s),
        **_chunk_failure_states(then="ExplainFailure"),
        "Merge": _lambda_task(
            s.merge_function,
            {"job.$": "$.job", "execution.$": "$$.Execution.Name", "manifest.$": "$.split.manifest"},
            ResultSelector={
                "output.$": "$.Payload.output",
                "rows.$": "$.Payload.rows",
                "annotated.$": "$.Payload.annotated",
                "errors.$": "$.Payload.errors",
            },
            ResultPath="$.result",
            Catch=_catch_to("ExplainFailure"),
            Next="SaveSnapshotRequested",
        ),
        "SaveSnapshotRequested": {
            "Type": "Choice",
            "Choices": [{"Variable": "$.job.save_snapshot", "BooleanEquals": True, "Next": "SaveSnapshot"}],
            "Default": "StopTask",
        },
        "SaveSnapshot": {
            "Type": "Task",
            "Comment": "Asks the task agent to archive the task's data and publish it as a new version.",
            "Resource": LAMBDA_INVOKE_WAIT,
            "Parameters": {
                "FunctionName": s.save_function,
                "Payload": {**job_payload, "token.$": "$$.Task.Token"},
            },
            "TimeoutSeconds": s.save_timeout_seconds,
            "ResultPath": "$.saved",
            "Retry": [{"ErrorEquals": LAMBDA_TRANSIENT, "IntervalSeconds": 2, "MaxAttempts": 3,
                       "BackoffRate": 2.0}],
            "Catch": _catch_to("ExplainFailure"),
            "Next": "StopTask",
        },
        **_stop_states("StopTask", "Done", on_error="StopFailed", cluster=s.cluster_arn),
        "StopFailed": {
            "Type": "Fail",
            "Comment": "The results are written but the task could not be stopped; it stops itself at "
            "its deadline.",
            "ErrorPath": "$.stop_error.Error",
            "CausePath": "$.stop_error.Cause",
        },
        "Done": {
            "Type": "Pass",
            "Parameters": {
                "output.$": "$.result.output",
                "rows.$": "$.result.rows",
                "annotated.$": "$.result.annotated",
                "errors.$": "$.result.errors",
                "snapshot.$": "$.job.snapshot",
                "saved_snapshot.$": "$.saved.version",
            },
            "End": True,
        },
        **_explain_states("Failure", "StopTaskAfterFailure"),
        **_stop_states("StopTaskAfterFailure", "Failed", on_error="Failed", cluster=s.cluster_arn),
        "Failed": {
            "Type": "Fail",
            "Comment": "Fails with the error that sent the execution here, not the stop's.",
            "ErrorPath": "$.error.Error",
            "CausePath": "$.error.Cause",
        },
    }
    states.update({
        **_explain_states("InputFailure", "InputRefused"),
        "InputRefused": {
            "Type": "Fail",
            "Comment": "The input could not be run; no task was started.",
            "ErrorPath": "$.error.Error",
            "CausePath": "$.error.Cause",
        },
    })
    definition = {
        "Comment": "ontosearch batch annotation: a snapshot-loaded Chroma task that lives for one run",
        "StartAt": "Validate",
        "TimeoutSeconds": s.workflow_timeout_seconds,
        "States": states,
    }
    return definition


def definition_json(settings: WorkflowSettings) -> str:
    """The definition as the string `aws.sfn.StateMachine(definition=...)` takes."""
    return json.dumps(build_definition(settings), indent=2, sort_keys=False)


def task_states(definition: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every Task state by name, including those inside Map/Parallel (names are unique here)."""
    found: dict[str, dict[str, Any]] = {}

    def walk(states: dict[str, Any]) -> None:
        for name, state in states.items():
            if state["Type"] == "Task":
                found[name] = state
            elif state["Type"] == "Map":
                walk((state.get("ItemProcessor") or state["Iterator"])["States"])
            elif state["Type"] == "Parallel":
                for branch in state["Branches"]:
                    walk(branch["States"])

    walk(definition["States"])
    return found
