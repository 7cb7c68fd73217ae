"""A 20,000,000-row file of 2,000,000 distinct labels fits every limit of the batch workflow.

Each test measures the real code at a small size (Split and Merge over S3, the deployed
definition, the Lambdas' configuration as the stack deploys it) and scales what grows with the
input to 20M rows / 2M distinct; the sizes that do not grow are asserted not to grow.

Limits relied upon, each with its source:
- S3 multipart upload: at most 10,000 parts, each 5 MiB to 5 GiB except the last, which may be
  smaller (https://docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html).
- Step Functions: a state, a task's result, an execution's input (so a child execution's input,
  one manifest item after the ItemSelector) at most 256 KiB; history at most 25,000 events per
  execution, a Distributed Map's child executions each with their own
  (https://docs.aws.amazon.com/step-functions/latest/dg/service-quotas.html;
  tests/test_workflow_limits.py measures both on the real definition).
- Distributed Map: at most 10,000 child executions at a time (MaxConcurrency), child executions
  have their own history; the items come from ItemReader (here a JSON Lines object in S3) and the
  results go to S3 through ResultWriter
  (https://docs.aws.amazon.com/step-functions/latest/dg/concepts-asl-use-map-state-distributed.html,
  https://docs.aws.amazon.com/step-functions/latest/dg/input-output-itemreader.html).
- ItemReader over one S3 object (same ItemReader page): the object at most 10 GB ("Step Functions
  supports 10 GB as the maximum size of an individual file in Amazon S3"), an item read at most
  8 MB only where the ItemSelector shrinks it (ours passes the item whole beside the job, so 256 KiB,
  the child's input, binds), at most 100,000,000 items (the highest ReaderConfig MaxItems).
- Lambda: timeout at most 900 s, memory 128-10,240 MB, /tmp (ephemeral storage) 512-10,240 MB
  (https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html;
  https://docs.aws.amazon.com/lambda/latest/dg/API_EphemeralStorage.html).
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import moto_s3
import pytest
from boto3.s3.transfer import TransferConfig
from pulumi_harness import synth_with

from components import batch_workflow as bw
from ontosearch.workflow import definition as wd
from ontosearch.workflow import s3_stream, steps
from ontosearch.workflow.local import local_settings

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("workflow_scale", ROOT / "bench" / "workflow_scale.py")
workflow_scale = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(workflow_scale)

ROWS = 20_000_000
DISTINCT = 2_000_000
MIB = 1024 * 1024
S3_MAX_PARTS = 10_000
S3_MIN_PART = 5 * MIB
S3_MAX_PART = 5 * 1024 * MIB
STATE_LIMIT = 256 * 1024
ITEM_READER_MAX_OBJECT = 10 * 1000**3  # "10 GB" (ItemReader page, above), read as the smaller 10^10 bytes
ITEM_READER_MAX_ITEMS = 100_000_000
LAMBDA_MAX_TIMEOUT = 900
LONGEST_NAME = "e" * 40 + "-" + "9" * 39  # 80 characters, the longest execution name
BUCKET = "ontosearch-scale"
# a cell-type label as atlases write them, and a term label of the same kind
LABEL = "CD4-positive, alpha-beta memory T cell, lung 12"
TERM = "CD4-positive, alpha-beta memory T cell"


def row_bytes(top_k: int, label: str = LABEL) -> int:
    """The output bytes of one input row at `top_k` matches, as Merge writes them (the query
    step's own writer: steps.label_block)."""
    matches = [{"rank": r + 1, "term_id": f"CL:{r:07d}", "term_label": TERM, "score": 0.8765,
                "match_type": "embedding", "confidence": "medium"} for r in range(top_k)]
    text, kind = steps.label_block(label, None, matches, "CL")
    assert kind == "annotated"
    return len(text.encode("utf-8"))


@pytest.fixture
def s3(monkeypatch):
    yield from moto_s3.bucket(monkeypatch, BUCKET)


def split_job(s3, rows: int, distinct: int, tmp_path: Path) -> dict:
    path = tmp_path / "in.txt"
    workflow_scale.write_input(path, rows, distinct)
    s3.upload_file(str(path), BUCKET, "inputs/in.txt")
    return {"bucket": BUCKET, "input": f"s3://{BUCKET}/inputs/in.txt", "key": "inputs/in.txt",
            "format": "txt", "column": None, "ontology": "CL", "top_k": steps.MAX_TOP_K,
            "snapshot": "s", "embedder": "e", "save_snapshot": False,
            "chunk_size": steps.DEFAULT_CHUNK_SIZE}


@pytest.fixture(scope="module")
def lambdas():
    result = synth_with("dev", {"ontosearch:batchWorkflow": True})
    return {step: result.one("aws:lambda/function:Function", f"batch-{step}").raw_inputs
            for step in ("split", "merge", "query")}


def test_the_chunk_manifest_of_2m_distinct_labels_fits_the_distributed_map(s3, tmp_path) -> None:
    """Split's real manifest at a small size, scaled: 2M distinct labels are 4,000 chunks, 4,000
    ItemReader items of a few hundred bytes each; no item's child input comes near 256 KiB."""
    job = split_job(s3, 12_000, 3_000, tmp_path)
    out = steps.split(job, LONGEST_NAME, s3)
    lines = s3.get_object(Bucket=BUCKET, Key=out["manifest"])["Body"].read().decode().splitlines()
    assert len(lines) == out["chunks"] == math.ceil(out["labels"] / steps.DEFAULT_CHUNK_SIZE)
    widest = max(len(line.encode()) for line in lines)
    # the widest line is at most a few digits wider at 4,000 chunks (index, first, labels)
    item = widest + 3 * len(str(DISTINCT))
    chunks = math.ceil(DISTINCT / steps.DEFAULT_CHUNK_SIZE)
    assert chunks == 4_000
    assert chunks * item < 2 * MIB, (chunks, item)
    assert chunks * item < ITEM_READER_MAX_OBJECT
    assert chunks < ITEM_READER_MAX_ITEMS
    # the child's input is the item plus the job (bounded by Validate; measured at every
    # transition in tests/test_workflow_limits.py); the item itself is a tiny share of 256 KiB
    assert item < STATE_LIMIT / 500
    definition = wd.build_definition(local_settings())
    query = definition["States"]["QueryChunks"]
    assert query["ItemProcessor"]["ProcessorConfig"]["Mode"] == "DISTRIBUTED"
    assert query["ItemReader"]["ReaderConfig"]["InputType"] == "JSONL"
    assert query["ItemReader"]["Parameters"]["Key.$"] == "$.split.manifest"
    # the Map Run's results go to S3, and the state keeps none of them: nothing grows with chunks
    assert query["ResultWriter"]["Parameters"]["Prefix.$"] == "$.split.results_prefix"
    assert query["ResultPath"] is None
    assert 1 <= query["MaxConcurrency"] <= wd.MAX_MAP_CONCURRENCY == 10_000


@pytest.mark.parametrize("top_k", [3, steps.MAX_TOP_K])
def test_merge_output_of_20m_rows_fits_s3_multipart_limits(top_k: int) -> None:
    """Merge's output goes up in MultipartWriter parts of PART_BYTES: 20M rows at top_k 3 and at
    the largest top_k Validate accepts stay within 10,000 parts of 5 MiB-5 GiB."""
    writer = s3_stream.MultipartWriter(None, BUCKET, "k", "text/csv", threads=steps.MERGE_UPLOAD_THREADS)
    assert S3_MIN_PART <= writer.part_bytes <= S3_MAX_PART
    assert s3_stream.MAX_PARTS == S3_MAX_PARTS
    output = ROWS * row_bytes(top_k)
    parts = math.ceil(output / writer.part_bytes)
    print(f"\ntop_k {top_k}: {row_bytes(top_k)} bytes a row, 20M rows {output / 2**30:.1f} GiB, "
          f"{parts} parts of {writer.part_bytes // MIB} MiB")
    assert parts <= S3_MAX_PARTS
    # what a row may hold at most so 20M rows still fit: about 33 KB
    assert writer.part_bytes * S3_MAX_PARTS // ROWS > 30_000


def test_splits_uploads_of_20m_rows_fit_s3_limits(s3, tmp_path) -> None:
    """Split PUTs each chunk whole (500 labels of at most MAX_LABEL_CHARS) and uploads the row list
    with boto3's upload_file (parts of TransferConfig's multipart_chunksize): both far inside."""
    from ontosearch.label_io import MAX_LABEL_CHARS

    job = split_job(s3, 20_000, 2_000, tmp_path)
    steps.split(job, "scale", s3)
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="work/scale/")["Contents"]
    sizes = {o["Key"]: o["Size"] for o in listed}
    per_row = sizes[steps.rows_key("scale")] / 20_000
    rows_list = ROWS * (per_row + 1)  # 20M rows: labels numbered up to 2M take a digit or two more
    parts = math.ceil(rows_list / TransferConfig().multipart_chunksize)
    assert parts <= S3_MAX_PARTS, parts
    # the largest chunk: 500 labels of 1,000 characters of 4 UTF-8 bytes, JSON-escaped
    assert steps.DEFAULT_CHUNK_SIZE * (MAX_LABEL_CHARS * 4 * 2 + 40) < S3_MAX_PART


