"""The ontosearch policy pack's rules, as pulumi-policy policies.

Each rule answers one question of issue 6 about what a stack would create: could a task or host get a
public IP, is anything but the load balancer open to the internet, is everything that stores data
encrypted with a key we control, do logs expire, does any IAM statement allow every action, is
production protected against deletion, and can the proxy token reach anything but Secrets Manager.

The same objects run in two places: `pulumi preview --policy-pack policies` (the CLI starts
`__main__.py`, which builds a PolicyPack from POLICIES) and the unit tests, which evaluate them over
the resources the program declares under mocks (policies/evaluate.py). Props use the engine's
camelCase input names. Rules read plain Mapping/Sequence values so they work on the SDK's proxies
and on plain dicts alike; an unknown value during preview raises the SDK's UnknownValueError, which
the SDK reports as "can't run during preview" rather than as a pass.

Only this module's own imports: pulumi_policy and the stdlib (the CLI runs the pack in its own
virtualenv). The token variable names come from ontosearch.constants when the project is importable
and fall back to the same literals otherwise (the pack directory can be copied elsewhere).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import UnknownValueError

try:
    from ontosearch.constants import ENV_ADMIN_TOKEN, ENV_TOKEN
except ImportError:  # pragma: no cover - the pack used outside this repository
    ENV_TOKEN, ENV_ADMIN_TOKEN = "CHROMA_TOKEN", "CHROMA_ADMIN_TOKEN"

TOKEN_VARIABLES = (ENV_TOKEN, ENV_ADMIN_TOKEN)
DEFAULT_PRODUCTION_STACKS = ("prod",)
WORLD_CIDRS = ("0.0.0.0/0", "::/0")
ALB_PUBLIC_PORTS = (80, 443)
BUCKET_SSE_ALGORITHMS = ("AES256", "aws:kms", "aws:kms:dsse")

T_BUCKET = "aws:s3/bucket:Bucket"
T_BUCKET_V2 = "aws:s3/bucketV2:BucketV2"
T_BUCKET_SSE = "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
T_BUCKET_SSE_V2 = "aws:s3/bucketServerSideEncryptionConfigurationV2:BucketServerSideEncryptionConfigurationV2"
T_LOG_GROUP = "aws:cloudwatch/logGroup:LogGroup"
T_SECRET = "aws:secretsmanager/secret:Secret"
T_SECRET_VERSION = "aws:secretsmanager/secretVersion:SecretVersion"
T_RANDOM_PASSWORD = "random:index/randomPassword:RandomPassword"
T_SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
T_SG_RULE = "aws:ec2/securityGroupRule:SecurityGroupRule"
T_SG_INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
T_LOAD_BALANCER = "aws:lb/loadBalancer:LoadBalancer"
T_ALB = "aws:alb/loadBalancer:LoadBalancer"
T_ECS_SERVICE = "aws:ecs/service:Service"
T_TASK_DEFINITION = "aws:ecs/taskDefinition:TaskDefinition"
T_INSTANCE = "aws:ec2/instance:Instance"
T_LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
T_SUBNET = "aws:ec2/subnet:Subnet"
T_EIP = "aws:ec2/eip:Eip"
T_EIP_ASSOCIATION = "aws:ec2/eipAssociation:EipAssociation"
T_LAMBDA = "aws:lambda/function:Function"
T_STATE_MACHINE = "aws:sfn/stateMachine:StateMachine"

# Identity policies (attached to principals): a service-wide wildcard on every resource is as
# broad as it gets there. Resource policies (bucket, key, topic) are scoped to their resource.
IDENTITY_POLICY_PROPS: dict[str, tuple[str, ...]] = {
    "aws:iam/rolePolicy:RolePolicy": ("policy",),
    "aws:iam/policy:Policy": ("policy",),
    "aws:iam/userPolicy:UserPolicy": ("policy",),
    "aws:iam/groupPolicy:GroupPolicy": ("policy",),
}
RESOURCE_POLICY_PROPS: dict[str, tuple[str, ...]] = {
    "aws:iam/role:Role": ("assumeRolePolicy",),
    "aws:s3/bucketPolicy:BucketPolicy": ("policy",),
    "aws:kms/key:Key": ("policy",),
    "aws:kms/keyPolicy:KeyPolicy": ("policy",),
    "aws:sns/topicPolicy:TopicPolicy": ("policy",),
    "aws:sns/topic:Topic": ("policy",),
    "aws:sqs/queuePolicy:QueuePolicy": ("policy",),
    "aws:secretsmanager/secretPolicy:SecretPolicy": ("policy",),
    "aws:ecr/repositoryPolicy:RepositoryPolicy": ("policy",),
}
# AWS managed policies that grant every action of a service (or of all services).
BROAD_MANAGED_POLICY = re.compile(
    r"^arn:aws[a-z-]*:iam::aws:policy/(.*/)?(AdministratorAccess|PowerUserAccess|[A-Za-z0-9]+FullAccess)$")
T_ROLE_POLICY_ATTACHMENT = "aws:iam/rolePolicyAttachment:RolePolicyAttachment"
T_POLICY_ATTACHMENT = "aws:iam/policyAttachment:PolicyAttachment"


# --- small readers -------------------------------------------------------------------------------

class _Unknown:
    """A value the engine does not know yet (preview). Rules treat it as "cannot tell": never a
    violation because of it, never proof that something is safe either."""

    def __repr__(self) -> str:
        return "<unknown>"


UNKNOWN = _Unknown()


def plain(value: Any) -> Any:
    """Plain dicts/lists from the SDK's proxies, with UNKNOWN where a value is not known yet.

    The SDK raises UnknownValueError on touching an unknown value, which would skip a whole stack
    policy in every preview; converting once lets each rule judge what is known.
    """
    if isinstance(value, Mapping):
        out = {}
        for key in list(value.keys()):
            try:
                out[key] = plain(value[key])
            except UnknownValueError:
                out[key] = UNKNOWN
        return out
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        items = []
        for index in range(len(value)):
            try:
                items.append(plain(value[index]))
            except UnknownValueError:
                items.append(UNKNOWN)
        return items
    return value


_plain_cache: dict[int, tuple[Any, Any]] = {}


def props(resource: Any) -> dict[str, Any]:
    """The resource's (or validation args') props as plain values, converted once per object."""
    key = id(resource)
    cached = _plain_cache.get(key)
    if cached is None or cached[0] is not resource:
        if len(_plain_cache) > 10_000:
            _plain_cache.clear()
        cached = (resource, plain(resource.props) if isinstance(resource.props, Mapping) else {})
        _plain_cache[key] = cached
    return cached[1]

def stack_of(urn: str) -> str:
    """The stack name inside a URN (urn:pulumi:<stack>::<project>::<type>::<name>)."""
    parts = urn.split(":", 2)
    return parts[2].split("::", 1)[0] if len(parts) == 3 and parts[0] == "urn" else ""


def production_stacks(config: Mapping[str, Any]) -> tuple[str, ...]:
    stacks = config.get("productionStacks") if config else None
    return tuple(stacks) if stacks else DEFAULT_PRODUCTION_STACKS


def as_list(value: Any) -> list[Any]:
    """A value that may be absent, a scalar or a list, as a list."""
    if value is None:
        return []
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        return [value]
    return list(value)


def mapping(value: Any) -> Mapping[str, Any]:
    """`value` if it is a mapping, else an empty one (absent, unknown, or the wrong type)."""
    return value if isinstance(value, Mapping) else {}


def truthy(value: Any) -> bool:
    """Booleans arrive as bools, or as strings in JSON documents and launch templates."""
    if isinstance(value, str):
        return value.strip().lower() in {"true", "enabled", "1", "yes"}
    if value is UNKNOWN:
        return False
    return bool(value)


def parse_json(value: Any) -> Any:
    """A JSON document given as a string (most AWS documents) or already as an object."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def walk(value: Any) -> Iterable[Any]:
    """Every nested value, depth first."""
    yield value
    if isinstance(value, Mapping):
        for item in value.values():
            yield from walk(item)
    elif isinstance(value, Sequence) and not isinstance(value, str | bytes):
        for item in value:
            yield from walk(item)


