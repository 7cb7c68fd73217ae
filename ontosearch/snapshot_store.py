"""Snapshots in S3: versioned keys, an atomically switched pointer, retention. `publish-snapshot`.

Layout under a prefix (default `snapshots`):

    <prefix>/<version>/<archive>        uploaded first
    <prefix>/<version>/manifest.json    uploaded second; a version is complete once its manifest exists
    <prefix>/LATEST                     JSON naming the current version; switched last

Why readers never see half a version: the pointer only ever names a version whose archive and manifest
are already in place, and a PUT of a small object is atomic in S3. Why two publishers cannot corrupt it:
the pointer is replaced by compare-and-swap (S3 conditional writes, `If-Match` on the ETag read, or
`If-None-Match: *` when there is none yet) and it only moves forward (versions sort by their UTC
timestamp), so a slow publisher never rolls back a newer one and the pointer always ends on one complete
version. Retention deletes only versions older than the pointed one (a newer one may be about to be
pointed at by another publisher), keeping `keep` versions including the pointed one.

Standard library at module level, boto3 when S3 is used: the task's restore step imports this module.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ontosearch.archive import ArchiveError, check_archive_file
from ontosearch.constants import MANIFEST_NAME, POINTER_NAME, SNAPSHOT_PREFIX
from ontosearch.manifest import VERSION_PATTERN, Manifest, ManifestError, utc_now_iso

# An unfinished version (archive without manifest) older than this is a crashed publish, not one in flight.
STALE_UPLOAD_AGE = timedelta(hours=1)
_CAS_ATTEMPTS = 20


class StoreError(RuntimeError):
    """S3 holds no usable snapshot where one was asked for, or publishing could not finish."""


class SnapshotAccessError(StoreError):
    """S3 refused a request whatever the key: a wrong bucket, a role without the grants, bad credentials."""


# Error codes: botocore reports a HEAD's status as the code ("404", "403"); other calls name it.
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_DENIED = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled"}
_BAD_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"}


def s3_client(region: str | None = None) -> Any:
    """A boto3 S3 client (endpoint from AWS_ENDPOINT_URL, region and credentials from the environment)."""
    import boto3

    return boto3.client("s3", region_name=region)


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def is_aws_error(exc: BaseException) -> bool:
    """An error raised by boto3/botocore (credentials, network, a refused request)."""
    return type(exc).__module__.split(".")[0] in {"botocore", "boto3", "s3transfer"}




@dataclass(frozen=True)
class SnapshotStore:
    """Where the snapshots of one bucket/prefix live."""

    bucket: str
    prefix: str = SNAPSHOT_PREFIX

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefix", self.prefix.strip("/"))
        if not self.prefix:
            raise StoreError("the snapshot prefix must not be empty")

    @property
    def pointer_key(self) -> str:
        return f"{self.prefix}/{POINTER_NAME}"

    def version_prefix(self, version: str) -> str:
        return f"{self.prefix}/{version}/"

    def manifest_key(self, version: str) -> str:
        return f"{self.prefix}/{version}/{MANIFEST_NAME}"

    def archive_key(self, version: str, archive_name: str) -> str:
        return f"{self.prefix}/{version}/{archive_name}"

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"


@dataclass(frozen=True)
class Pointer:
    version: str
    archive_sha256: str
    updated: str
    etag: str


def publish_command(store: SnapshotStore) -> str:
    """The commands that put a first snapshot where `store` is (what a user runs after a first deploy)."""
    prefix = "" if store.prefix == SNAPSHOT_PREFIX else f" --prefix {store.prefix}"
    return (f"`python -m ontosearch build-snapshot --out ./snapshot && "
            f"python -m ontosearch publish-snapshot ./snapshot --bucket {store.bucket}{prefix}`")


def no_snapshot_message(store: SnapshotStore) -> str:
    """What restore and the workflow's validate step say when nothing was ever published."""
    return (f"no snapshot published yet under {store.url(store.prefix + '/')}; "
            f"publish one with {publish_command(store)}")


def _s3_said(exc: BaseException) -> str:
    error = (getattr(exc, "response", None) or {}).get("Error", {})
    return str(error.get("Message") or error.get("Code") or exc)


def _grants_to_check(store: SnapshotStore) -> str:
    arn = f"arn:aws:s3:::{store.bucket}"
    return (f"check that {store.bucket} is the stack's bucket (`pulumi stack output bucket_name`) and that "
            f"the role may s3:ListBucket on {arn} with s3:prefix {store.prefix}/* and s3:GetObject on "
            f"{arn}/{store.prefix}/*")


