"""Every AWS call the deployed program makes at run time, as the authorizations AWS performs for it.

One table, built from the synthesized stack (tests/pulumi_harness.py) and the code that makes the
calls. Each `Call` names the role that makes it, the code, and its `Authorization`s: the action
AWS authorizes, the resource ARN as AWS evaluates it, the request's condition keys, implied
authorizations included. tests/test_iam_authorization_matrix.py evaluates each one against the
synthesized policies (tests/iam_evaluation.py) and the IAM reference (tests/iam_reference.py), and
a changed variant of each (another cluster, bucket prefix, secret, family, machine...) must be denied.

- State machine: derived from the deployed definition's Task states (every Map and Parallel
  branch, Distributed Map child executions, ItemReader and ResultWriter). A Task `Resource` or a
  dynamic parameter this module does not know raises `UnknownCall`: a new call fails loudly.
- Lambdas (ontosearch/workflow/steps.py, lambdas/), the task agent (ontosearch/task_agent.py,
  ontosearch/workflow/save.py, snapshot_store.publish_snapshot), restore (ontosearch/restore.py,
  snapshot_store.py): written out below per step, next to the code they come from.
- The tasks' execution roles: derived from the task definitions (images, awslogs, `secrets`).
- Trust: sts:AssumeRole by each role's service principal.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ontosearch import constants as c

EXECUTION = "run-2026-01-01-0001"
TASK_ID = "0123456789abcdef0123456789abcdef"
VERSION = "20260101T000000Z-0123abcd"
ARCHIVE = "chroma.tar.gz"
ETAG = '"0123456789abcdef0123456789abcdef"'
OTHER = "other"
OTHER_ACCOUNT = "999999999999"
LAMBDA_VPC_POLICY_ARN = "arn:aws:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole"
# AWS managed policy v3 (default), as published at
# https://docs.aws.amazon.com/aws-managed-policy/latest/reference/AWSLambdaVPCAccessExecutionRole.html
MANAGED_POLICIES = {
    LAMBDA_VPC_POLICY_ARN: {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "AWSLambdaVPCAccessExecutionPermissions",
                "Effect": "Allow",
                "Action": [
                    "logs:CreateLogGroup",
                    "logs:CreateLogStream",
                    "logs:PutLogEvents",
                    "ec2:CreateNetworkInterface",
                    "ec2:DescribeNetworkInterfaces",
                    "ec2:DescribeSubnets",
                    "ec2:DeleteNetworkInterface",
                    "ec2:AssignPrivateIpAddresses",
                    "ec2:UnassignPrivateIpAddresses",
                ],
                "Resource": "*",
            }
        ],
    },
}
# boto3 speaks HTTPS to S3; the bucket policy denies anything else (components/storage.py).
TLS = {"aws:SecureTransport": "true"}


class UnknownCall(LookupError):
    """A call the matrix cannot authorize yet: add it here with the rule AWS applies to it."""


@dataclass(frozen=True)
class Authorization:
    action: str
    resource: str
    context: Mapping[str, Any] = field(default_factory=dict)
    # why AWS authorizes this one too (implied by the call), with the rule's source
    implied: str = ""


@dataclass(frozen=True)
class Call:
    caller: str  # the IAM role resource's name in the stack, e.g. "batch-sfn-role"
    code: str  # where the call is made
    authorizations: tuple[Authorization, ...]
    # False: AWS offers nothing to scope it by (wildcard-only actions, an AWS managed policy)
    scoped: bool = True


class StackView:
    """The synthesized stack's resources the matrix needs, by their stack names."""

    def __init__(self, result: Any, config: Mapping[str, Any]) -> None:
        self.result = result
        self.config = config
        self.region = str(config.get("aws:region", "us-east-1"))
        key = result.one("aws:kms/key:Key")
        self.key_arn: str = key.state["arn"]
        self.account: str = self.key_arn.split(":")[4]
        bucket = result.one("aws:s3/bucket:Bucket")
        self.bucket: str = bucket.id
        self.bucket_arn = f"arn:aws:s3:::{self.bucket}"
        self.roles = {r.name: r for r in result.of_type("aws:iam/role:Role")}
        self.role_by_arn = {r.state["arn"]: r.name for r in self.roles.values()}
        self.secrets = {s.state["arn"]: s for s in result.of_type("aws:secretsmanager/secret:Secret")}
        self.log_groups = {g.id: g for g in result.of_type("aws:cloudwatch/logGroup:LogGroup")}
        self.repositories = {
            r.state["repositoryUrl"]: r for r in result.of_type("aws:ecr/repository:Repository")
        }
        self.task_definitions = {
            t.state["arn"]: t for t in result.of_type("aws:ecs/taskDefinition:TaskDefinition")
        }
        self.clusters = [cl.state["arn"] for cl in result.of_type("aws:ecs/cluster:Cluster")]

    # --- policies -------------------------------------------------------------------------------
    def _role_of(self, role_input: str) -> str:
        for name, role in self.roles.items():
            if role_input in (role.id, role.state.get("name"), role.state["arn"]):
                return name
        raise LookupError(f"no role {role_input}")

    def inline_policies(self, role: str) -> list[tuple[str, dict]]:
        return [
            (p.name, json.loads(p.raw_inputs["policy"]))
            for p in self.result.of_type("aws:iam/rolePolicy:RolePolicy")
            if self._role_of(p.raw_inputs["role"]) == role
        ]

    def identity_policies(self, role: str) -> list[dict]:
        attached = [
            a.raw_inputs["policyArn"]
            for a in self.result.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
            if self._role_of(a.raw_inputs["role"]) == role
        ]
        unknown = [arn for arn in attached if arn not in MANAGED_POLICIES]
        if unknown:
            raise UnknownCall(f"managed policy {unknown} of {role}: add its document to MANAGED_POLICIES")
        return [doc for _, doc in self.inline_policies(role)] + [MANAGED_POLICIES[a] for a in attached]

    def trust_policy(self, role: str) -> dict:
        return json.loads(self.roles[role].raw_inputs["assumeRolePolicy"])

    def resource_policy(self, auth: Authorization) -> tuple[dict | None, bool]:
        """(resource-based policy AWS also evaluates, whether it is a KMS key policy)."""
        if auth.action.startswith("s3:"):
            for bp in self.result.of_type("aws:s3/bucketPolicy:BucketPolicy"):
                if auth.resource.split("/", 1)[0] == f"arn:aws:s3:::{bp.raw_inputs['bucket']}":
                    return json.loads(bp.raw_inputs["policy"]), False
            return None, False
        if auth.action.startswith("kms:"):
            for key in self.result.of_type("aws:kms/key:Key"):
                if auth.resource == key.state["arn"]:
                    return json.loads(key.raw_inputs["policy"]), True
            return {"Statement": []}, True
        if auth.action == "sts:AssumeRole":
            role = self.role_by_arn.get(auth.resource)
            return (self.trust_policy(role) if role else {"Statement": []}), False
        return None, False

    # --- values -----------------------------------------------------------------------------------
    def obj(self, key: str) -> str:
        return f"{self.bucket_arn}/{key}"

    def default_tags(self) -> dict[str, str]:
        tags = (self.config.get("aws:defaultTags") or {}).get("tags") or {}
        return {str(k): str(v) for k, v in tags.items()}

    def task_arn(self, cluster_arn: str) -> str:
        return f"arn:aws:ecs:{self.region}:{self.account}:task/{cluster_arn.rsplit('/', 1)[-1]}/{TASK_ID}"

    def s3_encryption_key(self) -> str | None:
        """The KMS key objects are encrypted with by default (None: SSE-S3, no KMS call)."""
        for config in self.result.of_type(
            "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
        ):
            for rule in config.raw_inputs.get("rules") or []:
                default = rule.get("applyServerSideEncryptionByDefault") or {}
                if default.get("sseAlgorithm") in ("aws:kms", "aws:kms:dsse"):
                    return str(default.get("kmsMasterKeyId") or "aws/s3")
        return None


