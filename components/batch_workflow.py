"""BatchWorkflow: the optional on-demand annotation workflow (issue 4), switched on per stack.

A Step Functions state machine (its definition from `ontosearch.workflow.definition`, the same
function the tests validate and the local runner executes) starts a sibling of the service's task
definition (restore + chroma + proxy + task agent) in private subnets, fans the input out to a
query Lambda through the task's auth proxy, merges the parts and always stops the task.

Least privilege, checked by tests on the synthesized policies:
- state machine: RunTask only this task definition family in this cluster, PassRole only its two
  task roles (to ECS tasks only), List/Describe/StopTask only in this cluster, invoke only its
  five Lambdas;
- each Lambda: only its own prefixes of the bucket (inputs/ read, work/ read/write, results/
  write, snapshots/ read), and the query Lambda alone reads the token secret;
- the batch task's security group accepts the proxy port only from the Lambdas' security group.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_docker_build as docker_build

from components.chroma_service import assume_role_policy, execution_role_policy
from components.encryption import decrypt_secrets_statement
from components.images import PLATFORM, digest_uri
from components.task_args import ChromaTaskArgs
from components.task_definition import (
    RUNTIME_PLATFORM,
    TASK_VOLUME,
    TaskSpec,
    container_definitions,
    log_configuration,
)
from ontosearch import constants as c
from ontosearch.workflow import definition as wd
from ontosearch.workflow import steps as ws

LAMBDA_DOCKERFILE = "lambdas/Dockerfile"
STEPS = ("validate", "split", "query", "merge", "save")
# memory (MB) per step: the query step loads the embedder and embeds its chunk. Split and Merge are
# single-threaded Python bound by CPU: at 1,769 MB a function has the equivalent of one vCPU
# (https://docs.aws.amazon.com/lambda/latest/dg/configuration-memory.html), which is what the rates
# measured here (one core) assume; their peak RSS here was 126-196 MB at 300k-1M rows.
LAMBDA_MEMORY = {"validate": 512, "split": 1769, "query": 3008, "merge": 1769, "save": 256}
QUERY_TIMEOUT_SECONDS = 300
# Lambda's maximum, 900 s (https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html).
# Measured by bench/workflow_scale.py over a moto server (1M rows / 100k distinct, top_k 3, load ~5 on
# 2 cores): Split 154-179k rows/s, Merge 77-81k rows/s, so 20M rows take ~130 s and ~270 s; a 300 s
# timeout would leave Merge no margin at 20M rows.
OTHER_TIMEOUT_SECONDS = 900
# /tmp per function, MB: 512-10,240 (https://docs.aws.amazon.com/lambda/latest/dg/API_EphemeralStorage.html;
# beyond 512 MB it is billed per GB-second, https://aws.amazon.com/lambda/pricing/). Merge keeps every
# distinct label's output lines there: 2M distinct labels at top_k 3 take ~0.8 GB, and the Lambda maximum
# holds ~1.5M distinct labels even at the largest top_k (tests/test_workflow_scale.py).
LAMBDA_EPHEMERAL_MB = {"validate": 2048, "split": 2048, "query": 2048, "merge": 10_240, "save": 2048}
LAMBDA_VPC_POLICY = "arn:aws:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole"


@dataclass(kw_only=True)
class BatchWorkflowArgs(ChromaTaskArgs):
    cluster_arn: pulumi.Input[str]
    map_concurrency: int = 10
    workflow_timeout_seconds: int = 3600
    ready_timeout_seconds: int = 600
    chunk_size: int = 500
    # Build context of the Lambda image (the repository root, where `pulumi up` runs).
    context: str = "."
    # A prebuilt Lambda image URI instead of building lambdas/Dockerfile.
    lambda_image: pulumi.Input[str] | None = None


# Stack config keys of this component (components.config.EXTRA_KEYS) -> BatchWorkflowArgs fields.
CONFIG_KEYS = {
    # child executions at a time; the one task's Chroma serves them all, and Lambda's default
    # regional concurrency is 1,000 (https://docs.aws.amazon.com/lambda/latest/dg/lambda-concurrency.html)
    "mapConcurrency": ("map_concurrency", 1, 1000),
    "workflowTimeoutSeconds": ("workflow_timeout_seconds", 60, 86400),
    # StartTask's TimeoutSeconds: above its HeartbeatSeconds (ASL requires it) with a minute to spare
    "readyTimeoutSeconds": ("ready_timeout_seconds", wd.START_HEARTBEAT_SECONDS + 60, 3600),
}


def args_from_config(extra: Mapping[str, Any]) -> dict[str, int]:
    """The component's settings from the raw stack config, with errors that name the key."""
    from components.config import ConfigError

    values: dict[str, int] = {}
    for key, (field_name, low, high) in CONFIG_KEYS.items():
        raw = extra.get(key)
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            continue
        try:
            if isinstance(raw, bool):
                raise ValueError
            value = int(str(raw).strip())
        except ValueError:
            raise ConfigError(f"config key ontosearch:{key} must be a whole number, got {raw!r}") from None
        if not low <= value <= high:
            raise ConfigError(f"config key ontosearch:{key} must be between {low} and {high}, got {value}")
        values[field_name] = value
    timeout = values.get("workflow_timeout_seconds", BatchWorkflowArgs.workflow_timeout_seconds)
    ready = values.get("ready_timeout_seconds", BatchWorkflowArgs.ready_timeout_seconds)
    if ready >= timeout:
        raise ConfigError(f"config key ontosearch:readyTimeoutSeconds ({ready}) must be below "
                          f"ontosearch:workflowTimeoutSeconds ({timeout})")
    return values


