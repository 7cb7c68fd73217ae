"""The rules AWS and the provider apply to the program's resource inputs, as one table, and its check.

Pulumi's mocks accept any string, so a description with a character EC2 refuses, a name one
character too long or an image URI Lambda cannot pull all pass the unit tests and fail only at
`pulumi preview` (the provider's validators) or `pulumi up` (AWS's). `CONSTRAINTS` is every such rule
the program's inputs must meet, each with the place it was read (a validator of
hashicorp/terraform-provider-aws, which pulumi-aws runs at preview; an AWS API reference page; the
AWS API model botocore ships). `violations` checks the table over synthesized resources
(`components.synth`), including the physical names the provider generates when the program gives
none: `<logical name>-<7 random hex characters>` (pulumi-terraform-bridge `pkg/tfbridge/names.go`
`AutoName`: `Randlen: 7`, separator "-"), or `name_prefix` + 26 characters (terraform-plugin-sdk
`helper/id.UniqueIDSuffixLength`), which is how an ALB or target group name passes 32 characters.
"""

from __future__ import annotations

import importlib
import inspect
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

# pulumi-terraform-bridge pkg/tfbridge/names.go: AutoName(...) -> AutoNameOptions{Separator: "-", Randlen: 7};
# the random part is lowercase hex (pulumi sdk resource.NewUniqueHex).
AUTONAME_SEPARATOR = "-"
AUTONAME_RANDOM_CHARS = 7
AUTONAME_SAMPLE = "0a1b2c3"[:AUTONAME_RANDOM_CHARS]
# terraform-plugin-sdk helper/id: UniqueIDSuffixLength = 26 (timestamp + counter appended to name_prefix).
PREFIX_SUFFIX_CHARS = 26
PREFIX_SAMPLE = "2026010100000000000000000a"[:PREFIX_SUFFIX_CHARS]

# EC2: security-group names, group descriptions and rule descriptions (VPC security groups).
EC2_SG_TEXT = r"[A-Za-z0-9 ._\-:/()#,@\[\]+=&;{}!$*]*"

SG_RULE_DESCRIPTION_SOURCE = (
    "hashicorp/terraform-provider-aws internal/service/ec2/validate.go validSecurityGroupRuleDescription "
    "(255 characters, pattern above); https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_IpRange.html")
ECS_NAME = r"[A-Za-z0-9_-]+"
ECS_NAME_SOURCE = ("Up to 255 letters, numbers, underscores and hyphens: "
                   "https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_{op}.html")


@dataclass(frozen=True)
class Constraint:
    """One rule on one input of some resource types.

    kind:
      "name"   the input is the resource's physical name: checked as given, or as the provider
               generates it from `prefix_field` or (when `autonamed`) from the logical name;
      "text"   a string input (paths may step into lists with `[]`), checked only when present;
      "rules"  the number of security-group rule entries (each CIDR or group is one entry) per direction;
      "tags"   the resource's tags merged with the provider's default tags;
      "image"  a Lambda image URI.
    """

    rule: str
    kind: str
    types: tuple[str, ...]
    source: str
    path: str = ""
    max_length: int | None = None
    min_length: int = 0
    pattern: str | None = None
    # (regex searched in the value, what is wrong): e.g. a reserved prefix.
    forbidden: tuple[tuple[str, str], ...] = ()
    prefix_field: str | None = None
    prefix_max_length: int | None = None
    autonamed: bool = True
    max_items: int | None = None


