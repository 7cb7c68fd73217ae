"""Split, query and merge over S3 (moto): every row kept, parts overwritten on retry, gaps refused."""

from __future__ import annotations

import csv
import io
import json

import boto3
import pytest
from moto import mock_aws

from lambdas import merge as merge_lambda
from lambdas import split as split_lambda
from ontosearch.workflow import steps
from ontosearch.workflow.errors import MergeError

BUCKET = "ontosearch-test"


@pytest.fixture
def s3(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        yield client


def job(key: str, fmt: str, column: str | None = None, chunk_size: int = 2) -> dict:
    return {"bucket": BUCKET, "input": f"s3://{BUCKET}/{key}", "key": key, "format": fmt, "column": column,
            "ontology": "cl", "top_k": 2, "snapshot": "v", "embedder": "all-MiniLM-L6-v2",
            "save_snapshot": False, "chunk_size": chunk_size}


def test_split_keeps_every_row_with_its_number_and_reader_error(s3) -> None:
    body = b"id,name\n1,T cell\n2,\n3,hepatocyte\n4,B cell\n5,x\n"
    s3.put_object(Bucket=BUCKET, Key="inputs/l.csv", Body=body)
    result = split_lambda.handler({"job": job("inputs/l.csv", "csv", column="name"), "execution": "e1"})
    assert result == {"manifest": steps.chunk_manifest_key("e1"), "chunks": 3, "rows": 5,
                      "results_prefix": steps.map_results_prefix("e1"),
                      "failure_key": steps.chunk_failure_key("e1")}
    chunks = list(steps.read_manifest(s3, BUCKET, result["manifest"]))
    assert [c["index"] for c in chunks] == [0, 1, 2]
    assert [c["rows"] for c in chunks] == [2, 2, 1]
    assert [c["key"] for c in chunks] == [steps.chunk_key("e1", i) for i in range(3)]
    rows = [r for c in chunks for r in steps.read_chunk(s3, BUCKET, c["key"])]
    assert [r["row"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0]["label"] == "T cell" and rows[0]["error"] is None
    assert rows[1]["error"]  # the empty label is kept as an error row, not dropped


def test_split_reads_an_input_with_the_longest_key_s3_allows(s3) -> None:
    """A key's last part is up to 1,024 bytes, past a file name's 255: Split streams the object
    instead of downloading it under its own name (which failed with "File name too long")."""
    key = "inputs/" + "a" * (steps.MAX_INPUT_KEY_BYTES - len("inputs/") - len(".txt")) + ".txt"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"T cell\nB cell\n")
    result = split_lambda.handler({"job": job(key, "txt"), "execution": "e-long"})
    assert result["rows"] == 2 and result["chunks"] == 1


def test_a_chunk_of_only_error_rows_needs_no_server_and_a_retry_overwrites_its_part(s3) -> None:
    s3.put_object(Bucket=BUCKET, Key=steps.chunk_key("e2", 0),
                  Body=b'{"row": 1, "label": "", "error": "empty label"}\n')
    event = {"job": job("inputs/x.txt", "txt"), "execution": "e2", "url": "http://127.0.0.1:9",
             "chunk": {"index": 0, "key": steps.chunk_key("e2", 0), "rows": 1}}

    def no_server(_url):
        raise AssertionError("no label to match: the server must not be asked")

    first = steps.query_chunk(event, s3, no_server, no_server)
    second = steps.query_chunk(event, s3, no_server, no_server)
    assert first == second == {"index": 0, "part": steps.part_key("e2", 0), "rows": 1, "annotated": 0,
                               "errors": 1}
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="work/e2/parts/")["Contents"]
    assert [o["Key"] for o in listed] == [steps.part_key("e2", 0)]


def put_manifest(s3, execution: str, chunks: list[dict]) -> str:
    key = steps.chunk_manifest_key(execution)
    s3.put_object(Bucket=BUCKET, Key=key, Body="".join(json.dumps(c) + "\n" for c in chunks).encode())
    return key


def test_merge_refuses_missing_parts_naming_them(s3) -> None:
    chunks = [{"index": 0, "key": "k0", "rows": 1}, {"index": 1, "key": "k1", "rows": 1}]
    manifest = put_manifest(s3, "e3", chunks)
    s3.put_object(Bucket=BUCKET, Key=steps.part_key("e3", 0), Body=b"input,ontology\nx,cl\n",
                  Metadata={"rows": "1", "annotated": "1", "errors": "0"})
    with pytest.raises(MergeError, match="parts/00001.csv"):
        merge_lambda.handler({"job": job("inputs/x.txt", "txt"), "execution": "e3", "manifest": manifest})
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="results/")


def test_merge_reads_only_its_own_executions_manifest(s3) -> None:
    other = put_manifest(s3, "someone-else", [])
    with pytest.raises(MergeError, match="not this execution's"):
        merge_lambda.handler({"job": job("inputs/x.txt", "txt"), "execution": "e5", "manifest": other})
    with pytest.raises(MergeError, match="chunk manifest .* is missing"):
        merge_lambda.handler({"job": job("inputs/x.txt", "txt"), "execution": "e5",
                              "manifest": steps.chunk_manifest_key("e5")})


def test_merge_of_an_empty_input_writes_the_header_and_zero_counts(s3) -> None:
    manifest = put_manifest(s3, "e4", [])
    out = merge_lambda.handler({"job": job("inputs/x.txt", "txt"), "execution": "e4", "manifest": manifest})
    assert out == {"output": f"s3://{BUCKET}/results/e4/annotations.csv", "rows": 0, "annotated": 0,
                   "errors": 0}
    text = s3.get_object(Bucket=BUCKET, Key="results/e4/annotations.csv")["Body"].read().decode()
    assert next(csv.reader(io.StringIO(text)))[:3] == ["input", "ontology", "rank"]
