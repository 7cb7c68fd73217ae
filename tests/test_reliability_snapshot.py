"""Snapshot integrity at the task level: a bad snapshot stops the task before Chroma serves anything.

The restore module's own tests (test_restore_integrity.py, test_publish_s3.py) show that restore
refuses each damaged snapshot with a message naming the problem and leaves no half-restored
directory. What is added here is issue 6's last clause, "the task's restore step fails so Chroma
never serves wrong data", on both task shapes:

- the local replica (`ontosearch serve`): for every kind of damage it exits non-zero with the
  restore message, never prints `ready`, never starts `chroma run` or nginx, and leaves no work dir;
- the Fargate task: the restore container runs `restore-snapshot ... --into /data`, which exits
  non-zero for a pointer to a missing version (run here as a subprocess against a moto S3 server),
  and every task definition the stacks declare starts Chroma only after restore exited 0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest
from reliability_fixtures import ROOT, ServeProcess
from snapshot_helpers import copy_snapshot

from ontosearch.constants import (
    CHROMA_CONTAINER,
    CHROMA_VERSION,
    DATA_DIR,
    MANIFEST_NAME,
    POINTER_KEY,
    PROXY_CONTAINER,
    RESTORE_CONTAINER,
)
from ontosearch.manifest import Manifest

pytest_plugins = ["snapshot_fixtures"]


def _archive(snap: Path) -> Path:
    return snap / Manifest.load(snap).archive.name


def _truncate(snap: Path, _other: Path) -> None:
    archive = _archive(snap)
    with open(archive, "r+b") as handle:
        handle.truncate(archive.stat().st_size // 2)


def _flip_byte(snap: Path, _other: Path) -> None:
    archive = _archive(snap)
    data = bytearray(archive.read_bytes())
    data[len(data) // 3] ^= 0x40
    archive.write_bytes(bytes(data))


def _foreign_manifest(snap: Path, other: Path) -> None:
    (snap / MANIFEST_NAME).write_bytes((other / MANIFEST_NAME).read_bytes())


def _edit_manifest(change: Callable[[dict], None]) -> Callable[[Path, Path], None]:
    def edit(snap: Path, _other: Path) -> None:
        data = json.loads((snap / MANIFEST_NAME).read_text())
        change(data)
        (snap / MANIFEST_NAME).write_text(json.dumps(data))
    return edit


DAMAGE = {
    "truncated-archive": (_truncate, "is truncated"),
    "flipped-byte": (_flip_byte, "the archive is corrupt"),
    "manifest-from-another-archive": (_foreign_manifest, "manifest belongs to another archive"),
    "wrong-chroma-version": (_edit_manifest(lambda d: d.update(chroma_version="1.6.0")),
                             f"built with chroma 1.6.0 but the server is {CHROMA_VERSION}"),
    "missing-collection": (_edit_manifest(lambda d: d["collections"].append(
        {"name": "mondo_test", "ontology": "mondo", "source_version": "test", "terms": 5, "records": 5})),
        "mondo_test named in the manifest are missing from the archive"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_serve_never_starts_chroma_on_a_damaged_snapshot(snapshot_pair, tmp_path: Path, damage: str) -> None:
    change, message = DAMAGE[damage]
    snap = copy_snapshot(snapshot_pair[0], tmp_path / "snap")
    change(snap, snapshot_pair[1])
    tmpdir = tmp_path / "tmp"
    serve = ServeProcess(snap, tmpdir)
    with pytest.raises(AssertionError, match="before ready"):
        serve.start(timeout=60)
    try:
        stderr = "\n".join(serve.stderr)
        assert serve.process.returncode == 1
        assert "could not start" in stderr and message in stderr, stderr
        assert "Traceback" not in stderr
        assert serve.stdout == []                      # never `ready`
        assert "chroma pid" not in stderr and "auth proxy pid" not in stderr
        assert list(tmpdir.iterdir()) == []            # no restored data, no proxy config left
    finally:
        serve.stop()


# --- the Fargate task ---------------------------------------------------------------------------

@pytest.fixture
def moto_s3(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    from moto.server import ThreadedMotoServer

    from ontosearch.chroma_process import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
           "PYTHONPATH": str(ROOT)}
    env.pop("AWS_PROFILE", None)
    try:
        yield f"http://127.0.0.1:{port}", env
    finally:
        server.stop()


def test_restore_container_command_fails_on_a_pointer_to_a_missing_version(snapshot_pair, tmp_path, moto_s3):
    from ontosearch.snapshot_store import SnapshotStore, delete_version, publish_snapshot

    endpoint, env = moto_s3
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    bucket = "ontosearch-task-restore"
    s3.create_bucket(Bucket=bucket)
    version = publish_snapshot(snapshot_pair[0], bucket, s3=s3, log=lambda _m: None).version
    delete_version(s3, SnapshotStore(bucket), version)   # the pointer still names it
    assert json.loads(s3.get_object(Bucket=bucket, Key=POINTER_KEY)["Body"].read())["version"] == version

    into = tmp_path / "data"
    completed = subprocess.run(
        [sys.executable, "-m", "ontosearch", "restore-snapshot", "--bucket", bucket, "--version", "latest",
         "--into", str(into)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert completed.returncode == 1
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("restore-snapshot: ") and version in lines[0], lines
    assert "does not exist" in lines[0] and "Traceback" not in completed.stderr
    assert not into.exists()


def _task_definitions() -> list[tuple[str, list[dict]]]:
    from pulumi_harness import STACKS, synth_with

    found = []
    for stack in STACKS:
        result = synth_with(stack, {"ontosearch:batchWorkflow": True})
        for task in result.of_type("aws:ecs/taskDefinition:TaskDefinition"):
            found.append((f"{stack}/{task.name}", json.loads(task.raw_inputs["containerDefinitions"])))
    return found


def test_every_task_starts_chroma_only_after_a_successful_restore() -> None:
    """ECS does not start a container whose SUCCESS dependency exited non-zero; Chroma and the proxy
    are essential, so a failed restore stops the task before anything answers."""
    tasks = _task_definitions()
    assert len(tasks) >= 4  # the service's and the batch workflow's, in both stacks
    for label, containers in tasks:
        by_name = {c["name"]: c for c in containers}
        restore, chroma = by_name[RESTORE_CONTAINER], by_name[CHROMA_CONTAINER]
        proxy = by_name[PROXY_CONTAINER]
        assert restore["essential"] is False, label
        assert "restore-snapshot" in restore["command"] and restore["command"][-2:] == ["--into", DATA_DIR]
        assert {"containerName": RESTORE_CONTAINER, "condition": "SUCCESS"} in chroma["dependsOn"], label
        assert chroma["essential"] is True and proxy["essential"] is True, label
        # The proxy (the only way in) waits for Chroma, which waits for the restore.
        assert any(d["containerName"] == CHROMA_CONTAINER for d in proxy["dependsOn"]), label