CONSTRAINTS: tuple[Constraint, ...] = (
    # --- security groups -------------------------------------------------------------------------
    Constraint(
        "security-group description", "text", ("aws:ec2/securityGroup:SecurityGroup",), path="description",
        max_length=255, pattern=EC2_SG_TEXT,
        source="https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CreateSecurityGroup.html "
               "(GroupDescription: up to 255 characters, a-z A-Z 0-9 spaces ._-:/()#,@[]+=&;{}!$*); provider "
               "internal/service/ec2/vpc_security_group.go description StringLenBetween(0, 255)"),
    Constraint(
        "security-group rule description", "text", ("aws:ec2/securityGroup:SecurityGroup",),
        path="ingress[].description", max_length=255, pattern=EC2_SG_TEXT, source=SG_RULE_DESCRIPTION_SOURCE),
    Constraint(
        "security-group rule description", "text", ("aws:ec2/securityGroup:SecurityGroup",),
        path="egress[].description", max_length=255, pattern=EC2_SG_TEXT, source=SG_RULE_DESCRIPTION_SOURCE),
    Constraint(
        "security-group rule description", "text",
        ("aws:ec2/securityGroupRule:SecurityGroupRule",
         "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
         "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"),
        path="description", max_length=255, pattern=EC2_SG_TEXT, source=SG_RULE_DESCRIPTION_SOURCE),
    Constraint(
        "security-group name", "name", ("aws:ec2/securityGroup:SecurityGroup",), path="name",
        max_length=255, pattern=EC2_SG_TEXT, forbidden=((r"^sg-", "must not begin with sg-"),),
        prefix_field="namePrefix", prefix_max_length=255 - PREFIX_SUFFIX_CHARS,
        source="provider internal/service/ec2/vpc_security_group.go name StringLenBetween(0, 255), not ^sg-, "
               "name_prefix 255-26; https://docs.aws.amazon.com/AWSEC2/latest/APIReference/"
               "API_CreateSecurityGroup.html (GroupName)"),
    Constraint(
        "security-group rules per direction", "rules", ("aws:ec2/securityGroup:SecurityGroup",), max_items=60,
        source="https://docs.aws.amazon.com/vpc/latest/userguide/amazon-vpc-limits.html"
               "#vpc-limits-security-groups (inbound or outbound rules per security group: 60; each CIDR "
               "or referenced group is one rule)"),
    # --- load balancing --------------------------------------------------------------------------
    Constraint(
        "load balancer name", "name",
        ("aws:lb/loadBalancer:LoadBalancer", "aws:alb/loadBalancer:LoadBalancer"),
        path="name", min_length=1, max_length=32, pattern=r"[0-9A-Za-z-]+",
        forbidden=((r"^-", "must not begin with a hyphen"), (r"-$", "must not end with a hyphen"),
                   (r"^internal-", 'must not begin with "internal-"')),
        prefix_field="namePrefix", prefix_max_length=6,
        source="provider internal/service/elbv2/validate.go validName (32, alphanumerics and hyphens, "
               "no leading or trailing hyphen, not internal-) and validNamePrefix (6); pulumi-aws autonames "
               "it with 7 random characters, so the logical name may have at most 24"),
    Constraint(
        "target group name", "name", ("aws:lb/targetGroup:TargetGroup", "aws:alb/targetGroup:TargetGroup"),
        path="name", min_length=1, max_length=32, pattern=r"[0-9A-Za-z-]+",
        forbidden=((r"^-", "must not begin with a hyphen"), (r"-$", "must not end with a hyphen")),
        prefix_field="namePrefix", prefix_max_length=32 - PREFIX_SUFFIX_CHARS,
        source="provider internal/service/elbv2/validate.go validTargetGroupName (32) and "
               "validTargetGroupNamePrefix (32-26 = 6)"),
    # --- IAM ----------------------------------------------------------------------------------------
    Constraint(
        "IAM role name", "name", ("aws:iam/role:Role",), path="name", min_length=1, max_length=64,
        pattern=r"[\w+=,.@-]+", prefix_field="namePrefix", prefix_max_length=64 - PREFIX_SUFFIX_CHARS,
        source="provider internal/service/iam/role.go roleNameMaxLen = 64, roleNamePrefixMaxLen = "
               "64-26 = 38, internal/service/iam/validate.go validResourceName [\\w+=,.@-]; botocore iam "
               "roleNameType"),
    Constraint(
        "IAM role description", "text", ("aws:iam/role:Role",), path="description", max_length=1000,
        pattern="[\t\n\r\u0020-\u007e\u00a1-\u00ff]*",
        source="botocore iam roleDescriptionType (max 1000, pattern [\\u0009\\u000A\\u000D"
               "\\u0020-\\u007E\\u00A1-\\u00FF]*); provider internal/service/iam/role.go description "
               "StringLenBetween(0, 1000)"),
    Constraint(
        "IAM inline policy name", "name", ("aws:iam/rolePolicy:RolePolicy",), path="name", min_length=1,
        max_length=128, pattern=r"[\w+=,.@-]+", prefix_field="namePrefix",
        prefix_max_length=128 - PREFIX_SUFFIX_CHARS,
        source="provider internal/service/iam/role_policy.go rolePolicyNameMaxLen = 128, validate.go "
               "validRolePolicyName; botocore iam policyNameType"),
    # --- containers and functions ------------------------------------------------------------------
    Constraint(
        "ECR repository name", "name", ("aws:ecr/repository:Repository",), path="name", min_length=2,
        max_length=256, pattern=r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*",
        source="botocore ecr RepositoryName (2-256, lowercase, pattern above); "
               "https://docs.aws.amazon.com/AmazonECR/latest/APIReference/API_CreateRepository.html"),
    Constraint(
        "ECS cluster name", "name", ("aws:ecs/cluster:Cluster",), path="name", min_length=1, max_length=255,
        pattern=ECS_NAME, source=ECS_NAME_SOURCE.format(op="CreateCluster")),
    Constraint(
        "ECS service name", "name", ("aws:ecs/service:Service",), path="name", min_length=1, max_length=255,
        pattern=ECS_NAME, source=ECS_NAME_SOURCE.format(op="CreateService")),
    Constraint(
        "ECS task definition family", "name", ("aws:ecs/taskDefinition:TaskDefinition",), path="family",
        min_length=1, max_length=255, pattern=ECS_NAME, autonamed=False,
        source=ECS_NAME_SOURCE.format(op="RegisterTaskDefinition") + "; family is required (no autoname)"),
    Constraint(
        "Lambda function name", "name", ("aws:lambda/function:Function",), path="name", min_length=1,
        max_length=64, pattern=r"[a-zA-Z0-9_-]+",
        source="https://docs.aws.amazon.com/lambda/latest/api/API_CreateFunction.html (FunctionName: a bare "
               "name is limited to 64 characters); provider internal/service/lambda/validate.go "
               "validFunctionName"),
    Constraint(
        "Lambda image URI", "image", ("aws:lambda/function:Function",), path="imageUri",
        source="https://docs.aws.amazon.com/lambda/latest/api/API_FunctionCode.html (ImageUri: an ECR image "
               "by tag or by digest); the combined repo:tag@sha256:... that docker_build.Image.ref returns "
               "is refused ('Source image ... is not valid'): pulumi/pulumi-docker-build#571"),
    Constraint(
        "Step Functions state machine name", "name", ("aws:sfn/stateMachine:StateMachine",), path="name",
        min_length=1, max_length=80, pattern=r"[0-9A-Za-z_-]+", prefix_field="namePrefix",
        prefix_max_length=80 - PREFIX_SUFFIX_CHARS,
        source="provider internal/service/sfn/state_machine.go name StringLenBetween(1, 80), "
               "^[0-9A-Za-z_-]+$, name_prefix 80-26; botocore stepfunctions Name (1-80)"),
    # --- logs, secrets, keys, notifications, scaling -------------------------------------------------
    Constraint(
        "CloudWatch log group name", "name", ("aws:cloudwatch/logGroup:LogGroup",), path="name", min_length=1,
        max_length=512, pattern=r"[.\-_/#A-Za-z0-9]+", prefix_field="namePrefix", prefix_max_length=483,
        source="provider internal/service/logs/validate.go validLogGroupName (512, [.-_/#A-Za-z0-9]) and "
               "validLogGroupNamePrefix (483); botocore logs LogGroupName"),
    Constraint(
        "Secrets Manager secret name", "name", ("aws:secretsmanager/secret:Secret",), path="name",
        min_length=1, max_length=512, pattern=r"[0-9A-Za-z/_+=.@-]+",
        forbidden=((r"-[A-Za-z0-9]{6}$", "must not end in a hyphen and six characters (Secrets Manager "
                    "appends exactly that to the ARN; partial-ARN lookups then match the wrong secret)"),),
        prefix_field="namePrefix", prefix_max_length=512 - PREFIX_SUFFIX_CHARS,
        source="provider internal/service/secretsmanager/validate.go validSecretName (512, "
               "[0-9A-Za-z/_+=.@-]) and validSecretNamePrefix (512-26); https://docs.aws.amazon.com/"
               "secretsmanager/latest/apireference/API_CreateSecret.html (Name: do not end with a hyphen "
               "followed by six characters)"),
    Constraint(
        "Secrets Manager secret description", "text", ("aws:secretsmanager/secret:Secret",),
        path="description", max_length=2048, source="botocore secretsmanager DescriptionType (max 2048)"),
    Constraint(
        "KMS alias name", "name", ("aws:kms/alias:Alias",), path="name", min_length=1, max_length=256,
        pattern=r"alias/[a-zA-Z0-9/_-]+", forbidden=((r"^alias/aws/", "alias/aws/ is reserved for AWS"),),
        prefix_field="namePrefix", prefix_max_length=256 - PREFIX_SUFFIX_CHARS, autonamed=False,
        source="https://docs.aws.amazon.com/kms/latest/APIReference/API_CreateAlias.html (AliasName: "
               "alias/ then [a-zA-Z0-9/_-], not alias/aws/); botocore kms AliasNameType (1-256)"),
    Constraint(
        "KMS key description", "text", ("aws:kms/key:Key",), path="description", max_length=8192,
        source="botocore kms DescriptionType (0-8192)"),
    Constraint(
        "SNS topic name", "name", ("aws:sns/topic:Topic",), path="name", min_length=1, max_length=256,
        pattern=r"[A-Za-z0-9_-]+(\.fifo)?", prefix_field="namePrefix",
        prefix_max_length=256 - PREFIX_SUFFIX_CHARS,
        source="https://docs.aws.amazon.com/sns/latest/api/API_CreateTopic.html (Name: 1-256 ASCII letters, "
               "numbers, underscores and hyphens; .fifo for FIFO topics)"),
    Constraint(
        "CloudWatch alarm name", "name", ("aws:cloudwatch/metricAlarm:MetricAlarm",), path="name",
        min_length=1, max_length=255, pattern=r"[^\x00-\x1f\x7f]+",
        source="botocore cloudwatch AlarmName (1-255); https://docs.aws.amazon.com/AmazonCloudWatch/latest/"
               "APIReference/API_PutMetricAlarm.html (no ASCII control characters)"),
    Constraint(
        "CloudWatch alarm description", "text", ("aws:cloudwatch/metricAlarm:MetricAlarm",),
        path="alarmDescription", max_length=1024, source="botocore cloudwatch AlarmDescription (0-1024)"),
    Constraint(
        "Application Auto Scaling policy name", "name", ("aws:appautoscaling/policy:Policy",), path="name",
        min_length=1, max_length=256, pattern=r"[\x20-\x7e]+",
        source="botocore application-autoscaling PolicyName (1-256, \\p{Print}+)"),
    # --- S3 -----------------------------------------------------------------------------------------
    Constraint(
        "S3 bucket name", "name", ("aws:s3/bucket:Bucket", "aws:s3/bucketV2:BucketV2"), path="bucket",
        min_length=3, max_length=63, pattern=r"[a-z0-9][a-z0-9.-]*[a-z0-9]",
        forbidden=((r"\.\.", "must not contain two adjacent periods"),
                   (r"^\d+\.\d+\.\d+\.\d+$", "must not look like an IP address"),
                   (r"^(xn--|sthree-|amzn-s3-demo-)", "must not begin with xn--, sthree- or amzn-s3-demo-"),
                   (r"(-s3alias|--ol-s3|\.mrap|--x-s3|--table-s3)$",
                    "must not end with -s3alias, --ol-s3, .mrap, --x-s3 or --table-s3")),
        prefix_field="bucketPrefix", prefix_max_length=63 - PREFIX_SUFFIX_CHARS,
        source="https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html (general "
               "purpose buckets); provider internal/service/s3 validBucketName, bucket_prefix 63-26"),
    # --- every taggable resource --------------------------------------------------------------------
    Constraint(
        "tags", "tags", ("*",), max_items=50,
        source="https://docs.aws.amazon.com/tag-editor/latest/userguide/tagging.html#tag-conventions "
               "(50 user tags per resource, key 1-128 and value 0-256 characters of letters, digits, "
               "spaces and _.:/=+-@, the aws: prefix is reserved); botocore iam tagKeyType / tagValueType / "
               "tagListType (max 50). The provider's default tags count against the 50."),
)

