"""Every synthesized resource input meets the rules AWS and the provider apply (components.input_constraints).

The mocks accept anything; these checks know the rules `pulumi preview` and `up` would apply, over every
stack variant the program can produce: dev and prod, the batch workflow on and off, a new VPC or an
existing one from config. Each rule's source is named in the table itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from pulumi_harness import stack_file_config, synth_with

from components import input_constraints as ic

EXISTING_VPC = {
    "ontosearch:vpcId": "vpc-0123456789abcdef0",
    "ontosearch:privateSubnetIds": ["subnet-0aaa1111", "subnet-0bbb2222"],
    "ontosearch:publicSubnetIds": ["subnet-0ccc3333", "subnet-0ddd4444"],
}
VARIANTS = {
    f"{stack}-batch-{'on' if batch else 'off'}-{'existing' if existing else 'new'}-vpc": (
        stack, {"ontosearch:batchWorkflow": batch, **(EXISTING_VPC if existing else {})})
    for stack in ("dev", "prod") for batch in (True, False) for existing in (False, True)
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request):
    stack, overrides = VARIANTS[request.param]
    return stack, synth_with(stack, overrides)


def test_every_input_of_every_stack_variant_meets_the_constraints(variant) -> None:
    stack, result = variant
    found = ic.violations(result.resources, ic.default_tags_of(stack_file_config(stack)))
    assert not found, "\n".join(map(str, found))


def test_variants_cover_the_workflow_and_an_existing_vpc(variant) -> None:
    """The check above saw what each variant should hold (so an empty result is not an empty stack)."""
    _, result = variant
    types = {r.type for r in result.resources}
    assert {"aws:ec2/securityGroup:SecurityGroup", "aws:lb/loadBalancer:LoadBalancer", "aws:iam/role:Role",
            "aws:ecr/repository:Repository", "aws:cloudwatch/logGroup:LogGroup"} <= types
    batch = any(r.type == "aws:sfn/stateMachine:StateMachine" for r in result.resources)
    assert batch == any(r.type == "aws:lambda/function:Function" for r in result.resources)


# --- the rules themselves: each catches what it names --------------------------------------------

@dataclass
class Declared:
    """A resource as the synth records it (type, logical name, inputs), for checking single rules."""

    type: str
    name: str
    raw_inputs: dict[str, Any] = field(default_factory=dict)
    custom: bool = True


def problems(*resources: Declared, tags: dict | None = None) -> list[str]:
    return [f"{v.rule}: {v.path} {v.problem}" for v in ic.violations(resources, tags)]


SG = "aws:ec2/securityGroup:SecurityGroup"


def test_an_apostrophe_in_a_security_group_rule_description_is_refused() -> None:
    sg = Declared(SG, "batch-lambda-sg", {"description": "fine", "egress": [
        {"protocol": "tcp", "fromPort": 8080, "toPort": 8080, "description": "the batch task's auth proxy"}]})
    (found,) = problems(sg)
    assert found.startswith("security-group rule description: egress[0].description does not match")
    assert "(not allowed: \"'\")" in found
    sg.raw_inputs["egress"][0]["description"] = "the auth proxy of the batch task"
    assert problems(sg) == []


def test_security_group_texts_are_limited_to_255_characters() -> None:
    assert problems(Declared(SG, "x", {"description": "a" * 255})) == []
    assert problems(Declared(SG, "x", {"description": "a" * 256})) == [
        "security-group description: description is 256 characters long; the limit is 255"]
    rule = Declared("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule", "x",
                    {"description": "b" * 256})
    assert problems(rule) == [
        "security-group rule description: description is 256 characters long; the limit is 255"]


def test_security_group_rule_entries_are_counted_per_cidr_against_60() -> None:
    cidrs = [f"10.{i}.0.0/16" for i in range(31)]
    two_ports = [{"fromPort": p, "toPort": p, "protocol": "tcp", "cidrBlocks": cidrs} for p in (80, 443)]
    (found,) = problems(Declared(SG, "alb-sg", {"ingress": two_ports}))
    assert found == "security-group rules per direction: ingress 62 rule entries; the limit is 60"
    assert problems(Declared(SG, "alb-sg", {"ingress": two_ports[:1]})) == []


def test_autonamed_load_balancer_names_count_the_seven_random_characters() -> None:
    alb = "aws:lb/loadBalancer:LoadBalancer"
    assert ic.autoname("chroma-alb") == "chroma-alb-" + ic.AUTONAME_SAMPLE
    assert problems(Declared(alb, "a" * 24)) == []  # 24 + "-" + 7 = 32
    (found,) = problems(Declared(alb, "a" * 25))
    assert found == ("load balancer name: name (generated) generated name is 33 characters long; "
                     "the limit is 32")
    tg = "aws:lb/targetGroup:TargetGroup"
    assert problems(Declared(tg, "ontosearch-production-tg")) == []  # 24 characters: 32 with the suffix
    assert problems(Declared(tg, "ontosearch-production-tgx")) == [
        "target group name: name (generated) generated name is 33 characters long; the limit is 32"]
    assert problems(Declared(alb, "x", {"name": "internal-api"})) == [
        'load balancer name: name must not begin with "internal-"']


def test_name_prefixes_leave_room_for_the_26_generated_characters() -> None:
    assert problems(Declared("aws:lb/loadBalancer:LoadBalancer", "x", {"namePrefix": "abcdef"})) == []
    assert problems(Declared("aws:lb/loadBalancer:LoadBalancer", "x", {"namePrefix": "abcdefg"})) == [
        "load balancer name: namePrefix is 7 characters long; the limit is 6 (the provider appends 26)"]
    assert problems(Declared("aws:iam/role:Role", "x", {"namePrefix": "r" * 38})) == []
    assert problems(Declared("aws:iam/role:Role", "x", {"namePrefix": "r" * 39}))[0].startswith(
        "IAM role name: namePrefix is 39 characters long; the limit is 38")


@pytest.mark.parametrize(("typ", "field_", "ok", "bad"), [
    ("aws:iam/role:Role", "name", "r" * 64, "r" * 65),
    ("aws:ecr/repository:Repository", "name", "ontosearch/lambda", "Ontosearch"),
    ("aws:cloudwatch/logGroup:LogGroup", "name", "/ontosearch/dev", "/ontosearch/dev logs"),
    ("aws:secretsmanager/secret:Secret", "name", "tokens-read-abc1234", "tokens-read-abcdef"),
    ("aws:sfn/stateMachine:StateMachine", "name", "m" * 80, "m" * 81),
    ("aws:sfn/stateMachine:StateMachine", "name", "batch_machine-1", "batch.machine"),
    ("aws:lambda/function:Function", "name", "f" * 64, "f" * 65),
    ("aws:ecs/cluster:Cluster", "name", "chroma-cluster", "chroma cluster"),
    ("aws:ecs/service:Service", "name", "s" * 255, "s" * 256),
    ("aws:ecs/taskDefinition:TaskDefinition", "family", "ontosearch-dev-batch", "ontosearch:dev"),
    ("aws:s3/bucket:Bucket", "bucket", "snapshots-bucket-0a1b2c3", "Snapshots"),
    ("aws:s3/bucket:Bucket", "bucket", "a.b-c", "xn--bucket"),
    ("aws:kms/alias:Alias", "name", "alias/ontosearch-dev", "alias/aws/ontosearch"),
    ("aws:sns/topic:Topic", "name", "chroma-alarms", "chroma alarms"),
])
def test_each_name_rule_accepts_a_valid_name_and_refuses_an_invalid_one(typ, field_, ok, bad) -> None:
    assert problems(Declared(typ, "x", {field_: ok})) == []
    assert problems(Declared(typ, "x", {field_: bad})), f"{typ} {field_}={bad!r} should be refused"


def test_a_task_definition_without_a_family_is_refused() -> None:
    assert problems(Declared("aws:ecs/taskDefinition:TaskDefinition", "task")) == [
        "ECS task definition family: family is required: the provider does not generate this name"]


def test_lambda_image_uri_takes_a_tag_or_a_digest_never_both() -> None:
    fn = "aws:lambda/function:Function"
    repo = "123456789012.dkr.ecr.us-east-1.amazonaws.com/batch-lambda-0a1b2c3"
    digest = "sha256:" + "ab" * 32
    assert problems(Declared(fn, "batch-query", {"imageUri": f"{repo}:latest"})) == []
    assert problems(Declared(fn, "batch-query", {"imageUri": f"{repo}@{digest}"})) == []
    (found,) = problems(Declared(fn, "batch-query", {"imageUri": f"{repo}:latest@{digest}"}))
    assert "names both a tag and a digest" in found
    assert problems(Declared(fn, "batch-query", {"imageUri": "public.ecr.aws/lambda/python:3.12"}))


def test_docker_build_ref_as_the_mocks_model_it_is_what_the_image_rule_refuses() -> None:
    """The synth mocks give docker_build.Image.ref the provider's repo:tag@sha256 form (#571 upstream)."""
    from pulumi_harness import synth_with as synth_variant

    result = synth_variant("prod", {"ontosearch:batchWorkflow": False})
    image = next(r for r in result.resources if r.type == "docker-build:index:Image")
    assert ic.image_uri_problem(image.state["ref"]).startswith("names both a tag and a digest")


