"""The IAM evaluator of the authorization matrix against the rules of the IAM User Guide.

Each case is a rule stated on the page named in tests/iam_evaluation.py (evaluation logic,
condition operators, missing keys); the expected answers are AWS's, written here by hand.
"""

from __future__ import annotations

import pytest
from iam_evaluation import ALLOWED, EXPLICIT_DENY, IMPLICIT_DENY, Request, evaluate

ROLE = "arn:aws:iam::123456789012:role/caller"
CLUSTER = "arn:aws:ecs:us-east-1:123456789012:cluster/c1"


def policy(*statements: dict) -> dict:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def allow(action, resource, condition=None) -> dict:
    st = {"Effect": "Allow", "Action": action, "Resource": resource}
    if condition:
        st["Condition"] = condition
    return st


def decide(action, resource, context=None, *statements) -> str:
    return evaluate(Request(ROLE, action, resource, context or {}), [policy(*statements)])


def test_a_call_naming_no_resource_is_matched_literally_against_star() -> None:
    # `ecs:ListTasks` without a container instance is authorized on resource "*": a grant on
    # container-instance ARNs does not cover it, a grant on "*" does.
    on_instances = allow("ecs:ListTasks", "arn:aws:ecs:us-east-1:123456789012:container-instance/c1/*",
                         {"ArnEquals": {"ecs:cluster": CLUSTER}})
    assert decide("ecs:ListTasks", "*", {"ecs:cluster": CLUSTER}, on_instances) == IMPLICIT_DENY
    on_star = allow("ecs:ListTasks", "*", {"ArnEquals": {"ecs:cluster": CLUSTER}})
    assert decide("ecs:ListTasks", "*", {"ecs:cluster": CLUSTER}, on_star) == ALLOWED
    assert decide("ecs:ListTasks", "*", {"ecs:cluster": CLUSTER + "x"}, on_star) == IMPLICIT_DENY


def test_actions_match_without_case_and_with_wildcards() -> None:
    assert decide("s3:GetObject", "arn:aws:s3:::b/k", None, allow("S3:get*", "*")) == ALLOWED
    assert decide("s3:PutObject", "arn:aws:s3:::b/k", None, allow("s3:Get*", "*")) == IMPLICIT_DENY
    not_action = {"Effect": "Allow", "NotAction": "s3:PutObject", "Resource": "*"}
    assert decide("s3:GetObject", "arn:aws:s3:::b/k", None, not_action) == ALLOWED
    assert decide("s3:PutObject", "arn:aws:s3:::b/k", None, not_action) == IMPLICIT_DENY


def test_resources_match_case_sensitively_and_a_trailing_star_spans_colons() -> None:
    group = "arn:aws:logs:us-east-1:123456789012:log-group:g1"
    stream = f"{group}:log-stream:proxy/proxy/abc"
    assert decide("logs:PutLogEvents", stream, None, allow("logs:PutLogEvents", f"{group}:*")) == ALLOWED
    assert decide("logs:PutLogEvents", stream, None, allow("logs:PutLogEvents", group)) == IMPLICIT_DENY
    assert decide("s3:GetObject", "arn:aws:s3:::b/Work/x", None,
                  allow("s3:GetObject", "arn:aws:s3:::b/work/*")) == IMPLICIT_DENY
    # a wildcard in the region segment does not swallow the next segment
    assert decide("kms:Decrypt", "arn:aws:kms:us-east-1:999999999999:key/k", None,
                  allow("kms:Decrypt", "arn:aws:kms:*:123456789012:key/*")) == IMPLICIT_DENY


def test_explicit_deny_wins_over_any_allow() -> None:
    deny = {"Effect": "Deny", "Action": "s3:*", "Resource": "*",
            "Condition": {"Bool": {"aws:SecureTransport": "false"}}}
    assert decide("s3:GetObject", "arn:aws:s3:::b/k", {"aws:SecureTransport": "false"},
                  allow("s3:GetObject", "*"), deny) == EXPLICIT_DENY
    assert decide("s3:GetObject", "arn:aws:s3:::b/k", {"aws:SecureTransport": "true"},
                  allow("s3:GetObject", "*"), deny) == ALLOWED


@pytest.mark.parametrize(("operator", "context", "expected"), [
    # a key missing from the request: positive operators fail, negated ones hold
    ("StringLike", {}, IMPLICIT_DENY),
    ("StringNotLike", {}, ALLOWED),
    ("StringLikeIfExists", {}, ALLOWED),
    ("StringLike", {"s3:prefix": "work/x/save-request.json"}, ALLOWED),
    ("StringLike", {"s3:prefix": "snapshots/LATEST"}, IMPLICIT_DENY),
    ("StringNotLike", {"s3:prefix": "work/x"}, IMPLICIT_DENY),
])
def test_missing_keys_follow_the_operator(operator, context, expected) -> None:
    st = allow("s3:ListBucket", "arn:aws:s3:::b", {operator: {"s3:prefix": ["work/*"]}})
    assert decide("s3:ListBucket", "arn:aws:s3:::b", context, st) == expected


