"""The policy pack (policies/) over every stack's synthesized resources, and each policy firing.

The resources come from the same mocks machinery as `python -m components.synth` (tests/pulumi_harness.py).
A stack policy sees outputs, so the adapter adds what the provider would return that the program's
inputs lack (the id, a RandomPassword's result). Broken stacks are a test stack file
(tests/policy_stacks/Pulumi.prod.yaml) where config can break a rule, and mutated copies of the real
resources where config cannot (the components hard-code the safe value). The last tests start the pack
the way the Pulumi CLI does (`python policies/__main__.py`, a gRPC analyzer) and ask it over gRPC.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pulumi_harness import STACKS, mock_password, synth, synth_stack, synth_with

from policies.evaluate import StackResource, Violation, evaluate
from policies.security_policies import POLICIES, stack_of

ROOT = Path(__file__).resolve().parent.parent
BROKEN_STACKS = Path(__file__).resolve().parent / "policy_stacks"
POLICY_NAMES = {p.name for p in POLICIES}

T_SERVICE = "aws:ecs/service:Service"
T_SUBNET = "aws:ec2/subnet:Subnet"
T_SG = "aws:ec2/securityGroup:SecurityGroup"
T_LB = "aws:lb/loadBalancer:LoadBalancer"
T_BUCKET = "aws:s3/bucket:Bucket"
T_SSE = "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
T_LOG_GROUP = "aws:cloudwatch/logGroup:LogGroup"
T_SECRET = "aws:secretsmanager/secret:Secret"
T_ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
T_TASK_DEF = "aws:ecs/taskDefinition:TaskDefinition"
T_PASSWORD = "random:index/randomPassword:RandomPassword"


def to_stack_resources(result) -> list[StackResource]:
    resources = []
    for r in result.resources:
        inputs = dict(r.raw_inputs)
        if r.type == T_PASSWORD:
            inputs["result"] = mock_password(r.name, int(inputs.get("length", 32)))
        resources.append(StackResource(
            type=r.type, name=r.name, urn=r.urn, inputs=inputs, id=getattr(r, "id", "") or "",
            protect=bool(getattr(r, "protect", False)), parent_urn=r.parent_urn,
            dependencies=tuple(getattr(r, "dependencies", ()) or ()),
        ))
    return resources


_resources: dict[str, list[StackResource]] = {}


def stack(name: str) -> list[StackResource]:
    """A fresh deep copy of the stack's resources (tests mutate them)."""
    if name not in _resources:
        _resources[name] = to_stack_resources(synth_stack(name))
    return copy.deepcopy(_resources[name])


def find(resources: list[StackResource], typ: str, name: str | None = None) -> StackResource:
    found = [r for r in resources if r.type == typ and (name is None or r.name == name)]
    assert len(found) == 1, f"expected one {typ} {name or ''}, found {[r.name for r in found]}"
    return found[0]


def fired(violations: list[Violation], policy: str) -> list[Violation]:
    assert policy in POLICY_NAMES
    return [v for v in violations if v.policy == policy]


def only(violations: list[Violation], policy: str) -> list[Violation]:
    """The violations of `policy`, after checking no other policy fired."""
    others = [str(v) for v in violations if v.policy != policy]
    assert not others, f"other policies fired too: {others}"
    return fired(violations, policy)


# --- the real stacks ----------------------------------------------------------------------------

@pytest.mark.parametrize("stack_name", STACKS)
def test_every_stack_passes_every_policy(stack_name: str) -> None:
    resources = stack(stack_name)
    assert {stack_of(r.urn) for r in resources} == {stack_name}
    violations = evaluate(resources)
    assert not violations, "\n".join(str(v) for v in violations)


@pytest.mark.parametrize("stack_name", STACKS)
def test_every_stack_with_the_batch_workflow_passes_every_policy(stack_name: str) -> None:
    resources = to_stack_resources(synth_with(stack_name, {"ontosearch:batchWorkflow": True}))
    assert any(r.type == "aws:sfn/stateMachine:StateMachine" for r in resources)
    assert any(r.type == "aws:lambda/function:Function" for r in resources)
    violations = evaluate(resources)
    assert not violations, "\n".join(str(v) for v in violations)


def test_the_pack_has_one_policy_per_rule_of_the_issue() -> None:
    assert POLICY_NAMES == {
        "no-public-ips", "no-world-ingress-except-alb", "encryption-at-rest", "log-retention-set",
        "iam-no-wildcard-actions", "prod-deletion-protection", "token-only-via-secrets-manager",
    }


