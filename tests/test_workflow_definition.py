"""The batch workflow definition: structure, asl-validator, botocore shapes of its integrations."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import botocore.session
import pytest
from botocore.validate import ParamValidator

from ontosearch.constants import (
    ENV_TASK_DEADLINE_SECONDS,
    ENV_TASK_TOKEN,
    RESTORE_CONTAINER,
    TASK_AGENT_CONTAINER,
)
from ontosearch.workflow import definition as wd
from ontosearch.workflow.node import asl_dir, node_command

SETTINGS = dict(
    cluster_arn="arn:aws:ecs:us-east-1:123456789012:cluster/ontosearch-dev",
    task_definition_arn="arn:aws:ecs:us-east-1:123456789012:task-definition/ontosearch-dev-batch:3",
    subnet_ids=["subnet-0aa11", "subnet-0bb22"],
    security_group_ids=["sg-0task"],
    validate_function="arn:aws:lambda:us-east-1:123456789012:function:ontosearch-validate",
    split_function="arn:aws:lambda:us-east-1:123456789012:function:ontosearch-split",
    query_function="arn:aws:lambda:us-east-1:123456789012:function:ontosearch-query",
    merge_function="arn:aws:lambda:us-east-1:123456789012:function:ontosearch-merge",
    save_function="arn:aws:lambda:us-east-1:123456789012:function:ontosearch-save",
)


@pytest.fixture(scope="module")
def definition() -> dict:
    settings = wd.WorkflowSettings(**SETTINGS, map_concurrency=7, workflow_timeout_seconds=1800)
    return wd.build_definition(settings)


def successors(state: dict) -> set[str]:
    found = {state[k] for k in ("Next", "Default") if k in state}
    found |= {c["Next"] for c in state.get("Catch", [])}
    found |= {c["Next"] for c in state.get("Choices", [])}
    return found


def reachable(states: dict, start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(successors(states[name]))
    return seen


def run_validator(path: Path) -> subprocess.CompletedProcess:
    validator = asl_dir() / "node_modules" / ".bin" / "asl-validator"
    command = [*node_command(), str(validator), "--json-path", str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_definition_passes_asl_validator(definition, tmp_path: Path) -> None:
    path = tmp_path / "definition.json"
    path.write_text(json.dumps(definition))
    result = run_validator(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is valid" in result.stdout


def test_asl_validator_rejects_a_broken_transition(definition, tmp_path: Path) -> None:
    """Proves the validator check above has teeth."""
    broken = json.loads(json.dumps(definition))
    broken["States"]["Merge"]["Next"] = "NoSuchState"
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    result = run_validator(path)
    assert result.returncode != 0


def test_machine_has_a_timeout_and_the_task_deadline_outlives_it(definition) -> None:
    assert definition["TimeoutSeconds"] == 1800
    start = definition["States"]["StartTask"]
    agent = next(c for c in start["Parameters"]["Overrides"]["ContainerOverrides"]
                 if c["Name"] == TASK_AGENT_CONTAINER)
    env = {e["Name"]: e for e in agent["Environment"]}
    assert int(env[ENV_TASK_DEADLINE_SECONDS]["Value"]) > definition["TimeoutSeconds"]
    assert env[ENV_TASK_TOKEN]["Value.$"] == "$$.Task.Token"


def test_task_starts_in_private_subnets_without_public_ip_and_waits_for_its_token(definition) -> None:
    start = definition["States"]["StartTask"]
    assert start["Resource"] == "arn:aws:states:::ecs:runTask.waitForTaskToken"
    vpc = start["Parameters"]["NetworkConfiguration"]["AwsvpcConfiguration"]
    assert vpc == {"Subnets": SETTINGS["subnet_ids"], "SecurityGroups": SETTINGS["security_group_ids"],
                   "AssignPublicIp": "DISABLED"}
    assert start["Parameters"]["TaskDefinition"] == SETTINGS["task_definition_arn"]
    assert start["Parameters"]["Cluster"] == SETTINGS["cluster_arn"]
    assert 0 < start["HeartbeatSeconds"] < start["TimeoutSeconds"]
    restore = next(c for c in start["Parameters"]["Overrides"]["ContainerOverrides"]
                   if c["Name"] == RESTORE_CONTAINER)
    assert "$.job.snapshot" in restore["Command.$"]


def test_invalid_input_fails_before_the_task_starts(definition) -> None:
    states = definition["States"]
    before_task = reachable(states, "Validate") - reachable(states, "StartTask")
    assert {"Validate", "Split"} <= before_task
    for name in ("Validate", "Split"):
        assert states[name]["Catch"][0]["Next"] == "ExplainInputFailure"
    refused = reachable(states, "ExplainInputFailure")
    assert "InputRefused" in refused and states["InputRefused"]["Type"] == "Fail"
    assert not any(name.startswith(("Stop", "Start")) for name in refused), refused


def test_every_state_after_the_task_starts_is_caught_and_stops_the_task(definition) -> None:
    states = definition["States"]
    after = reachable(states, "StartTask")
    failure_path = reachable(states, "StopTaskAfterFailure")
    stop_path = reachable(states, "StopTask")
    for name in after - failure_path - stop_path:
        state = states[name]
        if state["Type"] in {"Task", "Map", "Parallel"}:
            catches = state.get("Catch", [])
            assert catches and catches[0]["ErrorEquals"] == ["States.ALL"], name
            if name == "QueryChunks":  # first the error a failed chunk recorded, then the same path
                assert catches[0] == {"ErrorEquals": ["States.ALL"], "ResultPath": "$.error",
                                      "Next": "ReadChunkFailure"}
                continue
            if name == "ReadChunkFailure":  # no recorded error: the Map's own error goes on as it is
                assert catches[0]["Next"] == "ExplainFailure" and catches[0]["ResultPath"] is None
                continue
            assert catches[0]["Next"] == "ExplainFailure", name
            assert catches[0]["ResultPath"] == "$.error", name
    # a recorded chunk error replaces the Map's, and then takes the failure path
    assert states["ReadChunkFailure"]["Next"] == "UseChunkFailure"
    assert states["UseChunkFailure"]["Next"] == "ExplainFailure"
    # the failure path stops the task whatever the cause looks like, and never reaches Done
    explain = reachable(states, "ExplainFailure")
    assert "StopTaskAfterFailure" in explain and "Done" not in explain
    assert states["ExplainFailure"]["Default"] == "StopTaskAfterFailure"
    # the failure path ends in a Fail state that reports the ORIGINAL error, not the stop's
    assert states["Failed"]["Type"] == "Fail"
    assert states["Failed"]["CausePath"] == "$.error.Cause"
    assert states["Failed"]["ErrorPath"] == "$.error.Error"
    stoppers = [n for n in failure_path if states[n]["Type"] in {"Task", "Map"}]
    assert {"StopTaskAfterFailureByArn", "StopTaskAfterFailureFind", "StopTaskAfterFailureFindEach"} <= set(
        stoppers)
    for name in stoppers:
        assert states[name]["Catch"][0]["ResultPath"] != "$.error", name
    # success path goes through StopTask before Done
    assert "Done" in reachable(states, "StopTask")
    assert "Done" not in reachable(states, "Merge") - reachable(states, "StopTask") - {"Done"}


@pytest.mark.parametrize("entry", ["StopTask", "StopTaskAfterFailure"])
def test_a_reported_task_is_stopped_by_its_arn_only_an_unreported_one_is_listed(definition, entry) -> None:
    """Issue 11 point 5: StopTask on the ARN the agent reported ($.task.task_arn, see
    ontosearch.task_agent: SendTaskSuccess output {"url", "task_arn", ...}); ListTasks by
    startedBy only when no ARN was reported."""
    states = definition["States"]
    choice = states[entry]
    assert choice["Type"] == "Choice"
    assert choice["Choices"] == [{"Variable": "$.task.task_arn", "IsPresent": True,
                                  "Next": f"{entry}CheckArn"}]
    check = states[f"{entry}CheckArn"]
    (rule,) = check["Choices"]
    assert rule["Next"] == f"{entry}ByArn"
    assert {"Variable": "$.task.task_arn", "StringMatches": wd.TASK_ARN_PATTERN} in rule["And"]
    assert choice["Default"] == check["Default"] == f"{entry}Find"
    by_arn = states[f"{entry}ByArn"]
    assert by_arn["Resource"] == wd.ECS_STOP_TASK
    assert by_arn["Parameters"]["Task.$"] == "$.task.task_arn"
    assert by_arn["Parameters"]["Cluster"] == SETTINGS["cluster_arn"]
    find = states[f"{entry}Find"]
    assert find["Resource"] == wd.ECS_LIST_TASKS
    assert find["Parameters"] == {"Cluster": SETTINGS["cluster_arn"], "StartedBy.$": "$$.Execution.Name"}
    assert states[find["Next"]]["Type"] == "Map" and states[find["Next"]]["ItemsPath"] == "$.running.arns"
    # the reported ARN and the fallback both end where the stop leads
    assert by_arn["Next"] == states[find["Next"]]["Next"]


def test_the_task_arn_pattern_accepts_ecs_task_arns_only() -> None:
    import fnmatch

    # Choice StringMatches: "*" matches any run of characters (https://states-language.net/spec.html)
    for arn in ("arn:aws:ecs:us-east-1:123456789012:task/ontosearch-dev/0f1e2d3c4b5a69788796a5b4c3d2e1f0",
                "arn:aws-cn:ecs:cn-north-1:123456789012:task/c/abc"):
        assert fnmatch.fnmatchcase(arn, wd.TASK_ARN_PATTERN), arn
    for other in ("", "http://10.0.0.5:8443", "arn:aws:ecs:us-east-1:123456789012:cluster/c"):
        assert not fnmatch.fnmatchcase(other, wd.TASK_ARN_PATTERN), other


def test_start_heartbeat_is_below_the_start_timeout_and_covers_a_cold_fargate_start() -> None:
    settings = wd.WorkflowSettings(**SETTINGS)
    start = wd.build_definition(settings)["States"]["StartTask"]
    # ARCHITECTURE.md "Cold start": RunTask to RUNNING 30-60 s typical, image pull dominating; the
    # first heartbeat comes only after all four images are pulled: at least 300 s (issue 11, point 8)
    assert start["HeartbeatSeconds"] >= 300
    assert start["HeartbeatSeconds"] < start["TimeoutSeconds"]
    with pytest.raises(ValueError, match="heartbeat_seconds .* must be below"):
        wd.WorkflowSettings(**SETTINGS, heartbeat_seconds=600, ready_timeout_seconds=600)


def test_map_concurrency_comes_from_settings_and_chunk_queries_retry_transient_errors(definition) -> None:
    mapping = definition["States"]["QueryChunks"]
    assert mapping["MaxConcurrency"] == 7
    assert mapping["ItemProcessor"]["ProcessorConfig"]["Mode"] == "DISTRIBUTED"
    query = mapping["ItemProcessor"]["States"]["QueryChunk"]
    retried = {e for r in query["Retry"] for e in r["ErrorEquals"]}
    assert {"ChromaUnavailableError", "Lambda.TooManyRequestsException"} <= retried
    assert "ChromaAuthError" not in retried and "States.ALL" not in retried


def test_chunks_are_queried_by_a_distributed_map_that_reads_and_writes_s3(definition) -> None:
    """Issue 11 point 6: no state grows with the input. The Map reads its items from the manifest
    Split wrote (ItemReader), runs one STANDARD child execution per chunk and writes their
    results to S3 (ResultWriter), keeping none of them in the state."""
    mapping = definition["States"]["QueryChunks"]
    assert mapping["ItemProcessor"]["ProcessorConfig"] == {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"}
    assert "ItemsPath" not in mapping
    reader = mapping["ItemReader"]
    assert reader["Resource"] == "arn:aws:states:::s3:getObject"
    # InputType values the service accepts
    # (https://docs.aws.amazon.com/step-functions/latest/dg/input-output-itemreader.html)
    assert reader["ReaderConfig"]["InputType"] in {"CSV", "JSON", "JSONL", "PARQUET", "MANIFEST"}
    assert reader["ReaderConfig"]["InputType"] == "JSONL"  # what steps.split writes: one chunk a line
    assert reader["Parameters"] == {"Bucket.$": "$.job.bucket", "Key.$": "$.split.manifest"}
    writer = mapping["ResultWriter"]
    assert writer["Resource"] == "arn:aws:states:::s3:putObject"
    # ResultWriter Parameters: Bucket and Prefix
    # (https://docs.aws.amazon.com/step-functions/latest/dg/input-output-resultwriter.html)
    assert set(writer["Parameters"]) == {"Bucket.$", "Prefix.$"}
    assert mapping["ResultPath"] is None
    assert mapping["ToleratedFailurePercentage"] == 0
    # Label: at most 40 characters, no whitespace or special characters
    # (https://docs.aws.amazon.com/step-functions/latest/dg/state-map-distributed.html)
    assert len(mapping["Label"]) <= 40 and mapping["Label"].isalnum()
    # each child gets one chunk entry and fixed-size fields
    assert mapping["ItemSelector"]["chunk.$"] == "$$.Map.Item.Value"
    assert set(mapping["ItemSelector"]) == {"chunk.$", "job.$", "url.$", "execution.$", "failure_key.$"}


def test_split_returns_fixed_size_fields_and_no_chunk_list_travels(definition) -> None:
    states = definition["States"]
    assert states["Split"]["ResultSelector"] == {
        "manifest.$": "$.Payload.manifest", "chunks.$": "$.Payload.chunks", "rows.$": "$.Payload.rows",
        "labels.$": "$.Payload.labels", "results_prefix.$": "$.Payload.results_prefix",
        "failure_key.$": "$.Payload.failure_key"}
    assert states["Merge"]["Parameters"]["Payload"]["manifest.$"] == "$.split.manifest"
    text = json.dumps(definition)
    assert '"$.split.chunks"' not in text.replace('"chunks.$": "$.Payload.chunks"', "")


def test_a_failed_chunk_records_its_error_and_the_execution_fails_with_it(definition) -> None:
    child = definition["States"]["QueryChunks"]["ItemProcessor"]["States"]
    query = child["QueryChunk"]
    assert query["Catch"] == [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error",
                               "Next": "ExplainChunkFailure"}]
    # reduced to its message first, as the parent's failure path does
    assert child["ExplainChunkFailure"]["Default"] == "RecordChunkFailure"
    assert child["KeepChunkFailureMessage"]["Next"] == "RecordChunkFailure"
    record = child["RecordChunkFailure"]
    assert record["Resource"] == wd.S3_PUT_OBJECT
    assert record["Parameters"]["Key.$"] == "$.failure_key"
    assert record["Parameters"]["Body.$"] == "$.error"
    # the child still fails with the chunk's own error, whether or not the record was written
    assert record["Next"] == record["Catch"][0]["Next"] == "ChunkFailed"
    assert child["ChunkFailed"] == {"Type": "Fail", "ErrorPath": "$.error.Error",
                                    "CausePath": "$.error.Cause"}
    read = definition["States"]["ReadChunkFailure"]
    assert read["Resource"] == wd.S3_GET_OBJECT
    assert read["Parameters"] == {"Bucket.$": "$.job.bucket", "Key.$": "$.split.failure_key"}
    assert read["ResultSelector"] == {"recorded.$": "States.StringToJson($.Body)"}


def test_only_a_complete_lambda_error_body_is_parsed(definition) -> None:
    """States.StringToJson on a cause that is not JSON is States.Runtime, which no Catch takes: the
    execution would end without stopping the task. Only a cause that starts and ends like a
    Lambda error body, and only one that is present, is parsed."""
    import fnmatch

    states = definition["States"]
    child = states["QueryChunks"]["ItemProcessor"]["States"]
    for prefix in ("Failure", "InputFailure", "ChunkFailure"):
        states = child if prefix == "ChunkFailure" else definition["States"]
        present = states[f"Explain{prefix}"]
        assert present["Choices"][0] == {"Variable": "$.error.Cause", "IsPresent": True,
                                         "Next": f"Explain{prefix}Cause"}
        (rule,) = states[f"Explain{prefix}Cause"]["Choices"]
        assert rule["Next"] == f"Parse{prefix}Cause"
        pattern = next(r["StringMatches"] for r in rule["And"] if "StringMatches" in r)
        assert fnmatch.fnmatchcase(json.dumps({"errorMessage": "x", "errorType": "E"}), pattern)
        truncated = json.dumps({"errorMessage": "x" * 100, "errorType": "E"})[:60]
        assert not fnmatch.fnmatchcase(truncated, pattern)
        assert not fnmatch.fnmatchcase("the task did not become ready", pattern)


def test_settings_refuse_bad_values_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="map_concurrency must be 1..10000"):
        wd.WorkflowSettings(**SETTINGS, map_concurrency=0)
    # Distributed Map: at most 10,000 concurrent child executions
    # (https://docs.aws.amazon.com/step-functions/latest/dg/state-map-distributed.html)
    wd.WorkflowSettings(**SETTINGS, map_concurrency=10000)
    with pytest.raises(ValueError, match="map_concurrency must be 1..10000"):
        wd.WorkflowSettings(**SETTINGS, map_concurrency=10001)
    with pytest.raises(ValueError, match="ready_timeout_seconds .* must be below"):
        wd.WorkflowSettings(**SETTINGS, ready_timeout_seconds=900, workflow_timeout_seconds=600)
    with pytest.raises(ValueError, match="subnet_ids is empty"):
        wd.WorkflowSettings(**{**SETTINGS, "subnet_ids": []})


# --- botocore validation of every service-integration Parameters block ---------------------------

SERVICES = {
    wd.ECS_RUN_TASK_WAIT: ("ecs", "RunTask"),
    wd.ECS_LIST_TASKS: ("ecs", "ListTasks"),
    wd.ECS_STOP_TASK: ("ecs", "StopTask"),
    wd.LAMBDA_INVOKE: ("lambda", "Invoke"),
    wd.LAMBDA_INVOKE_WAIT: ("lambda", "Invoke"),
    wd.S3_PUT_OBJECT: ("s3", "PutObject"),
    wd.S3_GET_OBJECT: ("s3", "GetObject"),
}


def sample_for(shape):
    """A value of the right type for a JSONPath (`.$`) parameter, which only runs at execution time."""
    kind = shape.type_name
    if kind == "string":
        return shape.enum[0] if shape.enum else "x"
    if kind == "list":
        return [sample_for(shape.member)]
    if kind in {"integer", "long"}:
        return 1
    if kind == "boolean":
        return True
    if kind == "blob":
        return b"{}"
    if kind == "structure":
        return {}
    raise AssertionError(f"no sample for {kind}")


def to_api(value, shape, path: str, problems: list[str]):
    """Step Functions Parameters (PascalCase, `.$` keys) -> the API's own member names and types."""
    if shape.type_name == "structure":
        out = {}
        for key, item in value.items():
            dynamic = key.endswith(".$")
            base = key[:-2] if dynamic else key
            # the integration takes the API's member names with a capital first letter, exactly
            member = next((m for m in (base, base[:1].lower() + base[1:]) if m in shape.members), None)
            if member is None:
                problems.append(f"{path}.{base}: not a member of {shape.name}")
                continue
            member_shape = shape.members[member]
            out[member] = sample_for(member_shape) if dynamic else to_api(
                item, member_shape, f"{path}.{base}", problems)
        return out
    if shape.type_name == "list":
        return [to_api(item, shape.member, f"{path}[]", problems) for item in value]
    if shape.type_name == "blob":
        return json.dumps(value).encode()
    if shape.type_name == "string" and shape.enum and value not in shape.enum:
        problems.append(f"{path}: {value!r} is not one of {shape.enum}")
    return value