def _policy(name: str, description: str, validate: Callable, stack: bool = False,
            schema: PolicyConfigSchema | None = None):
    cls = StackValidationPolicy if stack else ResourceValidationPolicy
    return cls(name=name, description=description, validate=validate,
               enforcement_level=EnforcementLevel.MANDATORY, config_schema=schema)


# --- no public IPs -------------------------------------------------------------------------------

def _assign_public_ip_in_definition(definition: Any) -> bool:
    """RunTask parameters in a state machine (AssignPublicIp: ENABLED)."""
    document = parse_json(definition)
    for node in walk(document):
        if isinstance(node, Mapping):
            for key in ("AssignPublicIp", "assignPublicIp"):
                if key in node and truthy(node[key]):
                    return True
    return False


def validate_no_public_ips(args: ResourceValidationArgs, report: ReportViolation) -> None:
    p, t = props(args), args.resource_type
    if t == T_ECS_SERVICE:
        network = mapping(p.get("networkConfiguration"))
        if truthy(network.get("assignPublicIp")):
            report("ECS service tasks get public IPs (networkConfiguration.assignPublicIp); run them in "
                   "private subnets with assignPublicIp false and reach AWS through NAT or VPC endpoints")
    elif t == T_INSTANCE and truthy(p.get("associatePublicIpAddress")):
        report("EC2 instance gets a public IP (associatePublicIpAddress); set it false")
    elif t == T_LAUNCH_TEMPLATE:
        for interface in as_list(p.get("networkInterfaces")):
            if isinstance(interface, Mapping) and truthy(interface.get("associatePublicIpAddress")):
                report("launch template gives instances public IPs "
                       "(networkInterfaces.associatePublicIpAddress)")
    elif t == T_SUBNET and truthy(p.get("mapPublicIpOnLaunch")):
        report("subnet hands out public IPs to everything launched in it (mapPublicIpOnLaunch); set it false "
               "(the load balancer does not need it)")
    elif t == T_EIP and (p.get("instance") or p.get("networkInterface")):
        report("Elastic IP attached to an instance or network interface; only NAT gateways may hold "
               "public IPs")
    elif t == T_EIP_ASSOCIATION:
        report("Elastic IP association gives an instance or network interface a public IP")
    elif t == T_STATE_MACHINE and _assign_public_ip_in_definition(p.get("definition")):
        report("state machine starts tasks with AssignPublicIp ENABLED; use DISABLED with private subnets")