# --- a broken stack config ----------------------------------------------------------------------

def test_prod_stack_config_without_deletion_protection_is_refused() -> None:
    config = yaml.safe_load((BROKEN_STACKS / "Pulumi.prod.yaml").read_text())["config"]
    resources = to_stack_resources(synth("prod", config=config))
    hits = fired(evaluate(resources), "prod-deletion-protection")
    messages = {(v.resource, v.message) for v in hits}
    lb = find(resources, T_LB)
    bucket = find(resources, T_BUCKET)
    assert any(name == lb.name and "enableDeletionProtection" in m for name, m in messages), messages
    assert any(name == bucket.name and "protect" in m for name, m in messages), messages
    assert any(name == bucket.name and "forceDestroy" in m for name, m in messages), messages


def test_deletion_protection_is_only_demanded_of_production_stacks() -> None:
    resources = stack("dev")
    assert find(resources, T_LB).inputs.get("enableDeletionProtection") is not True
    assert not fired(evaluate(resources), "prod-deletion-protection")
    # ... and a policy config can name other production stacks.
    hits = fired(evaluate(resources, config={"prod-deletion-protection": {"productionStacks": ["dev"]}}),
                 "prod-deletion-protection")
    assert {v.resource for v in hits} >= {find(resources, T_LB).name, find(resources, T_BUCKET).name}


# --- mutated resources: each policy fires -------------------------------------------------------

def test_public_ip_on_the_service_or_subnet_is_refused() -> None:
    resources = stack("prod")
    service = find(resources, T_SERVICE)
    service.inputs["networkConfiguration"]["assignPublicIp"] = True
    subnet = [r for r in resources if r.type == T_SUBNET][0]
    subnet.inputs["mapPublicIpOnLaunch"] = True
    hits = only(evaluate(resources), "no-public-ips")
    assert {v.resource for v in hits} == {service.name, subnet.name}


def test_public_ip_in_a_state_machine_run_task_is_refused() -> None:
    resources = stack("dev")
    definition = {"StartAt": "Run", "States": {"Run": {
        "Type": "Task", "Resource": "arn:aws:states:::ecs:runTask.waitForTaskToken", "End": True,
        "Parameters": {"NetworkConfiguration": {"AwsvpcConfiguration": {
            "Subnets": ["subnet-1"], "AssignPublicIp": "ENABLED"}}}}}}
    resources.append(StackResource("aws:sfn/stateMachine:StateMachine", "workflow",
                                   "urn:pulumi:dev::ontosearch::aws:sfn/stateMachine:StateMachine::workflow",
                                   {"definition": json.dumps(definition)}))
    hits = only(evaluate(resources), "no-public-ips")
    assert [v.resource for v in hits] == ["workflow"]
    definition["States"]["Run"]["Parameters"]["NetworkConfiguration"]["AwsvpcConfiguration"][
        "AssignPublicIp"] = "DISABLED"
    resources[-1].inputs["definition"] = json.dumps(definition)
    assert not evaluate(resources)


def test_world_ingress_to_the_tasks_is_refused_but_the_albs_80_and_443_are_allowed() -> None:
    resources = stack("prod")
    alb_groups = set(find(resources, T_LB).inputs["securityGroups"])
    groups = [r for r in resources if r.type == T_SG]
    alb_group = next(g for g in groups if g.id in alb_groups)
    assert any("0.0.0.0/0" in rule.get("cidrBlocks", []) for rule in alb_group.inputs["ingress"])
    assert not fired(evaluate(resources), "no-world-ingress-except-alb")

    task_group = next(g for g in groups if g.id in find(resources, T_SERVICE).inputs["networkConfiguration"][
        "securityGroups"])
    task_group.inputs["ingress"].append({"protocol": "tcp", "fromPort": 8080, "toPort": 8080,
                                         "cidrBlocks": ["0.0.0.0/0"]})
    hits = only(evaluate(resources), "no-world-ingress-except-alb")
    assert [v.resource for v in hits] == [task_group.name]
    assert "not a load balancer's" in hits[0].message


