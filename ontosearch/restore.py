"""`restore-snapshot`: put a verified snapshot where a Chroma server will open it, or refuse.

This is what the task's restore container runs before Chroma starts (`--into /data`), so Chroma never
serves data that was not checked. In order, before anything is placed:

1. the manifest is valid and of a known format; it belongs to the version asked for (S3);
2. it was built with the Chroma version of the server (a persist directory migrates one way only);
3. the archive has the manifest's size and sha256 (truncated, altered or someone else's archive);
4. every member is a plain file or directory inside the destination, and it expands to no more than
   the manifest says;
5. the unpacked `chroma.sqlite3` (opened read-only, no Chroma needed) holds every collection of the
   manifest with the recorded number of records and the embedder's dimensions.

Atomic placement, so a failure never leaves a half-restored directory:

- PATH missing or a plain directory: everything is unpacked into a hidden sibling temp directory
  (same file system) and renamed into place in one step; an existing PATH (only with --replace, or
  when empty) is first renamed aside and removed afterwards.
- PATH a mount point (the task's /data volume, which cannot be renamed, and whose parent may be a
  read-only root): the temp directory is made inside PATH; after all checks pass its entries are
  moved in (renames within one file system) and the restored manifest (`.ontosearch-snapshot.json`)
  is moved in last. Its presence marks a complete restore; the Chroma container only starts after the
  restore container exited 0.

A PATH that already holds the same archive (by its restored manifest) is left alone: reruns are free.

Before the first snapshot: with `--wait-for-snapshot` (the always-on service's task passes it) restore
asks for the pointer every 30 s while nothing is published, logs every 5 minutes the command that
publishes one, and restores it once it appears, so a stack deployed before its first snapshot comes up
without another step. Without it, or for a pinned version, it refuses at once. A 403 from S3 counts as
"missing" only when a listing of that key (ListObjectsV2, which the role's ListBucket grant on the
snapshot prefix allows) does not show it; any other refusal is reported with the grants to check.

Standard library and boto3 only: the task's small restore image runs this module.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ontosearch.archive import ArchiveError, check_archive_file, extract_archive
from ontosearch.constants import CHROMA_VERSION, RESTORED_MANIFEST_NAME, SNAPSHOT_PREFIX
from ontosearch.manifest import VERSION_PATTERN, Manifest, ManifestError
from ontosearch.sigterm import sigterm_raises
from ontosearch.snapshot_store import (
    Pointer,
    SnapshotStore,
    StoreError,
    check_missing,
    get_object_or_none,
    is_aws_error,
    no_snapshot_message,
    read_pointer,
    s3_client,
)

STAGING_PREFIX = ".ontosearch-restore-"
# Left alone when deciding whether a directory is empty: a fresh ext4 volume has lost+found.
_IGNORED_ENTRIES = {"lost+found"}
# Free space to keep beyond the archive and the unpacked data.
_SPACE_MARGIN = 16 * 2**20

Log = Callable[[str], None]
# Transfers smaller than this finish too fast to need progress lines.
_PROGRESS_MIN_BYTES = 50 * 2**20
# --wait-for-snapshot: how often S3 is asked (2 requests), and how often the wait is logged. A publish
# reaches a waiting task within one poll; the log line repeats what to run without flooding the log.
WAIT_POLL_SECONDS = 30.0
WAIT_LOG_SECONDS = 300.0


class RestoreError(RuntimeError):
    """The snapshot cannot be restored; the message names the problem and what to do."""


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def check_chroma_version(manifest: Manifest, expect_chroma_version: str, label: str) -> None:
    if manifest.chroma_version != expect_chroma_version:
        raise RestoreError(
            f"{label} was built with chroma {manifest.chroma_version} but the server is "
            f"{expect_chroma_version}; rebuild or pin chroma_version: {manifest.chroma_version}"
        )


def check_collections(persist_dir: str | Path, manifest: Manifest, label: str) -> None:
    """Compare the collections in the unpacked SQLite catalogue with the manifest's.

    Read-only and immutable: nothing is written next to the database (no journal, no -shm file).
    """
    db = Path(persist_dir) / "chroma.sqlite3"
    if not db.is_file():
        raise RestoreError(f"{label}: the archive holds no chroma.sqlite3, so it is not a Chroma persist "
                           "directory; rebuild the snapshot")
    uri = f"file:{urllib.parse.quote(str(db))}?mode=ro&immutable=1"
    try:
        connection = sqlite3.connect(uri, uri=True)
        try:
            rows = connection.execute(
                "SELECT c.name, c.dimension, (SELECT COUNT(*) FROM embeddings e JOIN segments s"
                " ON e.segment_id = s.id WHERE s.collection = c.id AND s.scope = 'METADATA')"
                " FROM collections c"
            ).fetchall()
        finally:
            connection.close()
    except sqlite3.DatabaseError as exc:
        raise RestoreError(f"{label}: chroma.sqlite3 in the archive cannot be read ({exc}); "
                           "the snapshot is damaged, rebuild it") from None
    found = {name: (dimension, count) for name, dimension, count in rows}
    missing = [c.name for c in manifest.collections if c.name not in found]
    if missing:
        raise RestoreError(
            f"{label}: collection(s) {', '.join(missing)} named in the manifest are missing from the archive "
            f"(it holds {', '.join(sorted(found)) or 'none'}); the manifest belongs to another archive, "
            "rebuild the snapshot"
        )
    dimensions = manifest.embedder["dimensions"]
    for collection in manifest.collections:
        dimension, count = found[collection.name]
        if count != collection.records:
            raise RestoreError(
                f"{label}: collection {collection.name} holds {count} records but the manifest says "
                f"{collection.records}; the manifest belongs to another archive, rebuild the snapshot"
            )
        if dimension is not None and dimension != dimensions:
            raise RestoreError(
                f"{label}: collection {collection.name} has {dimension}-d vectors but the manifest's "
                f"embedder {manifest.embedder['name']} makes {dimensions}-d ones; rebuild the snapshot"
            )


def read_restored_manifest(path: str | Path) -> Manifest | None:
    """The manifest of the snapshot a restored directory holds, or None if it holds no complete restore."""
    marker = Path(path) / RESTORED_MANIFEST_NAME
    if not marker.is_file():
        return None
    try:
        return Manifest.load(marker)
    except ManifestError:
        return None


def is_mount_point(path: str | Path) -> bool:
    """True for a mount point, bind mounts included (os.path.ismount misses a bind mount of a directory
    on the same file system, which is how a container may see its data volume)."""
    if os.path.ismount(path):
        return True
    real = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as handle:
            for line in handle:
                fields = line.split()
                if len(fields) > 4 and _unescape_mount(fields[4]) == real:
                    return True
    except OSError:
        pass
    return False


def _unescape_mount(text: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def _visible_entries(path: Path) -> list[str]:
    return sorted(
        name for name in os.listdir(path)
        if name not in _IGNORED_ENTRIES and not name.startswith(STAGING_PREFIX)
    )


def _remove_stale_staging(parent: Path, log: Log) -> None:
    """Temp directories of an earlier restore that was killed: ours by name, never finished."""
    for name in os.listdir(parent):
        if name.startswith(STAGING_PREFIX):
            log(f"restore: removing {parent / name} left by an interrupted restore")
            shutil.rmtree(parent / name, ignore_errors=True)


def _check_space(where: Path, needed: int, label: str) -> None:
    free = shutil.disk_usage(where).free
    if free < needed + _SPACE_MARGIN:
        raise RestoreError(
            f"{label} needs {needed / 2**20:.0f} MiB at {where} but only {free / 2**20:.0f} MiB are free; "
            "give the volume more space"
        )


def _restore(
    manifest: Manifest,
    label: str,
    fetch_archive: Callable[[Path], Path],
    download_bytes: int,
    into: str | Path,
    expect_chroma_version: str,
    replace: bool,
    log: Log,
    in_place: bool | None = None,
) -> Manifest:
    started = time.monotonic()
    check_chroma_version(manifest, expect_chroma_version, label)
    into = Path(into).absolute()
    if into.exists() and not into.is_dir():
        raise RestoreError(f"{into} exists and is not a directory; choose another --into")

    if in_place is None:
        in_place = into.is_dir() and (is_mount_point(into) or not os.access(into.parent, os.W_OK))
    elif in_place and not into.is_dir():
        raise RestoreError(f"{into} must be an existing directory (the volume) to restore in place")
    if into.is_dir():
        if in_place:
            _remove_stale_staging(into, log)
        present = read_restored_manifest(into)
        if present is not None and present.archive.sha256 == manifest.archive.sha256:
            # The marker is written last, so the restore completed; counts are not compared again
            # because a server may have written to the collections since (with the admin token).
            log(f"restore: {into} already holds {label}; nothing to do")
            return present
        leftovers = _visible_entries(into)
        if leftovers and not replace:
            what = present.label if present is not None else f"other data ({', '.join(leftovers[:3])})"
            raise RestoreError(f"{into} already holds {what}; pass --replace to swap it for {label}")
    else:
        into.parent.mkdir(parents=True, exist_ok=True)

    staging_parent = into if in_place else into.parent
    _check_space(staging_parent, download_bytes + manifest.persist_bytes, label)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=staging_parent))
    try:
        archive_path = fetch_archive(staging)
        check_archive_file(archive_path, manifest.archive.sha256, manifest.archive.bytes, label)
        data = staging / "data"
        data.mkdir()
        os.chmod(data, 0o755)
        log(f"restore: unpacking {manifest.archive.bytes / 2**20:.1f} MiB archive")
        extract_archive(archive_path, manifest.archive.compression, data, max_bytes=manifest.persist_bytes)
        check_collections(data, manifest, label)
        marker_text = manifest.to_json()
        if in_place:
            _move_into_mount(data, into, marker_text, replace)
        else:
            (data / RESTORED_MANIFEST_NAME).write_text(marker_text, encoding="utf-8")
            _swap_into_place(data, into, staging, replace, label)
    except ArchiveError as exc:
        message = str(exc)
        raise RestoreError(message if message.startswith(label) else f"{label}: {message}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    names = ", ".join(f"{c.name} ({c.records})" for c in manifest.collections)
    log(f"restore: {label} restored into {into} in {time.monotonic() - started:.1f} s: {names}")
    return manifest


def _swap_into_place(data: Path, into: Path, staging: Path, replace: bool, label: str) -> None:
    if not into.exists():
        os.rename(data, into)
        return
    if not any(os.scandir(into)):
        os.replace(data, into)  # rename(2) replaces an empty directory atomically
        return
    if not replace:
        raise RestoreError(f"{into} was filled by someone else during the restore; "
                           f"pass --replace to swap it for {label}")
    aside = staging / "previous"
    os.rename(into, aside)
    try:
        os.rename(data, into)
    except OSError:
        os.rename(aside, into)
        raise


def _move_into_mount(data: Path, into: Path, marker_text: str, replace: bool) -> None:
    old_marker = into / RESTORED_MANIFEST_NAME
    if old_marker.exists():
        old_marker.unlink()  # from here until the end, the volume is marked incomplete
    if replace:
        for name in _visible_entries(into):
            target = into / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()
    for entry in sorted(os.listdir(data)):
        os.rename(data / entry, into / entry)
    tmp_marker = data / RESTORED_MANIFEST_NAME
    tmp_marker.write_text(marker_text, encoding="utf-8")
    os.rename(tmp_marker, into / RESTORED_MANIFEST_NAME)


class _Progress:
    """Logs every tenth of a long transfer (boto3 calls it from several threads)."""

    def __init__(self, total: int, what: str, log: Log) -> None:
        self.total, self.what, self.log = max(total, 1), what, log
        self.done = 0
        self.next_tenth = 1
        self.lock = threading.Lock()

    def __call__(self, amount: int) -> None:
        with self.lock:
            self.done += amount
            if self.total < _PROGRESS_MIN_BYTES:
                return
            while self.next_tenth < 10 and self.done * 10 >= self.next_tenth * self.total:
                self.log(f"{self.what} {self.next_tenth * 10}% of {self.total / 2**20:.0f} MiB")
                self.next_tenth += 1


def restore_from_dir(
    snapshot_dir: str | Path,
    into: str | Path,
    expect_chroma_version: str = CHROMA_VERSION,
    replace: bool = False,
    log: Log | None = None,
    in_place: bool | None = None,
) -> Manifest:
    """Restore a local snapshot directory (manifest.json + archive) into `into`.

    `in_place` None detects a mount point (moved in entry by entry); True forces that mode.
    """
    log = log or _stderr
    snapshot_dir = Path(snapshot_dir)
    manifest = Manifest.load(snapshot_dir)
    label = f"snapshot {manifest.version}" if manifest.version else f"snapshot at {snapshot_dir}"
    return _restore(manifest, label, lambda _staging: snapshot_dir / manifest.archive.name, 0,
                    into, expect_chroma_version, replace, log, in_place)


def wait_for_pointer(s3: Any, store: SnapshotStore, poll_seconds: float = WAIT_POLL_SECONDS,
                     log: Log | None = None, log_seconds: float = WAIT_LOG_SECONDS) -> Pointer:
    """The pointer, once there is one: polls while nothing is published, logging what to run.

    Only "not published yet" is waited for; a refusal (wrong bucket, missing grants) or a broken pointer
    raises at once, since waiting would not fix it.
    """
    log = log or _stderr
    started = next_log = time.monotonic()
    logged = False
    while True:
        pointer = read_pointer(s3, store)
        now = time.monotonic()
        if pointer is not None:
            if logged:
                log(f"restore: {store.url(store.pointer_key)} names {pointer.version} after "
                    f"{now - started:.0f} s of waiting; restoring it")
            return pointer
        if now >= next_log:
            since = f" (waiting for {(now - started) / 60:.0f} min)" if logged else ""
            log(f"restore: {no_snapshot_message(store)}; checking again every {poll_seconds:g} s{since}")
            logged, next_log = True, now + log_seconds
        time.sleep(poll_seconds)


def restore_from_s3(
    bucket: str,
    version: str,
    into: str | Path,
    prefix: str = SNAPSHOT_PREFIX,
    expect_chroma_version: str = CHROMA_VERSION,
    replace: bool = False,
    s3: Any = None,
    log: Log | None = None,
    in_place: bool | None = None,
    wait: bool = False,
    poll_seconds: float = WAIT_POLL_SECONDS,
) -> Manifest:
    """Restore a published version (or "latest", the one the pointer names) into `into`.

    `wait` (with "latest"): while nothing is published yet, log what to run and ask again every
    `poll_seconds`, so a service deployed before its first snapshot starts once one is published.
    """
    log = log or _stderr
    s3 = s3 or s3_client()
    store = SnapshotStore(bucket, prefix)
    pointer = None
    if version == "latest":
        pointer = wait_for_pointer(s3, store, poll_seconds, log) if wait else read_pointer(s3, store)
        if pointer is None:
            raise RestoreError(no_snapshot_message(store))
        version = pointer.version
    elif not VERSION_PATTERN.match(version):
        raise RestoreError(f"--version {version!r} is not a snapshot version name; use `latest` or a name "
                           f"listed under {store.url(store.prefix + '/')}")
    manifest_url = store.url(store.manifest_key(version))
    response = get_object_or_none(s3, store, store.manifest_key(version))
    if response is None:
        if pointer is not None:
            raise RestoreError(
                f"{store.url(store.pointer_key)} names version {version} but {manifest_url} does not exist; "
                "publish the snapshot again or restore an explicit --version"
            ) from None
        raise RestoreError(f"snapshot version {version} not found ({manifest_url} does not exist); "
                           f"list versions under {store.url(store.prefix + '/')}") from None
    manifest = Manifest.from_json(response["Body"].read(), source=manifest_url)
    label = f"snapshot {version}"
    if manifest.version != version:
        raise RestoreError(f"{manifest_url} describes version {manifest.version}, not {version}; "
                           "the manifest was copied from elsewhere, publish the snapshot again")
    if pointer is not None and pointer.archive_sha256 and pointer.archive_sha256 != manifest.archive.sha256:
        raise RestoreError(f"{store.url(store.pointer_key)} and {manifest_url} disagree on the archive's "
                           "sha256; publish the snapshot again")
    archive_key = store.archive_key(version, manifest.archive.name)

    def download(staging: Path) -> Path:
        target = staging / manifest.archive.name
        log(f"restore: downloading {store.url(archive_key)} ({manifest.archive.bytes / 2**20:.1f} MiB)")
        started = time.monotonic()
        try:
            s3.download_file(bucket, archive_key, str(target),
                             Callback=_Progress(manifest.archive.bytes, "restore: downloaded", log))
        except Exception as exc:
            if not is_aws_error(exc):
                raise
            check_missing(s3, store, archive_key, exc)
            raise RestoreError(f"{label}: archive {store.url(archive_key)} does not exist; "
                               "publish the snapshot again") from None
        log(f"restore: downloaded in {time.monotonic() - started:.1f} s")
        return target

    return _restore(manifest, label, download, manifest.archive.bytes, into, expect_chroma_version, replace,
                    log, in_place)


class Stopped(SystemExit):
    """SIGTERM arrived: ECS is stopping the task (scale-in, replacement, the workflow's StopTask)."""


def main(argv: list[str]) -> int:
    """The restore container's command. It runs as the container's PID 1 (no init process), and the
    kernel delivers no signal to PID 1 that it has no handler for: without one, ECS's SIGTERM is
    ignored and the container is killed only after stopTimeout (30 s on Fargate by default;
    https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_ContainerDefinition.html, stopTimeout),
    e.g. while it waits for a first snapshot. So SIGTERM ends it at once, with status 143."""
    try:
        with sigterm_raises(lambda signum: Stopped(128 + signum)):
            return _main(argv)
    except Stopped:
        print("restore-snapshot: stopped by SIGTERM before the snapshot was in place", file=sys.stderr)
        raise


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ontosearch restore-snapshot",
        description="Verify a snapshot and place its persist directory where Chroma will open it.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--bucket", help="S3 bucket of the snapshot store")
    source.add_argument("--from", dest="from_dir", help="a local snapshot directory (from build-snapshot)")
    parser.add_argument("--version", default="latest", help="version to restore from S3 (default: latest)")
    parser.add_argument("--prefix", default=SNAPSHOT_PREFIX,
                        help=f"S3 key prefix (default {SNAPSHOT_PREFIX})")
    parser.add_argument("--region", default=None, help="AWS region (default: from the environment)")
    parser.add_argument("--into", required=True, help="persist directory to create (the task uses /data)")
    parser.add_argument("--chroma-version", default=CHROMA_VERSION,
                        help=f"version of the Chroma server that opens the data (default {CHROMA_VERSION})")
    parser.add_argument("--replace", action="store_true",
                        help="replace data already in --into (else a different snapshot there is refused)")
    parser.add_argument("--wait-for-snapshot", action="store_true",
                        help="with --version latest: while nothing is published yet, wait for a first "
                             "snapshot (logging what to run) instead of failing")
    parser.add_argument("--poll-seconds", type=float, default=WAIT_POLL_SECONDS,
                        help="with --wait-for-snapshot: seconds between checks "
                             f"(default {WAIT_POLL_SECONDS:g})")
    args = parser.parse_args(argv)
    if args.poll_seconds <= 0:
        parser.error(f"--poll-seconds must be positive, got {args.poll_seconds:g}")
    try:
        if args.from_dir:
            manifest = restore_from_dir(args.from_dir, args.into, args.chroma_version, args.replace)
        else:
            manifest = restore_from_s3(args.bucket, args.version, args.into, args.prefix, args.chroma_version,
                                       args.replace, s3=s3_client(args.region), wait=args.wait_for_snapshot,
                                       poll_seconds=args.poll_seconds)
    except (RestoreError, ManifestError, ArchiveError, StoreError) as exc:
        print(f"restore-snapshot: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"restore-snapshot: cannot restore into {args.into}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        if not is_aws_error(exc):
            raise
        print(f"restore-snapshot: S3 request failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"restored": manifest.version or str(args.from_dir), "into": str(Path(args.into)),
                      "collections": manifest.collection_names()}))
    return 0