def _policy(*statements: dict) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def lambda_policy(step: str, bucket_arn: str, token_secret_arn: str, key_arn: str | None = None,
                  region: str | None = None) -> str:
    """Each step's own S3 keys (and the query step's secret, decrypted via Secrets Manager); nothing else.

    Under work/<execution>/ each step reaches only the objects it reads or writes (keys from
    ontosearch.workflow.steps): Query cannot overwrite chunks or read a save request (which holds a
    task token), Split cannot write parts, Save writes only its request.
    """
    inputs = f"{bucket_arn}/{c.WORKFLOW_INPUT_PREFIX}*"
    work = f"{bucket_arn}/{c.WORKFLOW_WORK_PREFIX}*"
    chunks, parts = f"{work}/{ws.CHUNKS_DIR}/*", f"{work}/{ws.PARTS_DIR}/*"
    rows, manifest = f"{work}/{ws.ROWS_NAME}", f"{work}/{ws.CHUNK_MANIFEST_NAME}"
    results = f"{bucket_arn}/{c.WORKFLOW_RESULTS_PREFIX}*"
    snapshots = f"{bucket_arn}/{c.SNAPSHOT_PREFIX}/*"
    read = ["s3:GetObject"]
    write = ["s3:PutObject"]
    statements = {
        "validate": [{"Sid": "ReadInputsAndSnapshots", "Effect": "Allow", "Action": read,
                      "Resource": [inputs, snapshots]},
                     # A 403 on a snapshot key is told apart (missing or refused) by listing the key,
                     # authorized with s3:prefix = that key (ontosearch.snapshot_store.key_exists).
                     {"Sid": "ListSnapshots", "Effect": "Allow", "Action": "s3:ListBucket",
                      "Resource": bucket_arn,
                      "Condition": {"StringLike": {"s3:prefix": [f"{c.SNAPSHOT_PREFIX}/",
                                                                 f"{c.SNAPSHOT_PREFIX}/*"]}}}],
        # upload_file of the row list and the chunk manifest goes multipart above 8 MiB (a large
        # input); a failed one is aborted (the mpuAndPermissions page below)
        "split": [{"Sid": "ReadInputs", "Effect": "Allow", "Action": read, "Resource": inputs},
                  {"Sid": "WriteChunksRowsAndManifest", "Effect": "Allow",
                   "Action": [*write, "s3:AbortMultipartUpload"], "Resource": [chunks, rows, manifest]}],
        "query": [{"Sid": "ReadChunks", "Effect": "Allow", "Action": read, "Resource": chunks},
                  {"Sid": "WriteParts", "Effect": "Allow", "Action": write, "Resource": parts},
                  {"Sid": "ReadToken", "Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
                   "Resource": token_secret_arn}],
        # upload_file of the merged output goes multipart above 8 MiB; a failed one is aborted
        # (https://docs.aws.amazon.com/AmazonS3/latest/userguide/mpuoverview.html#mpuAndPermissions)
        "merge": [{"Sid": "ReadManifestRowsAndParts", "Effect": "Allow", "Action": read,
                   "Resource": [manifest, rows, parts]},
                  {"Sid": "WriteResults", "Effect": "Allow", "Action": [*write, "s3:AbortMultipartUpload"],
                   "Resource": results}],
        "save": [{"Sid": "WriteSaveRequest", "Effect": "Allow", "Action": write,
                  "Resource": f"{work}/{c.SAVE_REQUEST_NAME}"}],
    }[step]
    if step == "query" and key_arn:
        statements.append(decrypt_secrets_statement(key_arn, str(region)))
    return _policy(*statements)