# Tag keys and values: botocore iam tagKeyType pattern [\p{L}\p{Z}\p{N}_.:/=+\-@].
TAG_KEY_MAX = 128
TAG_VALUE_MAX = 256
TAG_PUNCTUATION = "_.:/=+-@"
RESERVED_TAG_PREFIX = "aws:"

# docker/distribution reference grammar: tag [\w][\w.-]{0,127}; digest sha256 + 64 lowercase hex.
_ECR_HOST = r"\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com(\.cn)?"
_ECR_REPO = r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*"
LAMBDA_IMAGE_URI = re.compile(
    rf"(?P<host>{_ECR_HOST})/(?P<repo>{_ECR_REPO})(:(?P<tag>\w[\w.-]{{0,127}})|@sha256:(?P<digest>[0-9a-f]{{64}}))")


@dataclass(frozen=True)
class Violation:
    type: str
    name: str
    path: str
    value: Any
    problem: str
    rule: str
    source: str

    def __str__(self) -> str:
        return (f"{self.type} {self.name}: {self.path}={self.value!r} {self.problem} "
                f"[{self.rule}; source: {self.source}]")


def autoname(logical_name: str) -> str:
    """The physical name the provider generates for a resource given none: logical name + 7 random chars."""
    return f"{logical_name}{AUTONAME_SEPARATOR}{AUTONAME_SAMPLE}"