no_public_ips = _policy(
    "no-public-ips",
    "No task, instance, interface or subnet gets a public IP (only NAT gateways hold Elastic IPs).",
    validate_no_public_ips,
)


# --- no 0.0.0.0/0 ingress except the ALB on 80/443 -----------------------------------------------

def _identifiers(resource: Any) -> set[str]:
    """Values other resources may use to refer to `resource` (id, ARN, name), when known."""
    found = {resource.urn}
    for key in ("id", "arn", "name"):
        value = props(resource).get(key)
        if isinstance(value, str) and value:
            found.add(value)
    return found


def _refers_to(resource: Any, prop: str, target_keys: set[str]) -> bool:
    """Does `resource`'s property `prop` point at one of `target_keys` (by dependency or by value)?"""
    deps = (getattr(resource, "property_dependencies", None) or {}).get(prop) or []
    if any(dep.urn in target_keys for dep in deps):
        return True
    values = {v for v in as_list(props(resource).get(prop)) if isinstance(v, str)}
    return bool(values & target_keys)


def _alb_security_group_keys(resources: Sequence[Any]) -> set[str]:
    """Identifiers of the security groups attached to load balancers."""
    keys: set[str] = set()
    groups = [r for r in resources if r.resource_type == T_SECURITY_GROUP]
    for lb in (r for r in resources if r.resource_type in (T_LOAD_BALANCER, T_ALB)):
        for group in groups:
            if _refers_to(lb, "securityGroups", _identifiers(group)):
                keys |= _identifiers(group)
        keys |= {v for v in as_list(props(lb).get("securityGroups")) if isinstance(v, str)}
    return keys


def _world_rule_problem(rule: Mapping[str, Any], is_alb: bool) -> str | None:
    cidrs = as_list(rule.get("cidrBlocks")) + as_list(rule.get("ipv6CidrBlocks"))
    cidrs += as_list(rule.get("cidrIpv4")) + as_list(rule.get("cidrIpv6"))
    if not any(c in WORLD_CIDRS for c in cidrs):
        return None
    protocol = str(rule.get("protocol", rule.get("ipProtocol", ""))).lower()
    from_port, to_port = rule.get("fromPort"), rule.get("toPort")
    ports = f"{protocol} {from_port}-{to_port}"
    if not is_alb:
        world = ", ".join(c for c in cidrs if c in WORLD_CIDRS)
        return (f"ingress from the internet ({world}) on {ports} to a security group that is not a load "
                "balancer's; allow only the ALB's group or VPC CIDRs")
    if protocol not in {"tcp", "6"} or from_port != to_port or from_port not in ALB_PUBLIC_PORTS:
        return f"load balancer ingress from the internet on {ports}; only TCP 80 and 443 may be open"
    return None


