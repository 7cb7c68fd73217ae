"""Two S3 authorization rules that moto does not model, added to boto3 clients in tests.

moto (5.2) enforces an IAM user's policies for S3 by action and resource ARN only: it evaluates
no condition operator but StringEquals, and that one only against sts:ExternalId
(moto/iam/access_control.py `_check_conditions`, moto/iam/policy_conditions.py), so a ListBucket
grant conditioned on s3:prefix allows every listing; and it answers a missing key with 404 whatever
the caller may list. AWS does neither. The first-deploy tests therefore run against moto with the
stack's synthesized policies (moto checks action and resource) and add, from the same documents:

1. s3:ListBucket is authorized with the request's condition keys; s3:prefix is ListObjectsV2's
   Prefix (https://docs.aws.amazon.com/AmazonS3/latest/userguide/amazon-s3-policy-keys.html,
   https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazons3.html). A
   condition on a key the request does not carry is false (IAM Condition element:
   https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_condition.html).
   StringLike: `*` any run of characters, `?` one, case-sensitive
   (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_condition_operators.html).
2. GetObject and HeadObject of a missing key answer 404 only to a caller with s3:ListBucket on the
   bucket, else 403 (https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObject.html and
   API_HeadObject.html, "Permissions"). A GetObject request carries no s3:prefix, so a ListBucket
   grant conditioned on it is taken not to count: AWS documents no other reading, and the code under
   test must work either way.

The evaluator below knows only what these policies use (Allow/Deny, Action, Resource, StringLike and
StringEquals) and refuses anything else, so a policy it cannot judge fails the test instead of passing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from botocore.awsrequest import AWSResponse

_OPERATORS = {"StringEquals", "StringLike"}


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _like(pattern: str, value: str) -> bool:
    regex = "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    return re.fullmatch(regex, value, flags=re.DOTALL) is not None


def _conditions_hold(condition: Mapping[str, Mapping[str, Any]], context: Mapping[str, str]) -> bool:
    for operator, keys in condition.items():
        if operator not in _OPERATORS:
            raise NotImplementedError(f"condition operator {operator} is not modelled here")
        for key, expected in keys.items():
            actual = context.get(key)
            if actual is None:
                return False
            test = _like if operator == "StringLike" else str.__eq__
            if not any(test(str(value), actual) for value in _as_list(expected)):
                return False
    return True


def allows(policy: Mapping[str, Any], action: str, resource: str, context: Mapping[str, str]) -> bool:
    """Whether an identity policy allows `action` on `resource` for a request with `context` keys."""
    allowed = False
    for statement in _as_list(policy["Statement"]):
        if {"NotAction", "NotResource", "Principal"} & set(statement):
            raise NotImplementedError(f"statement {statement.get('Sid')} uses an element not modelled here")
        if not any(_like(a.lower(), action.lower()) for a in _as_list(statement["Action"])):
            continue
        if not any(_like(r, resource) for r in _as_list(statement["Resource"])):
            continue
        if not _conditions_hold(statement.get("Condition", {}), context):
            continue
        if statement["Effect"] == "Deny":
            return False
        allowed = True
    return allowed


def _denied(message: str) -> tuple[AWSResponse, dict[str, Any]]:
    parsed = {"Error": {"Code": "AccessDenied", "Message": message},
              "ResponseMetadata": {"HTTPStatusCode": 403, "HTTPHeaders": {}}}
    return AWSResponse("https://s3.amazonaws.com/", 403, {}, None), parsed


def install(events: Any, policies: Iterable[Mapping[str, Any]]) -> None:
    """Apply both rules to every S3 call of clients made from `events` (a boto3 Session's or a client's
    `meta.events`), judged against `policies` (the caller's identity policies)."""
    policies = list(policies)

    def may(action: str, resource: str, context: Mapping[str, str]) -> bool:
        return any(allows(p, action, resource, context) for p in policies)

    def list_rule(context: dict[str, Any], **_: Any) -> tuple[AWSResponse, dict[str, Any]] | None:
        params = context["input_params"]
        keys = {"s3:prefix": params["Prefix"]} if "Prefix" in params else {}
        bucket_arn = f"arn:aws:s3:::{params['Bucket']}"
        if may("s3:ListBucket", bucket_arn, keys):
            return None
        return _denied(f"not authorized to perform s3:ListBucket on {bucket_arn} with {keys or 'no prefix'} "
                       "(the test's s3:prefix rule)")

    def missing_key_rule(http_response: Any, parsed: dict[str, Any], context: dict[str, Any],
                         **_: Any) -> None:
        code = parsed.get("Error", {}).get("Code")
        if http_response.status_code != 404 or code not in {"NoSuchKey", "404"}:
            return
        if may("s3:ListBucket", f"arn:aws:s3:::{context['input_params']['Bucket']}", {}):
            return
        # what S3 sends: GetObject names the code, a HEAD has no body and botocore reports the status
        denied = "AccessDenied" if code == "NoSuchKey" else "403"
        parsed["Error"] = {"Code": denied, "Message": "Access Denied"}
        parsed.setdefault("ResponseMetadata", {})["HTTPStatusCode"] = 403

    events.register("before-call.s3.ListObjectsV2", list_rule)
    events.register("after-call.s3.GetObject", missing_key_rule)
    events.register("after-call.s3.HeadObject", missing_key_rule)