# --- S3, Secrets Manager and KMS building blocks -------------------------------------------------


def s3_read(stack: StackView, key: str) -> list[Authorization]:
    """GetObject/HeadObject/download_file (ranged GETs): s3:GetObject on the object
    (https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObject.html, "Permissions"); with SSE-KMS
    also kms:Decrypt of the bucket's key via S3
    (https://docs.aws.amazon.com/AmazonS3/latest/userguide/UsingKMSEncryption.html)."""
    auths = [Authorization("s3:GetObject", stack.obj(key), TLS)]
    key_arn = stack.s3_encryption_key()
    if key_arn:
        auths.append(
            Authorization(
                "kms:Decrypt",
                key_arn,
                _s3_kms_context(stack, key),
                implied="SSE-KMS object: S3 decrypts its data key as the caller",
            )
        )
    return auths


def s3_write(stack: StackView, key: str, multipart: bool = False, **conditions: str) -> list[Authorization]:
    """PutObject, and for upload_file above the multipart threshold Create/UploadPart/Complete, all
    authorized as s3:PutObject; a failed one is aborted with s3:AbortMultipartUpload
    (https://docs.aws.amazon.com/AmazonS3/latest/userguide/mpuoverview.html#mpuAndPermissions)."""
    auths = [Authorization("s3:PutObject", stack.obj(key), {**TLS, **conditions})]
    if multipart:
        auths.append(
            Authorization(
                "s3:AbortMultipartUpload",
                stack.obj(key),
                TLS,
                implied="s3transfer aborts a failed multipart upload",
            )
        )
    key_arn = stack.s3_encryption_key()
    if key_arn:
        auths.append(
            Authorization(
                "kms:GenerateDataKey",
                key_arn,
                _s3_kms_context(stack, key),
                implied="SSE-KMS put: S3 asks KMS for a data key as the caller",
            )
        )
        if multipart:
            auths.append(
                Authorization(
                    "kms:Decrypt",
                    key_arn,
                    _s3_kms_context(stack, key),
                    implied="SSE-KMS multipart upload: parts are decrypted to complete it",
                )
            )
    return auths


