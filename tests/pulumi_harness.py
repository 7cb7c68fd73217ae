"""Pulumi mocks harness for the infrastructure tests: the same machinery as `python -m components.synth`.

`synth_stack("prod")` runs the program once per stack per test session (cached) and returns every
registered resource with its inputs as the engine receives them (camelCase), secrets redacted in
`.inputs` and visible in `.raw_inputs`. Other test files (e.g. the batch workflow's) import from here.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from components.synth import (  # noqa: E402
    SECRET_MARK,
    MockNetwork,
    Resource,
    SynthResult,
    load_stack_config,
    mock_password,
    synth,
)

__all__ = [
    "SECRET_MARK", "MockNetwork", "Resource", "SynthResult", "STACKS", "synth_stack", "synth_with",
    "stack_file_config", "container_definitions", "policy_documents", "security_group_rules", "mock_password",
    "walk_strings", "botocore_errors", "policies_of_role",
]

STACKS = ("dev", "prod")
_cache: dict[str, SynthResult] = {}


def synth_stack(stack: str) -> SynthResult:
    """The stack's resources under mocks, from its Pulumi.<stack>.yaml (one run per session)."""
    if stack not in _cache:
        _cache[stack] = synth(stack)
    return _cache[stack]


def stack_file_config(stack: str) -> dict[str, Any]:
    return load_stack_config(stack)


def synth_with(stack: str, overrides: Mapping[str, Any] | None = None,
               remove: tuple[str, ...] = (), network: MockNetwork | None = None) -> SynthResult:
    """Run the program with a stack file's config changed (keys as in the file, e.g. "ontosearch:cpu").

    `network`: how an existing VPC from config looks to the mocks (its CIDR, its route tables).
    """
    values = {k: v for k, v in stack_file_config(stack).items() if k not in remove}
    values.update(overrides or {})
    return synth(stack, config=values, network=network)


def container_definitions(result: SynthResult, name: str | None = None) -> list[dict]:
    """The parsed containerDefinitions of the task definition (exactly one unless `name` is given)."""
    task = result.one("aws:ecs/taskDefinition:TaskDefinition", name)
    return json.loads(task.raw_inputs["containerDefinitions"])


def policy_documents(result: SynthResult) -> Iterator[tuple[Resource, str, dict]]:
    """Every IAM-style policy document in any resource input: (resource, input key, parsed document)."""
    for resource in result.resources:
        for key, value in resource.raw_inputs.items():
            if not isinstance(value, str) or "Statement" not in value:
                continue
            if key.lower().endswith("policy") or key in {"policy", "assumeRolePolicy"}:
                yield resource, key, json.loads(value)


def security_group_rules(result: SynthResult) -> Iterator[tuple[Resource, str, dict]]:
    """(security group resource, "ingress"|"egress", rule) for inline and standalone rules."""
    for sg in result.of_type("aws:ec2/securityGroup:SecurityGroup"):
        for direction in ("ingress", "egress"):
            for rule in sg.raw_inputs.get(direction) or []:
                yield sg, direction, rule
    for rule in result.of_type("aws:ec2/securityGroupRule:SecurityGroupRule"):
        yield rule, rule.raw_inputs.get("type", "ingress"), rule.raw_inputs
    for typ, direction in (("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule", "ingress"),
                           ("aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule", "egress")):
        for rule in result.of_type(typ):
            inputs = dict(rule.raw_inputs)
            if "cidrIpv4" in inputs:
                inputs["cidrBlocks"] = [inputs["cidrIpv4"]]
            if "cidrIpv6" in inputs:
                inputs["ipv6CidrBlocks"] = [inputs["cidrIpv6"]]
            yield rule, direction, inputs


def policies_of_role(result: SynthResult, role_arn: str) -> set[str]:
    """URNs of the inline policies and attachments that give the role (named by its ARN) its permissions."""
    (role,) = [r for r in result.of_type("aws:iam/role:Role") if r.state["arn"] == role_arn]
    types = ("aws:iam/rolePolicy:RolePolicy", "aws:iam/rolePolicyAttachment:RolePolicyAttachment")
    return {p.urn for typ in types for p in result.of_type(typ)
            if p.raw_inputs["role"] in (role.id, role.state["name"])}


def walk_strings(value: Any) -> Iterator[str]:
    """Every string inside a nested input value (dict keys included)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield str(k)
            yield from walk_strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from walk_strings(v)


def botocore_errors(service: str, operation: str, params: Mapping[str, Any]) -> list[str]:
    """Problems of `params` against botocore's model of `service.operation`: shape, types, enums."""
    import botocore.session
    from botocore.validate import ParamValidator

    model = botocore.session.get_session().get_service_model(service)
    shape = model.operation_model(operation).input_shape
    errors: list[str] = []
    report = ParamValidator().validate(params, shape)
    if report.has_errors():
        errors.append(report.generate_report())
    errors.extend(_enum_errors(shape, params, operation))
    return errors


def _enum_errors(shape: Any, value: Any, path: str) -> list[str]:
    """ParamValidator checks types but not enum values; walk the shape for them."""
    errors: list[str] = []
    enum = getattr(shape, "enum", None) or []
    if enum and isinstance(value, str) and value not in enum:
        errors.append(f"{path}: {value!r} is not one of {sorted(enum)}")
    if shape.type_name == "structure" and isinstance(value, Mapping):
        for key, member in shape.members.items():
            if key in value:
                errors.extend(_enum_errors(member, value[key], f"{path}.{key}"))
    elif shape.type_name == "list" and isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            errors.extend(_enum_errors(shape.member, item, f"{path}[{i}]"))
    elif shape.type_name == "map" and isinstance(value, Mapping):
        for key, item in value.items():
            errors.extend(_enum_errors(shape.value, item, f"{path}[{key}]"))
    return errors