def test_20m_rows_fit_the_split_and_merge_lambdas_tmp_and_time(lambdas, s3, tmp_path) -> None:
    """/tmp: Split holds the row list and the manifest, Merge the label blocks (one a distinct
    label). Both at 20M rows / 2M distinct, top_k 3, fit the ephemeral storage the stack gives
    them; at the largest top_k the blocks of 2M labels do not, and the bound is stated."""
    for step in ("split", "merge"):
        fn = lambdas[step]
        assert fn["timeout"] == bw.OTHER_TIMEOUT_SECONDS <= LAMBDA_MAX_TIMEOUT
        assert fn["memorySize"] == bw.LAMBDA_MEMORY[step] <= 10_240
        assert 512 <= fn["ephemeralStorage"]["size"] <= 10_240
    tmp_mb = {step: lambdas[step]["ephemeralStorage"]["size"] for step in ("split", "merge")}
    job = split_job(s3, 20_000, 2_000, tmp_path)
    steps.split(job, "scale", s3)
    rows_size = s3.head_object(Bucket=BUCKET, Key=steps.rows_key("scale"))["ContentLength"]
    split_tmp = ROWS * (rows_size / 20_000 + 1)
    assert split_tmp < tmp_mb["split"] * MIB / 4, split_tmp  # under a quarter of /tmp
    blocks_top3 = DISTINCT * row_bytes(3)
    assert blocks_top3 < tmp_mb["merge"] * MIB / 2, blocks_top3
    # at top_k 50 the label blocks of this many distinct labels fit /tmp:
    most = tmp_mb["merge"] * MIB // row_bytes(steps.MAX_TOP_K)
    assert 200_000 < most < DISTINCT
    print(f"\n/tmp: split {split_tmp / MIB:.0f} MiB of {tmp_mb['split']}, merge at top_k 3 "
          f"{blocks_top3 / MIB:.0f} MiB of {tmp_mb['merge']}; at top_k {steps.MAX_TOP_K} at most "
          f"{most:,} distinct labels")