def lambda_image_pull_policy(partition: str, region: str, account_id: str) -> str:
    """The Lambda image repository's policy: the Lambda service pulls the image for this account's
    functions in this region. Without it CreateFunction succeeds only when the deployer may
    ecr:SetRepositoryPolicy (Lambda then writes such a statement itself, outside the stack), and
    fails with "Lambda does not have permission to access the ECR image" otherwise
    (https://docs.aws.amazon.com/lambda/latest/dg/images-create.html, "Amazon ECR permissions";
    https://repost.aws/knowledge-center/lambda-ecr-image). The condition is the documented one."""
    return _policy({
        "Sid": "LambdaPullsTheImageForThisAccountsFunctions", "Effect": "Allow",
        "Principal": {"Service": "lambda.amazonaws.com"},
        "Action": ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"],
        "Condition": {"StringLike": {
            "aws:sourceArn": f"arn:{partition}:lambda:{region}:{account_id}:function:*"}},
    })


def batch_task_role_policy(bucket_arn: str) -> str:
    """The batch task: read snapshots (restore), poll its save request and publish new versions.

    The agent polls for its save request by listing that exact key (s3:ListBucket, s3:prefix = the
    key) before reading it: a GetObject of a key that is not there yet answers 403 unless the caller
    may list the bucket, and whether a listing grant conditioned on s3:prefix counts for that is not
    documented (https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObject.html, "Permissions").
    """
    snapshots = f"{bucket_arn}/{c.SNAPSHOT_PREFIX}/*"
    save_requests = f"{c.WORKFLOW_WORK_PREFIX}*/{c.SAVE_REQUEST_NAME}"
    return _policy(
        {"Sid": "ListSnapshots", "Effect": "Allow", "Action": "s3:ListBucket", "Resource": bucket_arn,
         "Condition": {"StringLike": {"s3:prefix": [f"{c.SNAPSHOT_PREFIX}/", f"{c.SNAPSHOT_PREFIX}/*",
                                                    save_requests]}}},
        # publish_snapshot uploads the archive with upload_file (multipart; a failed one is aborted)
        {"Sid": "ReadWriteSnapshots", "Effect": "Allow",
         "Action": ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"], "Resource": snapshots},
        {"Sid": "ReadSaveRequests", "Effect": "Allow", "Action": "s3:GetObject",
         "Resource": f"{bucket_arn}/{save_requests}"},
    )


def _cluster_name(cluster_arn: str) -> str:
    return cluster_arn.rsplit("/", 1)[-1]


def _task_definition_family_arn(task_definition_arn: str) -> str:
    """arn:...:task-definition/family:7 -> arn:...:task-definition/family:* (every revision)."""
    return task_definition_arn.rsplit(":", 1)[0] + ":*"


# Step Functions names: 1-80 characters, no whitespace, brackets, wildcards or special characters
# (https://docs.aws.amazon.com/step-functions/latest/dg/service-quotas.html, "General quotas").
STATE_MACHINE_NAME_MAX = 80
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def state_machine_name(project: str, stack: str) -> str:
    """The state machine's explicit name: its role policy names the machine's own ARN (Distributed
    Map child executions), and a resource cannot read its own output in its inputs, so the ARN is
    built from region, account and this name. Too long a name keeps its start and a hash."""
    name = _NAME_UNSAFE.sub("-", f"{project}-{stack}-batch")
    if len(name) > STATE_MACHINE_NAME_MAX:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        name = f"{name[:STATE_MACHINE_NAME_MAX - 9]}-{digest}"
    return name


def state_machine_arn_in(cluster_arn: str, name: str) -> str:
    """arn:<partition>:states:<region>:<account>:stateMachine:<name>, in the cluster's partition,
    region and account (where the stack creates the machine)."""
    _, partition, _, region, account = cluster_arn.split(":")[:5]
    return f"arn:{partition}:states:{region}:{account}:stateMachine:{name}"


def distributed_map_statements(state_machine_arn: str, bucket_arn: str) -> list[dict]:
    """What the QueryChunks Distributed Map needs besides its children's own calls.

    From "IAM policies for using Distributed Map states"
    (https://docs.aws.amazon.com/step-functions/latest/dg/iam-policies-eg-dist-map.html):
    StartExecution on the machine itself (child executions are executions of this machine) and
    DescribeExecution/StopExecution on them (ARNs execution:<machine>/<map run label>:<id>) and on
    the executions the page names (execution:<machine>:*);
    s3:GetObject on the ItemReader's object; for the ResultWriter s3:PutObject with the multipart
    actions it uses (s3:GetObject, s3:ListMultipartUploadParts, s3:AbortMultipartUpload) on its
    prefix. The children's RecordChunkFailure and the parent's ReadChunkFailure put and get one
    object per execution.
    """
    arn_head = state_machine_arn.split(":stateMachine:")[0]
    machine = state_machine_arn.rsplit(":", 1)[-1]
    work = f"{bucket_arn}/{c.WORKFLOW_WORK_PREFIX}*"
    return [
        {"Sid": "StartItsChildExecutions", "Effect": "Allow", "Action": "states:StartExecution",
         "Resource": state_machine_arn},
        # The page's policy names execution:<machine>:* (the form of this machine's own executions);
        # child executions are execution:<machine>/<label>:<id>, which that pattern does not match.
        # Both, so neither form of the call is refused.
        {"Sid": "DescribeAndStopItsChildExecutions", "Effect": "Allow",
         "Action": ["states:DescribeExecution", "states:StopExecution"],
         "Resource": [f"{arn_head}:execution:{machine}/*", f"{arn_head}:execution:{machine}:*"]},
        {"Sid": "ReadTheChunkManifest", "Effect": "Allow", "Action": "s3:GetObject",
         "Resource": f"{work}/{ws.CHUNK_MANIFEST_NAME}"},
        {"Sid": "WriteTheMapRunResults", "Effect": "Allow",
         "Action": ["s3:PutObject", "s3:GetObject", "s3:ListMultipartUploadParts", "s3:AbortMultipartUpload"],
         "Resource": f"{work}/{ws.MAP_RESULTS_NAME}/*"},
        {"Sid": "RecordAndReadAChunkFailure", "Effect": "Allow", "Action": ["s3:PutObject", "s3:GetObject"],
         "Resource": f"{work}/{ws.CHUNK_FAILURE_NAME}"},
    ]


def state_machine_policy(cluster_arn: str, task_definition_arn: str, role_arns: Sequence[str],
                         function_arns: Sequence[str], *, state_machine_arn: str | None = None,
                         bucket_arn: str | None = None) -> str:
    # the cluster's own partition, region and account (aws, aws-cn, aws-us-gov: ARN formats in
    # https://docs.aws.amazon.com/IAM/latest/UserGuide/reference-arns.html)
    arn_head = ":".join(cluster_arn.split(":")[:5])
    tasks_in_cluster = f"{arn_head}:task/{_cluster_name(cluster_arn)}/*"
    on_cluster = {"ArnEquals": {"ecs:cluster": cluster_arn}}
    return _policy(
        {"Sid": "RunTheBatchTask", "Effect": "Allow", "Action": "ecs:RunTask",
         "Resource": _task_definition_family_arn(task_definition_arn), "Condition": on_cluster},
        {"Sid": "PassItsRoles", "Effect": "Allow", "Action": "iam:PassRole", "Resource": list(role_arns),
         "Condition": {"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}}},
        # RunTask of a tagged definition with PropagateTags (or Tags) tags the new task: ECS authorizes
        # ecs:TagResource on it with ecs:CreateAction = RunTask (tag-on-create; the provider's default
        # tags make every definition tagged). It may tag only tasks it creates, only in this cluster.
        # https://docs.aws.amazon.com/AmazonECS/latest/developerguide/supported-iam-actions-tagging.html
        {"Sid": "TagTheTasksItRuns", "Effect": "Allow", "Action": "ecs:TagResource",
         "Resource": tasks_in_cluster, "Condition": {"StringEquals": {"ecs:CreateAction": "RunTask"}}},
        {"Sid": "StopItsTasks", "Effect": "Allow", "Action": "ecs:StopTask",
         "Resource": tasks_in_cluster, "Condition": on_cluster},
        # A ListTasks naming no container instance (always so on Fargate) is authorized on "*", not on
        # container-instance ARNs; the ecs:cluster condition limits it to this cluster.
        {"Sid": "ListTasksInItsCluster", "Effect": "Allow", "Action": "ecs:ListTasks", "Resource": "*",
         "Condition": on_cluster},
        {"Sid": "InvokeItsLambdas", "Effect": "Allow", "Action": "lambda:InvokeFunction",
         "Resource": [*function_arns, *(f"{arn}:*" for arn in function_arns)]},
        *(distributed_map_statements(state_machine_arn, bucket_arn)
          if state_machine_arn and bucket_arn else []),
    )


def agent_container(app_image: str, token_secret_arn: str, bucket: str, log_group: str, region: str) -> dict:
    """The task agent: essential, so its exit (ready failure, deadline) stops the whole task."""
    return {
        "name": c.TASK_AGENT_CONTAINER,
        "image": app_image,
        "essential": True,
        "command": ["python", "-m", "ontosearch", "task-agent"],
        "environment": [
            {"name": "AWS_REGION", "value": region},
            {"name": "AWS_DEFAULT_REGION", "value": region},
            {"name": c.ENV_WORKFLOW_BUCKET, "value": bucket},
        ],
        "secrets": [{"name": c.ENV_TOKEN, "valueFrom": token_secret_arn}],
        # read-only: only for publishing the data as a new snapshot when an execution asks for it
        "mountPoints": [{"sourceVolume": TASK_VOLUME, "containerPath": c.DATA_DIR, "readOnly": True}],
        "stopTimeout": 10,
        "logConfiguration": log_configuration(log_group, region, c.TASK_AGENT_CONTAINER),
    }


class BatchWorkflow(pulumi.ComponentResource):
    state_machine_arn: pulumi.Output[str]
    task_definition_arn: pulumi.Output[str]
    task_security_group_id: pulumi.Output[str]
    lambda_security_group_id: pulumi.Output[str]
    function_arns: dict[str, pulumi.Output[str]]
    definition: pulumi.Output[str]

    def __init__(self, name: str, args: BatchWorkflowArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("ontosearch:workflow:BatchWorkflow", name, {}, opts)
        child = pulumi.ResourceOptions(parent=self)
        invoke = pulumi.InvokeOutputOptions(parent=self)
        region = aws.get_region_output(opts=invoke).region
        account_id = aws.get_caller_identity_output(opts=invoke).account_id
        ecs_trust = account_id.apply(lambda a: assume_role_policy("ecs-tasks.amazonaws.com", a))

        log_group = aws.cloudwatch.LogGroup(f"{name}-logs", retention_in_days=args.log_retention_days,
                                            kms_key_id=args.kms_key_arn, opts=child)

        # --- security groups --------------------------------------------------------------------
        lambda_sg = aws.ec2.SecurityGroup(
            f"{name}-lambda-sg", vpc_id=args.vpc_id,
            description="ontosearch batch Lambdas: HTTPS to AWS APIs, the proxy port inside the VPC",
            egress=[
                {"protocol": "tcp", "from_port": 443, "to_port": 443, "cidr_blocks": ["0.0.0.0/0"],
                 "description": "HTTPS to S3, Secrets Manager (endpoints or NAT)"},
                {"protocol": "tcp", "from_port": c.PROXY_PORT, "to_port": c.PROXY_PORT,
                 "cidr_blocks": [args.vpc_cidr], "description": "the auth proxy of the batch task"},
            ],
            opts=child)
        task_sg = aws.ec2.SecurityGroup(
            f"{name}-task-sg", vpc_id=args.vpc_id,
            description="ontosearch batch task: only the auth proxy port, only from the batch Lambdas",
            ingress=[{"protocol": "tcp", "from_port": c.PROXY_PORT, "to_port": c.PROXY_PORT,
                      "security_groups": [lambda_sg.id],
                      "description": "auth proxy, from the batch Lambdas"}],
            egress=[{"protocol": "tcp", "from_port": 443, "to_port": 443, "cidr_blocks": ["0.0.0.0/0"],
                     "description": "HTTPS to ECR, S3, Secrets Manager, CloudWatch Logs, Step Functions"}],
            opts=child)

        # --- the on-demand task -------------------------------------------------------------------
        execution_role = aws.iam.Role(
            f"{name}-execution-role",
            description="ECS starts the batch task: image pull, logs, token secrets",
            assume_role_policy=ecs_trust, opts=child)
        aws.iam.RolePolicy(
            f"{name}-execution-policy", role=execution_role.id,
            policy=pulumi.Output.all(args.repository_arns, log_group.arn, args.token_secret_arn,
                                     args.admin_token_secret_arn, args.kms_key_arn, region).apply(
                lambda v: execution_role_policy(v[0], v[1], [v[2], v[3]], v[4], v[5])),
            opts=child)
        task_role = aws.iam.Role(
            f"{name}-task-role",
            description="The batch task at run time: snapshots, report to Step Functions",
            assume_role_policy=ecs_trust, opts=child)
        aws.iam.RolePolicy(
            f"{name}-task-policy", role=task_role.id,
            policy=pulumi.Output.from_input(args.bucket_arn).apply(batch_task_role_policy), opts=child)
        # The agent answers its own execution's token; callbacks carry no resource ARN to scope to.
        aws.iam.RolePolicy(
            f"{name}-task-callbacks", role=task_role.id,
            policy=_policy({"Sid": "ReportToItsExecution", "Effect": "Allow",
                            "Action": ["states:SendTaskSuccess", "states:SendTaskFailure",
                                       "states:SendTaskHeartbeat"], "Resource": "*"}),
            opts=child)

        containers = pulumi.Output.all(
            args.app_image, args.chroma_image, args.proxy_image, args.bucket_name, args.token_secret_arn,
            args.admin_token_secret_arn, log_group.name, region,
        ).apply(lambda v: json.dumps(container_definitions(
            TaskSpec(app_image=v[0], chroma_image=v[1], proxy_image=v[2], bucket=v[3], token_secret_arn=v[4],
                     admin_token_secret_arn=v[5], log_group=v[6], region=v[7]),
            extra_containers=[agent_container(v[0], v[4], v[3], v[6], v[7])])))
        task_definition = aws.ecs.TaskDefinition(
            f"{name}-task",
            family=f"{pulumi.get_project()}-{pulumi.get_stack()}-batch",
            cpu=str(args.cpu), memory=str(args.memory), network_mode="awsvpc",
            requires_compatibilities=["FARGATE"], runtime_platform=RUNTIME_PLATFORM,
            ephemeral_storage={"size_in_gib": args.ephemeral_storage_gib}, volumes=[{"name": TASK_VOLUME}],
            execution_role_arn=execution_role.arn, task_role_arn=task_role.arn,
            container_definitions=containers, opts=child)

        # --- Lambdas ------------------------------------------------------------------------------
        image_ready: list[pulumi.Resource] = []
        image = args.lambda_image or self._build_lambda_image(name, args, image_ready)
        functions: dict[str, aws.lambda_.Function] = {}
        for step in STEPS:
            role = aws.iam.Role(
                f"{name}-{step}-role", description=f"ontosearch batch Lambda: {step}",
                assume_role_policy=account_id.apply(lambda a: assume_role_policy("lambda.amazonaws.com", a)),
                opts=child)
            vpc_access = aws.iam.RolePolicyAttachment(
                f"{name}-{step}-vpc", role=role.name, policy_arn=LAMBDA_VPC_POLICY, opts=child)
            step_policy = aws.iam.RolePolicy(
                f"{name}-{step}-policy", role=role.id,
                policy=pulumi.Output.all(args.bucket_arn, args.token_secret_arn, args.kms_key_arn,
                                         region).apply(lambda v, s=step: lambda_policy(s, *v)),
                opts=child)
            env = {c.ENV_WORKFLOW_BUCKET: args.bucket_name}
            if step == "validate":
                env[c.ENV_WORKFLOW_CHUNK_SIZE] = str(args.chunk_size)
            if step == "query":
                env[c.ENV_TOKEN_SECRET_ARN] = args.token_secret_arn
            functions[step] = aws.lambda_.Function(
                f"{name}-{step}",
                package_type="Image", image_uri=image, image_config={"commands": [f"lambdas.{step}.handler"]},
                architectures=["arm64"], role=role.arn, memory_size=LAMBDA_MEMORY[step],
                timeout=QUERY_TIMEOUT_SECONDS if step == "query" else OTHER_TIMEOUT_SECONDS,
                ephemeral_storage={"size": LAMBDA_EPHEMERAL_MB[step]},
                vpc_config={"subnet_ids": args.private_subnet_ids, "security_group_ids": [lambda_sg.id]},
                environment={"variables": env},
                logging_config={"log_format": "Text", "log_group": log_group.name},
                # CreateFunction checks that the role may create the VPC network interfaces, and the
                # function can be invoked once it exists: both need the role's policies in place first.
                # It also checks that Lambda may pull the image: the repository's policy comes first.
                opts=pulumi.ResourceOptions(parent=self, depends_on=[vpc_access, step_policy, *image_ready]))

        # --- state machine --------------------------------------------------------------------------
        settings_inputs = pulumi.Output.all(
            args.cluster_arn, task_definition.arn, args.private_subnet_ids, task_sg.id,
            *(functions[s].arn for s in STEPS))
        self.definition = settings_inputs.apply(lambda v: wd.definition_json(wd.WorkflowSettings(
            cluster_arn=v[0], task_definition_arn=v[1], subnet_ids=list(v[2]), security_group_ids=[v[3]],
            validate_function=v[4], split_function=v[5], query_function=v[6], merge_function=v[7],
            save_function=v[8], map_concurrency=args.map_concurrency,
            workflow_timeout_seconds=args.workflow_timeout_seconds,
            ready_timeout_seconds=args.ready_timeout_seconds, chunk_timeout_seconds=QUERY_TIMEOUT_SECONDS)))
        sfn_role = aws.iam.Role(
            f"{name}-sfn-role", description="ontosearch batch state machine",
            assume_role_policy=account_id.apply(lambda a: assume_role_policy("states.amazonaws.com", a)),
            opts=child)
        machine_name = state_machine_name(pulumi.get_project(), pulumi.get_stack())
        sfn_policy = aws.iam.RolePolicy(
            f"{name}-sfn-policy", role=sfn_role.id,
            policy=pulumi.Output.all(args.cluster_arn, task_definition.arn, task_role.arn, execution_role.arn,
                                     args.bucket_arn, *(functions[s].arn for s in STEPS)).apply(
                lambda v: state_machine_policy(v[0], v[1], [v[2], v[3]], v[5:],
                                               state_machine_arn=state_machine_arn_in(v[0], machine_name),
                                               bucket_arn=v[4])),
            opts=child)
        machine = aws.sfn.StateMachine(
            f"{name}-machine", name=machine_name, role_arn=sfn_role.arn, definition=self.definition,
            type="STANDARD",
            # an execution started right after `up` must find the role's permissions in place
            opts=pulumi.ResourceOptions(parent=self, depends_on=[sfn_policy]))

        self.state_machine_arn = machine.arn
        self.task_definition_arn = task_definition.arn
        self.task_security_group_id = task_sg.id
        self.lambda_security_group_id = lambda_sg.id
        self.function_arns = {s: functions[s].arn for s in STEPS}
        self.register_outputs({
            "state_machine_arn": self.state_machine_arn,
            "task_definition_arn": self.task_definition_arn,
            "task_security_group_id": self.task_security_group_id,
            "lambda_security_group_id": self.lambda_security_group_id,
        })

    def _build_lambda_image(self, name: str, args: BatchWorkflowArgs,
                            image_ready: list[pulumi.Resource]) -> pulumi.Output[str]:
        repo = aws.ecr.Repository(
            f"{name}-lambda", image_scanning_configuration={"scan_on_push": True},
            image_tag_mutability="MUTABLE", encryption_configurations=[{"encryption_type": "AES256"}],
            force_delete=not args.deletion_protection, opts=pulumi.ResourceOptions(parent=self))
        invoke = pulumi.InvokeOutputOptions(parent=self)
        pull_scope = pulumi.Output.all(aws.get_partition_output(opts=invoke).partition,
                                       aws.get_region_output(opts=invoke).region,
                                       aws.get_caller_identity_output(opts=invoke).account_id)
        image_ready.append(aws.ecr.RepositoryPolicy(
            f"{name}-lambda-pull", repository=repo.name,
            policy=pull_scope.apply(lambda v: lambda_image_pull_policy(*v)),
            opts=pulumi.ResourceOptions(parent=self)))
        auth = aws.ecr.get_authorization_token_output(
            registry_id=repo.registry_id, opts=pulumi.InvokeOutputOptions(parent=self))
        image = docker_build.Image(
            f"{name}-lambda",
            context=docker_build.BuildContextArgs(location=args.context),
            dockerfile=docker_build.DockerfileArgs(location=LAMBDA_DOCKERFILE),
            platforms=[PLATFORM],
            push=True,
            tags=[repo.repository_url.apply(lambda url: f"{url}:latest")],
            registries=[docker_build.RegistryArgs(address=repo.repository_url, username=auth.user_name,
                                                  password=pulumi.Output.secret(auth.password))],
            opts=pulumi.ResourceOptions(parent=self))
        # Not `image.ref` (repo:tag@digest): Lambda accepts only repo:tag or repo@digest.
        return pulumi.Output.all(repo.repository_url, image.digest).apply(lambda v: digest_uri(v[0], v[1]))