def _access_error(exc: BaseException, store: SnapshotStore, doing: str) -> SnapshotAccessError | None:
    """A SnapshotAccessError for a refusal S3 answers the same whatever the key (bucket, role,
    credentials); None for anything else (a missing key, throttling, a network error)."""
    code = _error_code(exc)
    if code in _DENIED:
        return SnapshotAccessError(
            f"access denied {doing}: {_grants_to_check(store)}; S3 said: {_s3_said(exc)}")
    if code == "NoSuchBucket":
        return SnapshotAccessError(f"bucket {store.bucket} does not exist ({doing}); pass the stack's bucket "
                                   "(`pulumi stack output bucket_name`) as --bucket")
    if code in _BAD_CREDENTIALS:
        return SnapshotAccessError(f"S3 refused the credentials ({code}) {doing}; check the AWS credentials "
                                   "in the environment (AWS_PROFILE, AWS_ACCESS_KEY_ID, the task role)")
    return None


def key_exists(s3: Any, store: SnapshotStore, key: str) -> bool:
    """Whether `key` exists, asked with ListObjectsV2 (s3:ListBucket with s3:prefix = key).

    This is how a 403 on GetObject is told apart: S3 answers a missing key with 404 only to a caller
    holding s3:ListBucket on the bucket, and whether a grant conditioned on s3:prefix (all our roles
    have) counts for that is not documented, so it is not relied on. The listing is authorized with
    the request's prefix, which the conditioned grant covers.
    """
    if not key.startswith(store.prefix + "/"):
        raise ValueError(f"{key} is outside the snapshot prefix {store.prefix}/")
    try:
        response = s3.list_objects_v2(Bucket=store.bucket, Prefix=key, MaxKeys=1)
    except Exception as exc:
        refused = _access_error(exc, store, f"listing {store.url(store.prefix + '/')}")
        if refused is not None:
            raise refused from None
        raise
    # The key itself sorts before any longer key that starts with it, so MaxKeys=1 is enough.
    return any(obj.get("Key") == key for obj in response.get("Contents", []))


def check_missing(s3: Any, store: SnapshotStore, key: str, exc: BaseException) -> None:
    """Return if `exc` (from reading `key`) means the key does not exist; else raise what it means.

    A denied read of a key that exists, a wrong bucket or bad credentials raise SnapshotAccessError
    with what to check; other errors are raised as they are.
    """
    code = _error_code(exc)
    if code in _NOT_FOUND:
        return
    if code in _DENIED:
        if not key_exists(s3, store, key):
            return
        raise SnapshotAccessError(
            f"access denied reading {store.url(key)}, which exists: check that the role may s3:GetObject on "
            f"arn:aws:s3:::{store.bucket}/{store.prefix}/*; S3 said: {_s3_said(exc)}") from None
    refused = _access_error(exc, store, f"reading {store.url(key)}")
    if refused is not None:
        raise refused from None
    raise exc


def get_object_or_none(s3: Any, store: SnapshotStore, key: str) -> dict[str, Any] | None:
    """GetObject of a snapshot key; None when it does not exist (404, or 403 and not listed).

    A 403 followed by a listing that shows the key is read once more before it counts as a refusal:
    the key may have been written between the two calls (a restore polling while the first snapshot
    is published). S3 is strongly consistent for reads after writes and for listings
    (https://docs.aws.amazon.com/AmazonS3/latest/userguide/Welcome.html#ConsistencyModel), so the
    second read sees what the listing saw.
    """
    retried = False
    while True:
        try:
            return s3.get_object(Bucket=store.bucket, Key=key)
        except Exception as exc:
            if not is_aws_error(exc):
                raise
            if not retried and _error_code(exc) in _DENIED and key_exists(s3, store, key):
                retried = True
                continue
            check_missing(s3, store, key, exc)
            return None


def read_pointer(s3: Any, store: SnapshotStore) -> Pointer | None:
    """The current pointer with its ETag (for compare-and-swap), or None when nothing is published.

    Raises SnapshotAccessError when S3 refuses (wrong bucket, missing grants), StoreError for others.
    """
    try:
        response = get_object_or_none(s3, store, store.pointer_key)
    except SnapshotAccessError:
        raise
    except Exception as exc:
        if not is_aws_error(exc):
            raise
        raise StoreError(f"cannot read {store.url(store.pointer_key)}: {exc}") from None
    if response is None:
        return None
    body = response["Body"].read()
    try:
        data = json.loads(body)
        version = data["version"]
        if not isinstance(version, str) or not VERSION_PATTERN.match(version):
            raise ValueError(f"bad version {version!r}")
        return Pointer(version=version, archive_sha256=str(data.get("archive_sha256", "")),
                       updated=str(data.get("updated", "")), etag=response["ETag"])
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(
            f"{store.url(store.pointer_key)} is not a valid snapshot pointer ({exc}); "
            "publish a snapshot again to repair it"
        ) from None