def test_world_ingress_to_the_alb_on_other_ports_is_refused() -> None:
    resources = stack("prod")
    alb_groups = set(find(resources, T_LB).inputs["securityGroups"])
    alb_group = next(r for r in resources if r.type == T_SG and r.id in alb_groups)
    alb_group.inputs["ingress"].append({"protocol": "tcp", "fromPort": 22, "toPort": 22,
                                        "ipv6CidrBlocks": ["::/0"]})
    # A separate rule resource (the newer per-rule API) opening everything to the ALB group.
    resources.append(StackResource(
        "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule", "alb-all",
        "urn:pulumi:prod::ontosearch::aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule::alb-all",
        {"securityGroupId": alb_group.id, "ipProtocol": "-1", "cidrIpv4": "0.0.0.0/0"}))
    hits = only(evaluate(resources), "no-world-ingress-except-alb")
    assert sorted(v.resource for v in hits) == sorted([alb_group.name, "alb-all"])
    assert all("only TCP 80 and 443" in v.message for v in hits)


def test_bucket_without_default_encryption_is_refused() -> None:
    resources = stack("prod")
    bucket = find(resources, T_BUCKET)
    sse = find(resources, T_SSE)
    sse.inputs["rules"][0]["applyServerSideEncryptionByDefault"]["sseAlgorithm"] = "none"
    hits = only(evaluate(resources), "encryption-at-rest")
    assert [v.resource for v in hits] == [bucket.name]
    resources.remove(sse)
    hits = only(evaluate(resources), "encryption-at-rest")
    assert [v.resource for v in hits] == [bucket.name]
    assert "no server-side encryption configuration" in hits[0].message


def test_log_group_and_secret_without_a_customer_managed_key_are_refused() -> None:
    resources = stack("prod")
    for r in resources:
        if r.type in (T_LOG_GROUP, T_SECRET):
            r.inputs.pop("kmsKeyId", None)
    hits = only(evaluate(resources), "encryption-at-rest")
    expected = {r.name for r in resources if r.type in (T_LOG_GROUP, T_SECRET)}
    assert {v.resource for v in hits} == expected
    # The pack can be told to accept AWS-managed keys (both services always encrypt at rest).
    assert not evaluate(resources, config={"encryption-at-rest": {"awsManagedKeysAllowed": True}})


def test_log_group_without_retention_and_lambda_without_a_managed_group_are_refused() -> None:
    resources = stack("dev")
    group = [r for r in resources if r.type == T_LOG_GROUP][0]
    group.inputs.pop("retentionInDays", None)
    resources.append(StackResource("aws:lambda/function:Function", "query",
                                   "urn:pulumi:dev::ontosearch::aws:lambda/function:Function::query",
                                   {"name": "ontosearch-query", "runtime": "python3.11"}))
    hits = only(evaluate(resources), "log-retention-set")
    assert {v.resource for v in hits} == {group.name, "query"}
    # Pointing the function at a managed group (with retention) satisfies the rule.
    group.inputs["retentionInDays"] = 14
    resources[-1].inputs["loggingConfig"] = {"logFormat": "JSON", "logGroup": group.id}
    assert not evaluate(resources)


@pytest.mark.parametrize("statement, needle", [
    ({"Effect": "Allow", "Action": "*", "Resource": "arn:aws:s3:::b/*"}, 'Action "*"'),
    ({"Effect": "Allow", "Action": ["s3:GetObject", "s3:*"], "Resource": "*"}, "s3:* on Resource"),
    ({"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"}, "NotAction"),
])
def test_wildcard_iam_statements_are_refused(statement: dict, needle: str) -> None:
    resources = stack("prod")
    policy = [r for r in resources if r.type == T_ROLE_POLICY][0]
    document = json.loads(policy.inputs["policy"])
    document["Statement"].append(statement)
    policy.inputs["policy"] = json.dumps(document)
    hits = only(evaluate(resources), "iam-no-wildcard-actions")
    assert [v.resource for v in hits] == [policy.name]
    assert needle in hits[0].message


def test_broad_aws_managed_policies_are_refused_and_deny_wildcards_are_fine() -> None:
    resources = stack("dev")
    role = [r for r in resources if r.type == "aws:iam/role:Role"][0]
    resources.append(StackResource(
        "aws:iam/rolePolicyAttachment:RolePolicyAttachment", "admin",
        "urn:pulumi:dev::ontosearch::aws:iam/rolePolicyAttachment:RolePolicyAttachment::admin",
        {"role": role.id, "policyArn": "arn:aws:iam::aws:policy/AdministratorAccess"}))
    hits = only(evaluate(resources), "iam-no-wildcard-actions")
    assert [v.resource for v in hits] == ["admin"]
    # The bucket's TLS-only policy denies s3:* to everyone: a Deny wildcard is what it should be.
    bucket_policy = find(resources, "aws:s3/bucketPolicy:BucketPolicy")
    assert '"s3:*"' in bucket_policy.inputs["policy"]
    assert not any(v.resource == bucket_policy.name for v in hits)