def _s3_kms_context(stack: StackView, key: str) -> dict[str, str]:
    return {
        "kms:ViaService": f"s3.{stack.region}.amazonaws.com",
        "kms:CallerAccount": stack.account,
        "kms:EncryptionContext:aws:s3:arn": stack.obj(key),
    }


def s3_list_key(stack: StackView, key: str) -> Authorization:
    """ListObjectsV2 with Prefix=key: s3:ListBucket on the bucket, s3:prefix = key
    (https://docs.aws.amazon.com/AmazonS3/latest/userguide/amazon-s3-policy-keys.html#condition-key-bucket-ops-2)."""
    return Authorization("s3:ListBucket", stack.bucket_arn, {**TLS, "s3:prefix": key})


def snapshot_read(stack: StackView, key: str) -> list[Authorization]:
    """snapshot_store.get_object_or_none and check_missing: a GetObject, and on a 403 a listing of that
    key to tell a missing key from a refusal (snapshot_store.key_exists)."""
    listing = replace(s3_list_key(stack, key), implied="a 403 on the read is told apart by listing the key")
    return [*s3_read(stack, key), listing]


def secret_read(stack: StackView, secret_arn: str) -> list[Authorization]:
    """GetSecretValue, and kms:Decrypt of the secret's customer managed key via Secrets Manager
    (https://docs.aws.amazon.com/secretsmanager/latest/userguide/security-encryption.html)."""
    auths = [
        Authorization("secretsmanager:GetSecretValue", secret_arn, {"secretsmanager:SecretId": secret_arn})
    ]
    key_id = stack.secrets[secret_arn].raw_inputs.get("kmsKeyId")
    if key_id:
        auths.append(
            Authorization(
                "kms:Decrypt",
                key_id,
                {
                    "kms:ViaService": f"secretsmanager.{stack.region}.amazonaws.com",
                    "kms:CallerAccount": stack.account,
                    "kms:EncryptionContext:SecretARN": secret_arn,
                },
                implied="secret encrypted with a customer managed key",
            )
        )
    return auths


# --- the state machine --------------------------------------------------------------------------


def _static(params: Mapping[str, Any], name: str, state: str) -> Any:
    if name in params:
        return params[name]
    if f"{name}.$" in params:
        raise UnknownCall(
            f"state {state}: {name}.$ = {params[f'{name}.$']} is resolved at run time; the matrix "
            "needs the value it takes to name the resource AWS authorizes"
        )
    raise UnknownCall(f"state {state}: no {name} parameter")


def _cluster_arn(stack: StackView, value: str) -> str:
    if value.startswith("arn:"):
        return value
    return f"arn:aws:ecs:{stack.region}:{stack.account}:cluster/{value}"


def _task_param(stack: StackView, params: Mapping[str, Any], cluster: str, state: str) -> str:
    if "Task" in params:
        return params["Task"]
    if "Task.$" in params:
        # a task of `cluster` (the agent's report or a ListTasks result); which one is only known at run time
        return stack.task_arn(cluster)
    raise UnknownCall(f"state {state}: StopTask without Task")


def _run_task(stack: StackView, state: str, params: Mapping[str, Any], sync: bool) -> list[Authorization]:
    """ecs:RunTask (https://docs.aws.amazon.com/step-functions/latest/dg/ecs-iam.html) on the task
    definition with ecs:cluster; iam:PassRole of its task and execution roles; with tags (PropagateTags
    of a tagged definition, or Tags) ecs:TagResource on the new task with ecs:CreateAction = RunTask
    (https://docs.aws.amazon.com/AmazonECS/latest/developerguide/supported-iam-actions-tagging.html)."""
    cluster = _cluster_arn(stack, _static(params, "Cluster", state))
    task_definition = _static(params, "TaskDefinition", state)
    definition = stack.task_definitions.get(task_definition)
    if definition is None:
        raise UnknownCall(
            f"state {state}: task definition {task_definition} is not one of the stack's "
            "(a family name alone is authorized as its latest revision's ARN)"
        )
    tags: dict[str, str] = {}
    if params.get("PropagateTags") == "TASK_DEFINITION":
        tags.update(stack.default_tags())
        tags.update({str(k): str(v) for k, v in (definition.raw_inputs.get("tags") or {}).items()})
    tags.update({t["Key"]: t["Value"] for t in params.get("Tags") or []})
    tag_context = (
        {"aws:TagKeys": sorted(tags), **{f"aws:RequestTag/{k}": v for k, v in tags.items()}} if tags else {}
    )
    auths = [Authorization("ecs:RunTask", task_definition, {"ecs:cluster": cluster, **tag_context})]
    for role_key in ("taskRoleArn", "executionRoleArn"):
        role = definition.raw_inputs.get(role_key)
        if role:
            auths.append(
                Authorization(
                    "iam:PassRole",
                    role,
                    {"iam:PassedToService": "ecs-tasks.amazonaws.com"},
                    implied=f"RunTask passes the definition's {role_key}",
                )
            )
    if tags:
        auths.append(
            Authorization(
                "ecs:TagResource",
                stack.task_arn(cluster),
                {"ecs:CreateAction": "RunTask", **tag_context},
                implied="RunTask creates a tagged task (tag-on-create)",
            )
        )
    if sync:
        raise UnknownCall(f"state {state}: runTask.sync also needs events rule and DescribeTasks rows")
    return auths


