"""Publish the task's restored data as a new snapshot version (the workflow's optional last step).

Runs inside the task agent (project image: standard library + boto3), which mounts the task's data
volume read-only. The batch workflow only reads from Chroma, so the files are those restore wrote;
they are copied first (without restore's marker) so the archive is taken from a still directory,
and the new manifest keeps the restored snapshot's collections and embedder. The fresh-server
verification of build-snapshot needs chromadb, which the image does not carry; the archive's
sha256 and the restore checks still guard every later use of the version.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ontosearch.constants import RESTORED_MANIFEST_NAME


class SnapshotSaveError(RuntimeError):
    """The task's data could not be published as a new snapshot version."""


def save_data_dir(data_dir: str | Path, bucket: str, s3: Any = None, log: Any = None) -> str:
    """Archive `data_dir` and publish it to `bucket`; returns the new version name."""
    from ontosearch.restore import read_restored_manifest
    from ontosearch.snapshot_build import snapshot_from_persist_dir
    from ontosearch.snapshot_store import publish_snapshot

    say = log or (lambda _message: None)
    data_dir = Path(data_dir)
    restored = read_restored_manifest(data_dir)
    if restored is None:
        raise SnapshotSaveError(f"{data_dir} holds no restored snapshot ({RESTORED_MANIFEST_NAME} missing); "
                                "nothing to save")
    with tempfile.TemporaryDirectory(prefix="ontosearch-save-") as work:
        copy = Path(work) / "persist"
        shutil.copytree(data_dir, copy, ignore=shutil.ignore_patterns(RESTORED_MANIFEST_NAME))
        out = Path(work) / "snapshot"
        snapshot_from_persist_dir(copy, out, restored.collections, restored.embedder, verify=False,
                                  log=say, progress=False)
        result = publish_snapshot(out, bucket, s3=s3, log=say)
    return str(result.version)


# A request written this long before the execution started is not its own: an execution name can
# be used again 90 days after the last one closed (StartExecution, "name"), and nothing deletes the
# old execution's work folder. The slack only absorbs clock differences between S3 and Step Functions.
STALE_BEFORE_START_SECONDS = 3600.0


def read_save_request(s3: Any, bucket: str, key: str,
                      not_before: float | None = None) -> dict[str, Any] | None:
    """The pending save request, or None while there is none.

    `not_before` (epoch seconds: the execution's start): a request last written more than
    STALE_BEFORE_START_SECONDS before it was left by an earlier execution of the same name, and is
    not answered (its task token is long gone; answering would publish an unrequested snapshot).

    Asked by listing the exact key first (ListObjectsV2, s3:ListBucket with s3:prefix = the key),
    not by a GetObject that fails: S3 answers a GetObject of a missing key with 403 instead of 404
    unless the caller may list the bucket, and whether a listing grant conditioned on s3:prefix (the
    task role's) counts for that is not documented
    (https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObject.html, "Permissions"). The
    listing is authorized with the request's own prefix, so the answer is right either way, and a
    real refusal still raises instead of passing for "not yet".
    """
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
    # The key itself sorts before every longer key starting with it, so one entry tells.
    found = next((obj for obj in listing.get("Contents", []) if obj.get("Key") == key), None)
    if found is None:
        return None
    written = found.get("LastModified")
    if not_before is not None and written is not None and \
            written.timestamp() < not_before - STALE_BEFORE_START_SECONDS:
        return None
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as exc:
        code = str((getattr(exc, "response", None) or {}).get("Error", {}).get("Code", ""))
        if code in {"NoSuchKey", "404", "NotFound"}:
            return None  # deleted between the listing and the read
        raise
    request = json.loads(body)
    if not isinstance(request, dict) or not request.get("token"):
        raise SnapshotSaveError(f"s3://{bucket}/{key} is not a save request")
    return request
