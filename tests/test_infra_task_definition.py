"""The Chroma task as ECS receives it: shape, order of containers, images, where tokens go."""

from __future__ import annotations

import json
import re
from pathlib import Path

import chromadb
import pytest
from pulumi_harness import (
    STACKS,
    botocore_errors,
    container_definitions,
    synth_stack,
)

from components.task_definition import TaskSpec
from components.task_definition import container_definitions as build_containers
from ontosearch import constants as c
from ontosearch import proxy

ROOT = Path(__file__).resolve().parent.parent
# The always-on service's task; the batch workflow's task (on in dev) has its own tests.
SERVICE_TASK = "chroma-task"


def _by_name(containers: list[dict]) -> dict[str, dict]:
    return {x["name"]: x for x in containers}


def _task_definitions(stack: str) -> list[str]:
    """Names of every task definition the stack declares (the service's, and the batch task's if on)."""
    return [t.name for t in synth_stack(stack).of_type("aws:ecs/taskDefinition:TaskDefinition")]


def _register_params(stack: str, name: str = SERVICE_TASK) -> dict:
    """RegisterTaskDefinition parameters equivalent to the Pulumi TaskDefinition's inputs."""
    task = synth_stack(stack).one("aws:ecs/taskDefinition:TaskDefinition", name).raw_inputs
    return {
        "family": task["family"],
        "taskRoleArn": task["taskRoleArn"],
        "executionRoleArn": task["executionRoleArn"],
        "networkMode": task["networkMode"],
        "containerDefinitions": container_definitions(synth_stack(stack), name),
        "volumes": task["volumes"],
        "requiresCompatibilities": task["requiresCompatibilities"],
        "cpu": task["cpu"],
        "memory": task["memory"],
        "ephemeralStorage": {"sizeInGiB": task["ephemeralStorage"]["sizeInGib"]},
        "runtimePlatform": task["runtimePlatform"],
    }


@pytest.mark.parametrize("stack", STACKS)
def test_task_definition_validates_against_botocore_register_task_definition(stack):
    names = _task_definitions(stack)
    assert SERVICE_TASK in names
    for name in names:
        errors = botocore_errors("ecs", "RegisterTaskDefinition", _register_params(stack, name))
        assert errors == [], name


def test_enum_check_catches_a_wrong_enum_value():
    params = _register_params("dev")
    params["containerDefinitions"][1]["dependsOn"][0]["condition"] = "SUCCEEDED"
    params["runtimePlatform"] = {"cpuArchitecture": "ARM", "operatingSystemFamily": "LINUX"}
    errors = botocore_errors("ecs", "RegisterTaskDefinition", params)
    assert any("SUCCEEDED" in e for e in errors)
    assert any("'ARM'" in e for e in errors)


def test_shape_check_catches_an_unknown_container_key():
    params = _register_params("dev")
    params["containerDefinitions"][0]["dependOn"] = []
    assert botocore_errors("ecs", "RegisterTaskDefinition", params)


@pytest.mark.parametrize("stack", STACKS)
def test_task_is_fargate_arm64_awsvpc_with_configured_size(stack):
    from pulumi_harness import stack_file_config

    from components.config import StackConfig

    cfg = StackConfig.from_mapping({k.split(":", 1)[1]: v for k, v in stack_file_config(stack).items()
                                    if k.startswith("ontosearch:")})
    for name in _task_definitions(stack):  # the batch task is sized like the service's
        task = synth_stack(stack).one("aws:ecs/taskDefinition:TaskDefinition", name).raw_inputs
        assert task["runtimePlatform"] == {"cpuArchitecture": "ARM64", "operatingSystemFamily": "LINUX"}
        assert task["networkMode"] == "awsvpc"
        assert task["requiresCompatibilities"] == ["FARGATE"]
        assert (task["cpu"], task["memory"]) == (str(cfg.cpu), str(cfg.memory))
        assert task["ephemeralStorage"]["sizeInGib"] == cfg.ephemeral_storage_gib


def test_prod_task_is_4_vcpu_16_gb():
    task = synth_stack("prod").one("aws:ecs/taskDefinition:TaskDefinition", SERVICE_TASK).raw_inputs
    assert (task["cpu"], task["memory"]) == ("4096", "16384")


