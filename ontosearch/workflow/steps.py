"""The workflow's steps as plain functions over S3: validate, split, query one chunk, merge, save.

The Lambda handlers in lambdas/ only parse their event and call these; the local runner calls the
same handlers. S3 layout inside the stack's bucket (prefixes in ontosearch.constants):

    inputs/...                                   what users upload (the only place inputs are read)
    work/<execution>/chunks/<00000>.jsonl        the split input, one JSON row per line
    work/<execution>/chunks.jsonl                the chunk manifest: one {"index", "key", "rows"} a
                                                 line; the Distributed Map's ItemReader reads it
    work/<execution>/parts/<00000>.csv           one query step's output; a retry overwrites it
    work/<execution>/map-results/<run>/...       the Map Run's ResultWriter output (manifest.json,
                                                 SUCCEEDED_0.json, ...)
    work/<execution>/chunk-failure.json          the error of a chunk that failed ({"Error", "Cause"}),
                                                 recorded by its child execution for the parent
    work/<execution>/save-request.json           asks the task agent to publish a snapshot
    results/<execution>/annotations.csv          the merged output

Chunks carry the input row number, the label or the reader's error, so every input row reaches the
output exactly once per rank or once as an error row, as with `ontosearch annotate`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ontosearch.constants import (
    ONTOLOGY_ALIASES,
    SAVE_REQUEST_NAME,
    SNAPSHOT_PREFIX,
    WORKFLOW_INPUT_PREFIX,
    WORKFLOW_RESULTS_PREFIX,
    WORKFLOW_WORK_PREFIX,
)
from ontosearch.workflow.errors import (
    ChunkQueryError,
    InvalidInputError,
    MergeError,
)

DEFAULT_CHUNK_SIZE = 500
MAX_TOP_K = 50
# Nothing that grows with the input travels in the execution state: the chunk list is an S3 object
# (CHUNK_MANIFEST_NAME) the Distributed Map reads, and Split returns fixed-size fields. What the
# state carries of the request is bounded here, so every state stays far below Step Functions'
# 256 KiB (tests/test_workflow_limits.py measures it at every transition).
MAX_INPUT_KEY_BYTES = 1024  # S3's own limit on a key (UTF-8 bytes)
MAX_COLUMN_CHARS = 256
MAX_SNAPSHOT_NAME_CHARS = 128
CHUNK_MANIFEST_NAME = "chunks.jsonl"
MAP_RESULTS_NAME = "map-results"
CHUNK_FAILURE_NAME = "chunk-failure.json"
REQUEST_KEYS = {"input", "ontology", "top_k", "snapshot", "save_snapshot", "column"}
# execution names become key parts; Step Functions allows these characters (and a few we refuse)
_EXECUTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
_PART_META = ("rows", "annotated", "errors")


def _shown(value: Any, limit: int = 80) -> str:
    """repr() of a user's value for an error message, shortened: a failed execution's cause is
    limited (Step Functions: 32,768 characters) and a request may hold 256 KiB."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_s3_uri(uri: Any) -> tuple[str, str]:
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise InvalidInputError(f"input must be an s3://bucket/key URI, got {_shown(uri)}")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket or not key or key.endswith("/"):
        raise InvalidInputError(f"input {_shown(uri)} does not name an object (expected s3://bucket/key)")
    return bucket, key


def _execution(execution: Any) -> str:
    if not isinstance(execution, str) or not _EXECUTION_NAME.match(execution):
        raise InvalidInputError(
            f"execution name {execution!r} must be 1-80 letters, digits, '-' or '_' "
            "(it names the work and results folders)"
        )
    return execution


def chunk_key(execution: str, index: int) -> str:
    return f"{WORKFLOW_WORK_PREFIX}{_execution(execution)}/chunks/{index:05d}.jsonl"


def part_key(execution: str, index: int) -> str:
    return f"{WORKFLOW_WORK_PREFIX}{_execution(execution)}/parts/{index:05d}.csv"


def chunk_manifest_key(execution: str) -> str:
    return f"{WORKFLOW_WORK_PREFIX}{_execution(execution)}/{CHUNK_MANIFEST_NAME}"