def test_token_in_plain_container_environment_is_refused() -> None:
    resources = stack("prod")
    task = find(resources, T_TASK_DEF)
    containers = json.loads(task.inputs["containerDefinitions"])
    proxy = next(c for c in containers if any(s["name"] == "CHROMA_TOKEN" for s in c.get("secrets", [])))
    proxy["secrets"] = [s for s in proxy["secrets"] if s["name"] != "CHROMA_TOKEN"]
    proxy.setdefault("environment", []).append({"name": "CHROMA_TOKEN", "value": "plaintext0token0value"})
    admin = next(s for s in proxy["secrets"] if s["name"] == "CHROMA_ADMIN_TOKEN")
    admin["valueFrom"] = "arn:aws:ssm:us-east-1:123456789012:parameter/admin-token"
    task.inputs["containerDefinitions"] = json.dumps(containers)
    hits = only(evaluate(resources), "token-only-via-secrets-manager")
    messages = " | ".join(v.message for v in hits)
    assert {v.resource for v in hits} == {task.name}
    assert "CHROMA_TOKEN in plain `environment`" in messages
    assert "CHROMA_ADMIN_TOKEN comes from arn:aws:ssm" in messages


def test_token_reaching_anything_but_secrets_manager_is_refused() -> None:
    resources = stack("dev")
    password = [r for r in resources if r.type == T_PASSWORD][0]
    token = password.inputs["result"]
    # A Lambda with the token in its environment, and a parameter that took the generated value.
    resources.append(StackResource(
        "aws:lambda/function:Function", "query",
        "urn:pulumi:dev::ontosearch::aws:lambda/function:Function::query",
        {"name": "q", "environment": {"variables": {"CHROMA_TOKEN": token}},
         "loggingConfig": {"logFormat": "Text", "logGroup": find(resources, T_LOG_GROUP, "chroma-logs").id}}))
    resources.append(StackResource(
        "aws:ssm/parameter:Parameter", "token-copy",
        "urn:pulumi:dev::ontosearch::aws:ssm/parameter:Parameter::token-copy",
        {"type": "String", "value": token}, dependencies=(password.urn,)))
    hits = only(evaluate(resources), "token-only-via-secrets-manager")
    by_resource: dict[str, str] = {}
    for v in hits:
        by_resource[v.resource] = by_resource.get(v.resource, "") + " | " + v.message
    assert set(by_resource) == {"query", "token-copy"}
    assert "CHROMA_TOKEN holds a token" in by_resource["query"]
    assert "generated token in clear" in by_resource["query"]
    assert "depends on a generated token" in by_resource["token-copy"]


# --- the pack as the Pulumi CLI runs it ---------------------------------------------------------

@pytest.fixture(scope="module")
def analyzer():
    """`python policies/__main__.py` prints its gRPC port, as the CLI expects; a stub talks to it."""
    import grpc
    from pulumi.runtime.proto import analyzer_pb2_grpc

    process = subprocess.Popen([sys.executable, str(ROOT / "policies" / "__main__.py")],
                               cwd=ROOT / "policies", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "PYTHONPATH": ""})
    try:
        line = process.stdout.readline().decode().strip()
        assert line.isdigit(), f"pack did not print a port: {line!r} {process.stderr.read1().decode()}"
        channel = grpc.insecure_channel(f"127.0.0.1:{line}")
        yield analyzer_pb2_grpc.AnalyzerStub(channel)
        channel.close()
    finally:
        process.kill()
        process.wait(timeout=10)


def _analyzer_resource(r: StackResource, outputs: bool):
    from google.protobuf import json_format, struct_pb2
    from pulumi.runtime.proto import analyzer_pb2

    properties = struct_pb2.Struct()
    json_format.ParseDict(json.loads(json.dumps(r.outputs if outputs else r.inputs)), properties)
    return analyzer_pb2.AnalyzerResource(
        type=r.type, properties=properties, urn=r.urn, name=r.name,
        options=analyzer_pb2.AnalyzerResourceOptions(protect=r.protect),
        parent=r.parent_urn or "", dependencies=list(r.dependencies),
        propertyDependencies={key: analyzer_pb2.AnalyzerPropertyDependencies(urns=list(urns))
                              for key, urns in r.property_dependencies.items()})


