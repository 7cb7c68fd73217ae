"""A new stack's first deploy: an empty bucket reads as "no snapshot published yet" (with the command
that publishes one), not as AccessDenied; the service's restore waits for the first snapshot and then
restores it; a real refusal (wrong bucket, a role without its grants) is still reported as one.

Each identity is a moto IAM user holding the policy document the stack synthesizes for that role
(the service task's role for restore, the validate Lambda's role for validate), so moto checks every
call's action and resource ARN. What moto does not model (the s3:prefix condition of ListBucket, and
S3's 403 for a missing key to a caller without ListBucket) is added by `s3_access_rules`, which
names its sources.
"""

from __future__ import annotations

import json
import shlex
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import pytest
from moto import mock_aws
from moto.core.authorization import enable_iam_authentication
from pulumi_harness import container_definitions, synth_with
from s3_access_rules import install

from lambdas import validate as validate_lambda
from ontosearch import restore
from ontosearch.__main__ import COMMANDS
from ontosearch.constants import CHROMA_CONTAINER, ENV_WORKFLOW_BUCKET, RESTORE_CONTAINER
from ontosearch.restore import RestoreError, restore_from_s3
from ontosearch.snapshot_store import (
    SnapshotAccessError,
    SnapshotStore,
    StoreError,
    publish_snapshot,
    read_pointer,
)
from ontosearch.workflow.definition import restore_command_expression
from ontosearch.workflow.errors import InvalidInputError

pytest_plugins = ["snapshot_fixtures"]

ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
OTHER_BUCKET = "someone-elses-bucket"
ADMIN = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
LABELS_KEY = "inputs/labels.txt"


def _quiet(_message: str) -> None:
    pass


@dataclass(frozen=True)
class Stack:
    bucket: str
    task_policy: dict
    validate_policy: dict
    service_restore_command: list[str]
    batch_containers: list[dict]
    service_containers: list[dict]


@pytest.fixture(scope="module")
def stack() -> Stack:
    """The policies and restore command of the dev stack with the batch workflow, as synthesized."""
    result = synth_with("dev", {"ontosearch:batchWorkflow": True})
    bucket_arn = result.one("aws:s3/bucket:Bucket").state["arn"]
    service = container_definitions(result, "chroma-task")
    (restore_container,) = [x for x in service if x["name"] == RESTORE_CONTAINER]
    return Stack(
        bucket=bucket_arn.removeprefix("arn:aws:s3:::"),
        task_policy=json.loads(result.one(ROLE_POLICY, "chroma-task-policy").raw_inputs["policy"]),
        validate_policy=json.loads(result.one(ROLE_POLICY, "batch-validate-policy").raw_inputs["policy"]),
        service_restore_command=restore_container["command"],
        batch_containers=container_definitions(result, "batch-task"),
        service_containers=service,
    )


def _without(policy: dict, sid: str) -> dict:
    statements = [s for s in policy["Statement"] if s.get("Sid") != sid]
    assert len(statements) == len(policy["Statement"]) - 1, f"no statement {sid}"
    return {**policy, "Statement": statements}


@dataclass
class Aws:
    bucket: str
    identities: dict[str, tuple[str, str, dict]]
    monkeypatch: pytest.MonkeyPatch

    def session(self, who: str) -> boto3.session.Session:
        key, secret, policy = self.identities[who]
        session = boto3.session.Session(aws_access_key_id=key, aws_secret_access_key=secret,
                                        region_name="us-east-1", botocore_session=botocore.session.Session())
        install(session.events, [policy])
        return session

    def s3(self, who: str) -> Any:
        return self.session(who).client("s3")

    def act_as(self, who: str) -> None:
        """Code that makes its own boto3 client (the CLI, the Lambda handler) runs as `who`."""
        self.monkeypatch.setattr(boto3, "DEFAULT_SESSION", self.session(who))