def test_blocks_and_keys_are_anded_values_ored_and_key_names_ignore_case() -> None:
    st = allow("iam:PassRole", ROLE, {"StringEquals": {"iam:PassedToService": ["lambda.amazonaws.com",
                                                                              "ecs-tasks.amazonaws.com"]},
                                       "StringLike": {"aws:ResourceTag/team": "a*"}})
    ok = {"IAM:passedToService": "ecs-tasks.amazonaws.com", "aws:ResourceTag/team": "ab"}
    assert decide("iam:PassRole", ROLE, ok, st) == ALLOWED
    assert decide("iam:PassRole", ROLE, {**ok, "aws:ResourceTag/team": "b"}, st) == IMPLICIT_DENY
    untagged = {"iam:PassedToService": "ecs-tasks.amazonaws.com"}
    assert decide("iam:PassRole", ROLE, untagged, st) == IMPLICIT_DENY
    # values are case-sensitive for StringEquals
    wrong_case = {"iam:PassedToService": "ECS-tasks.amazonaws.com", "aws:ResourceTag/team": "ab"}
    assert decide("iam:PassRole", ROLE, wrong_case, st) == IMPLICIT_DENY


def test_set_operators_on_multivalued_keys() -> None:
    only_known = allow("ecs:TagResource", "*",
                       {"ForAllValues:StringEquals": {"aws:TagKeys": ["project", "stack"]}})
    assert decide("ecs:TagResource", "*", {"aws:TagKeys": ["project", "stack"]}, only_known) == ALLOWED
    assert decide("ecs:TagResource", "*", {"aws:TagKeys": ["project", "owner"]}, only_known) == IMPLICIT_DENY
    assert decide("ecs:TagResource", "*", {}, only_known) == ALLOWED  # ForAllValues holds on a missing key
    any_known = allow("ecs:TagResource", "*", {"ForAnyValue:StringEquals": {"aws:TagKeys": ["project"]}})
    assert decide("ecs:TagResource", "*", {"aws:TagKeys": ["owner", "project"]}, any_known) == ALLOWED
    assert decide("ecs:TagResource", "*", {}, any_known) == IMPLICIT_DENY


def test_arn_and_null_and_bool_operators() -> None:
    arn_like = allow("ecs:RunTask", "*",
                     {"ArnLike": {"ecs:cluster": "arn:aws:ecs:*:123456789012:cluster/c*"}})
    assert decide("ecs:RunTask", "*", {"ecs:cluster": CLUSTER}, arn_like) == ALLOWED
    assert decide("ecs:RunTask", "*", {"ecs:cluster": "arn:aws:ecs:us-east-1:999999999999:cluster/c1"},
                  arn_like) == IMPLICIT_DENY
    absent = allow("s3:PutObject", "*", {"Null": {"s3:x-amz-server-side-encryption": "true"}})
    assert decide("s3:PutObject", "arn:aws:s3:::b/k", {}, absent) == ALLOWED
    assert decide("s3:PutObject", "arn:aws:s3:::b/k", {"s3:x-amz-server-side-encryption": "AES256"},
                  absent) == IMPLICIT_DENY
    with pytest.raises(ValueError, match="not implemented"):
        decide("s3:PutObject", "*", {},
               allow("s3:PutObject", "*", {"DateGreaterThan": {"aws:CurrentTime": "x"}}))


def test_resource_policies_grant_by_principal_and_kms_keys_need_their_key_policy() -> None:
    key = "arn:aws:kms:us-east-1:123456789012:key/k"
    delegate = policy({"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
                       "Action": "kms:*", "Resource": "*"})
    identity = policy(allow("kms:Decrypt", key))
    request = Request(ROLE, "kms:Decrypt", key)
    assert evaluate(request, [identity], delegate, kms_key_policy=True) == ALLOWED
    assert evaluate(request, [], delegate, kms_key_policy=True) == IMPLICIT_DENY
    assert evaluate(request, [identity], policy(), kms_key_policy=True) == IMPLICIT_DENY
    trust = policy({"Effect": "Allow", "Principal": {"Service": "ecs-tasks.amazonaws.com"},
                    "Action": "sts:AssumeRole",
                    "Condition": {"StringEquals": {"aws:SourceAccount": "123456789012"}}})
    assume = Request("ecs-tasks.amazonaws.com", "sts:AssumeRole", ROLE, {"aws:SourceAccount": "123456789012"},
                     service_principal="ecs-tasks.amazonaws.com")
    assert evaluate(assume, [], trust) == ALLOWED
    by_lambda = Request(**{**assume.__dict__, "service_principal": "lambda.amazonaws.com"})
    assert evaluate(by_lambda, [], trust) == IMPLICIT_DENY
    other_account = Request(**{**assume.__dict__, "context": {"aws:SourceAccount": "999999999999"}})
    assert evaluate(other_account, [], trust) == IMPLICIT_DENY