def _values(inputs: Mapping[str, Any], path: str) -> Iterator[tuple[str, Any]]:
    """(concrete path, value) for `path` ("a.b", "ingress[].description"); missing parts yield nothing."""
    def walk(value: Any, parts: list[str], where: str) -> Iterator[tuple[str, Any]]:
        if not parts:
            yield where, value
            return
        part, rest = parts[0], parts[1:]
        many = part.endswith("[]")
        key = part.removesuffix("[]")
        if not isinstance(value, Mapping) or value.get(key) is None:
            return
        child = value[key]
        here = f"{where}.{key}" if where else key
        if many:
            for i, item in enumerate(child if isinstance(child, (list, tuple)) else []):
                yield from walk(item, rest, f"{here}[{i}]")
        else:
            yield from walk(child, rest, here)

    yield from walk(inputs, path.split("."), "")


def _text_problems(value: str, c: Constraint, what: str = "") -> list[str]:
    problems = []
    if len(value) < c.min_length:
        problems.append(f"{what}is shorter than {c.min_length} characters")
    if c.max_length is not None and len(value) > c.max_length:
        problems.append(f"{what}is {len(value)} characters long; the limit is {c.max_length}")
    if c.pattern is not None and not re.fullmatch(c.pattern, value):
        char_class = re.fullmatch(r"(\[.*\])[*+]", c.pattern)
        bad = sorted({ch for ch in value if not re.fullmatch(char_class.group(1), ch)}) if char_class else []
        detail = f" (not allowed: {''.join(bad)!r})" if bad else ""
        problems.append(f"{what}does not match {c.pattern}{detail}")
    for regex, reason in c.forbidden:
        if re.search(regex, value):
            problems.append(f"{what}{reason}")
    return problems