def test_tags_count_the_default_tags_and_keep_aws_prefix_for_aws() -> None:
    bucket = "aws:s3/bucket:Bucket"
    defaults = {f"d{i}": "v" for i in range(45)}
    own = {f"t{i}": "v" for i in range(5)}
    assert problems(Declared(bucket, "b", {"bucket": "b-0a1b2c3", "tags": own}), tags=defaults) == []
    (found,) = problems(Declared(bucket, "b", {"bucket": "b-0a1b2c3", "tags": {**own, "t5": "v"}}),
                        tags=defaults)
    assert found == "tags: tags 51 tags (with the default tags); the limit is 50"
    assert problems(Declared(bucket, "b", {"bucket": "b-0a1b2c3", "tags": {"aws:owner": "me"}})) == [
        "tags: tags[aws:owner] the aws: prefix is reserved for AWS"]
    assert problems(Declared(bucket, "b", {"bucket": "b-0a1b2c3", "tags": {"k" * 129: "v"}}))
    assert problems(Declared(bucket, "b", {"bucket": "b-0a1b2c3", "tags": {"k": "v" * 257}}))
    assert problems(Declared(bucket, "b", {"bucket": "b-0a1b2c3", "tags": {"owner": "o'brien"}}))
    # Resources that take no tags get no default tags either.
    assert not ic.taggable("aws:iam/rolePolicy:RolePolicy")
    assert ic.taggable("aws:lb/loadBalancer:LoadBalancer")
    many_defaults = {f"d{i}": "v" for i in range(60)}
    assert problems(Declared("aws:iam/rolePolicy:RolePolicy", "p"), tags=many_defaults) == []