@pytest.mark.slow
def test_split_and_merge_memory_does_not_grow_with_rows() -> None:
    """Split and Merge in child processes over a moto server (bench/workflow_scale.py) at 100k and
    400k rows of the same 10k distinct labels: Split's peak RSS stays within a few MB; Merge's
    grows by at most its output part buffers (MERGE_UPLOAD_THREADS + 1 parts of PART_BYTES, a
    constant), which is what a 20M-row output holds too."""
    small = workflow_scale.main(["--rows", "100000", "--distinct", "10000", "--json"])
    large = workflow_scale.main(["--rows", "400000", "--distinct", "10000", "--json"])
    print("\n" + json.dumps({"small": small, "large": large}))
    assert small["distinct"] == large["distinct"] == 10_000
    assert large["split"]["peak_rss_mb"] - small["split"]["peak_rss_mb"] < 16
    buffers = (steps.MERGE_UPLOAD_THREADS + 1) * s3_stream.PART_BYTES / MIB
    assert large["merge"]["peak_rss_mb"] - small["merge"]["peak_rss_mb"] < buffers + 32
    # the whole merge stays far below the Lambda's memory
    assert large["merge"]["peak_rss_mb"] < bw.LAMBDA_MEMORY["merge"] / 3


@pytest.mark.slow
def test_split_and_merge_memory_for_2m_distinct_labels_fits_their_lambdas() -> None:
    """What a distinct label costs Split (its number in the label map) and Merge (its offset and its
    mapped block), measured between 10k and 200k distinct labels of 400k rows and scaled to 2M
    distinct: both stay under the memory the stack gives them, with Merge's part buffers added."""
    few = workflow_scale.main(["--rows", "400000", "--distinct", "10000", "--json"])
    many = workflow_scale.main(["--rows", "400000", "--distinct", "200000", "--json"])
    print("\n" + json.dumps({"few": few, "many": many}))
    labels = many["distinct"] - few["distinct"]
    assert labels > 150_000
    for step in ("split", "merge"):
        per_label_mb = (many[step]["peak_rss_mb"] - few[step]["peak_rss_mb"]) / labels
        at_2m = few[step]["peak_rss_mb"] + per_label_mb * DISTINCT
        if step == "merge":
            at_2m += (steps.MERGE_UPLOAD_THREADS + 1) * s3_stream.PART_BYTES / MIB
        print(f"{step}: {per_label_mb * MIB:.0f} bytes a distinct label, ~{at_2m:.0f} MB at 2M distinct")
        assert at_2m < bw.LAMBDA_MEMORY[step] * 0.8, (step, at_2m)