def map_results_prefix(execution: str) -> str:
    """The ResultWriter's Prefix: the Map Run writes <prefix>/<map run id>/manifest.json and the rest."""
    return f"{WORKFLOW_WORK_PREFIX}{_execution(execution)}/{MAP_RESULTS_NAME}"


def chunk_failure_key(execution: str) -> str:
    return f"{WORKFLOW_WORK_PREFIX}{_execution(execution)}/{CHUNK_FAILURE_NAME}"


def save_request_key(execution: str) -> str:
    return f"{WORKFLOW_WORK_PREFIX}{_execution(execution)}/{SAVE_REQUEST_NAME}"


def output_key(execution: str) -> str:
    return f"{WORKFLOW_RESULTS_PREFIX}{_execution(execution)}/annotations.csv"


def _error_code(exc: BaseException) -> str:
    return str((getattr(exc, "response", None) or {}).get("Error", {}).get("Code", ""))


def _missing(exc: BaseException) -> bool:
    return _error_code(exc) in {"NoSuchKey", "404", "NotFound", "403", "AccessDenied"}


# --- Validate ------------------------------------------------------------------------------------

def validate(request: Any, execution: str, s3: Any, bucket: str, chunk_size: int = DEFAULT_CHUNK_SIZE
             ) -> dict[str, Any]:
    """Check the execution input; resolve the snapshot version and its embedder.

    Returns {"job": {...}, "saved": {"version": None}}: the state every later step reads.
    Raises InvalidInputError with every problem found, so the user fixes them in one go.
    """
    execution = _execution(execution)
    if not isinstance(request, dict):
        raise InvalidInputError(f"the execution input must be a JSON object, got {type(request).__name__}")
    problems: list[str] = []
    unknown = sorted(set(request) - REQUEST_KEYS)
    if unknown:
        allowed = ", ".join(sorted(REQUEST_KEYS))
        shown = ", ".join(_shown(k, 40) for k in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        problems.append(f"unknown input key(s) {shown}; allowed: {allowed}")

    input_bucket = key = fmt = None
    try:
        input_bucket, key = parse_s3_uri(request.get("input"))
    except InvalidInputError as exc:
        problems.append(str(exc))
    if key is not None:
        if input_bucket != bucket or not key.startswith(WORKFLOW_INPUT_PREFIX):
            problems.append(
                f"input {_shown(f's3://{input_bucket}/{key}', 200)} is outside this workflow's input "
                f"folder s3://{bucket}/{WORKFLOW_INPUT_PREFIX}; upload the file there"
            )
        elif len(key.encode("utf-8")) > MAX_INPUT_KEY_BYTES:
            problems.append(f"input key is {len(key.encode('utf-8'))} bytes; S3 keys are at most "
                            f"{MAX_INPUT_KEY_BYTES}")
        from ontosearch.label_io import SUFFIXES

        fmt = SUFFIXES.get(Path(key).suffix.lower())
        if fmt is None:
            problems.append(f"input {_shown(key, 200)} has no supported extension ({', '.join(SUFFIXES)})")

    ontology = request.get("ontology")
    canonical = ONTOLOGY_ALIASES.get(str(ontology).strip().lower()) if isinstance(ontology, str) else None
    if canonical is None:
        problems.append(f"unknown ontology {_shown(ontology)}; "
                        f"use one of {', '.join(sorted(ONTOLOGY_ALIASES))}")

    top_k = request.get("top_k", 3)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
        problems.append(f"top_k must be an integer from 1 to {MAX_TOP_K}, got {_shown(top_k)}")

    save = request.get("save_snapshot", False)
    if not isinstance(save, bool):
        problems.append(f"save_snapshot must be true or false, got {_shown(save)}")

    column = request.get("column")
    if column is not None and (not isinstance(column, str) or not column):
        problems.append(f"column must be a non-empty string, got {_shown(column)}")
    elif isinstance(column, str) and len(column) > MAX_COLUMN_CHARS:
        problems.append(f"column names at most {MAX_COLUMN_CHARS} characters, got {len(column)}")

    snapshot = request.get("snapshot", "latest")
    if not isinstance(snapshot, str) or not snapshot:
        problems.append(f"snapshot must be 'latest' or a version name, got {_shown(snapshot)}")
    elif len(snapshot) > MAX_SNAPSHOT_NAME_CHARS:
        problems.append(f"snapshot names at most {MAX_SNAPSHOT_NAME_CHARS} characters, got {len(snapshot)}")

    if not problems:
        try:
            s3.head_object(Bucket=input_bucket, Key=key)
        except Exception as exc:
            if not _missing(exc):
                raise
            problems.append(f"input s3://{input_bucket}/{key} does not exist; upload it first")
    manifest = None
    if not problems:
        manifest, snapshot = _resolve_snapshot(s3, bucket, snapshot)
        names = [c.name for c in manifest.collections if c.ontology == canonical]
        if not names:
            have = ", ".join(sorted({c.ontology for c in manifest.collections})) or "none"
            problems.append(
                f"snapshot {snapshot} has no collection for ontology {canonical} (it has: {have}); "
                "build and publish a snapshot that includes it"
            )
    if problems:
        raise InvalidInputError("invalid input: " + "; ".join(problems))
    job = {
        "bucket": bucket,
        "input": f"s3://{input_bucket}/{key}",
        "key": key,
        "format": fmt,
        "column": column,
        "ontology": canonical,
        "top_k": top_k,
        "snapshot": snapshot,
        "embedder": manifest.embedder["name"],
        "save_snapshot": save,
        "chunk_size": int(chunk_size),
    }
    return {"job": job, "saved": {"version": None}}


def _resolve_snapshot(s3: Any, bucket: str, snapshot: str) -> tuple[Any, str]:
    """The manifest of `snapshot` ("latest": the version the pointer names) and that version.

    A missing pointer or manifest (404, or 403 for a key that a listing of the prefix does not show:
    see snapshot_store.key_exists) is the user's to fix by publishing; a refusal whatever the key
    (wrong bucket, the Lambda's role) is reported as such, with what to check.
    """
    from ontosearch.manifest import Manifest, ManifestError
    from ontosearch.snapshot_store import (
        SnapshotStore,
        StoreError,
        get_object_or_none,
        no_snapshot_message,
        read_pointer,
    )

    store = SnapshotStore(bucket, SNAPSHOT_PREFIX)
    version = snapshot
    try:
        if snapshot == "latest":
            pointer = read_pointer(s3, store)
            if pointer is None:
                raise InvalidInputError(no_snapshot_message(store))
            version = pointer.version
        response = get_object_or_none(s3, store, store.manifest_key(version))
    except StoreError as exc:
        raise InvalidInputError(str(exc)) from None
    if response is None:
        raise InvalidInputError(
            f"snapshot version {version!r} not found (s3://{bucket}/{store.manifest_key(version)} "
            "does not exist); use 'latest' or a published version"
        )
    source = store.url(store.manifest_key(version))
    try:
        return Manifest.from_json(response["Body"].read(), source=source), version
    except ManifestError as exc:
        raise InvalidInputError(str(exc)) from None


# --- Split ---------------------------------------------------------------------------------------

def split(job: dict[str, Any], execution: str, s3: Any) -> dict[str, Any]:
    """Read the input once, write chunks of `chunk_size` rows and the chunk manifest.

    Returns only fixed-size fields (S3 keys of bounded length and counts), whatever the input's
    size: the chunk list is the manifest object the Distributed Map reads, not part of the state.
    """
    from ontosearch.label_io import read_labels

    execution = _execution(execution)
    size = max(1, int(job.get("chunk_size") or DEFAULT_CHUNK_SIZE))
    chunks = rows = 0
    try:
        body = s3.get_object(Bucket=job["bucket"], Key=job["key"])["Body"]
    except Exception as exc:
        if not _missing(exc):
            raise
        raise InvalidInputError(
            f"input {job['input']} disappeared after validation; upload it again") from None
    # read as it arrives: no copy in /tmp, memory bounded by one chunk whatever the file's size
    source = io.BufferedReader(_ReadableBody(body), buffer_size=1 << 20)
    with tempfile.TemporaryDirectory(prefix="ontosearch-split-") as tmp:
        manifest_path = Path(tmp) / CHUNK_MANIFEST_NAME
        buffer: list[str] = []
        with open(manifest_path, "w", encoding="utf-8", newline="\n") as manifest:

            def flush() -> None:
                nonlocal chunks
                key = chunk_key(execution, chunks)
                s3.put_object(Bucket=job["bucket"], Key=key,
                              Body=("\n".join(buffer) + "\n").encode("utf-8"),
                              ContentType="application/x-ndjson")
                manifest.write(json.dumps({"index": chunks, "key": key, "rows": len(buffer)}) + "\n")
                chunks += 1
                buffer.clear()

            for row, label, error in read_labels(source, job["format"], job.get("column")):
                rows += 1
                buffer.append(json.dumps({"row": row, "label": label, "error": error}, ensure_ascii=False))
                if len(buffer) >= size:
                    flush()
            if buffer:
                flush()
        s3.upload_file(str(manifest_path), job["bucket"], chunk_manifest_key(execution),
                       ExtraArgs={"ContentType": "application/x-ndjson"})
    return {
        "manifest": chunk_manifest_key(execution),
        "chunks": chunks,
        "rows": rows,
        "results_prefix": map_results_prefix(execution),
        "failure_key": chunk_failure_key(execution),
    }


class _ReadableBody(io.RawIOBase):
    """An S3 GetObject body as a raw binary stream, so io.BufferedReader (and the label readers'
    text wrapper over it) can read it incrementally."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._body.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def read_manifest(s3: Any, bucket: str, key: str) -> Iterator[dict[str, Any]]:
    """The chunk entries of a manifest Split wrote, in chunk order, read line by line."""
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    except Exception as exc:
        if not _missing(exc):
            raise
        raise MergeError(f"the chunk manifest s3://{bucket}/{key} is missing; "
                         "run the execution again") from None
    for line in body.iter_lines():
        if line.strip():
            yield json.loads(line)


# --- Query one chunk -----------------------------------------------------------------------------

def read_chunk(s3: Any, bucket: str, key: str) -> list[dict[str, Any]]:
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as exc:
        if not _missing(exc):
            raise
        raise ChunkQueryError(
            f"chunk s3://{bucket}/{key} is missing; the split step's output was removed") from None
    try:
        # Split on "\n" only: str.splitlines also breaks at U+0085, U+2028 and other characters a
        # label may hold (json.dumps with ensure_ascii=False writes them as they are).
        return [json.loads(line) for line in body.decode("utf-8").split("\n") if line.strip()]
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ChunkQueryError(f"chunk s3://{bucket}/{key} is not valid JSON lines ({exc})") from None


def query_chunk(
    event: dict[str, Any],
    s3: Any,
    client_for: Callable[[str], Any],
    embedder_for: Callable[[str], Any],
) -> dict[str, Any]:
    """Annotate one chunk and write its part; returns a small summary.

    `client_for(url)` gives a Chroma client through the task's proxy (it raises ChromaAuthError /
    ChromaUnavailableError), `embedder_for(name)` the embedder named in the snapshot's manifest.
    """
    from ontosearch.label_io import write_rows

    job, chunk, execution = event["job"], event["chunk"], _execution(event["execution"])
    rows = read_chunk(s3, job["bucket"], chunk["key"])
    labels = [r["label"] for r in rows if r.get("error") is None and r.get("label") is not None]
    matches: dict[str, list[Any]] = {}
    if labels:
        client = client_for(event["url"])
        embedder = embedder_for(job["embedder"])
        found = _match(labels, job, client, embedder)
        matches = dict(zip(labels, found, strict=True))
    out = io.StringIO()
    counts = write_rows(out, _result_rows(rows, matches), ontology=job["ontology"])
    key = part_key(execution, int(chunk["index"]))
    s3.put_object(
        Bucket=job["bucket"], Key=key, Body=out.getvalue().encode("utf-8"), ContentType="text/csv",
        Metadata={name: str(counts[name]) for name in _PART_META},
    )
    return {"index": chunk["index"], "part": key, **{name: counts[name] for name in _PART_META}}


# Matchers kept by a warm container between chunks, per (client, ontology, embedder, thread):
# labels repeated across chunks and records fetched for earlier chunks cost nothing again.
_MATCHERS: dict[tuple[int, str, str, int], Any] = {}
_MAX_MATCHERS = 4


def _match(labels: list[str], job: dict[str, Any], client: Any, embedder: Any) -> list[list[Any]]:
    import threading

    from ontosearch.matcher import Matcher, MatcherError
    from ontosearch.workflow.chroma_access import translate_client_errors

    key = (id(client), job["ontology"], getattr(embedder, "name", ""), threading.get_ident())
    try:
        with translate_client_errors():
            matcher = _MATCHERS.get(key)
            if matcher is None or matcher.client is not client:
                matcher = Matcher(client, job["ontology"], embedder=embedder)
                while len(_MATCHERS) >= _MAX_MATCHERS:
                    _MATCHERS.pop(next(iter(_MATCHERS)))
                _MATCHERS[key] = matcher
            return matcher.match(labels, top_k=int(job["top_k"]))
    except MatcherError as exc:
        raise ChunkQueryError(str(exc)) from None


def _result_rows(rows: Iterable[dict[str, Any]], matches: dict[str, list[Any]]
                 ) -> Iterable[tuple[int, str | None, str | None, list[Any]]]:
    for row in rows:
        label, error = row.get("label"), row.get("error")
        yield int(row["row"]), label, error, ([] if error else matches.get(label, []))


# --- Merge ---------------------------------------------------------------------------------------

def merge(job: dict[str, Any], execution: str, s3: Any, manifest: str | None = None) -> dict[str, Any]:
    """Concatenate the parts in chunk order into results/<execution>/annotations.csv and count.

    The chunks are those of the manifest Split wrote (`manifest`, default its key for the
    execution); each part must cover exactly its chunk's rows.
    """
    execution = _execution(execution)
    bucket = job["bucket"]
    manifest_key = manifest or chunk_manifest_key(execution)
    if manifest_key != chunk_manifest_key(execution):
        raise MergeError(f"manifest {_shown(manifest_key, 200)} is not this execution's "
                         f"({chunk_manifest_key(execution)})")
    missing: list[str] = []
    totals = dict.fromkeys(_PART_META, 0)
    with tempfile.TemporaryDirectory(prefix="ontosearch-merge-") as tmp:
        merged = Path(tmp) / "annotations.csv"
        header_written = False
        with open(merged, "w", encoding="utf-8", newline="") as handle:
            for chunk in read_manifest(s3, bucket, manifest_key):
                key = part_key(execution, int(chunk["index"]))
                try:
                    response = s3.get_object(Bucket=bucket, Key=key)
                except Exception as exc:
                    if not _missing(exc):
                        raise
                    missing.append(key)
                    continue
                meta = response.get("Metadata") or {}
                for name in _PART_META:
                    totals[name] += int(meta.get(name, 0))
                if int(meta.get("rows", -1)) != int(chunk.get("rows", meta.get("rows", -1))):
                    raise MergeError(f"part s3://{bucket}/{key} covers {meta.get('rows')} rows but its chunk "
                                     f"has {chunk.get('rows')}; run the execution again")
                text = response["Body"].read().decode("utf-8")
                header, _, body = text.partition("\n")
                if not header_written:
                    handle.write(header + "\n")
                    header_written = True
                handle.write(body)
            if not header_written:
                from ontosearch.label_io import write_rows

                write_rows(handle, [], ontology=job["ontology"])
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise MergeError(
                f"{len(missing)} part(s) missing ({shown}); the query step did not finish for them")
        key = output_key(execution)
        s3.upload_file(str(merged), bucket, key, ExtraArgs={"ContentType": "text/csv"})
    return {"output": f"s3://{bucket}/{key}", **totals}


# --- Save snapshot request -------------------------------------------------------------------------

def request_save(job: dict[str, Any], execution: str, token: str, s3: Any) -> dict[str, Any]:
    """Leave the task agent a save request (it polls for it) carrying the callback token."""
    key = save_request_key(execution)
    body = {"token": token, "bucket": job["bucket"], "requested": time.time(),
            "from_snapshot": job["snapshot"]}
    s3.put_object(Bucket=job["bucket"], Key=key, Body=json.dumps(body).encode(),
                  ContentType="application/json")
    return {"request": f"s3://{job['bucket']}/{key}"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise InvalidInputError(f"environment variable {name}={value!r} must be an integer") from None


def read_csv_rows(text: str) -> list[dict[str, str]]:
    """Rows of a part or the merged output (tests and the local runner read results with it)."""
    return list(csv.DictReader(io.StringIO(text)))