@pytest.fixture
def aws(monkeypatch, stack) -> Aws:
    for name, value in {"AWS_ACCESS_KEY_ID": "bootstrap", "AWS_SECRET_ACCESS_KEY": "bootstrap",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    with mock_aws():
        root = boto3.client("s3", region_name="us-east-1")
        for bucket in (stack.bucket, OTHER_BUCKET):
            root.create_bucket(Bucket=bucket)
        root.put_bucket_versioning(Bucket=stack.bucket, VersioningConfiguration={"Status": "Enabled"})
        iam = boto3.client("iam", region_name="us-east-1")
        policies = {
            "deployer": ADMIN,
            "task": stack.task_policy,
            "validate": stack.validate_policy,
            "validate-before": _without(stack.validate_policy, "ListSnapshots"),
            "task-without-read": _without(stack.task_policy, "ReadSnapshots"),
        }
        identities = {}
        for who, policy in policies.items():
            iam.create_user(UserName=who)
            iam.put_user_policy(UserName=who, PolicyName="role", PolicyDocument=json.dumps(policy))
            key = iam.create_access_key(UserName=who)["AccessKey"]
            identities[who] = (key["AccessKeyId"], key["SecretAccessKey"], policy)
        with enable_iam_authentication():
            yield Aws(stack.bucket, identities, monkeypatch)


def _expected_no_snapshot(bucket: str) -> str:
    return (f"no snapshot published yet under s3://{bucket}/snapshots/; publish one with "
            f"`python -m ontosearch build-snapshot --out ./snapshot && "
            f"python -m ontosearch publish-snapshot ./snapshot --bucket {bucket}`")


def _restore_cli(aws: Aws, argv: list[str], capsys) -> tuple[int, str]:
    aws.act_as("task")
    code = restore.main(argv)
    return code, capsys.readouterr().err


def _service_argv(stack: Stack, into: Path) -> list[str]:
    """The service's restore command as synthesized, after `python -m ontosearch`, into `into`."""
    command = list(stack.service_restore_command)
    assert command[:4] == ["python", "-m", "ontosearch", "restore-snapshot"]
    argv = command[4:]
    argv[argv.index("--into") + 1] = str(into)
    return argv


def _publish(aws: Aws, snapshot: Path) -> str:
    return publish_snapshot(snapshot, aws.bucket, s3=aws.s3("deployer"), log=_quiet).version


def _run_validate(aws: Aws, monkeypatch, who: str = "validate") -> dict:
    aws.act_as(who)
    monkeypatch.setenv(ENV_WORKFLOW_BUCKET, aws.bucket)
    return validate_lambda.handler({"request": {"input": f"s3://{aws.bucket}/{LABELS_KEY}", "ontology": "cl"},
                                    "execution": "first-run"})


# --- the rules the tests add to moto ------------------------------------------------------------

def test_the_added_s3_rules_apply_to_the_stacks_task_policy(aws) -> None:
    """Without these rules an empty bucket would answer 404 here and the 403 path would go untested."""
    task, deployer = aws.s3("task"), aws.s3("deployer")
    with pytest.raises(Exception) as caught:
        task.get_object(Bucket=aws.bucket, Key="snapshots/LATEST")
    assert caught.value.response["Error"]["Code"] == "AccessDenied"
    with pytest.raises(Exception) as caught:
        task.head_object(Bucket=aws.bucket, Key="snapshots/LATEST")
    assert caught.value.response["Error"]["Code"] == "403"
    with pytest.raises(Exception) as caught:
        task.list_objects_v2(Bucket=aws.bucket, Prefix="inputs/")  # outside the s3:prefix condition
    assert caught.value.response["Error"]["Code"] == "AccessDenied"
    assert task.list_objects_v2(Bucket=aws.bucket, Prefix="snapshots/LATEST")["KeyCount"] == 0
    with pytest.raises(Exception) as caught:  # moto's own check: another bucket's ARN
        task.list_objects_v2(Bucket=OTHER_BUCKET, Prefix="snapshots/")
    assert caught.value.response["Error"]["Code"] == "AccessDenied"
    with pytest.raises(Exception) as caught:  # a caller that may list gets the 404
        deployer.get_object(Bucket=aws.bucket, Key="snapshots/LATEST")
    assert caught.value.response["Error"]["Code"] == "NoSuchKey"


# --- an empty bucket ----------------------------------------------------------------------------

def test_restore_on_an_empty_bucket_says_no_snapshot_published_yet(aws, stack, capsys, tmp_path) -> None:
    code, err = _restore_cli(aws, ["--bucket", aws.bucket, "--into", str(tmp_path / "data")], capsys)
    assert code == 1
    assert err == f"restore-snapshot: {_expected_no_snapshot(aws.bucket)}\n"
    assert not (tmp_path / "data").exists()


def test_validate_on_an_empty_bucket_says_no_snapshot_published_yet(aws, monkeypatch) -> None:
    aws.s3("deployer").put_object(Bucket=aws.bucket, Key=LABELS_KEY, Body=b"T cell\n")
    with pytest.raises(InvalidInputError) as caught:
        _run_validate(aws, monkeypatch)
    assert str(caught.value) == _expected_no_snapshot(aws.bucket)


def test_the_message_names_commands_the_cli_has(aws) -> None:
    """The publish instruction is runnable: both commands exist, and publish reads what build wrote."""
    commands = _expected_no_snapshot(aws.bucket).split("publish one with `", 1)[1].rstrip("`")
    build, publish = (shlex.split(part) for part in commands.split("&&"))
    assert build[:3] == publish[:3] == ["python", "-m", "ontosearch"]
    assert build[3] == "build-snapshot" and publish[3] == "publish-snapshot"
    assert {build[3], publish[3]} <= set(COMMANDS)
    assert publish[4] == build[build.index("--out") + 1]
    assert publish[publish.index("--bucket") + 1] == aws.bucket


# --- once a snapshot is published ---------------------------------------------------------------

def test_a_published_snapshot_is_restored_by_the_service_command_and_resolved_by_validate(
        aws, stack, snapshot_pair, monkeypatch, capsys, tmp_path) -> None:
    version = _publish(aws, snapshot_pair[0])
    code, err = _restore_cli(aws, _service_argv(stack, tmp_path / "data"), capsys)
    assert code == 0, err
    assert restore.read_restored_manifest(tmp_path / "data").version == version
    aws.s3("deployer").put_object(Bucket=aws.bucket, Key=LABELS_KEY, Body=b"T cell\n")
    assert _run_validate(aws, monkeypatch)["job"]["snapshot"] == version


def test_a_waiting_restore_picks_up_a_snapshot_published_while_it_waits(aws, snapshot_pair, tmp_path) -> None:
    lines: list[str] = []
    outcome: dict[str, Any] = {}
    task = aws.s3("task")

    def run() -> None:
        try:
            outcome["manifest"] = restore_from_s3(aws.bucket, "latest", tmp_path / "data", s3=task,
                                                  log=lines.append, wait=True, poll_seconds=0.05)
        except Exception as exc:  # reported by the assertions below
            outcome["error"] = exc

    waiter = threading.Thread(target=run, daemon=True)
    waiter.start()
    deadline = time.monotonic() + 30
    while not lines and time.monotonic() < deadline and waiter.is_alive():
        time.sleep(0.02)
    time.sleep(0.3)  # several more polls, still nothing published
    assert waiter.is_alive() and "error" not in outcome, outcome.get("error")
    assert lines[0] == f"restore: {_expected_no_snapshot(aws.bucket)}; checking again every 0.05 s"
    assert len(lines) == 1, "the wait is logged once per WAIT_LOG_SECONDS, not on every poll"
    assert not (tmp_path / "data").exists()

    version = _publish(aws, snapshot_pair[0])
    waiter.join(timeout=60)
    assert not waiter.is_alive(), "restore kept waiting after the snapshot was published"
    assert "error" not in outcome, outcome.get("error")
    assert outcome["manifest"].version == version
    assert restore.read_restored_manifest(tmp_path / "data").version == version
    assert any(f"names {version} after" in line for line in lines)


def test_a_pointer_published_between_the_denied_read_and_the_listing_is_read_not_refused(
        aws, snapshot_pair) -> None:
    """The race a waiting restore runs: its GetObject of LATEST is refused (no object yet, and the
    task may not list without a prefix), the deployer publishes, and the listing then shows LATEST.
    That is a snapshot to read, not a refusal."""
    task = aws.s3("task")
    published: list[str] = []

    def publish_after_the_first_refusal(parsed: dict[str, Any], **_: Any) -> None:
        if not published and parsed.get("Error", {}).get("Code") == "AccessDenied":
            published.append(_publish(aws, snapshot_pair[0]))

    task.meta.events.register_last("after-call.s3.GetObject", publish_after_the_first_refusal)
    pointer = read_pointer(task, SnapshotStore(aws.bucket))
    assert published, "the first read was not refused: the race was not staged"
    assert pointer is not None and pointer.version == published[0]


def test_a_pinned_version_is_not_waited_for(aws, tmp_path) -> None:
    started = time.monotonic()
    with pytest.raises(RestoreError, match="snapshot version 20200101T000000Z-00000000 not found"):
        restore_from_s3(aws.bucket, "20200101T000000Z-00000000", tmp_path / "data", s3=aws.s3("task"),
                        log=_quiet, wait=True, poll_seconds=0.05)
    assert time.monotonic() - started < 10


# --- a real refusal is still one ----------------------------------------------------------------

def test_a_wrong_bucket_is_reported_as_access_denied_with_what_to_check(aws, capsys, tmp_path) -> None:
    code, err = _restore_cli(aws, ["--bucket", OTHER_BUCKET, "--into", str(tmp_path / "data")], capsys)
    assert code == 1
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"restore-snapshot: access denied listing s3://{OTHER_BUCKET}/snapshots/: check "
                          f"that {OTHER_BUCKET} is the stack's bucket (`pulumi stack output bucket_name`)")
    assert f"s3:ListBucket on arn:aws:s3:::{OTHER_BUCKET} with s3:prefix snapshots/*" in err