def validate_no_world_ingress(args: StackValidationArgs, report: ReportViolation) -> None:
    alb_keys = _alb_security_group_keys(args.resources)
    for resource in args.resources:
        t, p = resource.resource_type, props(resource)
        if t == T_SECURITY_GROUP:
            is_alb = bool(_identifiers(resource) & alb_keys)
            for rule in as_list(p.get("ingress")):
                if isinstance(rule, Mapping):
                    problem = _world_rule_problem(rule, is_alb)
                    if problem:
                        report(f"{problem}", resource.urn)
        elif t in (T_SG_RULE, T_SG_INGRESS_RULE):
            if t == T_SG_RULE and str(p.get("type", "")).lower() != "ingress":
                continue
            is_alb = _refers_to(resource, "securityGroupId", alb_keys)
            problem = _world_rule_problem(p, is_alb)
            if problem:
                report(f"{problem}", resource.urn)


no_world_ingress = _policy(
    "no-world-ingress-except-alb",
    "Nothing accepts traffic from 0.0.0.0/0 or ::/0 except a load balancer's security group on TCP 80/443.",
    validate_no_world_ingress, stack=True,
)


# --- encryption at rest --------------------------------------------------------------------------

def _sse_rules_ok(rules: Any) -> bool:
    if rules is UNKNOWN:
        return True
    for rule in as_list(rules):
        if not isinstance(rule, Mapping):
            continue
        default = rule.get("applyServerSideEncryptionByDefault")
        if default is UNKNOWN:
            return True
        if isinstance(default, Mapping) and (default.get("sseAlgorithm") in BUCKET_SSE_ALGORITHMS
                                             or default.get("sseAlgorithm") is UNKNOWN):
            return True
    return False


def validate_encryption_at_rest(args: StackValidationArgs, report: ReportViolation) -> None:
    resources = args.resources
    aws_managed_ok = bool((args.get_config() or {}).get("awsManagedKeysAllowed", False))
    sse_configs = [r for r in resources if r.resource_type in (T_BUCKET_SSE, T_BUCKET_SSE_V2)]
    for bucket in (r for r in resources if r.resource_type in (T_BUCKET, T_BUCKET_V2)):
        inline = mapping(props(bucket).get("serverSideEncryptionConfiguration"))
        if isinstance(inline, Mapping) and _sse_rules_ok(inline.get("rule") or inline.get("rules")):
            continue
        keys = _identifiers(bucket) | {v for v in as_list(props(bucket).get("bucket")) if isinstance(v, str)}
        configs = [c for c in sse_configs if _refers_to(c, "bucket", keys)]
        if not configs:
            report("bucket has no server-side encryption configuration; add a "
                   "BucketServerSideEncryptionConfiguration with AES256 or aws:kms", bucket.urn)
        elif not any(_sse_rules_ok(props(c).get("rules")) for c in configs):
            report(f"bucket encryption must use one of {', '.join(BUCKET_SSE_ALGORITHMS)}",
                   bucket.urn)
    if aws_managed_ok:
        return
    for resource in resources:
        if resource.resource_type == T_LOG_GROUP and not props(resource).get("kmsKeyId"):
            report("log group is not encrypted with a customer-managed KMS key (kmsKeyId); "
                   "container logs may carry request paths and errors", resource.urn)
        elif resource.resource_type == T_SECRET and not props(resource).get("kmsKeyId"):
            report("secret is not encrypted with a customer-managed KMS key (kmsKeyId)",
                   resource.urn)


encryption_at_rest = _policy(
    "encryption-at-rest",
    "Buckets have default encryption (AES256/aws:kms); log groups and secrets use a customer-managed KMS "
    "key.",
    validate_encryption_at_rest, stack=True,
    schema=PolicyConfigSchema(properties={
        "awsManagedKeysAllowed": {"type": "boolean", "default": False,
                                  "description": "accept AWS-managed keys for log groups and secrets"},
    }),
)


# --- log retention -------------------------------------------------------------------------------