@pytest.mark.parametrize("resource", sorted(SERVICES))
def test_integration_parameters_match_the_aws_api_shapes(definition, resource: str) -> None:
    service, operation = SERVICES[resource]
    model = botocore.session.get_session().get_service_model(service)
    shape = model.operation_model(operation).input_shape
    states = {n: s for n, s in wd.task_states(definition).items() if s["Resource"] == resource}
    assert states, f"the definition uses no {resource}"
    for name, state in states.items():
        problems: list[str] = []
        params = to_api(state["Parameters"], shape, name, problems)
        assert not problems, problems
        report = ParamValidator().validate(params, shape)
        assert not report.has_errors(), f"{name}: {report.generate_report()}"


def test_item_reader_parameters_match_the_s3_get_object_shape(definition) -> None:
    """The ItemReader's Parameters are those of S3 GetObject (Bucket, Key, optional VersionId)."""
    shape = botocore.session.get_session().get_service_model("s3").operation_model("GetObject").input_shape
    params = definition["States"]["QueryChunks"]["ItemReader"]["Parameters"]
    problems: list[str] = []
    report = ParamValidator().validate(to_api(params, shape, "ItemReader", problems), shape)
    assert not problems and not report.has_errors(), (problems, report.generate_report())


def test_shape_check_catches_a_misspelled_parameter(definition) -> None:
    model = botocore.session.get_session().get_service_model("ecs")
    shape = model.operation_model("RunTask").input_shape
    params = json.loads(json.dumps(definition["States"]["StartTask"]["Parameters"]))
    params["NetworkConfiguration"]["AwsvpcConfiguration"]["AssignPublicIP"] = "DISABLED"
    params["NetworkConfiguration"]["AwsvpcConfiguration"]["AssignPublicIp"] = "NO"
    problems: list[str] = []
    to_api(params, shape, "StartTask", problems)
    assert any("AssignPublicIp" in p and "not one of" in p for p in problems), problems
    assert any("AssignPublicIP" in p and "not a member" in p for p in problems), problems