@pytest.mark.parametrize("stack", STACKS)
def test_restore_must_succeed_before_chroma_starts(stack):
    containers = _by_name(container_definitions(synth_stack(stack), SERVICE_TASK))
    restore, chroma = containers[c.RESTORE_CONTAINER], containers[c.CHROMA_CONTAINER]
    assert restore["essential"] is False
    assert chroma["essential"] is True
    assert chroma["dependsOn"] == [{"containerName": c.RESTORE_CONTAINER, "condition": "SUCCESS"}]
    bucket = synth_stack(stack).one("aws:s3/bucket:Bucket").id
    # --wait-for-snapshot: a new stack's tasks wait for the first snapshot (tests/test_first_deploy.py)
    assert restore["command"] == ["python", "-m", "ontosearch", "restore-snapshot", "--bucket", bucket,
                                  "--version", "latest", "--wait-for-snapshot", "--into", c.DATA_DIR]
    # Both see the same task volume at the data path.
    for container in (restore, chroma):
        assert [m["containerPath"] for m in container["mountPoints"]] == [c.DATA_DIR]
    volumes = {m["sourceVolume"] for x in (restore, chroma) for m in x["mountPoints"]}
    task = synth_stack(stack).one("aws:ecs/taskDefinition:TaskDefinition", SERVICE_TASK).raw_inputs
    assert volumes == {v["name"] for v in task["volumes"]}


def test_restore_command_runs_the_restore_cli_against_the_stack_bucket(tmp_path, monkeypatch, capsys):
    """The task's exact argv reaches `restore-snapshot`, which looks for the pointer in the stack's bucket."""
    import boto3
    from moto import mock_aws

    from ontosearch.__main__ import main as cli

    containers = _by_name(container_definitions(synth_stack("dev"), SERVICE_TASK))
    argv = containers[c.RESTORE_CONTAINER]["command"]
    assert argv[:4] == ["python", "-m", "ontosearch", "restore-snapshot"]
    bucket = argv[argv.index("--bucket") + 1]
    # without the wait (test_first_deploy covers it), so an empty bucket answers at once
    local = [tmp_path / "data" if a == c.DATA_DIR else a for a in argv[3:] if a != "--wait-for-snapshot"]
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=bucket)
        code = cli([str(a) for a in local])
    assert code == 1  # an empty bucket: nothing published yet, said clearly
    err = capsys.readouterr().err
    assert f"no snapshot published yet under s3://{bucket}/{c.SNAPSHOT_PREFIX}/" in err


@pytest.mark.parametrize("stack", STACKS)
def test_chroma_listens_on_loopback_only_with_data_in_data_dir(stack):
    chroma = _by_name(container_definitions(synth_stack(stack), SERVICE_TASK))[c.CHROMA_CONTAINER]
    assert chroma["command"] == ["run", "--host", c.CHROMA_HOST, "--port", str(c.CHROMA_PORT),
                                 "--path", c.DATA_DIR]
    assert c.CHROMA_HOST == "127.0.0.1"
    assert "portMappings" not in chroma
    # The official image has no curl: no container health check may depend on it.
    assert "healthCheck" not in chroma


@pytest.mark.parametrize("stack", STACKS)
def test_proxy_is_the_only_mapped_port(stack):
    containers = container_definitions(synth_stack(stack), SERVICE_TASK)
    mapped = [(x["name"], p["containerPort"]) for x in containers for p in x.get("portMappings", [])]
    assert mapped == [(c.PROXY_CONTAINER, c.PROXY_PORT)]
    proxy_container = _by_name(containers)[c.PROXY_CONTAINER]
    assert proxy_container["essential"] is True
    assert proxy_container["dependsOn"] == [{"containerName": c.CHROMA_CONTAINER, "condition": "START"}]
    assert proxy_container["command"] == proxy.task_proxy_command()
    env = {e["name"]: e["value"] for e in proxy_container["environment"]}
    assert env == {proxy.PROXY_CONFIG_ENV: proxy.task_proxy_config()}


@pytest.mark.parametrize("stack", STACKS)
def test_tokens_reach_containers_only_through_secrets_value_from(stack):
    result = synth_stack(stack)
    secrets = {s.name: s.id for s in result.of_type("aws:secretsmanager/secret:Secret")}
    containers = container_definitions(result, SERVICE_TASK)
    proxy_container = _by_name(containers)[c.PROXY_CONTAINER]
    assert {s["name"]: s["valueFrom"] for s in proxy_container["secrets"]} == {
        c.ENV_TOKEN: secrets["tokens-read"],
        c.ENV_ADMIN_TOKEN: secrets["tokens-admin"],
    }
    for container in containers:
        names = {e["name"] for e in container.get("environment", [])}
        assert not names & {c.ENV_TOKEN, c.ENV_ADMIN_TOKEN}, container["name"]
        if container["name"] != c.PROXY_CONTAINER:
            assert "secrets" not in container, container["name"]
    # The proxy config carries placeholders, never values.
    config = _by_name(containers)[c.PROXY_CONTAINER]["environment"][0]["value"]
    assert "${" + c.ENV_TOKEN + "}" in config and "${" + c.ENV_ADMIN_TOKEN + "}" in config


