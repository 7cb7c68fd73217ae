"""Security properties of both stacks, checked on every resource the program declares."""

from __future__ import annotations

import ipaddress
import json
import re

import pytest
from pulumi_harness import (
    SECRET_MARK,
    STACKS,
    container_definitions,
    mock_password,
    policy_documents,
    security_group_rules,
    synth_stack,
    synth_with,
    walk_strings,
)

from ontosearch import constants as c

OPEN = {"0.0.0.0/0", "::/0"}
ACTION_RE = r"[a-z0-9-]+:[A-Za-z0-9*]+"
IDENTITY_POLICY_TYPES = {"aws:iam/rolePolicy:RolePolicy", "aws:iam/policy:Policy",
                         "aws:iam/userPolicy:UserPolicy"}
IAM_STATEMENT_KEYS = {"Sid", "Effect", "Principal", "NotPrincipal", "Action", "NotAction", "Resource",
                      "NotResource", "Condition"}


def _alb_security_group_ids(result) -> set[str]:
    return {sg for lb in result.of_type("aws:lb/loadBalancer:LoadBalancer")
            for sg in lb.raw_inputs.get("securityGroups", [])}


def _ids(result, typ: str) -> dict[str, str]:
    return {r.name: r.id for r in result.of_type(typ)}


@pytest.mark.parametrize("stack", STACKS)
def test_open_ingress_only_on_the_alb_and_only_80_443(stack):
    result = synth_stack(stack)
    alb_sgs = _alb_security_group_ids(result)
    checked = 0
    for sg, direction, rule in security_group_rules(result):
        if direction != "ingress":
            continue
        checked += 1
        cidrs = set(rule.get("cidrBlocks") or []) | set(rule.get("ipv6CidrBlocks") or [])
        if cidrs & OPEN:
            assert sg.id in alb_sgs, f"{sg.name} opens {rule} to the internet"
            assert rule["fromPort"] == rule["toPort"] and rule["fromPort"] in (80, 443), rule
            assert rule["protocol"] == "tcp"
    assert checked


def test_dev_has_no_open_ingress_at_all():
    for _sg, direction, rule in security_group_rules(synth_stack("dev")):
        if direction == "ingress":
            assert not set(rule.get("cidrBlocks") or []) & OPEN, rule


@pytest.mark.parametrize("stack", STACKS)
def test_task_port_is_reachable_only_from_the_alb(stack):
    result = synth_stack(stack)
    task_sg = result.one("aws:ec2/securityGroup:SecurityGroup", "chroma-task-sg")
    alb_sg = result.one("aws:ec2/securityGroup:SecurityGroup", "chroma-alb-sg")
    rules = task_sg.raw_inputs["ingress"]
    assert rules == [{
        "protocol": "tcp", "fromPort": c.PROXY_PORT, "toPort": c.PROXY_PORT, "securityGroups": [alb_sg.id],
        "description": rules[0]["description"],
    }]
    service = result.one("aws:ecs/service:Service").raw_inputs
    assert service["networkConfiguration"]["securityGroups"] == [task_sg.id]


@pytest.mark.parametrize("stack", STACKS)
def test_nothing_gets_a_public_ip(stack):
    result = synth_stack(stack)
    for subnet in result.of_type("aws:ec2/subnet:Subnet"):
        assert subnet.raw_inputs.get("mapPublicIpOnLaunch") is False, subnet.name
    service = result.one("aws:ecs/service:Service").raw_inputs
    assert service["networkConfiguration"]["assignPublicIp"] is False
    private = set(result.outputs["private_subnet_ids"])
    assert set(service["networkConfiguration"]["subnets"]) == private
    for typ in ("aws:ec2/instance:Instance", "aws:ec2/networkInterface:NetworkInterface",
                "aws:ec2/eipAssociation:EipAssociation"):
        assert result.of_type(typ) == []
    # An Elastic IP exists only as the NAT gateway's egress address.
    nat_allocations = {n.raw_inputs["allocationId"] for n in result.of_type("aws:ec2/natGateway:NatGateway")}
    assert {e.id for e in result.of_type("aws:ec2/eip:Eip")} == nat_allocations


@pytest.mark.parametrize("stack", STACKS)
def test_token_never_appears_in_clear_in_any_resource_input(stack):
    result = synth_stack(stack)
    passwords = result.of_type("random:index/randomPassword:RandomPassword")
    assert len(passwords) == 2
    tokens = {p.name: mock_password(p.name, int(p.raw_inputs["length"])) for p in passwords}
    # The mocked values really flow into Secrets Manager (so the scan below looks for the right strings) ...
    versions = {v.name: v for v in result.of_type("aws:secretsmanager/secretVersion:SecretVersion")}
    assert {versions[name].raw_inputs["secretString"] for name in tokens} == set(tokens.values())
    # ... but only as secrets,
    for version in versions.values():
        assert version.inputs["secretString"] == SECRET_MARK
    # and nowhere in clear: no resource input, no stack output.
    for resource in result.resources:
        for text in walk_strings(resource.inputs):
            for token in tokens.values():
                assert token not in text, f"token in clear in {resource.type} {resource.name}"
    for text in walk_strings(result.outputs):
        for token in tokens.values():
            assert token not in text