Problem = tuple[str, Any, str]  # (input path, value, what is wrong)


def _name_problems(resource_name: str, inputs: Mapping[str, Any], c: Constraint) -> list[Problem]:
    given = inputs.get(c.path)
    if isinstance(given, str) and given:
        return [(c.path, given, p) for p in _text_problems(given, c)]
    prefix = inputs.get(c.prefix_field) if c.prefix_field else None
    if isinstance(prefix, str) and prefix:
        if c.prefix_max_length is not None and len(prefix) > c.prefix_max_length:
            return [(c.prefix_field, prefix, f"is {len(prefix)} characters long; the limit is "
                     f"{c.prefix_max_length} (the provider appends {PREFIX_SUFFIX_CHARS})")]
        generated = prefix + PREFIX_SAMPLE
        return [(c.prefix_field, generated, p) for p in _text_problems(generated, c, "generated name ")]
    if not c.autonamed:
        return [(c.path, None, "is required: the provider does not generate this name")]
    generated = autoname(resource_name)
    return [(f"{c.path} (generated)", generated, p) for p in _text_problems(generated, c, "generated name ")]


def _rule_entries(rule: Mapping[str, Any]) -> int:
    return (len(rule.get("cidrBlocks") or []) + len(rule.get("ipv6CidrBlocks") or [])
            + len(rule.get("securityGroups") or []) + len(rule.get("prefixListIds") or [])
            + (1 if rule.get("self") else 0))