def _ecs_sdk(stack: StackView, state: str, api: str, params: Mapping[str, Any]) -> list[Authorization]:
    cluster = _cluster_arn(stack, _static(params, "Cluster", state))
    if api == "listTasks":
        # No container instance named (always so on Fargate): AWS authorizes "*" with ecs:cluster
        # (the reference lists container-instance; AWS answers "not authorized ... on resource: *").
        if "ContainerInstance" in params or "ContainerInstance.$" in params:
            raise UnknownCall(f"state {state}: ListTasks of one container instance")
        return [Authorization("ecs:ListTasks", "*", {"ecs:cluster": cluster})]
    if api in ("stopTask", "describeTasks"):
        action = "ecs:StopTask" if api == "stopTask" else "ecs:DescribeTasks"
        if api == "describeTasks":
            return [Authorization(action, stack.task_arn(cluster), {"ecs:cluster": cluster})]
        return [Authorization(action, _task_param(stack, params, cluster, state), {"ecs:cluster": cluster})]
    raise UnknownCall(f"state {state}: aws-sdk:ecs:{api}")


def _lambda_invoke(state: str, params: Mapping[str, Any]) -> list[Authorization]:
    """lambda:InvokeFunction on the function (https://docs.aws.amazon.com/step-functions/latest/dg/lambda-iam.html)."""
    function = _static(params, "FunctionName", state)
    if not function.startswith("arn:aws:lambda:"):
        raise UnknownCall(f"state {state}: FunctionName {function!r} is not a function ARN")
    return [Authorization("lambda:InvokeFunction", function)]


def dynamic_values(stack: StackView) -> dict[str, str]:
    """What the definition's run-time paths hold, from the code that writes them (steps.split's
    result and the agent's report); a path not listed here raises UnknownCall."""
    from ontosearch.workflow import steps

    values = {"$.job.bucket": stack.bucket}
    for path, function in (
        ("$.split.manifest", "chunk_manifest_key"),
        ("$.split.failure_key", "chunk_failure_key"),
        ("$.failure_key", "chunk_failure_key"),
        ("$.split.results_prefix", "map_results_prefix"),
    ):
        if hasattr(steps, function):
            values[path] = getattr(steps, function)(EXECUTION)
    return values


def _param(stack: StackView, params: Mapping[str, Any], name: str, state: str) -> str | None:
    if name in params:
        return str(params[name])
    path = params.get(f"{name}.$")
    if path is None:
        return None
    value = dynamic_values(stack).get(path)
    if value is None:
        raise UnknownCall(
            f"state {state}: {name}.$ = {path} is resolved at run time and the matrix does not "
            "know what it holds: add it to iam_matrix.dynamic_values"
        )
    return value


def _s3_location(stack: StackView, params: Mapping[str, Any], state: str, part: str) -> tuple[str, str]:
    """(bucket, key or prefix) of an S3 call of the state machine."""
    bucket = _param(stack, params, "Bucket", state)
    if bucket is None:
        raise UnknownCall(f"state {state}: {part} without Bucket")
    for name in ("Key", "Prefix"):
        value = _param(stack, params, name, state)
        if value is not None:
            return bucket, value
    raise UnknownCall(f"state {state}: {part} without Key or Prefix")


