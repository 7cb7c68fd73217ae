"""Container definitions of the Chroma task, as plain data.

Pure functions of plain values (no Pulumi): the always-on service and the batch workflow's
on-demand task build their definitions from the same code, and tests validate the exact JSON
that ECS receives against botocore's RegisterTaskDefinition model.

The task: `restore` (project image) puts the snapshot into the shared volume at DATA_DIR and
exits; `chroma` (official image, mirrored to ECR) starts only after restore succeeded and
listens on loopback; `proxy` (official nginx image, mirrored) is the only mapped port and the
only holder of the tokens, which arrive as ECS `secrets` from Secrets Manager.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ontosearch import constants as c

# One task-scoped volume (Fargate ephemeral storage) shared by restore and chroma.
TASK_VOLUME = "data"

RUNTIME_PLATFORM = {"cpu_architecture": "ARM64", "operating_system_family": "LINUX"}

# Chroma opens many files (sqlite + HNSW segments per collection).
NOFILE_LIMIT = 65535


@dataclass(frozen=True)
class TaskSpec:
    """Everything the container definitions depend on; all plain strings."""

    app_image: str
    chroma_image: str
    proxy_image: str
    bucket: str
    token_secret_arn: str
    admin_token_secret_arn: str
    log_group: str
    region: str
    snapshot_version: str = "latest"
    # Extra `restore-snapshot` options (e.g. the workflow's), appended after the defaults.
    restore_args: tuple[str, ...] = ()
    # The always-on service: with "latest", restore waits for a first snapshot instead of failing, so a
    # stack deployed before anything is published comes up once a snapshot is (see container_definitions).
    wait_for_snapshot: bool = False


def log_configuration(log_group: str, region: str, stream_prefix: str) -> dict[str, Any]:
    """awslogs settings shared by every container of the task (and any extra container)."""
    return {
        "logDriver": "awslogs",
        "options": {
            "awslogs-group": log_group,
            "awslogs-region": region,
            "awslogs-stream-prefix": stream_prefix,
        },
    }


def restore_command(bucket: str, version: str, extra_args: Sequence[str] = (),
                    wait_for_snapshot: bool = False) -> list[str]:
    """The `restore` container's command; the workflow overrides `--version` per execution."""
    wait = ["--wait-for-snapshot"] if wait_for_snapshot else []
    return ["python", "-m", "ontosearch", "restore-snapshot", "--bucket", bucket, "--version", version, *wait,
            "--into", c.DATA_DIR, *extra_args]


def chroma_command() -> list[str]:
    """Arguments for the official image's entrypoint (`dumb-init -- chroma`).

    The image's default CMD is `run /config.yaml` (0.0.0.0:8000, /data); we replace it so Chroma
    binds loopback only and the proxy stays the only way in.
    """
    return ["run", "--host", c.CHROMA_HOST, "--port", str(c.CHROMA_PORT), "--path", c.DATA_DIR]


def container_definitions(spec: TaskSpec, extra_containers: Sequence[Mapping[str, Any]] = ()) -> list[dict]:
    """The task's containers: restore -> chroma -> proxy, plus any `extra_containers` appended."""
    from ontosearch import proxy

    data_mount = {"sourceVolume": TASK_VOLUME, "containerPath": c.DATA_DIR, "readOnly": False}
    # No `startTimeout` on restore, on purpose: chroma waits for restore to exit 0 (SUCCESS), and a
    # startTimeout on restore would stop the task once it passed; on Fargate its valid values are only
    # 2-120 s (ContainerDefinition.startTimeout, https://docs.aws.amazon.com/AmazonECS/latest/APIReference/
    # API_ContainerDefinition.html), too short for a large download or for waiting for a first snapshot.
    # Unset, no timeout applies to the dependency (the ECS agent checks one only when it is set:
    # hasDependencyTimedOut in amazon-ecs-agent agent/engine/dependencygraph/graph.go). While restore
    # runs, chroma and the proxy have not started, so the task is PENDING (a task's status is the
    # earliest of its containers': updateTaskKnownStatus in agent/api/task/task.go): it is not yet
    # registered with the target group, the health check grace period has not begun (it counts from
    # the task's start, startedAt = PENDING -> RUNNING), and the deployment circuit breaker counts only
    # tasks that stop before RUNNING (https://docs.aws.amazon.com/AmazonECS/latest/developerguide/
    # deployment-circuit-breaker.html).
    restore = {
        "name": c.RESTORE_CONTAINER,
        "image": spec.app_image,
        "essential": False,
        "command": restore_command(spec.bucket, spec.snapshot_version, spec.restore_args,
                                   wait_for_snapshot=spec.wait_for_snapshot),
        "environment": [
            {"name": "AWS_REGION", "value": spec.region},
            {"name": "AWS_DEFAULT_REGION", "value": spec.region},
        ],
        "mountPoints": [data_mount],
        "logConfiguration": log_configuration(spec.log_group, spec.region, c.RESTORE_CONTAINER),
    }
    chroma = {
        "name": c.CHROMA_CONTAINER,
        "image": spec.chroma_image,
        "essential": True,
        "command": chroma_command(),
        "dependsOn": [{"containerName": c.RESTORE_CONTAINER, "condition": "SUCCESS"}],
        "mountPoints": [data_mount],
        "ulimits": [{"name": "nofile", "softLimit": NOFILE_LIMIT, "hardLimit": NOFILE_LIMIT}],
        "stopTimeout": 30,
        "logConfiguration": log_configuration(spec.log_group, spec.region, c.CHROMA_CONTAINER),
    }
    proxy_container = {
        "name": c.PROXY_CONTAINER,
        "image": spec.proxy_image,
        "essential": True,
        "command": proxy.task_proxy_command(),
        "dependsOn": [{"containerName": c.CHROMA_CONTAINER, "condition": "START"}],
        "portMappings": [{"containerPort": c.PROXY_PORT, "hostPort": c.PROXY_PORT, "protocol": "tcp"}],
        # Placeholders only; the tokens themselves come from `secrets` below.
        "environment": [{"name": proxy.PROXY_CONFIG_ENV, "value": proxy.task_proxy_config()}],
        "secrets": [
            {"name": c.ENV_TOKEN, "valueFrom": spec.token_secret_arn},
            {"name": c.ENV_ADMIN_TOKEN, "valueFrom": spec.admin_token_secret_arn},
        ],
        "logConfiguration": log_configuration(spec.log_group, spec.region, c.PROXY_CONTAINER),
    }
    containers = [restore, chroma, proxy_container, *(dict(x) for x in extra_containers)]
    names = [x.get("name") for x in containers]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        repeated = ", ".join(map(str, duplicates))
        raise ValueError(f"container names must be unique in a task; repeated: {repeated}")
    return containers