@pytest.mark.parametrize("stack", STACKS)
def test_every_container_logs_to_the_stack_log_group(stack):
    result = synth_stack(stack)
    for task in result.of_type("aws:ecs/taskDefinition:TaskDefinition"):
        # each component's task logs to that component's own log group
        log_group = result.one("aws:cloudwatch/logGroup:LogGroup", f"{task.parent}-logs")
        for container in container_definitions(result, task.name):
            log = container["logConfiguration"]
            assert log["logDriver"] == "awslogs"
            assert log["options"]["awslogs-group"] == log_group.id, (task.name, container["name"])
            assert log["options"]["awslogs-region"] == "us-east-1"


def _requirements_pin(package: str) -> str:
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        match = re.match(rf"^{re.escape(package)}==([^\s#;]+)", line.strip())
        if match:
            return match.group(1)
    raise AssertionError(f"{package} is not pinned in requirements.txt")


@pytest.mark.parametrize("stack", STACKS)
def test_chroma_image_tag_equals_pinned_chromadb_version(stack):
    pinned = _requirements_pin("chromadb")
    assert pinned == c.CHROMA_VERSION == chromadb.__version__
    chroma = _by_name(container_definitions(synth_stack(stack), SERVICE_TASK))[c.CHROMA_CONTAINER]
    repository, tag = chroma["image"].split("@")[0].rsplit(":", 1)
    assert tag == pinned
    # and that tag is a mirror of the official image of the same version
    build = synth_stack(stack).one("docker-build:index:Image", "images-chroma").raw_inputs
    assert build["dockerfile"]["inline"].strip() == f"FROM chromadb/chroma:{pinned}"
    assert build["tags"] == [f"{repository}:{pinned}"]


@pytest.mark.parametrize("stack", STACKS)
def test_images_are_built_for_arm64_and_pushed_to_stack_ecr_repositories(stack):
    result = synth_stack(stack)
    repos = {r.name: r for r in result.of_type("aws:ecr/repository:Repository")}
    builds = result.of_type("docker-build:index:Image")
    assert {b.name for b in builds if b.parent == "images"} == {"images-app", "images-chroma", "images-nginx"}
    # besides those, only the batch workflow's Lambda image, when the workflow is on
    assert {b.name for b in builds if b.parent != "images"} <= {"batch-lambda"}
    for build in builds:
        inputs = build.raw_inputs
        assert inputs["platforms"] == ["linux/arm64"]
        assert inputs["push"] is True
        url = f"123456789012.dkr.ecr.us-east-1.amazonaws.com/{repos[build.name].id}"
        assert all(t.startswith(url + ":") for t in inputs["tags"])
        assert inputs["registries"][0]["address"] == url
    # No image is pulled from Docker Hub when a task starts: every container image is in our ECR.
    for task in result.of_type("aws:ecs/taskDefinition:TaskDefinition"):
        for container in container_definitions(result, task.name):
            assert ".dkr.ecr.us-east-1.amazonaws.com/images-" in container["image"]
            assert "@sha256:" in container["image"]  # pinned by digest: a rebuild makes a new revision
    app = next(b for b in builds if b.name == "images-app").raw_inputs
    assert app["dockerfile"]["location"] == "docker/Dockerfile"
    assert (ROOT / app["dockerfile"]["location"]).is_file()
    nginx = next(b for b in builds if b.name == "images-nginx").raw_inputs
    assert nginx["dockerfile"]["inline"].strip() == f"FROM {c.NGINX_IMAGE}"


def test_project_dockerfile_installs_only_boto3_zstandard_and_the_package():
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim-trixie$", text, re.M)
    assert "COPY ontosearch/ /app/ontosearch/" in text
    assert "pip install -r /tmp/requirements.txt" in text
    pins = [line for line in (ROOT / "docker" / "requirements.txt").read_text().splitlines()
            if line and not line.startswith("#")]
    assert [p.split("==")[0] for p in pins] == ["boto3", "zstandard"]
    for heavy in ("chromadb", "torch", "numpy"):
        assert f"pip install {heavy}" not in text


