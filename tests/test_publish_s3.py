"""Publishing to S3 (moto) and restoring from it: versioned keys, an atomic forward-only pointer,
retention that never deletes the pointed version, racing publishers, and every way S3 can hold a
broken snapshot. The restored data is opened by a real `chroma run`."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest
from moto import mock_aws
from snapshot_helpers import SNAPSHOT_COLLECTIONS, copy_snapshot

from ontosearch import restore as restore_cli
from ontosearch import snapshot_store
from ontosearch.archive import ArchiveError
from ontosearch.constants import MANIFEST_NAME, POINTER_KEY, SNAPSHOT_PREFIX
from ontosearch.manifest import Manifest
from ontosearch.restore import STAGING_PREFIX, RestoreError, read_restored_manifest, restore_from_s3
from ontosearch.snapshot_store import (
    SnapshotStore,
    StoreError,
    apply_retention,
    list_versions,
    publish_snapshot,
    read_pointer,
)

pytest_plugins = ["snapshot_fixtures"]

BUCKET = "ontosearch-snapshots-test"
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def _quiet(_message: str) -> None:
    pass


@pytest.fixture
def s3(monkeypatch):
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        yield client


def _publish(snap: Path, s3, when: datetime, keep: int | None = None):
    return publish_snapshot(snap, BUCKET, s3=s3, log=_quiet, now=when, keep=keep)


def _keys(s3) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []))


def test_publish_uploads_a_versioned_snapshot_and_points_latest_at_it(s3, snapshot_pair, tmp_path):
    a, _ = snapshot_pair
    local = Manifest.load(a)
    result = _publish(a, s3, T0)
    version = result.version
    assert version == f"20260301T120000Z-{local.archive.sha256[:8]}"
    assert result.pointer_moved and result.current == version
    assert _keys(s3) == [f"{SNAPSHOT_PREFIX}/{version}/{MANIFEST_NAME}",
                         f"{SNAPSHOT_PREFIX}/{version}/{local.archive.name}", POINTER_KEY]
    manifest_key = f"{SNAPSHOT_PREFIX}/{version}/{MANIFEST_NAME}"
    remote = Manifest.from_json(s3.get_object(Bucket=BUCKET, Key=manifest_key)["Body"].read())
    assert remote.version == version and remote.archive == local.archive
    pointer = json.loads(s3.get_object(Bucket=BUCKET, Key=POINTER_KEY)["Body"].read())
    assert pointer["version"] == version and pointer["archive_sha256"] == local.archive.sha256

    restored = restore_from_s3(BUCKET, "latest", tmp_path / "data", s3=s3, log=_quiet)
    assert restored.version == version
    assert read_restored_manifest(tmp_path / "data").version == version


def test_publishing_the_current_archive_again_uploads_nothing(s3, snapshot_pair):
    a, _ = snapshot_pair
    first = _publish(a, s3, T0)
    keys = _keys(s3)
    again = _publish(a, s3, T0 + timedelta(minutes=5))
    assert again.already_published and again.version == first.version
    assert _keys(s3) == keys


def test_newer_version_becomes_latest_and_older_stays_restorable(s3, snapshot_pair, tmp_path):
    a, b = snapshot_pair
    va = _publish(a, s3, T0).version
    vb = _publish(b, s3, T0 + timedelta(hours=1)).version
    assert read_pointer(s3, SnapshotStore(BUCKET)).version == vb
    assert restore_from_s3(BUCKET, "latest", tmp_path / "latest", s3=s3, log=_quiet).version == vb
    older = restore_from_s3(BUCKET, va, tmp_path / "older", s3=s3, log=_quiet)
    assert older.archive.sha256 == Manifest.load(a).archive.sha256


def test_pointer_never_moves_back_to_an_older_version(s3, snapshot_pair):
    a, b = snapshot_pair
    newer = _publish(b, s3, T0 + timedelta(hours=1))
    late = _publish(a, s3, T0)  # a slow publisher that started earlier
    assert not late.pointer_moved
    assert late.current == newer.version
    assert read_pointer(s3, SnapshotStore(BUCKET)).version == newer.version


def test_retention_keeps_n_versions_and_never_the_pointed_one_is_deleted(s3, snapshot_pair):
    a, b = snapshot_pair
    versions = [_publish((a, b)[i % 2], s3, T0 + timedelta(hours=i)).version for i in range(4)]
    store = SnapshotStore(BUCKET)
    # An upload in flight (newer than the pointer, no manifest yet) and a crashed one (old, no manifest).
    s3.put_object(Bucket=BUCKET, Key=f"{SNAPSHOT_PREFIX}/20990101T000000Z-inflight/persist.tar.gz", Body=b"x")
    s3.put_object(Bucket=BUCKET, Key=f"{SNAPSHOT_PREFIX}/20000101T000000Z-crashed/persist.tar.gz", Body=b"x")
    deleted = apply_retention(s3, store, keep=2, now=datetime.now(UTC) + timedelta(hours=2))
    assert sorted(deleted) == sorted(["20000101T000000Z-crashed", versions[0], versions[1]])
    remaining = {v.version for v in list_versions(s3, store)}
    assert remaining == {versions[2], versions[3], "20990101T000000Z-inflight"}
    assert read_pointer(s3, store).version == versions[3]

    assert apply_retention(s3, store, keep=1, now=datetime.now(UTC) + timedelta(hours=2)) == [versions[2]]
    with pytest.raises(StoreError, match="--keep must be at least 1"):
        apply_retention(s3, store, keep=0)


def test_publish_with_keep_applies_retention(s3, snapshot_pair):
    a, b = snapshot_pair
    first = _publish(a, s3, T0, keep=1)
    second = _publish(b, s3, T0 + timedelta(hours=1), keep=1)
    assert second.deleted == [first.version]
    assert [v.version for v in list_versions(s3, SnapshotStore(BUCKET))] == [second.version]


@pytest.mark.parametrize("rival_is_newer", [True, False])
def test_pointer_swap_is_compare_and_swap(s3, snapshot_pair, rival_is_newer):
    """Another publisher switches the pointer between our read and our write: our conditional write
    fails, we read the pointer again and decide again: leave a newer version, replace an older one."""
    a, b = snapshot_pair
    rival = boto3.client("s3", region_name="us-east-1")
    rival_time = T0 + timedelta(hours=2 if rival_is_newer else 0)
    interleaved: list[str] = []

    def rival_publishes_first(params, **_kwargs):
        if params.get("Key") == POINTER_KEY and not interleaved:
            interleaved.append(publish_snapshot(b, BUCKET, s3=rival, log=_quiet, now=rival_time).version)

    s3.meta.events.register("before-parameter-build.s3.PutObject", rival_publishes_first)
    try:
        ours = _publish(a, s3, T0 + timedelta(hours=1))
    finally:
        s3.meta.events.unregister("before-parameter-build.s3.PutObject", rival_publishes_first)
    assert interleaved, "the rival publish ran between our pointer read and write"
    pointer = read_pointer(s3, SnapshotStore(BUCKET)).version
    if rival_is_newer:
        assert not ours.pointer_moved and pointer == interleaved[0]
    else:
        assert ours.pointer_moved and pointer == ours.version


def test_conditional_pointer_write_refuses_a_stale_etag(s3, snapshot_pair):
    """The S3 primitive the pointer relies on: a PUT with an old ETag fails with 412."""
    a, b = snapshot_pair
    _publish(a, s3, T0)
    stale = read_pointer(s3, SnapshotStore(BUCKET)).etag
    _publish(b, s3, T0 + timedelta(hours=1))
    with pytest.raises(s3.exceptions.ClientError) as info:
        s3.put_object(Bucket=BUCKET, Key=POINTER_KEY, Body=b"{}", IfMatch=stale)
    assert info.value.response["Error"]["Code"] == "PreconditionFailed"


def test_racing_publishers_leave_the_pointer_on_one_complete_version(s3, snapshot_pair, tmp_path):
    a, b = snapshot_pair
    sources = [copy_snapshot((a, b)[i % 2], tmp_path / f"src{i}") for i in range(6)]
    results: list = []
    errors: list = []
    barrier = threading.Barrier(len(sources))

    def publisher(i: int) -> None:
        client = boto3.client("s3", region_name="us-east-1")
        barrier.wait()
        try:
            results.append(publish_snapshot(sources[i], BUCKET, s3=client, log=_quiet,
                                            now=T0 + timedelta(seconds=i)))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=publisher, args=(i,)) for i in range(len(sources))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    published = {r.version for r in results}
    pointer = read_pointer(s3, SnapshotStore(BUCKET))
    assert pointer.version in published
    manifest = restore_from_s3(BUCKET, "latest", tmp_path / "data", s3=s3, log=_quiet)
    assert manifest.version == pointer.version
    assert pointer.archive_sha256 == manifest.archive.sha256


def _assert_nothing_restored(target: Path) -> None:
    assert not target.exists()
    assert not [p for p in target.parent.iterdir() if p.name.startswith(STAGING_PREFIX)]


def test_nothing_published_is_refused(s3, tmp_path):
    with pytest.raises(RestoreError, match=f"^no snapshot published yet under s3://{BUCKET}/{SNAPSHOT_PREFIX}/;"):
        restore_from_s3(BUCKET, "latest", tmp_path / "data", s3=s3, log=_quiet)
    _assert_nothing_restored(tmp_path / "data")


def test_pointer_to_a_missing_version_is_refused(s3, snapshot_pair, tmp_path):
    _publish(snapshot_pair[0], s3, T0)
    s3.put_object(Bucket=BUCKET, Key=POINTER_KEY,
                  Body=json.dumps({"version": "20990101T000000Z-deadbeef", "archive_sha256": ""}).encode())
    expected = f"s3://{BUCKET}/{POINTER_KEY} names version 20990101T000000Z-deadbeef but .* does not exist"
    with pytest.raises(RestoreError, match=expected):
        restore_from_s3(BUCKET, "latest", tmp_path / "data", s3=s3, log=_quiet)
    _assert_nothing_restored(tmp_path / "data")


def test_unknown_explicit_version_is_refused(s3, tmp_path):
    with pytest.raises(RestoreError, match="snapshot version 20200101T000000Z-00000000 not found"):
        restore_from_s3(BUCKET, "20200101T000000Z-00000000", tmp_path / "data", s3=s3, log=_quiet)
    with pytest.raises(RestoreError, match="is not a snapshot version name"):
        restore_from_s3(BUCKET, "../etc", tmp_path / "data", s3=s3, log=_quiet)
    _assert_nothing_restored(tmp_path / "data")


def test_manifest_copied_from_another_version_is_refused(s3, snapshot_pair, tmp_path):
    va = _publish(snapshot_pair[0], s3, T0).version
    vb = _publish(snapshot_pair[1], s3, T0 + timedelta(hours=1)).version
    s3.copy_object(Bucket=BUCKET, Key=f"{SNAPSHOT_PREFIX}/{vb}/{MANIFEST_NAME}",
                   CopySource={"Bucket": BUCKET, "Key": f"{SNAPSHOT_PREFIX}/{va}/{MANIFEST_NAME}"})
    with pytest.raises(RestoreError, match=f"describes version {va}, not {vb}"):
        restore_from_s3(BUCKET, vb, tmp_path / "data", s3=s3, log=_quiet)
    _assert_nothing_restored(tmp_path / "data")


def test_corrupt_or_missing_archive_in_s3_is_refused(s3, snapshot_pair, tmp_path):
    version = _publish(snapshot_pair[0], s3, T0).version
    key = f"{SNAPSHOT_PREFIX}/{version}/persist.tar.gz"
    body = bytearray(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    body[len(body) // 3] ^= 0x10
    s3.put_object(Bucket=BUCKET, Key=key, Body=bytes(body))
    with pytest.raises(RestoreError, match=f"snapshot {version}: archive \\S+ has sha256 .*corrupt"):
        restore_from_s3(BUCKET, "latest", tmp_path / "data", s3=s3, log=_quiet)
    _assert_nothing_restored(tmp_path / "data")

    s3.delete_object(Bucket=BUCKET, Key=key)
    with pytest.raises(RestoreError, match=f"archive s3://{BUCKET}/{key} does not exist"):
        restore_from_s3(BUCKET, version, tmp_path / "data", s3=s3, log=_quiet)
    _assert_nothing_restored(tmp_path / "data")


def test_damaged_local_snapshot_is_not_published(s3, snapshot_pair, tmp_path):
    snap = copy_snapshot(snapshot_pair[0], tmp_path / "snap")
    archive = snap / "persist.tar.gz"
    data = bytearray(archive.read_bytes())
    data[-10] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match="sha256"):
        _publish(snap, s3, T0)
    assert _keys(s3) == []


def test_cli_publish_then_restore_latest(s3, snapshot_pair, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(snapshot_store, "s3_client", lambda region=None: s3)
    monkeypatch.setattr(restore_cli, "s3_client", lambda region=None: s3)
    assert snapshot_store.main([str(snapshot_pair[0]), "--bucket", BUCKET, "--keep", "3"]) == 0
    published = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert published["pointer_moved"] and published["current"] == published["version"]

    target = tmp_path / "data"
    assert restore_cli.main(["--bucket", BUCKET, "--version", "latest", "--into", str(target)]) == 0
    assert json.loads(capsys.readouterr().out.strip())["restored"] == published["version"]

    code = restore_cli.main(["--bucket", BUCKET, "--version", "latest", "--into", str(tmp_path / "other"),
                             "--chroma-version", "1.4.0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1] == (f"restore-snapshot: snapshot {published['version']} was built with chroma 1.5.9 "
                       "but the server is 1.4.0; rebuild or pin chroma_version: 1.5.9")

    assert snapshot_store.main([str(tmp_path / "nowhere"), "--bucket", BUCKET]) == 1
    assert "no manifest.json at" in capsys.readouterr().err


def test_restored_snapshot_opens_in_a_fresh_chroma_server_and_answers_queries(s3, snapshot_pair, tmp_path):
    import chromadb

    from ontosearch.chroma_process import ChromaServer

    _publish(snapshot_pair[0], s3, T0)
    target = tmp_path / "data"
    manifest = restore_from_s3(BUCKET, "latest", target, s3=s3, log=_quiet)
    with ChromaServer(target) as server:
        client = chromadb.HttpClient(host=server.host, port=server.port)
        assert sorted(c.name for c in client.list_collections()) == sorted(SNAPSHOT_COLLECTIONS)
        for entry in manifest.collections:
            collection = client.get_collection(entry.name)
            assert collection.count() == entry.records
            probe = collection.get(ids=["T:0000007"], include=["embeddings"])
            hits = collection.query(query_embeddings=[probe["embeddings"][0]], n_results=3)
            assert hits["ids"][0][0] == "T:0000007"


def test_custom_prefix_keeps_its_own_pointer_and_versions(s3, snapshot_pair, tmp_path):
    result = publish_snapshot(snapshot_pair[0], BUCKET, prefix="team/snaps/", s3=s3, log=_quiet, now=T0)
    assert f"team/snaps/{result.version}/{MANIFEST_NAME}" in _keys(s3)
    assert "team/snaps/LATEST" in _keys(s3) and POINTER_KEY not in _keys(s3)
    with pytest.raises(RestoreError, match="no snapshot published yet"):
        restore_from_s3(BUCKET, "latest", tmp_path / "default", s3=s3, log=_quiet)
    restored = restore_from_s3(BUCKET, "latest", tmp_path / "data", prefix="team/snaps", s3=s3, log=_quiet)
    assert restored.version == result.version


def test_task_restore_command_against_an_s3_endpoint(snapshot_pair, tmp_path, monkeypatch):
    """The restore container's exact command in a fresh interpreter, S3 served by a moto server
    (AWS_ENDPOINT_URL): it restores LATEST, imports no chromadb/numpy/torch, and on a corrupt
    archive exits 1 with one line and nothing restored."""
    import os
    import subprocess
    import sys

    from moto.server import ThreadedMotoServer

    from ontosearch.chroma_process import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
        env.pop("AWS_PROFILE", None)
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"):
            monkeypatch.setenv(name, env[name])
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        version = publish_snapshot(snapshot_pair[0], BUCKET, s3=client, log=_quiet, now=T0).version
        script = (
            "import sys\n"
            "from ontosearch.__main__ import main\n"
            "code = main(sys.argv[1:])\n"
            "heavy = sorted(m for m in ('chromadb', 'numpy', 'torch', 'pulumi') if m in sys.modules)\n"
            "print('heavy', heavy)\n"
            "sys.exit(code)\n"
        )
        repo = Path(__file__).resolve().parents[1]

        def run(target: Path) -> subprocess.CompletedProcess:
            return subprocess.run(
                [sys.executable, "-c", script, "restore-snapshot", "--bucket", BUCKET, "--version", "latest",
                 "--into", str(target)],
                capture_output=True, text=True, timeout=120, cwd=repo, env=env,
            )

        ok = run(tmp_path / "data")
        assert ok.returncode == 0, ok.stderr
        assert "heavy []" in ok.stdout
        assert read_restored_manifest(tmp_path / "data").version == version

        key = f"{SNAPSHOT_PREFIX}/{version}/persist.tar.gz"
        body = bytearray(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
        body[1000] ^= 0x01
        client.put_object(Bucket=BUCKET, Key=key, Body=bytes(body))
        bad = run(tmp_path / "bad")
        assert bad.returncode == 1
        lines = bad.stderr.strip().splitlines()
        assert lines[-1].startswith(f"restore-snapshot: snapshot {version}: archive persist.tar.gz has")
        assert not any(line.startswith("Traceback") for line in lines)
        _assert_nothing_restored(tmp_path / "bad")
    finally:
        server.stop()