def test_a_waiting_restore_does_not_wait_on_a_refusal(aws, tmp_path) -> None:
    started = time.monotonic()
    with pytest.raises(SnapshotAccessError, match=f"access denied listing s3://{OTHER_BUCKET}/snapshots/"):
        restore_from_s3(OTHER_BUCKET, "latest", tmp_path / "data", s3=aws.s3("task"), log=_quiet, wait=True,
                        poll_seconds=0.05)
    assert time.monotonic() - started < 10


def test_a_bucket_that_does_not_exist_is_named(aws, tmp_path) -> None:
    with pytest.raises(StoreError, match="bucket no-such-bucket-here does not exist"):
        restore_from_s3("no-such-bucket-here", "latest", tmp_path / "data", s3=aws.s3("deployer"), log=_quiet)


def test_validate_without_its_list_grant_reports_the_refusal_not_a_missing_snapshot(aws, monkeypatch) -> None:
    """The validate role as it was before it could list snapshots/: its 403 is a refusal."""
    aws.s3("deployer").put_object(Bucket=aws.bucket, Key=LABELS_KEY, Body=b"T cell\n")
    with pytest.raises(InvalidInputError) as caught:
        _run_validate(aws, monkeypatch, who="validate-before")
    assert str(caught.value).startswith(f"access denied listing s3://{aws.bucket}/snapshots/: check that")
    assert "no snapshot published yet" not in str(caught.value)