@pytest.mark.parametrize("stack", STACKS)
def test_tokens_are_long_alphanumeric_random_passwords(stack):
    for password in synth_stack(stack).of_type("random:index/randomPassword:RandomPassword"):
        inputs = password.raw_inputs
        assert inputs["special"] is False
        assert inputs["length"] >= 40
    names = {s.name for s in synth_stack(stack).of_type("aws:secretsmanager/secret:Secret")}
    assert names == {"tokens-read", "tokens-admin"}


@pytest.mark.parametrize("stack", STACKS)
def test_every_policy_document_parses_and_never_allows_star_on_star(stack):
    documents = list(policy_documents(synth_stack(stack)))
    kinds = {(r.type, key) for r, key, _ in documents}
    assert ("aws:iam/role:Role", "assumeRolePolicy") in kinds
    assert ("aws:iam/rolePolicy:RolePolicy", "policy") in kinds
    assert ("aws:s3/bucketPolicy:BucketPolicy", "policy") in kinds
    for resource, key, doc in documents:
        where = f"{resource.type} {resource.name}.{key}"
        assert doc["Version"] == "2012-10-17", where
        statements = doc["Statement"]
        statements = statements if isinstance(statements, list) else [statements]
        assert statements, where
        for st in statements:
            assert set(st) <= IAM_STATEMENT_KEYS, f"{where}: unknown keys {set(st) - IAM_STATEMENT_KEYS}"
            assert st["Effect"] in ("Allow", "Deny"), where
            actions = st.get("Action", st.get("NotAction"))
            actions = [actions] if isinstance(actions, str) else actions
            assert actions, where
            for action in actions:
                assert action == "*" or re.fullmatch(ACTION_RE, action), f"{where}: {action}"
            resources = st.get("Resource", [])
            resources = [resources] if isinstance(resources, str) else resources
            if st["Effect"] == "Allow":
                assert "*" not in actions, f"{where}: Allow with Action *"
                assert "NotAction" not in st and "NotResource" not in st, where
                # In an identity policy a whole service on every resource is as bad as "*".
                # (A key policy's Resource "*" means the key itself.)
                if resource.type in IDENTITY_POLICY_TYPES:
                    assert not (any(a.endswith(":*") for a in actions) and "*" in resources), \
                        f"{where}: service-wide action on * resource"


def _policy(result, name: str) -> dict:
    return json.loads(result.one("aws:iam/rolePolicy:RolePolicy", name).raw_inputs["policy"])


@pytest.mark.parametrize("stack", STACKS)
def test_execution_role_reads_only_the_two_token_secrets(stack):
    result = synth_stack(stack)
    statements = _policy(result, "chroma-execution-policy")["Statement"]
    secret_arns = sorted(_ids(result, "aws:secretsmanager/secret:Secret").values())
    tokens = [s for s in statements if "secretsmanager" in json.dumps(s["Action"])]
    assert tokens == [{"Sid": "Tokens", "Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
                       "Resource": tokens[0]["Resource"]}]
    assert sorted(tokens[0]["Resource"]) == secret_arns
    # the service's images (the batch Lambda image, if any, is pulled by Lambda, not by this role)
    repo_arns = sorted(f"arn:aws:ecr:us-east-1:123456789012:repository/{r.id}"
                       for r in result.of_type("aws:ecr/repository:Repository") if r.parent == "images")
    assert len(repo_arns) == 3
    pull = next(s for s in statements if s["Sid"] == "EcrPull")
    assert sorted(pull["Resource"]) == repo_arns
    # Only GetAuthorizationToken (which has no resource-level permissions) may name "*".
    for st in statements:
        if st["Resource"] == "*":
            assert st["Action"] == "ecr:GetAuthorizationToken"


@pytest.mark.parametrize("stack", STACKS)
def test_task_role_reads_only_snapshots_of_the_stack_bucket(stack):
    result = synth_stack(stack)
    bucket = result.one("aws:s3/bucket:Bucket").id
    statements = _policy(result, "chroma-task-policy")["Statement"]
    actions = sorted(s["Action"] for s in statements)
    assert actions == ["s3:GetObject", "s3:ListBucket"]
    get = next(s for s in statements if s["Action"] == "s3:GetObject")
    assert get["Resource"] == f"arn:aws:s3:::{bucket}/{c.SNAPSHOT_PREFIX}/*"
    listing = next(s for s in statements if s["Action"] == "s3:ListBucket")
    assert listing["Resource"] == f"arn:aws:s3:::{bucket}"
    prefixes = listing["Condition"]["StringLike"]["s3:prefix"]
    assert prefixes == [f"{c.SNAPSHOT_PREFIX}/", f"{c.SNAPSHOT_PREFIX}/*"]