def _distributed_map(
    stack: StackView, name: str, state: Mapping[str, Any], machine_arn: str
) -> list[Authorization]:
    """A Distributed Map runs child executions of the machine itself, reads items and writes results
    in S3 (https://docs.aws.amazon.com/step-functions/latest/dg/iam-policies-eg-dist-map.html)."""
    machine = machine_arn.rsplit(":", 1)[-1]
    # child executions are named <machine>/<the Map's Label, else its state name>:<id>
    label = state.get("Label", name)
    child = f"arn:aws:states:{stack.region}:{stack.account}:execution:{machine}/{label}:{TASK_ID}"
    # the page's own policy grants Describe/Stop on execution:<machine>:* (this machine's executions)
    parent = f"arn:aws:states:{stack.region}:{stack.account}:execution:{machine}:{EXECUTION}"
    documented = "the Distributed Map policy of iam-policies-eg-dist-map.html names execution:<machine>:*"
    auths = [
        Authorization("states:StartExecution", machine_arn),
        Authorization("states:DescribeExecution", child),
        Authorization("states:StopExecution", child),
        Authorization("states:DescribeExecution", parent, implied=documented),
        Authorization("states:StopExecution", parent, implied=documented),
    ]
    reader = state.get("ItemReader")
    if reader:
        bucket, key = _s3_location(stack, reader.get("Parameters") or {}, name, "ItemReader")
        if reader["Resource"] == "arn:aws:states:::s3:getObject":
            auths.append(Authorization("s3:GetObject", f"arn:aws:s3:::{bucket}/{key}", TLS))
        elif reader["Resource"] == "arn:aws:states:::s3:listObjectsV2":
            auths.append(Authorization("s3:ListBucket", f"arn:aws:s3:::{bucket}", {**TLS, "s3:prefix": key}))
        else:
            raise UnknownCall(f"state {name}: ItemReader {reader['Resource']}")
    writer = state.get("ResultWriter")
    if writer and "Resource" in writer:
        if writer["Resource"] != "arn:aws:states:::s3:putObject":
            raise UnknownCall(f"state {name}: ResultWriter {writer['Resource']}")
        bucket, prefix = _s3_location(stack, writer.get("Parameters") or {}, name, "ResultWriter")
        key = f"arn:aws:s3:::{bucket}/{prefix.rstrip('/')}/{TASK_ID}/manifest.json"
        auths += [
            Authorization("s3:PutObject", key, TLS),
            Authorization("s3:GetObject", key, TLS),
            Authorization(
                "s3:ListMultipartUploadParts",
                key,
                TLS,
                implied="ResultWriter writes its results with multipart uploads",
            ),
            Authorization(
                "s3:AbortMultipartUpload",
                key,
                TLS,
                implied="ResultWriter writes its results with multipart uploads",
            ),
        ]
    return auths


def _task_state_authorizations(stack: StackView, name: str, state: Mapping[str, Any]) -> list[Authorization]:
    resource = state["Resource"]
    params = state.get("Parameters") or {}
    if resource in ("arn:aws:states:::lambda:invoke", "arn:aws:states:::lambda:invoke.waitForTaskToken"):
        return _lambda_invoke(name, params)
    if resource.startswith("arn:aws:states:::ecs:runTask"):
        return _run_task(stack, name, params, sync=resource.endswith(".sync"))
    match = re.fullmatch(r"arn:aws:states:::aws-sdk:ecs:(\w+)", resource)
    if match:
        return _ecs_sdk(stack, name, match.group(1), params)
    match = re.fullmatch(r"arn:aws:states:::aws-sdk:s3:(getObject|putObject)", resource)
    if match:
        # the AWS SDK integration calls the S3 API as the state machine's role
        # (https://docs.aws.amazon.com/step-functions/latest/dg/supported-services-awssdk.html)
        bucket, key = _s3_location(stack, params, name, "S3 " + match.group(1))
        action = "s3:GetObject" if match.group(1) == "getObject" else "s3:PutObject"
        return [Authorization(action, f"arn:aws:s3:::{bucket}/{key}", TLS)]
    if resource.startswith("arn:aws:lambda:"):
        return [Authorization("lambda:InvokeFunction", resource)]
    raise UnknownCall(f"state {name}: Task Resource {resource} is not in the authorization matrix")