def test_a_denied_read_of_an_existing_pointer_names_the_missing_grant(aws, snapshot_pair, capsys,
                                                                      tmp_path) -> None:
    _publish(aws, snapshot_pair[0])
    aws.act_as("task-without-read")
    assert restore.main(["--bucket", aws.bucket, "--into", str(tmp_path / "data")]) == 1
    err = capsys.readouterr().err
    assert err == (f"restore-snapshot: access denied reading s3://{aws.bucket}/snapshots/LATEST, which "
                   f"exists: check that the role may s3:GetObject on arn:aws:s3:::{aws.bucket}/snapshots/*; "
                   "S3 said: Access Denied\n")


# --- the task definitions -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["dev", "prod"])
def test_the_service_restore_waits_for_a_first_snapshot_and_nothing_times_it_out(name: str) -> None:
    """The ECS rules the wait relies on (sources in components/task_definition.py):
    - chroma starts only after restore exited 0 (dependsOn SUCCESS), so a waiting restore holds the
      task in PENDING: not in the target group, outside the grace period and the circuit breaker's
      failure count, which only counts tasks that stop;
    - a startTimeout on the container chroma depends on would stop the task once it passed, and on
      Fargate it can be at most 120 s (botocore's ECS model, ContainerDefinition.startTimeout)."""
    doc = botocore.session.get_session().get_service_model("ecs").shape_for(
        "ContainerDefinition").members["startTimeout"].documentation
    assert "The valid values for Fargate are 2-120 seconds" in doc
    containers = container_definitions(synth_with(name, {"ontosearch:batchWorkflow": True}), "chroma-task")
    by_name = {x["name"]: x for x in containers}
    restore_container = by_name[RESTORE_CONTAINER]
    command = restore_container["command"]
    assert command[command.index("--version") + 1] == "latest"
    assert "--wait-for-snapshot" in command
    assert restore_container["essential"] is False
    after_restore = {"containerName": RESTORE_CONTAINER, "condition": "SUCCESS"}
    assert after_restore in by_name[CHROMA_CONTAINER]["dependsOn"]
    assert [x["name"] for x in containers if "startTimeout" in x] == []


def test_the_batch_task_restores_its_resolved_version_without_waiting(stack) -> None:
    """An execution's task restores the version validate resolved; nothing to wait for there."""
    (batch_restore,) = [x for x in stack.batch_containers if x["name"] == RESTORE_CONTAINER]
    assert "--wait-for-snapshot" not in batch_restore["command"]
    assert "wait" not in restore_command_expression()
    assert "--version', $.job.snapshot" in restore_command_expression()