def _tag_char_ok(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "LZN" or ch in TAG_PUNCTUATION


@cache
def taggable(resource_type: str) -> bool:
    """Whether the pulumi-aws resource class takes `tags` (and so receives the provider's default tags)."""
    parts = resource_type.split(":")
    if len(parts) != 3 or parts[0] != "aws":
        return False
    module = parts[1].split("/")[0]
    try:
        # `lambda` is a Python keyword: pulumi-aws names that module lambda_.
        py_module = importlib.import_module(f"pulumi_aws.{module}_" if module == "lambda" else
                                            f"pulumi_aws.{module}")
        cls = getattr(py_module, parts[2])
    except (ImportError, AttributeError):
        return False
    return "tags" in inspect.signature(cls._internal_init).parameters


def _tag_problems(tags: Mapping[str, Any], c: Constraint) -> list[Problem]:
    out: list[Problem] = []
    if c.max_items is not None and len(tags) > c.max_items:
        out.append(("tags", len(tags),
                    f"{len(tags)} tags (with the default tags); the limit is {c.max_items}"))
    for key, value in tags.items():
        key, value = str(key), "" if value is None else str(value)
        if not 1 <= len(key) <= TAG_KEY_MAX:
            out.append((f"tags[{key}]", key, f"key is {len(key)} characters; allowed 1-{TAG_KEY_MAX}"))
        if len(value) > TAG_VALUE_MAX:
            out.append((f"tags[{key}]", value,
                        f"value is {len(value)} characters; the limit is {TAG_VALUE_MAX}"))
        if key.lower().startswith(RESERVED_TAG_PREFIX):
            out.append((f"tags[{key}]", key, f"the {RESERVED_TAG_PREFIX} prefix is reserved for AWS"))
        bad = sorted({ch for ch in key + value if not _tag_char_ok(ch)})
        if bad:
            out.append((f"tags[{key}]", value, f"has characters tags may not hold: {''.join(bad)!r}"))
    return out


def image_uri_problem(uri: str) -> str | None:
    """Why Lambda would refuse `uri` as ImageUri, or None."""
    if LAMBDA_IMAGE_URI.fullmatch(uri):
        return None
    if re.fullmatch(rf"{_ECR_HOST}/{_ECR_REPO}:[\w][\w.-]*@sha256:[0-9a-f]{{64}}", uri):
        return "names both a tag and a digest; Lambda takes repo:tag or repo@sha256:<digest>, not both"
    return ("is not an ECR image URI of the form <account>.dkr.ecr.<region>.amazonaws.com/<repo>:<tag> "
            "or <repo>@sha256:<64 hex>")


def _applies(c: Constraint, resource_type: str) -> bool:
    return "*" in c.types or resource_type in c.types


def violations(resources: Iterable[Any], default_tags: Mapping[str, str] | None = None,
               constraints: Sequence[Constraint] = CONSTRAINTS) -> list[Violation]:
    """Every input of `resources` (components.synth.Resource) that breaks a rule of `constraints`."""
    default_tags = dict(default_tags or {})
    found: list[Violation] = []
    for r in resources:
        if not getattr(r, "custom", True):
            continue
        inputs = r.raw_inputs
        for c in constraints:
            if not _applies(c, r.type):
                continue
            problems: list[Problem] = []
            if c.kind == "name":
                problems = _name_problems(r.name, inputs, c)
            elif c.kind == "text":
                for where, value in _values(inputs, c.path):
                    if isinstance(value, str):
                        problems += [(where, value, p) for p in _text_problems(value, c)]
            elif c.kind == "rules":
                for direction in ("ingress", "egress"):
                    count = sum(_rule_entries(rule) for rule in inputs.get(direction) or [])
                    if c.max_items is not None and count > c.max_items:
                        problems.append((direction, count,
                                         f"{count} rule entries; the limit is {c.max_items}"))
            elif c.kind == "tags":
                if taggable(r.type):
                    problems = _tag_problems({**default_tags, **(inputs.get("tags") or {})}, c)
            elif c.kind == "image":
                for where, value in _values(inputs, c.path):
                    problem = image_uri_problem(str(value))
                    if problem:
                        problems.append((where, value, problem))
            else:
                raise ValueError(f"unknown constraint kind {c.kind!r} in {c.rule!r}")
            found += [Violation(r.type, r.name, where, value, problem, c.rule, c.source)
                      for where, value, problem in problems]
    return found


def default_tags_of(stack_config: Mapping[str, Any]) -> dict[str, str]:
    """The provider's default tags from a stack file's `aws:defaultTags` ({"tags": {...}})."""
    raw = stack_config.get("aws:defaultTags") or {}
    return {str(k): str(v) for k, v in (raw.get("tags") or {}).items()} if isinstance(raw, Mapping) else {}