def test_extra_containers_are_appended_and_names_stay_unique():
    spec = TaskSpec(app_image="app", chroma_image="chroma", proxy_image="nginx", bucket="b",
                    token_secret_arn="arn:t", admin_token_secret_arn="arn:a", log_group="g",
                    region="eu-west-1",
                    snapshot_version="v7", restore_args=("--chroma-version", "1.5.9"))
    agent = {"name": c.TASK_AGENT_CONTAINER, "image": "app", "essential": True}
    containers = build_containers(spec, extra_containers=[agent])
    assert [x["name"] for x in containers] == [c.RESTORE_CONTAINER, c.CHROMA_CONTAINER, c.PROXY_CONTAINER,
                                               c.TASK_AGENT_CONTAINER]
    assert containers[0]["command"][-2:] == ["--chroma-version", "1.5.9"]
    assert "v7" in containers[0]["command"]
    with pytest.raises(ValueError, match="repeated: proxy"):
        build_containers(spec, extra_containers=[{"name": c.PROXY_CONTAINER, "image": "x"}])


# The project image installs only boto3 and zstandard on top of python:3.11-slim (docker/Dockerfile).
# Simulate it: block every import that is neither stdlib nor those packages' trees nor this package.
_IMAGE_IMPORT_GUARD = r"""
import importlib, importlib.abc, runpy, sys
ALLOWED = {"ontosearch", "boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six",
           "zstandard"}
class NotInImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in sys.stdlib_module_names or top in ALLOWED:
            return None
        raise ModuleNotFoundError(f"No module named {name!r} (not installed in the project image)")
sys.meta_path.insert(0, NotInImage())
if sys.argv[1] == "--import":
    importlib.import_module(sys.argv[2])
else:
    sys.argv = ["ontosearch", *sys.argv[1:]]
    runpy.run_module("ontosearch", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("command", [c.RESTORE_CONTAINER + "-snapshot", c.TASK_AGENT_CONTAINER])
def test_commands_of_the_project_image_need_only_stdlib_and_boto3(command):
    import subprocess
    import sys

    from ontosearch.__main__ import COMMANDS

    if command not in COMMANDS:
        pytest.skip(f"{command} is not a command")
    proc = subprocess.run([sys.executable, "-c", _IMAGE_IMPORT_GUARD, command, "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage" in proc.stdout.lower()


@pytest.mark.parametrize("compression", ["gz", "xz", "zst"])
def test_the_project_image_restores_every_compression_build_snapshot_writes(compression, tmp_path):
    """build-snapshot offers each of these (manifest.COMPRESSIONS); the task's restore container runs
    the project image, so a snapshot in any of them must unpack with only that image's packages."""
    import subprocess
    import sys

    from snapshot_helpers import make_snapshot

    from ontosearch.manifest import COMPRESSIONS

    assert compression in COMPRESSIONS and set(COMPRESSIONS) == {"gz", "xz", "zst"}
    make_snapshot(tmp_path, tmp_path / "snapshot", {"cl_restore": 12}, compression=compression)
    proc = subprocess.run([sys.executable, "-c", _IMAGE_IMPORT_GUARD, c.RESTORE_CONTAINER + "-snapshot",
                           "--from", str(tmp_path / "snapshot"), "--into", str(tmp_path / "data")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["collections"] == ["cl_restore"]


def test_image_import_guard_refuses_a_package_the_image_lacks():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _IMAGE_IMPORT_GUARD, "--import", "ontosearch.embedders"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    # The embedders need numpy, which the image lacks: the guard must make that visible.
    assert proc.returncode != 0 and "not installed in the project image" in proc.stderr


def test_configured_snapshot_version_and_task_size_reach_the_task():
    from pulumi_harness import synth_with

    result = synth_with("dev", {"ontosearch:snapshotVersion": "20260101T000000Z-abc1234",
                                "ontosearch:cpu": 2048, "ontosearch:memory": 8192,
                                "ontosearch:ephemeralStorageGiB": 40})
    restore = _by_name(container_definitions(result, SERVICE_TASK))[c.RESTORE_CONTAINER]
    assert restore["command"][restore["command"].index("--version") + 1] == "20260101T000000Z-abc1234"
    task = result.one("aws:ecs/taskDefinition:TaskDefinition", SERVICE_TASK).raw_inputs
    assert (task["cpu"], task["memory"], task["ephemeralStorage"]["sizeInGib"]) == ("2048", "8192", 40)
