"""Run the pack's policies over a list of resources, without the Pulumi CLI or engine.

The CLI is what normally feeds a policy pack (`pulumi preview --policy-pack policies`), and it cannot
run here; but the policies are plain objects with a `validate(args, report_violation)` method. This
module builds the same argument objects the SDK's analyzer builds (ResourceValidationArgs with the
inputs for resource policies, PolicyResource with parents and dependencies for stack policies) from
plain resource descriptions, such as the ones `components.synth` records under mocks, and collects
the violations. So the unit tests check the very policy objects the pack serves.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    Policy,
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)


@dataclass
class StackResource:
    """One resource as the engine would see it. `inputs` use the engine's camelCase names."""

    type: str
    name: str
    urn: str
    inputs: Mapping[str, Any]
    id: str = ""
    protect: bool = False
    parent_urn: str | None = None
    dependencies: Sequence[str] = ()
    property_dependencies: Mapping[str, Sequence[str]] = field(default_factory=dict)

    @property
    def outputs(self) -> dict[str, Any]:
        """What a stack policy sees: the inputs plus the id the provider assigned."""
        out = dict(self.inputs)
        if self.id and "id" not in out:
            out["id"] = self.id
        return out


@dataclass(frozen=True)
class Violation:
    policy: str
    resource: str
    urn: str | None
    message: str

    def __str__(self) -> str:
        return f"[{self.policy}] {self.resource}: {self.message}"


def _options(resource: StackResource) -> PolicyResourceOptions:
    return PolicyResourceOptions(
        protect=resource.protect, ignore_changes=[], delete_before_replace=None, aliases=[],
        custom_timeouts=PolicyCustomTimeouts(0, 0, 0), additional_secret_outputs=[],
        parent=resource.parent_urn,
    )


def _run(result: Any) -> None:
    if inspect.isawaitable(result):
        asyncio.run(_await(result))


async def _await(result: Any) -> None:
    await result


def stack_resources(resources: Sequence[StackResource]) -> list[PolicyResource]:
    """PolicyResource objects with parent and dependency links resolved, as the analyzer builds them."""
    by_urn: dict[str, PolicyResource] = {}
    for r in resources:
        by_urn[r.urn] = PolicyResource(r.type, r.outputs, r.urn, r.name, _options(r), None, None, [], {})
    for r in resources:
        policy_resource = by_urn[r.urn]
        if r.parent_urn in by_urn:
            policy_resource.parent = by_urn[r.parent_urn]
        policy_resource.dependencies = [by_urn[u] for u in r.dependencies if u in by_urn]
        policy_resource.property_dependencies = {
            key: [by_urn[u] for u in urns if u in by_urn] for key, urns in r.property_dependencies.items()
        }
    return list(by_urn.values())


def evaluate(
    resources: Sequence[StackResource],
    policies: Sequence[Policy] | None = None,
    config: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Violation]:
    """Every violation the policies report for these resources (disabled policies skipped)."""
    if policies is None:
        from policies.security_policies import POLICIES

        policies = POLICIES
    config = config or {}
    violations: list[Violation] = []
    stack_view: list[PolicyResource] | None = None
    for policy in policies:
        if policy.enforcement_level == EnforcementLevel.DISABLED:
            continue
        policy_config = dict(config.get(policy.name, {}))
        if isinstance(policy, ResourceValidationPolicy):
            for r in resources:
                def report(message: str, urn: str | None = None, _r: StackResource = r,
                           _name: str = policy.name) -> None:
                    violations.append(Violation(_name, _r.name, _r.urn, message))

                args = ResourceValidationArgs(r.type, r.inputs, r.urn, r.name, _options(r), None,
                                              policy_config)
                _run(policy.validate(args, report))
        elif isinstance(policy, StackValidationPolicy):
            if stack_view is None:
                stack_view = stack_resources(resources)
            def report_stack(message: str, urn: str | None = None, _name: str = policy.name,
                             _names: Mapping[str, str] = {r.urn: r.name for r in resources}) -> None:
                violations.append(Violation(_name, _names.get(urn or "", "<stack>"), urn, message))

            _run(policy.validate(StackValidationArgs(stack_view, policy_config), report_stack))
    return violations
