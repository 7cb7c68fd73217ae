"""Split, query and merge over S3 (moto): every row kept, parts overwritten on retry, gaps refused."""

from __future__ import annotations

import csv
import io
import json

import moto_s3
import pytest

from lambdas import merge as merge_lambda
from lambdas import split as split_lambda
from ontosearch.label_io import write_rows
from ontosearch.matcher import Match
from ontosearch.workflow import steps
from ontosearch.workflow.errors import MergeError

BUCKET = "ontosearch-test"


@pytest.fixture
def s3(monkeypatch):
    yield from moto_s3.bucket(monkeypatch, BUCKET)


def job(key: str, fmt: str, column: str | None = None, chunk_size: int = 2) -> dict:
    return {"bucket": BUCKET, "input": f"s3://{BUCKET}/{key}", "key": key, "format": fmt, "column": column,
            "ontology": "cl", "top_k": 2, "snapshot": "v", "embedder": "all-MiniLM-L6-v2",
            "save_snapshot": False, "chunk_size": chunk_size}


def rows_list(s3, execution: str) -> list:
    return [json.loads(line) for line in
            s3.get_object(Bucket=BUCKET, Key=steps.rows_key(execution))["Body"].read().decode().splitlines()]


def test_split_keeps_every_row_in_order_and_writes_each_distinct_label_once(s3) -> None:
    body = b"id,name\n1,T cell\n2,\n3,hepatocyte\n4,T cell\n5,B cell\n6,x\n7,hepatocyte\n"
    s3.put_object(Bucket=BUCKET, Key="inputs/l.csv", Body=body)
    result = split_lambda.handler({"job": job("inputs/l.csv", "csv", column="name"), "execution": "e1"})
    assert result == {"manifest": steps.chunk_manifest_key("e1"), "chunks": 2, "rows": 7, "labels": 4,
                      "results_prefix": steps.map_results_prefix("e1"),
                      "failure_key": steps.chunk_failure_key("e1")}
    chunks = list(steps.read_manifest(s3, BUCKET, result["manifest"]))
    assert chunks == [{"index": 0, "key": steps.chunk_key("e1", 0), "first": 0, "labels": 2},
                      {"index": 1, "key": steps.chunk_key("e1", 1), "first": 2, "labels": 2}]
    labels = [e for c in chunks for e in steps.read_chunk(s3, BUCKET, c["key"])]
    # each distinct label once, numbered in order of first appearance
    assert labels == [{"id": 0, "label": "T cell"}, {"id": 1, "label": "hepatocyte"},
                      {"id": 2, "label": "B cell"}, {"id": 3, "label": "x"}]
    # every input row, in input order: its label's number, or the reader's error with the row kept
    rows = rows_list(s3, "e1")
    assert rows[0] == 0 and rows[2:] == [1, 0, 2, 3, 1]
    assert rows[1]["label"] == "" and rows[1]["error"]  # the empty label is an error row, not dropped


def test_a_file_of_only_error_rows_queries_nothing_and_merge_writes_each_row(s3) -> None:
    s3.put_object(Bucket=BUCKET, Key="inputs/empty.txt", Body=b"\n\n" + b"y" * 3000 + b"\n")
    result = split_lambda.handler({"job": job("inputs/empty.txt", "txt"), "execution": "e2"})
    assert (result["chunks"], result["rows"], result["labels"]) == (0, 3, 0)
    assert [c for c in steps.read_manifest(s3, BUCKET, result["manifest"])] == []
    out = merge_lambda.handler({"job": job("inputs/empty.txt", "txt"), "execution": "e2",
                                "manifest": result["manifest"]})
    assert (out["rows"], out["errors"], out["annotated"]) == (3, 3, 0)
    written = list(csv.DictReader(io.StringIO(
        s3.get_object(Bucket=BUCKET, Key=steps.output_key("e2"))["Body"].read().decode())))
    assert [w["status"] for w in written] == ["error"] * 3


def test_split_reads_an_input_with_the_longest_key_s3_allows(s3) -> None:
    """A key's last part is up to 1,024 bytes, past a file name's 255: Split streams the object
    instead of downloading it under its own name (which failed with "File name too long")."""
    key = "inputs/" + "a" * (steps.MAX_INPUT_KEY_BYTES - len("inputs/") - len(".txt")) + ".txt"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"T cell\nB cell\n")
    result = split_lambda.handler({"job": job(key, "txt"), "execution": "e-long"})
    assert result["rows"] == 2 and result["chunks"] == 1