@pytest.mark.parametrize("stack", STACKS)
def test_roles_trust_only_ecs_tasks_of_this_account(stack):
    for role in synth_stack(stack).of_type("aws:iam/role:Role"):
        if not role.name.startswith("chroma-"):
            continue
        doc = json.loads(role.raw_inputs["assumeRolePolicy"])
        (st,) = doc["Statement"]
        assert st["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
        assert st["Condition"] == {"StringEquals": {"aws:SourceAccount": "123456789012"}}


def test_internal_alb_ingress_is_the_vpc_cidr_only():
    result = synth_stack("dev")
    alb_sg = result.one("aws:ec2/securityGroup:SecurityGroup", "chroma-alb-sg").raw_inputs
    vpc_cidr = result.one("aws:ec2/vpc:Vpc").raw_inputs["cidrBlock"]
    assert [r["cidrBlocks"] for r in alb_sg["ingress"]] == [[vpc_cidr]]
    assert [r["fromPort"] for r in alb_sg["ingress"]] == [80]
    assert ipaddress.ip_network(vpc_cidr).is_private


PEERS = ["10.50.0.0/16", "192.168.8.0/22"]


def test_internal_alb_admits_exactly_the_configured_networks_and_no_longer_the_whole_vpc():
    """Peered VPCs and VPN clients reach the internal ALB when their CIDRs are configured."""
    result = synth_with("dev", {"ontosearch:allowedCidrs": PEERS})
    alb_sg = result.one("aws:ec2/securityGroup:SecurityGroup", "chroma-alb-sg").raw_inputs
    assert [(r["fromPort"], r["toPort"], r["cidrBlocks"]) for r in alb_sg["ingress"]] == [(80, 80, PEERS)]
    assert result.one("aws:lb/loadBalancer:LoadBalancer").raw_inputs["internal"] is True
    # the tasks still accept only the ALB
    task_sg = result.one("aws:ec2/securityGroup:SecurityGroup", "chroma-task-sg").raw_inputs
    assert task_sg["ingress"][0]["securityGroups"] == [result.one(
        "aws:ec2/securityGroup:SecurityGroup", "chroma-alb-sg").id]


def test_internet_facing_alb_can_be_limited_to_the_configured_networks():
    default = synth_stack("prod").one("aws:ec2/securityGroup:SecurityGroup", "chroma-alb-sg").raw_inputs
    assert {tuple(r["cidrBlocks"]) for r in default["ingress"]} == {("0.0.0.0/0",)}
    limited = synth_with("prod", {"ontosearch:allowedCidrs": PEERS}).one(
        "aws:ec2/securityGroup:SecurityGroup", "chroma-alb-sg").raw_inputs
    assert sorted((r["fromPort"], r["cidrBlocks"]) for r in limited["ingress"]) == [(80, PEERS), (443, PEERS)]


@pytest.mark.parametrize("stack", STACKS)
def test_no_container_definition_holds_a_secret_value(stack):
    result = synth_stack(stack)
    tasks = result.of_type("aws:ecs/taskDefinition:TaskDefinition")
    assert "chroma-task" in {t.name for t in tasks}
    for task in tasks:  # the service's and, when on, the batch workflow's
        assert task.inputs["containerDefinitions"] != SECRET_MARK  # readable: it holds no secret
        text = json.dumps(container_definitions(result, task.name))
        for password in result.of_type("random:index/randomPassword:RandomPassword"):
            assert mock_password(password.name, int(password.raw_inputs["length"])) not in text


@pytest.mark.parametrize("stack", STACKS)
def test_tokens_and_logs_are_encrypted_with_the_stack_key_and_only_the_task_start_may_decrypt(stack):
    result = synth_stack(stack)
    key = result.one("aws:kms/key:Key")
    assert key.raw_inputs["enableKeyRotation"] is True
    assert key.protect is (stack == "prod")
    for secret in result.of_type("aws:secretsmanager/secret:Secret"):
        assert secret.raw_inputs["kmsKeyId"] == key.state["arn"], secret.name
    for log_group in result.of_type("aws:cloudwatch/logGroup:LogGroup"):
        assert log_group.raw_inputs["kmsKeyId"] == key.state["arn"], log_group.name
    statements = _policy(result, "chroma-execution-policy")["Statement"]
    decrypt = [s for s in statements if "kms" in json.dumps(s["Action"])]
    assert decrypt == [{
        "Sid": "DecryptTokensViaSecretsManager", "Effect": "Allow", "Action": "kms:Decrypt",
        "Resource": key.state["arn"],
        "Condition": {"StringEquals": {"kms:ViaService": "secretsmanager.us-east-1.amazonaws.com"}},
    }]
    # The task role (the running containers) never gets the key.
    assert "kms:" not in json.dumps(_policy(result, "chroma-task-policy"))
    # Services other than CloudWatch Logs of this account have no grant in the key policy.
    policy = json.loads(key.raw_inputs["policy"])
    services = [s["Principal"].get("Service") for s in policy["Statement"] if "Service" in s["Principal"]]
    assert services == ["logs.us-east-1.amazonaws.com"]
    logs = next(s for s in policy["Statement"] if s["Principal"].get("Service"))
    assert logs["Condition"]["ArnLike"]["kms:EncryptionContext:aws:logs:arn"] == \
        "arn:aws:logs:us-east-1:123456789012:log-group:*"