# --- the table agrees with AWS's own API model where the model states the limit ------------------

BOTOCORE_LIMITS = [
    # (rule, service, operation, member path, what the table holds)
    ("IAM role name", "iam", "CreateRole", "RoleName", "max_length"),
    ("IAM role description", "iam", "CreateRole", "Description", "max_length"),
    ("IAM inline policy name", "iam", "PutRolePolicy", "PolicyName", "max_length"),
    ("ECR repository name", "ecr", "CreateRepository", "repositoryName", "max_length"),
    ("ECR repository name", "ecr", "CreateRepository", "repositoryName", "min_length"),
    ("CloudWatch log group name", "logs", "CreateLogGroup", "logGroupName", "max_length"),
    ("Secrets Manager secret name", "secretsmanager", "CreateSecret", "Name", "max_length"),
    ("Secrets Manager secret description", "secretsmanager", "CreateSecret", "Description", "max_length"),
    ("Step Functions state machine name", "stepfunctions", "CreateStateMachine", "name", "max_length"),
    ("KMS alias name", "kms", "CreateAlias", "AliasName", "max_length"),
    ("KMS key description", "kms", "CreateKey", "Description", "max_length"),
    ("CloudWatch alarm name", "cloudwatch", "PutMetricAlarm", "AlarmName", "max_length"),
    ("CloudWatch alarm description", "cloudwatch", "PutMetricAlarm", "AlarmDescription", "max_length"),
    ("Application Auto Scaling policy name", "application-autoscaling", "PutScalingPolicy", "PolicyName",
     "max_length"),
    ("tags", "iam", "CreateRole", "Tags", "max_items"),
]


@pytest.mark.parametrize(("rule", "service", "operation", "member", "attribute"), BOTOCORE_LIMITS,
                         ids=[f"{r[0]}-{r[4]}" for r in BOTOCORE_LIMITS])
def test_table_limits_agree_with_the_botocore_model(rule, service, operation, member, attribute) -> None:
    import botocore.session

    shape = botocore.session.get_session().get_service_model(service).operation_model(operation).input_shape
    shape = shape.members[member]
    (constraint,) = {c for c in ic.CONSTRAINTS if c.rule == rule}
    model_key = {"max_length": "max", "min_length": "min", "max_items": "max"}[attribute]
    assert getattr(constraint, attribute) == shape.metadata[model_key]


def test_tag_key_and_value_limits_agree_with_the_botocore_model() -> None:
    import botocore.session

    model = botocore.session.get_session().get_service_model("iam")
    tag = model.operation_model("CreateRole").input_shape.members["Tags"].member
    assert tag.members["Key"].metadata["max"] == ic.TAG_KEY_MAX
    assert tag.members["Value"].metadata["max"] == ic.TAG_VALUE_MAX
    assert tag.members["Key"].metadata["pattern"] == r"[\p{L}\p{Z}\p{N}_.:/=+\-@]+"


def test_every_rule_names_its_source() -> None:
    for c in ic.CONSTRAINTS:
        assert "https://docs.aws.amazon.com/" in c.source or "provider internal/service/" in c.source \
            or "botocore" in c.source, c.rule