def put_manifest(s3, execution: str, chunks: list[dict]) -> str:
    key = steps.chunk_manifest_key(execution)
    s3.put_object(Bucket=BUCKET, Key=key, Body="".join(json.dumps(c) + "\n" for c in chunks).encode())
    return key


def put_part(s3, execution: str, index: int, entries: list[tuple[int, str, list]], ontology: str = "cl"
             ) -> None:
    lines = []
    for number, label, matches in entries:
        text, kind = steps.label_block(label, None, matches, ontology)
        lines.append(json.dumps({"id": number, "kind": kind, "text": text}) + "\n")
    s3.put_object(Bucket=BUCKET, Key=steps.part_key(execution, index), Body="".join(lines).encode(),
                  Metadata={"labels": str(len(entries))})


def test_merge_writes_every_row_in_input_order_as_annotate_writes_it(s3) -> None:
    """Rows repeat labels and mix in error rows; the output is annotate's writer over the same rows
    with the same matches (label_io.write_rows), line for line."""
    t_cell = [Match("CL:0000084", "T cell", 1.0, "T cell", 1, "label"),
              Match("CL:0000625", "CD8-positive T cell", 0.8, "CD8 T cell", 2, "vector")]
    hepatocyte = [Match("CL:0000182", "hepatocyte", 0.93, "hepatocytes", 1, "vector")]
    labels = {0: ("T cell", t_cell), 1: ("hepatocytes", hepatocyte), 2: ("zzz", [])}
    manifest = put_manifest(s3, "e6", [{"index": 0, "key": "k0", "first": 0, "labels": 2},
                                       {"index": 1, "key": "k1", "first": 2, "labels": 1}])
    put_part(s3, "e6", 0, [(0, *labels[0]), (1, *labels[1])])
    put_part(s3, "e6", 1, [(2, *labels[2])])
    rows = [0, 1, {"label": "", "error": "empty label"}, 0, 2, 0, 1]
    s3.put_object(Bucket=BUCKET, Key=steps.rows_key("e6"),
                  Body="".join(json.dumps(r) + "\n" for r in rows).encode())
    out = merge_lambda.handler({"job": job("inputs/x.txt", "txt"), "execution": "e6", "manifest": manifest})
    expected = io.StringIO()
    annotate_rows = [(i, r["label"], r["error"], []) if isinstance(r, dict)
                     else (i, labels[r][0], None, labels[r][1]) for i, r in enumerate(rows)]
    counts = write_rows(expected, annotate_rows, ontology="cl")
    written = s3.get_object(Bucket=BUCKET, Key=steps.output_key("e6"))["Body"].read().decode()
    assert written == expected.getvalue()
    assert out == {"output": f"s3://{BUCKET}/{steps.output_key('e6')}", "rows": 7,
                   "annotated": counts["annotated"], "errors": counts["errors"]}
    assert (counts["annotated"], counts["errors"], counts["no_match"]) == (5, 1, 1)


def test_merge_refuses_a_part_that_does_not_cover_its_chunk(s3) -> None:
    manifest = put_manifest(s3, "e7", [{"index": 0, "key": "k0", "first": 0, "labels": 2}])
    put_part(s3, "e7", 0, [(0, "T cell", [])])
    s3.put_object(Bucket=BUCKET, Key=steps.rows_key("e7"), Body=b"0\n")
    with pytest.raises(MergeError, match="covers 1 labels but its chunk has 2"):
        merge_lambda.handler({"job": job("inputs/x.txt", "txt"), "execution": "e7", "manifest": manifest})


def test_merge_refuses_missing_parts_naming_them(s3) -> None:
    chunks = [{"index": 0, "key": "k0", "first": 0, "labels": 1},
              {"index": 1, "key": "k1", "first": 1, "labels": 1}]
    manifest = put_manifest(s3, "e3", chunks)
    put_part(s3, "e3", 0, [(0, "x", [])])
    with pytest.raises(MergeError, match="parts/00001.jsonl"):
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
    s3.put_object(Bucket=BUCKET, Key=steps.rows_key("e4"), Body=b"")
    out = merge_lambda.handler({"job": job("inputs/x.txt", "txt"), "execution": "e4", "manifest": manifest})
    assert out == {"output": f"s3://{BUCKET}/results/e4/annotations.csv", "rows": 0, "annotated": 0,
                   "errors": 0}
    text = s3.get_object(Bucket=BUCKET, Key="results/e4/annotations.csv")["Body"].read().decode()
    assert next(csv.reader(io.StringIO(text)))[:3] == ["input", "ontology", "rank"]