def add_property_dependencies(resources: list[StackResource]) -> None:
    """What the engine records for each input property: which resources' outputs it was made from
    (here: the top-level inputs that hold another resource's id)."""
    by_id = {r.id: r.urn for r in resources if r.id}
    for r in resources:
        for key, value in r.inputs.items():
            values = value if isinstance(value, list) else [value]
            urns = [by_id[v] for v in values if isinstance(v, str) and v in by_id]
            if urns:
                r.property_dependencies[key] = urns


def test_pack_served_over_grpc_lists_every_policy(analyzer) -> None:
    from google.protobuf import empty_pb2

    info = analyzer.GetAnalyzerInfo(empty_pb2.Empty())
    assert info.name == "ontosearch-security"
    assert {p.name for p in info.policies} == POLICY_NAMES


def test_pack_served_over_grpc_reports_a_public_ip_and_passes_the_real_service(analyzer) -> None:
    from pulumi.runtime.proto import analyzer_pb2

    service = find(stack("prod"), T_SERVICE)
    ok = analyzer.Analyze(analyzer_pb2.AnalyzeRequest(**_request_fields(service)))
    assert not ok.diagnostics
    service.inputs["networkConfiguration"]["assignPublicIp"] = True
    bad = analyzer.Analyze(analyzer_pb2.AnalyzeRequest(**_request_fields(service)))
    assert [d.policyName for d in bad.diagnostics] == ["no-public-ips"]


def test_pack_served_over_grpc_checks_the_whole_stack(analyzer) -> None:
    from pulumi.runtime.proto import analyzer_pb2

    resources = stack("prod")
    ok = analyzer.AnalyzeStack(analyzer_pb2.AnalyzeStackRequest(
        resources=[_analyzer_resource(r, outputs=True) for r in resources]))
    assert not ok.diagnostics, [d.message for d in ok.diagnostics]
    resources.remove(find(resources, T_SSE))
    bad = analyzer.AnalyzeStack(analyzer_pb2.AnalyzeStackRequest(
        resources=[_analyzer_resource(r, outputs=True) for r in resources]))
    assert [(d.policyName, d.urn) for d in bad.diagnostics] == [
        ("encryption-at-rest", find(resources, T_BUCKET).urn)]


def test_pack_judges_what_is_known_during_preview(analyzer) -> None:
    """In a preview, outputs of resources not yet created are unknown: the pack must neither pass a
    broken rule because of them nor refuse to run, and must still catch what is known to be wrong."""
    from pulumi.runtime.proto import analyzer_pb2
    from pulumi_policy.proxy import UNKNOWN_STRING_VALUE

    resources = stack("prod")
    add_property_dependencies(resources)
    assert find(resources, T_SSE).property_dependencies["bucket"] == [find(resources, T_BUCKET).urn]
    for r in resources:
        r.id = ""
        for key in ("kmsKeyId", "policy", "containerDefinitions", "bucket", "securityGroups", "role"):
            if key in r.inputs:
                r.inputs[key] = UNKNOWN_STRING_VALUE
    ok = analyzer.AnalyzeStack(analyzer_pb2.AnalyzeStackRequest(
        resources=[_analyzer_resource(r, outputs=True) for r in resources]))
    assert not ok.diagnostics, [(d.policyName, d.message) for d in ok.diagnostics]
    find(resources, T_LB).inputs["enableDeletionProtection"] = False
    group = [r for r in resources if r.type == T_LOG_GROUP][0]
    group.inputs.pop("retentionInDays")
    bad = analyzer.AnalyzeStack(analyzer_pb2.AnalyzeStackRequest(
        resources=[_analyzer_resource(r, outputs=True) for r in resources]))
    assert [(d.policyName, d.urn) for d in bad.diagnostics] == [("log-retention-set", group.urn)]


def _request_fields(r: StackResource) -> dict:
    resource = _analyzer_resource(r, outputs=False)
    return {"type": resource.type, "properties": resource.properties, "urn": resource.urn,
            "name": resource.name, "options": resource.options}