def validate_log_retention(args: StackValidationArgs, report: ReportViolation) -> None:
    groups = [r for r in args.resources if r.resource_type == T_LOG_GROUP]
    for group in groups:
        days = props(group).get("retentionInDays")
        if days is UNKNOWN:
            continue
        if not isinstance(days, int | float) or days <= 0:
            report("log group keeps logs forever; set retentionInDays", group.urn)
    # A Lambda function without a log group of its own logs into /aws/lambda/<name>, created on first
    # use with no retention at all.
    group_keys: set[str] = set().union(*(_identifiers(g) for g in groups)) if groups else set()
    for function in (r for r in args.resources if r.resource_type == T_LAMBDA):
        logging = props(function).get("loggingConfig") or {}
        if logging is UNKNOWN or (isinstance(logging, Mapping) and logging.get("logGroup") is UNKNOWN):
            continue
        if isinstance(logging, Mapping) and logging.get("logGroup"):
            if _refers_to_mapping(function, logging, group_keys):
                continue
        name = props(function).get("name") or props(function).get("id")
        if name and f"/aws/lambda/{name}" in group_keys:
            continue
        report("Lambda function logs to a log group the stack does not manage (so without "
               "retention); set loggingConfig.logGroup to a LogGroup with retentionInDays", function.urn)


def _refers_to_mapping(resource: Any, logging: Mapping[str, Any], keys: set[Any]) -> bool:
    deps = (getattr(resource, "property_dependencies", None) or {}).get("loggingConfig") or []
    if any(dep.resource_type == T_LOG_GROUP for dep in deps):
        return True
    return logging.get("logGroup") in keys


log_retention = _policy(
    "log-retention-set",
    "Every log group has a retention period, and every Lambda function logs into such a group.",
    validate_log_retention, stack=True,
)


# --- IAM: no `*` action --------------------------------------------------------------------------

def _statement_problems(document: Any, identity: bool) -> list[str]:
    if not isinstance(document, Mapping):
        return []
    problems = []
    for index, statement in enumerate(as_list(document.get("Statement"))):
        if not isinstance(statement, Mapping) or statement.get("Effect") != "Allow":
            continue
        label = statement.get("Sid") or f"statement {index}"
        actions = [a for a in as_list(statement.get("Action")) if isinstance(a, str)]
        resources = [r for r in as_list(statement.get("Resource")) if isinstance(r, str)]
        if "NotAction" in statement:
            problems.append(f"{label}: Allow with NotAction grants every other action")
        if any(a.strip() == "*" for a in actions):
            problems.append(f"{label}: Allow with Action \"*\"")
        elif identity and "*" in resources:
            broad = [a for a in actions if a.endswith(":*")]
            if broad:
                problems.append(f"{label}: Allow {', '.join(broad)} on Resource \"*\"")
    return problems


def validate_no_wildcard_actions(args: ResourceValidationArgs, report: ReportViolation) -> None:
    t, p = args.resource_type, props(args)
    if t in (T_ROLE_POLICY_ATTACHMENT, T_POLICY_ATTACHMENT):
        arn = p.get("policyArn")
        if isinstance(arn, str) and BROAD_MANAGED_POLICY.match(arn):
            report(f"attaches the AWS managed policy {arn.rsplit('/', 1)[-1]}, which allows every action "
                   "of a service; write a policy with the actions and ARNs the role needs")
        return
    if t == "aws:iam/role:Role":
        for inline in as_list(p.get("inlinePolicies")):
            if isinstance(inline, Mapping):
                for problem in _statement_problems(parse_json(inline.get("policy")), identity=True):
                    report(f"inline policy {inline.get('name')}: {problem}")
        for arn in as_list(p.get("managedPolicyArns")):
            if isinstance(arn, str) and BROAD_MANAGED_POLICY.match(arn):
                report(f"role uses the AWS managed policy {arn.rsplit('/', 1)[-1]}")
    identity = t in IDENTITY_POLICY_PROPS
    for prop in IDENTITY_POLICY_PROPS.get(t) or RESOURCE_POLICY_PROPS.get(t) or ():
        for problem in _statement_problems(parse_json(p.get(prop)), identity=identity):
            report(f"{prop}: {problem}")


no_wildcard_actions = _policy(
    "iam-no-wildcard-actions",
    "No IAM statement allows Action \"*\" (or NotAction, or a whole service on every resource).",
    validate_no_wildcard_actions,
)


# --- production protection -----------------------------------------------------------------------

