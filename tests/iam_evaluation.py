"""A small IAM policy evaluator for the offline authorization matrix (tests/iam_matrix.py).

Why our own: the one maintained evaluator found (npm `@cloud-copilot/iam-simulate`) treats a
request resource of "*" as "any resource" and reports whether some resource could be allowed; AWS
matches the policy's Resource patterns against the literal string "*" for a call that names no
resource (a cluster-wide `ecs:ListTasks` is authorized "on resource: *", so a grant on
`container-instance/<cluster>/*` does not cover it). That is the rule the matrix must catch, so
an evaluator with the discovery semantics cannot check it. The older Python one (principalmapper,
last released 2022) gets the negated operators' missing-key rule wrong. Both are AGPL as well.

What it implements, each rule from the IAM User Guide:
- evaluation logic (same account, no SCPs or boundaries): an explicit Deny in any policy wins;
  else an Allow in the identity policies or in the resource policy for this principal allows;
  else the request is implicitly denied.
  https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_evaluation-logic.html
- KMS keys are the exception: the key policy must allow, and a key policy statement for the
  account root only lets IAM policies grant (it does not allow by itself).
  https://docs.aws.amazon.com/kms/latest/developerguide/key-policy-default.html
- Action/NotAction match case-insensitively with * and ? wildcards; Resource/NotResource match
  case-sensitively, the first five ARN segments one by one and the resource part (which may hold
  colons) as a whole.
  https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_action.html
  https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_resource.html
- Condition: every operator block must hold (AND), every key in a block (AND), any value of a
  key (OR); key names are case-insensitive. A key missing from the request makes a positive
  operator false and a negated one (StringNot*, ArnNot*, NumericNotEquals) true; `...IfExists`
  holds for a missing key; Null tests presence; ForAllValues holds for a missing key,
  ForAnyValue does not.
  https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_condition_operators.html
  https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_condition-single-vs-multi-valued-context-keys.html
An operator this module does not know raises, so a policy using one fails the tests loudly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

ALLOWED = "Allowed"
EXPLICIT_DENY = "ExplicitlyDenied"
IMPLICIT_DENY = "ImplicitlyDenied"


@dataclass(frozen=True)
class Request:
    """One authorization AWS makes: who, which action, on which resource, with which context keys."""

    principal: str
    action: str
    resource: str
    context: Mapping[str, str | Sequence[str]] = field(default_factory=dict)
    # For a request made by an AWS service principal (AssumeRole by ecs-tasks.amazonaws.com).
    service_principal: str | None = None


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


@lru_cache(maxsize=4096)
def _glob(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    body = "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    return re.compile(f"^{body}$", re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def glob_match(pattern: str, value: str, ignore_case: bool = False) -> bool:
    return bool(_glob(pattern, ignore_case).match(value))


def arn_match(pattern: str, value: str) -> bool:
    """ArnLike / Resource matching: six colon-separated parts, the last one may hold colons."""
    if pattern == "*":
        return True
    p_parts, v_parts = pattern.split(":", 5), value.split(":", 5)
    if len(p_parts) != 6 or len(v_parts) != 6:
        return glob_match(pattern, value)
    return all(glob_match(p, v) for p, v in zip(p_parts, v_parts, strict=True))


def _context_values(context: Mapping[str, Any], key: str) -> list[str] | None:
    lowered = key.lower()
    for name, value in context.items():
        if name.lower() == lowered:
            return [str(v) for v in _as_list(value)]
    return None


def _compare(base: str, policy_value: Any, value: str) -> bool:
    text = str(policy_value)
    if base in ("StringEquals", "StringNotEquals"):
        return text == value
    if base in ("StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase"):
        return text.lower() == value.lower()
    if base in ("StringLike", "StringNotLike"):
        return glob_match(text, value)
    if base in ("ArnEquals", "ArnNotEquals", "ArnLike", "ArnNotLike"):
        return arn_match(text, value)
    if base == "Bool":
        return text.lower() == value.lower()
    if base.startswith("Numeric"):
        a, b = float(value), float(text)
        return {"NumericEquals": a == b, "NumericNotEquals": a == b, "NumericLessThan": a < b,
                "NumericLessThanEquals": a <= b, "NumericGreaterThan": a > b,
                "NumericGreaterThanEquals": a >= b}[base]
    raise ValueError(f"condition operator {base!r} is not implemented by tests/iam_evaluation.py")


_NEGATED = {"StringNotEquals", "StringNotEqualsIgnoreCase", "StringNotLike", "ArnNotEquals", "ArnNotLike",
            "NumericNotEquals"}
_KNOWN = _NEGATED | {"StringEquals", "StringEqualsIgnoreCase", "StringLike", "ArnEquals", "ArnLike", "Bool",
                     "NumericEquals", "NumericLessThan", "NumericLessThanEquals", "NumericGreaterThan",
                     "NumericGreaterThanEquals", "Null"}


def _operator_holds(operator: str, key: str, policy_values: list[Any], context: Mapping[str, Any]) -> bool:
    qualifier, _, base = operator.rpartition(":")
    if_exists = base.endswith("IfExists")
    base = base.removesuffix("IfExists")
    if base not in _KNOWN or qualifier not in ("", "ForAnyValue", "ForAllValues"):
        raise ValueError(f"condition operator {operator!r} is not implemented by tests/iam_evaluation.py")
    values = _context_values(context, key)
    if base == "Null":
        # "true": the key must be absent; "false": present.
        return any((values is None) == (str(v).lower() == "true") for v in policy_values)
    negated = base in _NEGATED
    if values is None:
        if qualifier == "ForAllValues":
            return True
        if qualifier == "ForAnyValue":
            return False
        return if_exists or negated

    def matches_any(value: str) -> bool:
        return any(_compare(base, p, value) for p in policy_values)

    if qualifier == "ForAllValues":
        return all((not matches_any(v)) if negated else matches_any(v) for v in values)
    if qualifier == "ForAnyValue":
        return any((not matches_any(v)) if negated else matches_any(v) for v in values)
    if negated:
        return not any(matches_any(v) for v in values)
    return any(matches_any(v) for v in values)


def conditions_hold(condition: Mapping[str, Mapping[str, Any]] | None, context: Mapping[str, Any]) -> bool:
    for operator, block in (condition or {}).items():
        for key, policy_values in block.items():
            if not _operator_holds(operator, key, _as_list(policy_values), context):
                return False
    return True


DIRECT, ACCOUNT = "direct", "account"


def _principal_matches(principal_element: Any, request: Request) -> str | None:
    """DIRECT when the element names the caller (or "*"), ACCOUNT when it names the caller's account
    root (which delegates to the account's IAM policies), None otherwise."""
    if principal_element == "*":
        return DIRECT
    if not isinstance(principal_element, Mapping):
        raise ValueError(f"unsupported Principal element {principal_element!r}")
    if request.service_principal is not None:
        return DIRECT if request.service_principal in _as_list(principal_element.get("Service")) else None
    found = None
    for entry in _as_list(principal_element.get("AWS")):
        if entry in ("*", request.principal):
            return DIRECT
        root = entry.endswith(":root") and _account(entry) == _account(request.principal)
        if root or (re.fullmatch(r"\d{12}", entry) and entry == _account(request.principal)):
            found = ACCOUNT
    return found


def _account(arn: str) -> str:
    parts = arn.split(":")
    return parts[4] if len(parts) > 4 else ""


def statement_applies(statement: Mapping[str, Any], request: Request) -> bool:
    """Action, Resource and Condition of one statement match the request (Principal not looked at)."""
    if "Action" in statement:
        if not any(glob_match(a, request.action, ignore_case=True) for a in _as_list(statement["Action"])):
            return False
    elif "NotAction" in statement:
        if any(glob_match(a, request.action, ignore_case=True) for a in _as_list(statement["NotAction"])):
            return False
    else:
        raise ValueError(f"statement without Action or NotAction: {statement}")
    if "Resource" in statement:
        if not any(arn_match(r, request.resource) for r in _as_list(statement["Resource"])):
            return False
    elif "NotResource" in statement:
        if any(arn_match(r, request.resource) for r in _as_list(statement["NotResource"])):
            return False
    elif "Principal" not in statement:
        raise ValueError(f"identity policy statement without Resource or NotResource: {statement}")
    if "NotPrincipal" in statement:
        raise ValueError("NotPrincipal is not implemented by tests/iam_evaluation.py")
    return conditions_hold(statement.get("Condition"), request.context)


def _statements(policy: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return _as_list(policy.get("Statement"))


def evaluate(request: Request, identity_policies: Sequence[Mapping[str, Any]] = (),
             resource_policy: Mapping[str, Any] | None = None, *, kms_key_policy: bool = False) -> str:
    """ALLOWED, EXPLICIT_DENY or IMPLICIT_DENY for one request (same-account evaluation logic)."""
    identity = {st["Effect"] for policy in identity_policies for st in _statements(policy)
                if statement_applies(st, request)}
    resource: set[tuple[str, str]] = set()
    for st in _statements(resource_policy or {}):
        who = _principal_matches(st.get("Principal"), request)
        if who is not None and statement_applies(st, request):
            resource.add((st["Effect"], who))
    if "Deny" in identity or any(effect == "Deny" for effect, _ in resource):
        return EXPLICIT_DENY
    identity_allows = "Allow" in identity
    if kms_key_policy:
        # The key policy must allow: naming the caller, or naming the account so IAM policies may grant.
        allowed = ("Allow", DIRECT) in resource or (("Allow", ACCOUNT) in resource and identity_allows)
    else:
        allowed = identity_allows or ("Allow", DIRECT) in resource
    return ALLOWED if allowed else IMPLICIT_DENY