def new_version(manifest: Manifest, now: datetime | None = None) -> str:
    """A version name that sorts by publish time and says which archive it holds."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{manifest.archive.sha256[:8]}"


def switch_pointer(s3: Any, store: SnapshotStore, version: str, archive_sha256: str) -> bool:
    """Point LATEST at `version` unless it already names that or a newer version.

    Returns True when this call moved the pointer. Compare-and-swap: a concurrent change makes the
    conditional PUT fail with 412, and the decision is made again on the new pointer.
    """
    for attempt in range(_CAS_ATTEMPTS):
        current = read_pointer(s3, store)
        if current is not None and current.version >= version:
            return False
        body = json.dumps({"version": version, "archive_sha256": archive_sha256, "updated": utc_now_iso()})
        condition = {"IfNoneMatch": "*"} if current is None else {"IfMatch": current.etag}
        try:
            s3.put_object(Bucket=store.bucket, Key=store.pointer_key, Body=body.encode(),
                          ContentType="application/json", **condition)
            return True
        except Exception as exc:
            # 412: someone else wrote the pointer since we read it; 409: a concurrent conditional write.
            if _error_code(exc) not in {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}:
                raise StoreError(f"cannot write {store.url(store.pointer_key)}: {exc}") from None
        time.sleep(random.uniform(0.05, 0.2) * (attempt + 1))
    raise StoreError(
        f"{store.url(store.pointer_key)} kept changing during {_CAS_ATTEMPTS} attempts; "
        "another publisher is busy, run publish-snapshot again"
    )


@dataclass(frozen=True)
class VersionInfo:
    version: str
    complete: bool
    last_modified: datetime | None


def list_versions(s3: Any, store: SnapshotStore) -> list[VersionInfo]:
    """Every version under the prefix, oldest first; complete = its manifest exists."""
    found: dict[str, dict[str, Any]] = {}
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=store.bucket, Prefix=f"{store.prefix}/"):
        for obj in page.get("Contents", []):
            rest = obj["Key"][len(store.prefix) + 1:]
            if "/" not in rest:
                continue  # the pointer
            version, name = rest.split("/", 1)
            entry = found.setdefault(version, {"complete": False, "last_modified": None})
            entry["complete"] |= name == MANIFEST_NAME
            stamp = obj.get("LastModified")
            if stamp is not None and (entry["last_modified"] is None or stamp > entry["last_modified"]):
                entry["last_modified"] = stamp
    return [VersionInfo(v, e["complete"], e["last_modified"]) for v, e in sorted(found.items())]


def delete_version(s3: Any, store: SnapshotStore, version: str) -> None:
    """Remove one version, manifest first, so a reader finds it absent rather than half there."""
    s3.delete_object(Bucket=store.bucket, Key=store.manifest_key(version))
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=store.bucket, Prefix=store.version_prefix(version)):
        keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=store.bucket, Delete={"Objects": keys, "Quiet": True})


def apply_retention(s3: Any, store: SnapshotStore, keep: int, now: datetime | None = None) -> list[str]:
    """Keep the pointed version and the `keep - 1` newest complete versions before it; delete older ones.

    Versions newer than the pointer are never touched (another publisher may be switching to one).
    Returns the deleted versions.
    """
    if keep < 1:
        raise StoreError(f"--keep must be at least 1 (the pointed version is always kept), got {keep}")
    pointer = read_pointer(s3, store)
    if pointer is None:
        return []
    now = now or datetime.now(UTC)
    older = [v for v in list_versions(s3, store) if v.version < pointer.version]
    complete = [v for v in older if v.complete]
    kept = {v.version for v in complete[len(complete) - (keep - 1):]} if keep > 1 else set()
    deleted = []
    for info in older:
        if info.version in kept:
            continue
        in_flight = info.last_modified is not None and now - info.last_modified < STALE_UPLOAD_AGE
        if not info.complete and in_flight:
            continue
        delete_version(s3, store, info.version)
        deleted.append(info.version)
    return deleted


@dataclass
class PublishResult:
    version: str
    pointer_moved: bool
    current: str
    deleted: list[str] = field(default_factory=list)
    already_published: bool = False


def publish_snapshot(
    snapshot_dir: str | Path,
    bucket: str,
    prefix: str = SNAPSHOT_PREFIX,
    keep: int | None = None,
    s3: Any = None,
    log: Any = None,
    now: datetime | None = None,
) -> PublishResult:
    """Upload a built snapshot as a new version, then move the pointer to it and apply retention."""
    say = log or (lambda message: print(message, file=sys.stderr, flush=True))
    snapshot_dir = Path(snapshot_dir)
    manifest = Manifest.load(snapshot_dir)
    archive_path = snapshot_dir / manifest.archive.name
    check_archive_file(archive_path, manifest.archive.sha256, manifest.archive.bytes,
                       f"snapshot at {snapshot_dir}")
    if keep is not None and keep < 1:
        raise StoreError(f"--keep must be at least 1 (the pointed version is always kept), got {keep}")
    s3 = s3 or s3_client()
    store = SnapshotStore(bucket, prefix)

    current = read_pointer(s3, store)
    if current is not None and current.archive_sha256 == manifest.archive.sha256:
        say(f"publish: this archive is already the current version {current.version}; nothing uploaded")
        deleted = apply_retention(s3, store, keep) if keep else []
        return PublishResult(current.version, False, current.version, deleted, already_published=True)

    version = new_version(manifest, now)
    manifest.version = version
    archive_key = store.archive_key(version, manifest.archive.name)
    say(f"publish: uploading {manifest.archive.bytes / 2**20:.1f} MiB to {store.url(archive_key)}")
    s3.upload_file(str(archive_path), bucket, archive_key,
                   ExtraArgs={"ContentType": "application/octet-stream",
                              "Metadata": {"sha256": manifest.archive.sha256}})
    size = s3.head_object(Bucket=bucket, Key=archive_key)["ContentLength"]
    if size != manifest.archive.bytes:
        raise StoreError(f"{store.url(archive_key)} has {size} bytes after upload, expected "
                         f"{manifest.archive.bytes}; run publish-snapshot again")
    manifest_key = store.manifest_key(version)
    try:
        s3.put_object(Bucket=bucket, Key=manifest_key, Body=manifest.to_json().encode(),
                      ContentType="application/json", IfNoneMatch="*")
    except Exception as exc:
        if _error_code(exc) not in {"PreconditionFailed", "412"}:
            raise StoreError(f"cannot write {store.url(manifest_key)}: {exc}") from None
        # Same archive published in the same second by someone else: their version is ours.
        other = Manifest.from_json(s3.get_object(Bucket=bucket, Key=manifest_key)["Body"].read(),
                                   source=store.url(manifest_key))
        if other.archive.sha256 != manifest.archive.sha256:
            raise StoreError(
                f"version {version} already exists with another archive; run publish-snapshot again"
            ) from None
    say(f"publish: version {version} is complete ({store.url(manifest_key)})")

    moved = switch_pointer(s3, store, version, manifest.archive.sha256)
    pointer = read_pointer(s3, store)
    current_version = pointer.version if pointer else version
    if moved:
        say(f"publish: {store.url(store.pointer_key)} -> {version}")
    else:
        say(f"publish: {store.url(store.pointer_key)} stays on the newer version {current_version}; "
            f"{version} is kept and can be restored with --version {version}")
    deleted = apply_retention(s3, store, keep) if keep else []
    if deleted:
        say(f"publish: retention (keep {keep}) deleted {', '.join(deleted)}")
    return PublishResult(version, moved, current_version, deleted)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ontosearch publish-snapshot",
        description="Upload a snapshot directory to S3 as a new version and point LATEST at it.",
    )
    parser.add_argument("snapshot_dir", help="directory written by build-snapshot (manifest.json + archive)")
    parser.add_argument("--bucket", required=True, help="S3 bucket of the snapshot store")
    parser.add_argument("--prefix", default=SNAPSHOT_PREFIX, help=f"key prefix (default {SNAPSHOT_PREFIX})")
    parser.add_argument("--keep", type=int, default=None,
                        help="keep this many versions (the pointed one included) and delete older ones")
    parser.add_argument("--region", default=None, help="AWS region (default: from the environment)")
    args = parser.parse_args(argv)
    try:
        result = publish_snapshot(args.snapshot_dir, args.bucket, args.prefix, args.keep,
                                  s3=s3_client(args.region))
    except (ManifestError, ArchiveError, StoreError) as exc:
        print(f"publish-snapshot: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"publish-snapshot: cannot read {args.snapshot_dir}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        if not is_aws_error(exc):
            raise
        print(f"publish-snapshot: S3 request failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"version": result.version, "current": result.current,
                      "pointer_moved": result.pointer_moved, "deleted": result.deleted}))
    return 0
