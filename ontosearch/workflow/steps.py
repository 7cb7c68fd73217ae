"""The workflow's steps as plain functions over S3: validate, split, query one chunk, merge, save.

The Lambda handlers in lambdas/ only parse their event and call these; the local runner calls the
same handlers. S3 layout inside the stack's bucket (prefixes in ontosearch.constants):

    inputs/...                                   what users upload (the only place inputs are read)
    work/<execution>/chunks/<00000>.jsonl        distinct labels, {"id", "label"} a line, each once
    work/<execution>/chunks.jsonl                the chunk manifest: {"index", "key", "first", "labels"}
                                                 a line; the Distributed Map's ItemReader reads it
    work/<execution>/rows.jsonl                  every input row in order: its label's id, or
                                                 {"label", "error"} for a row the reader refused
    work/<execution>/parts/<00000>.jsonl         one query step's output: {"id", "kind", "text"} a
                                                 label, `text` its output lines; a retry overwrites it
    work/<execution>/map-results/<run>/...       the Map Run's ResultWriter output (manifest.json,
                                                 SUCCEEDED_0.json, ...)
    work/<execution>/chunk-failure.json          the error of a chunk that failed ({"Error", "Cause"}),
                                                 recorded by its child execution for the parent
    work/<execution>/save-request.json           asks the task agent to publish a snapshot
    results/<execution>/annotations.csv          the merged output

Each distinct label is queried once; Merge writes every input row in input order with its
label's lines (an error row with its own), so the output is what `ontosearch annotate` writes.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
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
from ontosearch.workflow.s3_stream import MultipartWriter, open_object

DEFAULT_CHUNK_SIZE = 500
MAX_TOP_K = 50
# Nothing that grows with the input travels in the execution state: the chunk list is an S3 object
# (CHUNK_MANIFEST_NAME) the Distributed Map reads, and Split returns fixed-size fields. What the
# state carries of the request is bounded here, so every state stays far below Step Functions'
# 256 KiB (tests/test_workflow_limits.py measures it at every transition).
MAX_INPUT_KEY_BYTES = 1024  # S3's own limit on a key (UTF-8 bytes)
MAX_COLUMN_CHARS = 256
MAX_SNAPSHOT_NAME_CHARS = 128
CHUNKS_DIR = "chunks"  # work/<execution>/chunks/: Split writes, Query reads
PARTS_DIR = "parts"  # work/<execution>/parts/: Query writes, Merge reads
CHUNK_MANIFEST_NAME = "chunks.jsonl"
ROWS_NAME = "rows.jsonl"
MAP_RESULTS_NAME = "map-results"
CHUNK_FAILURE_NAME = "chunk-failure.json"
ROW_BATCH = 65_536  # row-list lines Split writes at a time
# S3 requests Split and Merge have in flight at once (boto3 clients may be shared between threads:
# https://boto3.amazonaws.com/v1/documentation/api/latest/guide/clients.html, multithreading)
PUT_THREADS = 8
PART_GET_THREADS = 8
MERGE_UPLOAD_THREADS = 3  # output parts uploading while the next fills (each PART_BYTES)
OUTPUT_BATCH_BYTES = 8 * 1024 * 1024  # Merge joins row blocks into writes of about this size
REQUEST_KEYS = {"input", "ontology", "top_k", "snapshot", "save_snapshot", "column"}
# execution names become key parts; Step Functions allows these characters (and a few we refuse)
_EXECUTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,80}$")


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
    return f"{WORKFLOW_WORK_PREFIX}{_execution(execution)}/{CHUNKS_DIR}/{index:05d}.jsonl"


def part_key(execution: str, index: int) -> str:
    return f"{WORKFLOW_WORK_PREFIX}{_execution(execution)}/{PARTS_DIR}/{index:05d}.jsonl"


def chunk_manifest_key(execution: str) -> str:
    return f"{WORKFLOW_WORK_PREFIX}{_execution(execution)}/{CHUNK_MANIFEST_NAME}"


def rows_key(execution: str) -> str:
    return f"{WORKFLOW_WORK_PREFIX}{_execution(execution)}/{ROWS_NAME}"


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
        problems += _embedder_problems(manifest.embedder["name"], snapshot)
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


def _embedder_problems(name: str, snapshot: str) -> list[str]:
    """Where the query step embeds from bundles only (the Lambda image: ONTOSEARCH_EMBEDDER_BUNDLES
    set, no torch or model cache), a snapshot built with an embedder it has no bundle for is refused
    here, before the task starts, instead of failing every chunk after it has."""
    from ontosearch.embedder_bundle import bundled_names, bundles_root, find_bundle

    if bundles_root() is None or find_bundle(name) is not None:
        return []
    have = ", ".join(bundled_names()) or "none"
    return [f"snapshot {snapshot} was built with embedder {name!r}, which this deployment's query step "
            f"cannot run (its image has bundles for: {have}); publish a snapshot built with one of "
            "those, or add an `embedder-bundle export` of it to lambdas/Dockerfile and deploy again"]


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
    """Read the input once; write each distinct label once into chunks of `chunk_size` labels,
    the row list (each input row: its label's number, or the reader's error) and the manifest.

    Work downstream is in proportion to distinct labels: a file of millions of rows of a few
    thousand labels queries a few thousand. Memory holds one chunk and the label -> number map
    (a bound in distinct labels, not rows); the input is read as it arrives, the row list goes
    through /tmp. Returns only fixed-size fields (keys of bounded length, counts), whatever the
    input's size: the chunk list is the manifest the Distributed Map reads, not part of the state.
    """
    from ontosearch.label_io import read_labels

    execution = _execution(execution)
    size = max(1, int(job.get("chunk_size") or DEFAULT_CHUNK_SIZE))
    try:
        source = open_object(s3, job["bucket"], job["key"])
    except Exception as exc:
        if not _missing(exc):
            raise
        raise InvalidInputError(
            f"input {job['input']} disappeared after validation; upload it again") from None
    numbers: dict[str, int] = {}
    chunks = rows = 0
    buffer: list[str] = []
    pending_puts: deque[Future[Any]] = deque()
    with tempfile.TemporaryDirectory(prefix="ontosearch-split-") as tmp, \
            ThreadPoolExecutor(max_workers=PUT_THREADS) as pool:
        manifest_path, rows_path = Path(tmp) / CHUNK_MANIFEST_NAME, Path(tmp) / ROWS_NAME
        with open(manifest_path, "w", encoding="utf-8", newline="\n") as manifest, \
                open(rows_path, "w", encoding="utf-8", newline="\n") as row_list:

            def flush() -> None:
                nonlocal chunks
                key = chunk_key(execution, chunks)
                body = ("\n".join(buffer) + "\n").encode("utf-8")
                # chunk PUTs go out PUT_THREADS at a time (one PUT a chunk in turn was a quarter of
                # Split's time over a local S3); at most 2 x PUT_THREADS chunks wait in memory
                while len(pending_puts) >= 2 * PUT_THREADS:
                    pending_puts.popleft().result()
                pending_puts.append(pool.submit(s3.put_object, Bucket=job["bucket"], Key=key, Body=body,
                                                ContentType="application/x-ndjson"))
                first = len(numbers) - len(buffer)
                manifest.write(json.dumps({"index": chunks, "key": key, "first": first,
                                           "labels": len(buffer)}) + "\n")
                chunks += 1
                buffer.clear()

            # the row list's lines are gathered and written ROW_BATCH at a time (a write a row
            # was a tenth of Split's time); at most ROW_BATCH short strings are held
            pending: list[str] = []
            for _row, label, error in read_labels(source, job["format"], job.get("column")):
                rows += 1
                if error is not None or label is None:
                    pending.append(json.dumps({"label": label, "error": error}, ensure_ascii=False))
                else:
                    number = numbers.get(label)
                    if number is None:
                        number = numbers[label] = len(numbers)
                        buffer.append(json.dumps({"id": number, "label": label}, ensure_ascii=False))
                        if len(buffer) >= size:
                            flush()
                    pending.append(str(number))
                if len(pending) >= ROW_BATCH:
                    row_list.write("\n".join(pending) + "\n")
                    pending.clear()
            if pending:
                row_list.write("\n".join(pending) + "\n")
            if buffer:
                flush()
            while pending_puts:  # every chunk is in S3 before the manifest that names it
                pending_puts.popleft().result()
        s3.upload_file(str(rows_path), job["bucket"], rows_key(execution),
                       ExtraArgs={"ContentType": "application/x-ndjson"})
        s3.upload_file(str(manifest_path), job["bucket"], chunk_manifest_key(execution),
                       ExtraArgs={"ContentType": "application/x-ndjson"})
    return {
        "manifest": chunk_manifest_key(execution),
        "chunks": chunks,
        "rows": rows,
        "labels": len(numbers),
        "results_prefix": map_results_prefix(execution),
        "failure_key": chunk_failure_key(execution),
    }


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
    """The labels of one chunk: {"id", "label"} each, in id order."""
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


def label_block(label: str | None, error: str | None, matches: Iterable[Any], ontology: str
                ) -> tuple[str, str]:
    """The output lines of one input row as CSV text, and the count it adds to ("annotated",
    "errors" or "no_match"): the writer `annotate` uses, so every row of a label gets the very
    lines annotate writes for it."""
    from ontosearch.label_io import ResultWriter

    out = io.StringIO()
    writer = ResultWriter(out, ontology=ontology, header=False)
    writer.write(0, label, error, matches)
    kind = next(k for k, v in writer.counts.items() if k != "rows" and v)
    return out.getvalue(), kind


def query_chunk(
    event: dict[str, Any],
    s3: Any,
    client_for: Callable[[str], Any],
    embedder_for: Callable[[str], Any],
) -> dict[str, Any]:
    """Annotate the distinct labels of one chunk and write its part; returns a small summary.

    The part holds one JSON line per label, {"id", "kind", "text"}, `text` the label's output
    lines. `client_for(url)` gives a Chroma client through the task's proxy (it raises
    ChromaAuthError / ChromaUnavailableError), `embedder_for(name)` the snapshot's embedder.
    """
    job, chunk, execution = event["job"], event["chunk"], _execution(event["execution"])
    entries = read_chunk(s3, job["bucket"], chunk["key"])
    labels = [e["label"] for e in entries]
    found: list[Any] = []
    if labels:
        client = client_for(event["url"])
        embedder = embedder_for(job["embedder"])
        found = _match(labels, job, client, embedder)
    lines = []
    kinds = dict.fromkeys(("annotated", "errors", "no_match"), 0)
    for entry, matches in zip(entries, found, strict=True):
        text, kind = label_block(entry["label"], None, matches, job["ontology"])
        kinds[kind] += 1
        lines.append(json.dumps({"id": entry["id"], "kind": kind, "text": text}, ensure_ascii=False))
    key = part_key(execution, int(chunk["index"]))
    s3.put_object(
        Bucket=job["bucket"], Key=key, Body="".join(line + "\n" for line in lines).encode("utf-8"),
        ContentType="application/x-ndjson", Metadata={"labels": str(len(entries))},
    )
    return {"index": chunk["index"], "part": key, "labels": len(entries), **kinds}


# Matchers kept by a warm container between chunks, per (client, ontology, embedder, thread):
# labels repeated across chunks and records fetched for earlier chunks cost nothing again.
# The local runner calls handlers on several threads at once, so the dict is only touched under a lock.
_MATCHERS: dict[tuple[int, str, str, int], Any] = {}
_MAX_MATCHERS = 4
_MATCHERS_LOCK = threading.Lock()


def _match(labels: list[str], job: dict[str, Any], client: Any, embedder: Any) -> list[list[Any]]:
    from ontosearch.matcher import Matcher, MatcherError
    from ontosearch.workflow.chroma_access import translate_client_errors

    key = (id(client), job["ontology"], getattr(embedder, "name", ""), threading.get_ident())
    try:
        with translate_client_errors():
            with _MATCHERS_LOCK:
                matcher = _MATCHERS.get(key)
            if matcher is None or matcher.client is not client:
                matcher = Matcher(client, job["ontology"], embedder=embedder)
                with _MATCHERS_LOCK:
                    while len(_MATCHERS) >= _MAX_MATCHERS:
                        _MATCHERS.pop(next(iter(_MATCHERS)))
                    _MATCHERS[key] = matcher
            return matcher.match(labels, top_k=int(job["top_k"]))
    except MatcherError as exc:
        raise ChunkQueryError(str(exc)) from None


# --- Merge ---------------------------------------------------------------------------------------

def _in_order(pool: ThreadPoolExecutor, work: Callable[[Any], Any], items: Iterable[Any], ahead: int
              ) -> Iterator[Any]:
    """work(item) for every item, run on the pool at most `ahead` at a time, yielded in item order."""
    waiting: deque[Future[Any]] = deque()
    for item in items:
        if len(waiting) >= ahead:
            yield waiting.popleft().result()
        waiting.append(pool.submit(work, item))
    while waiting:
        yield waiting.popleft().result()


def _row_lines(stream: Any, block: int = 1 << 20) -> Iterator[list[bytes]]:
    """The row list's lines, `block` bytes of the stream at a time (a line cut at a block's end
    is completed from the next)."""
    rest = b""
    while True:
        data = stream.read(block)
        if not data:
            if rest:
                yield [rest]
            return
        lines = (rest + data).split(b"\n")
        rest = lines.pop()
        yield lines


def merge(job: dict[str, Any], execution: str, s3: Any, manifest: str | None = None) -> dict[str, Any]:
    """Write results/<execution>/annotations.csv: every input row in input order, each with its
    label's lines from the parts (an error row with its own), as `annotate` writes them.

    The parts are fetched PART_GET_THREADS at a time (each read whole: a part holds one chunk's
    labels) and laid down in a local file of label blocks with an index of offsets (8 bytes a label
    in memory); that file is then mapped read-only, the row list read 1 MiB at a time, and each
    row's block copied into an output buffer that goes to S3 in parts as it fills
    (s3_stream.MultipartWriter, MERGE_UPLOAD_THREADS parts uploading at once). Memory holds the
    offsets and what the map's pages cache of the label blocks (file-backed, so reclaimable), a
    few parts and output buffers: it grows with distinct labels, not rows. /tmp holds the label
    blocks only. Every part must cover exactly its chunk's labels.
    """
    import mmap
    from array import array

    from ontosearch.label_io import write_rows

    execution = _execution(execution)
    bucket = job["bucket"]
    manifest_key = manifest or chunk_manifest_key(execution)
    if manifest_key != chunk_manifest_key(execution):
        raise MergeError(f"manifest {_shown(manifest_key, 200)} is not this execution's "
                         f"({chunk_manifest_key(execution)})")
    kinds = ("annotated", "errors", "no_match")
    missing: list[str] = []

    def fetch(chunk: dict[str, Any]) -> tuple[dict[str, Any], str, Any, bytes | None]:
        key = part_key(execution, int(chunk["index"]))
        try:
            response = s3.get_object(Bucket=bucket, Key=key)
        except Exception as exc:
            if not _missing(exc):
                raise
            return chunk, key, None, None
        return chunk, key, response, response["Body"].read()

    with tempfile.TemporaryDirectory(prefix="ontosearch-merge-") as tmp:
        blocks_path = Path(tmp) / "labels.bin"
        offsets = array("Q", [0])
        label_kinds = bytearray()
        with open(blocks_path, "wb") as blocks, ThreadPoolExecutor(max_workers=PART_GET_THREADS) as pool:
            chunks = read_manifest(s3, bucket, manifest_key)
            for chunk, key, response, body in _in_order(pool, fetch, chunks, 2 * PART_GET_THREADS):
                if response is None:
                    missing.append(key)
                    continue
                if missing:
                    continue  # the merge fails anyway; only the missing parts are still looked for
                _check_room(tmp, len(body), key)
                expected = int(chunk["labels"])
                covered = int((response.get("Metadata") or {}).get("labels", -1))
                if covered != expected or len(offsets) - 1 != int(chunk["first"]):
                    raise MergeError(f"part s3://{bucket}/{key} covers {covered} labels but its chunk has "
                                     f"{expected}; run the execution again")
                texts = []
                for line in body.split(b"\n"):
                    if not line.strip():
                        continue
                    entry = json.loads(line)
                    if entry["id"] != len(offsets) - 1:
                        raise MergeError(f"part s3://{bucket}/{key} is out of order at label {entry['id']}; "
                                         "run the execution again")
                    data = entry["text"].encode("utf-8")
                    texts.append(data)
                    offsets.append(offsets[-1] + len(data))
                    label_kinds.append(kinds.index(entry["kind"]))
                blocks.write(b"".join(texts))
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise MergeError(
                f"{len(missing)} part(s) missing ({shown}); the query step did not finish for them")
        labels = len(offsets) - 1
        key = output_key(execution)
        header = io.StringIO()
        write_rows(header, [], ontology=job["ontology"])
        try:
            row_list = open_object(s3, bucket, rows_key(execution))
        except Exception as exc:
            if not _missing(exc):
                raise
            raise MergeError(f"the row list s3://{bucket}/{rows_key(execution)} is missing; "
                             "run the execution again") from None
        counts = [0, 0, 0]
        rows = 0
        with open(blocks_path, "rb") as blocks_file, MultipartWriter(
                s3, bucket, key, content_type="text/csv", threads=MERGE_UPLOAD_THREADS) as out:
            view: Any = (mmap.mmap(blocks_file.fileno(), 0, access=mmap.ACCESS_READ)
                         if offsets[-1] else b"")
            try:
                out.write(header.getvalue().encode("utf-8"))
                pending: list[bytes] = []
                size = 0
                for lines in _row_lines(row_list):
                    for line in lines:
                        if not line:
                            continue
                        rows += 1
                        if line[0] == 0x7B:  # "{": an error row, with its own lines
                            row = json.loads(line)
                            text, kind = label_block(row["label"], row["error"], [], job["ontology"])
                            data = text.encode("utf-8")
                            pending.append(data)
                            size += len(data)
                            counts[kinds.index(kind)] += 1
                            continue
                        number = int(line)
                        if not 0 <= number < labels:
                            raise MergeError(f"row {rows} names label {number}, of {labels}; "
                                             "run the execution again")
                        start, end = offsets[number], offsets[number + 1]
                        pending.append(view[start:end])
                        size += end - start
                        counts[label_kinds[number]] += 1
                        if size >= OUTPUT_BATCH_BYTES:
                            out.write(b"".join(pending))
                            pending.clear()
                            size = 0
                if pending:
                    out.write(b"".join(pending))
            finally:
                if not isinstance(view, bytes):
                    view.close()
    return {"output": f"s3://{bucket}/{key}", "rows": rows, "annotated": counts[kinds.index("annotated")],
            "errors": counts[kinds.index("errors")]}


def _check_room(tmp: str, incoming: int, key: str) -> None:
    """The label blocks go to /tmp (the Merge Lambda's ephemeral storage): say so before it fills."""
    free = shutil.disk_usage(tmp).free
    if incoming > free:
        raise MergeError(f"the label results do not fit the merge step's local storage ({free} bytes "
                         f"free at {key}); use a smaller top_k, or split the file: the deployed merge "
                         "Lambda already has Lambda's largest /tmp (10,240 MB)")


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