def validate_production_protection(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if stack_of(args.urn) not in production_stacks(args.get_config() or {}):
        return
    t = args.resource_type
    p = props(args)
    if t in (T_LOAD_BALANCER, T_ALB) and p.get("enableDeletionProtection") is not UNKNOWN \
            and not truthy(p.get("enableDeletionProtection")):
        report("production load balancer without enableDeletionProtection; set config "
               "ontosearch:deletionProtection: true")
    elif t in (T_BUCKET, T_BUCKET_V2):
        if not (args.opts is not None and args.opts.protect):
            report("production snapshot bucket is not `protect`ed; set config "
                   "ontosearch:deletionProtection: true")
        if truthy(p.get("forceDestroy")):
            report("production bucket has forceDestroy, which deletes every snapshot with the bucket")


production_protection = _policy(
    "prod-deletion-protection",
    "In production stacks, load balancers have deletion protection and buckets are protected.",
    validate_production_protection,
    schema=PolicyConfigSchema(properties={
        "productionStacks": {"type": "array", "items": {"type": "string"},
                             "default": list(DEFAULT_PRODUCTION_STACKS),
                             "description": "stack names treated as production"},
    }),
)


# --- the token only via Secrets Manager ----------------------------------------------------------

def _container_token_problems(definitions: Any) -> list[str]:
    problems = []
    for container in as_list(parse_json(definitions)):
        if not isinstance(container, Mapping):
            continue
        name = container.get("name", "?")
        for variable in as_list(container.get("environment")):
            if isinstance(variable, Mapping) and variable.get("name") in TOKEN_VARIABLES:
                problems.append(f"container {name}: {variable.get('name')} in plain `environment`; pass it "
                                "in `secrets` with valueFrom a Secrets Manager ARN")
        for secret in as_list(container.get("secrets")):
            if not isinstance(secret, Mapping) or secret.get("name") not in TOKEN_VARIABLES:
                continue
            source = str(secret.get("valueFrom", ""))
            if not re.match(r"^arn:aws[a-z-]*:secretsmanager:", source):
                problems.append(f"container {name}: {secret.get('name')} comes from {source or 'nowhere'}, "
                                "not a Secrets Manager secret ARN")
    return problems


def _definition_token_problems(definition: Any) -> list[str]:
    problems = []
    for node in walk(parse_json(definition)):
        if not isinstance(node, Mapping):
            continue
        for key in ("Name", "name"):
            if node.get(key) in TOKEN_VARIABLES and ("Value" in node or "value" in node):
                problems.append(f"state machine sets {node.get(key)} as a plain environment override")
    return problems


def validate_token_only_via_secrets_manager(args: StackValidationArgs, report: ReportViolation) -> None:
    passwords = [r for r in args.resources if r.resource_type == T_RANDOM_PASSWORD]
    password_urns = {p.urn for p in passwords}
    password_values = {props(pw).get("result") for pw in passwords}
    password_values = {v for v in password_values if isinstance(v, str) and v}
    for resource in args.resources:
        t, p = resource.resource_type, props(resource)
        problems: list[str] = []
        if t == T_TASK_DEFINITION:
            problems += _container_token_problems(p.get("containerDefinitions"))
        elif t == T_LAMBDA:
            variables = mapping(mapping(p.get("environment")).get("variables"))
            problems += [f"Lambda environment variable {name} holds a token; pass {name}_SECRET_ARN and read "
                         "the secret at run time" for name in TOKEN_VARIABLES if name in variables]
        elif t == T_STATE_MACHINE:
            problems += _definition_token_problems(p.get("definition"))
        if t not in (T_SECRET_VERSION, T_RANDOM_PASSWORD):
            if any(dep.urn in password_urns for dep in getattr(resource, "dependencies", None) or []):
                problems.append("depends on a generated token; only a Secrets Manager SecretVersion may "
                                "take it")
            elif password_values and any(isinstance(v, str) and any(p in v for p in password_values)
                                         for v in walk(p)):
                problems.append("contains a generated token in clear; only a Secrets Manager "
                                "SecretVersion may hold it")
        for problem in problems:
            report(f"{problem}", resource.urn)


token_only_via_secrets_manager = _policy(
    "token-only-via-secrets-manager",
    "Proxy tokens live only in Secrets Manager: containers get them via `secrets`, nothing else holds them.",
    validate_token_only_via_secrets_manager, stack=True,
)


POLICIES = [
    no_public_ips,
    no_world_ingress,
    encryption_at_rest,
    log_retention,
    no_wildcard_actions,
    production_protection,
    token_only_via_secrets_manager,
]