def _walk(states: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for name, state in states.items():
        yield name, state
        if state["Type"] == "Map":
            yield from _walk((state.get("ItemProcessor") or state["Iterator"])["States"])
        elif state["Type"] == "Parallel":
            for branch in state["Branches"]:
                yield from _walk(branch["States"])


def definition_calls(
    stack: StackView, definition: Mapping[str, Any], role: str, machine_arn: str
) -> list[Call]:
    calls = []
    for name, state in _walk(definition["States"]):
        if state["Type"] == "Task":
            calls.append(
                Call(
                    role,
                    f"state machine, Task state {name} ({state['Resource']})",
                    tuple(_task_state_authorizations(stack, name, state)),
                )
            )
        elif (
            state["Type"] == "Map"
            and ((state.get("ItemProcessor") or {}).get("ProcessorConfig") or {}).get("Mode") == "DISTRIBUTED"
        ):
            calls.append(
                Call(
                    role,
                    f"state machine, Distributed Map {name}",
                    tuple(_distributed_map(stack, name, state, machine_arn)),
                )
            )
    return calls


def state_machine_calls(stack: StackView) -> list[Call]:
    calls = []
    for machine in stack.result.of_type("aws:sfn/stateMachine:StateMachine"):
        role = stack.role_by_arn[machine.raw_inputs["roleArn"]]
        calls += definition_calls(
            stack, json.loads(machine.raw_inputs["definition"]), role, machine.state["arn"]
        )
    return calls


# --- the Lambdas ----------------------------------------------------------------------------------


def lambda_calls(stack: StackView) -> list[Call]:
    """What each handler of lambdas/ does through ontosearch.workflow.steps (keys from its key functions)."""
    from ontosearch.snapshot_store import SnapshotStore
    from ontosearch.workflow import steps

    store = SnapshotStore(stack.bucket)
    input_key = f"{c.WORKFLOW_INPUT_PREFIX}labels.csv"
    chunk, part = steps.chunk_key(EXECUTION, 0), steps.part_key(EXECUTION, 0)
    functions = {
        f.name.removeprefix("batch-"): f for f in stack.result.of_type("aws:lambda/function:Function")
    }
    token_arn = functions["query"].raw_inputs["environment"]["variables"][c.ENV_TOKEN_SECRET_ARN]
    by_step: dict[str, list[tuple[str, list[Authorization]]]] = {
        "validate": [
            ("steps.validate: head_object of the input", s3_read(stack, input_key)),
            (
                "snapshot_store.read_pointer: get_object snapshots/LATEST",
                snapshot_read(stack, store.pointer_key),
            ),
            (
                "steps._resolve_snapshot: get_object of the version's manifest",
                snapshot_read(stack, store.manifest_key(VERSION)),
            ),
        ],
        "split": [
            ("steps.split: get_object of the input (streamed)", s3_read(stack, input_key)),
            ("steps.split: put_object of a chunk of distinct labels", s3_write(stack, chunk)),
            (
                "steps.split: upload_file of the row list",
                s3_write(stack, steps.rows_key(EXECUTION), multipart=True),
            ),
            (
                "steps.split: upload_file of the chunk manifest",
                s3_write(stack, steps.chunk_manifest_key(EXECUTION), multipart=True),
            ),
        ],
        "query": [
            ("steps.read_chunk: get_object of its chunk", s3_read(stack, chunk)),
            ("connect.token_from_secret: get_secret_value of the read token", secret_read(stack, token_arn)),
            ("steps.query_chunk: put_object of its part", s3_write(stack, part)),
        ],
        "merge": [
            ("steps.read_manifest: get_object of the chunk manifest",
             s3_read(stack, steps.chunk_manifest_key(EXECUTION))),
            ("steps.merge: get_object of each part", s3_read(stack, part)),
            ("steps.merge: get_object of the row list (streamed)", s3_read(stack, steps.rows_key(EXECUTION))),
            (
                "s3_stream.MultipartWriter: the annotations in multipart parts",
                s3_write(stack, steps.output_key(EXECUTION), multipart=True),
            ),
        ],
        "save": [
            (
                "steps.request_save: put_object of the save request",
                s3_write(stack, steps.save_request_key(EXECUTION)),
            ),
        ],
    }
    calls = []
    for step, entries in by_step.items():
        function = functions[step]
        role = stack.role_by_arn[function.raw_inputs["role"]]
        for code, auths in entries:
            calls.append(Call(role, f"Lambda {step}: {code}", tuple(auths)))
        group = stack.log_groups[function.raw_inputs["loggingConfig"]["logGroup"]].state["arn"]
        stream = f"{group}:log-stream:2026/01/01/{function.id}[$LATEST]{TASK_ID}"
        subnet = function.raw_inputs["vpcConfig"]["subnetIds"][0]
        group_id = function.raw_inputs["vpcConfig"]["securityGroupIds"][0]
        ec2 = f"arn:aws:ec2:{stack.region}:{stack.account}"
        calls.append(
            Call(
                role,
                f"Lambda {step}: the runtime's logs and VPC network interfaces "
                "(AWSLambdaVPCAccessExecutionRole grants them on *)",
                (
                    Authorization("logs:CreateLogStream", stream),
                    Authorization("logs:PutLogEvents", stream),
                    Authorization("ec2:CreateNetworkInterface", f"{ec2}:subnet/{subnet}"),
                    Authorization("ec2:CreateNetworkInterface", f"{ec2}:security-group/{group_id}"),
                    Authorization("ec2:DescribeNetworkInterfaces", "*"),
                    Authorization(
                        "ec2:DeleteNetworkInterface", f"{ec2}:network-interface/eni-0123456789abcdef0"
                    ),
                ),
                scoped=False,
            )
        )
    return calls


# --- the tasks ------------------------------------------------------------------------------------


def restore_calls(stack: StackView, role: str, version_from_pointer: bool) -> list[Call]:
    """ontosearch.restore.restore_from_s3 (the task's restore container)."""
    from ontosearch.snapshot_store import SnapshotStore

    store = SnapshotStore(stack.bucket)
    calls = []
    if version_from_pointer:
        calls.append(
            Call(
                role,
                "restore: snapshot_store.read_pointer (get_object snapshots/LATEST)",
                tuple(snapshot_read(stack, store.pointer_key)),
            )
        )
    calls += [
        Call(
            role,
            "restore: get_object of the manifest",
            tuple(snapshot_read(stack, store.manifest_key(VERSION))),
        ),
        Call(
            role,
            "restore: download_file of the archive (HeadObject + ranged GetObject)",
            tuple(snapshot_read(stack, store.archive_key(VERSION, ARCHIVE))),
        ),
    ]
    return calls


def agent_calls(stack: StackView, role: str) -> list[Call]:
    """ontosearch.task_agent: report to Step Functions, poll the save request, publish a snapshot."""
    from ontosearch.snapshot_store import SnapshotStore
    from ontosearch.workflow.steps import save_request_key

    store = SnapshotStore(stack.bucket)
    request = save_request_key(EXECUTION)
    new_archive = store.archive_key(VERSION, ARCHIVE)
    return [
        # SendTask* take a task token, no resource: the reference lists no resource type for them.
        Call(
            role,
            "task_agent.Agent: send_task_heartbeat / send_task_success / send_task_failure",
            tuple(
                Authorization(f"states:{api}", "*")
                for api in ("SendTaskHeartbeat", "SendTaskSuccess", "SendTaskFailure")
            ),
            scoped=False,
        ),
        Call(
            role,
            "task_agent.Saver.poll: save.read_save_request lists the exact key",
            (s3_list_key(stack, request),),
        ),
        Call(
            role,
            "task_agent.Saver.poll: save.read_save_request gets it once listed",
            tuple(s3_read(stack, request)),
        ),
        Call(
            role,
            "save.save_data_dir -> publish_snapshot: read_pointer",
            tuple(snapshot_read(stack, store.pointer_key)),
        ),
        Call(
            role,
            "publish_snapshot: upload_file of the archive",
            tuple(s3_write(stack, new_archive, multipart=True)),
        ),
        Call(
            role, "publish_snapshot: head_object of the uploaded archive", tuple(s3_read(stack, new_archive))
        ),
        Call(
            role,
            "publish_snapshot: put_object of the manifest (If-None-Match: *)",
            tuple(s3_write(stack, store.manifest_key(VERSION), **{"s3:if-none-match": "*"})),
        ),
        Call(
            role,
            "snapshot_store.switch_pointer: put_object of LATEST (If-Match: the ETag read)",
            tuple(s3_write(stack, store.pointer_key, **{"s3:if-match": ETAG})),
        ),
    ]


def _repository_arn(stack: StackView, image: str) -> str | None:
    for url, repo in stack.repositories.items():
        if image.startswith(url + ":") or image.startswith(url + "@"):
            return repo.state["arn"]
    return None


def task_calls(stack: StackView) -> list[Call]:
    """Per task definition: the execution role (ECS pulls, logs, secrets) and the task role (its code)."""
    calls = []
    for definition in stack.task_definitions.values():
        execution = stack.role_by_arn[definition.raw_inputs["executionRoleArn"]]
        task = stack.role_by_arn[definition.raw_inputs["taskRoleArn"]]
        containers = json.loads(definition.raw_inputs["containerDefinitions"])
        # https://docs.aws.amazon.com/AmazonECS/latest/developerguide/task_execution_IAM_role.html
        calls.append(
            Call(
                execution,
                f"ECS agent for {definition.id}: ECR login (no resource-level permissions)",
                (Authorization("ecr:GetAuthorizationToken", "*"),),
                scoped=False,
            )
        )
        for container in containers:
            where = f"ECS agent for {definition.id}, container {container['name']}"
            repo = _repository_arn(stack, container["image"])
            if repo is None:
                raise UnknownCall(f"{where}: image {container['image']} is not in a stack repository")
            # BatchCheckLayerAvailability: in AWS's AmazonECSTaskExecutionRolePolicy for pulls
            # (https://docs.aws.amazon.com/AmazonECS/latest/developerguide/task_execution_IAM_role.html)
            calls.append(
                Call(
                    execution,
                    f"{where}: image pull",
                    (
                        Authorization("ecr:BatchGetImage", repo),
                        Authorization("ecr:GetDownloadUrlForLayer", repo),
                        Authorization("ecr:BatchCheckLayerAvailability", repo),
                    ),
                )
            )
            options = container["logConfiguration"]["options"]
            group = stack.log_groups[options["awslogs-group"]].state["arn"]
            stream = f"{group}:log-stream:{options['awslogs-stream-prefix']}/{container['name']}/{TASK_ID}"
            calls.append(
                Call(
                    execution,
                    f"{where}: awslogs driver",
                    (
                        Authorization("logs:CreateLogStream", stream),
                        Authorization("logs:PutLogEvents", stream),
                    ),
                )
            )
            for secret in container.get("secrets") or []:
                calls.append(
                    Call(
                        execution,
                        f"{where}: secret {secret['name']}",
                        tuple(secret_read(stack, secret["valueFrom"])),
                    )
                )
        names = {x["name"] for x in containers}
        if c.RESTORE_CONTAINER in names:
            restore = next(x for x in containers if x["name"] == c.RESTORE_CONTAINER)
            from_pointer = "latest" in restore["command"] or c.TASK_AGENT_CONTAINER not in names
            calls += restore_calls(stack, task, version_from_pointer=from_pointer)
        if c.TASK_AGENT_CONTAINER in names:
            calls += agent_calls(stack, task)
    return calls


# --- trust ----------------------------------------------------------------------------------------


def trust_calls(stack: StackView) -> list[tuple[str, str, Authorization]]:
    """(role, service principal, AssumeRole) for every role; the service names itself in the trust policy
    and sends aws:SourceAccount (https://docs.aws.amazon.com/IAM/latest/UserGuide/confused-deputy.html)."""
    found = []
    for name, role in stack.roles.items():
        trust = json.loads(role.raw_inputs["assumeRolePolicy"])
        for st in trust["Statement"]:
            for service in _as_list((st.get("Principal") or {}).get("Service")):
                found.append(
                    (
                        name,
                        service,
                        Authorization(
                            "sts:AssumeRole", role.state["arn"], {"aws:SourceAccount": stack.account}
                        ),
                    )
                )
    return found


def all_calls(stack: StackView) -> list[Call]:
    return [*state_machine_calls(stack), *lambda_calls(stack), *task_calls(stack)]


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


# --- out of scope -----------------------------------------------------------------------------------


def out_of_scope(auth: Authorization) -> list[Authorization]:
    """Variants of an in-scope authorization that the policies must deny: the same call aimed at
    another bucket or prefix, cluster, task family, secret, key, function, machine, role or log group."""
    r, ctx = auth.resource, dict(auth.context)
    found: list[Authorization] = []

    def variant(resource: str = r, drop: Sequence[str] = (), **changes: Any) -> None:
        context = {k: v for k, v in {**ctx, **changes}.items() if k not in drop}
        found.append(replace(auth, resource=resource, context=context))

    if r.startswith("arn:aws:s3:::"):
        bucket, _, key = r.removeprefix("arn:aws:s3:::").partition("/")
        variant(f"arn:aws:s3:::{OTHER}-bucket" + (f"/{key}" if key else ""))
        if key:
            variant(f"arn:aws:s3:::{bucket}/{OTHER}/{key.partition('/')[2]}")
        if "s3:prefix" in ctx:
            variant(**{"s3:prefix": f"{OTHER}/{str(ctx['s3:prefix']).partition('/')[2]}"})
        if ctx.get("aws:SecureTransport") == "true":
            variant(**{"aws:SecureTransport": "false"})
    cluster = ctx.get("ecs:cluster")
    if cluster:
        name = cluster.rsplit("/", 1)[-1]
        other = cluster.rsplit("/", 1)[0] + f"/{OTHER}-cluster"
        variant(r.replace(f"/{name}/", f"/{OTHER}-cluster/"), **{"ecs:cluster": other})
    if ":task-definition/" in r:
        variant(re.sub(r"task-definition/[^:]+", f"task-definition/{OTHER}-family", r))
    if "ecs:CreateAction" in ctx:
        variant(drop=["ecs:CreateAction"])  # tagging an existing task directly
    if ":secretsmanager:" in r:
        other = re.sub(r"secret:.*$", f"secret:{OTHER}-secret-AbCdEf", r)
        variant(other, **({"secretsmanager:SecretId": other} if "secretsmanager:SecretId" in ctx else {}))
    if ":kms:" in r:
        variant(re.sub(r"key/.*$", "key/00000000-0000-4000-8000-000000000000", r))
        if "kms:ViaService" in ctx:
            variant(**{"kms:ViaService": f"ec2.{r.split(':')[3]}.amazonaws.com"})
    if ":lambda:" in r:
        variant(re.sub(r"function:.*$", f"function:{OTHER}-function", r))
    if ":states:" in r:
        variant(re.sub(r"(stateMachine|execution):[^:/]+", rf"\1:{OTHER}-machine", r))
    if r.startswith("arn:aws:iam::") and auth.action == "iam:PassRole":
        variant(re.sub(r"role/.*$", f"role/{OTHER}-role", r))
        variant(**{"iam:PassedToService": "lambda.amazonaws.com"})
    if ":logs:" in r:
        variant(re.sub(r"log-group:[^:]+", f"log-group:/{OTHER}/group", r))
    if ":ecr:" in r:
        variant(re.sub(r"repository/.*$", f"repository/{OTHER}-repo", r))
    return found
