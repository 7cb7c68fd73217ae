"""The Validate Lambda: bad input fails with a cause saying what to fix; good input resolves the snapshot."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from lambdas import validate as validate_lambda
from ontosearch.constants import ENV_WORKFLOW_BUCKET, ENV_WORKFLOW_CHUNK_SIZE
from ontosearch.snapshot_store import publish_snapshot
from ontosearch.workflow.errors import InvalidInputError

pytest_plugins = ["workflow_fixtures"]

BUCKET = "ontosearch-test"
LABELS = f"s3://{BUCKET}/inputs/labels.txt"


@pytest.fixture
def s3(monkeypatch, small_snapshot):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv(ENV_WORKFLOW_BUCKET, BUCKET)
    monkeypatch.setenv(ENV_WORKFLOW_CHUNK_SIZE, "2")
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        client.put_object(Bucket=BUCKET, Key="inputs/labels.txt", Body=b"T cell\nhepatocyte\n")
        client.put_object(Bucket=BUCKET, Key="elsewhere/labels.txt", Body=b"T cell\n")
        client.version = publish_snapshot(small_snapshot, BUCKET, s3=client, log=lambda _m: None).version
        yield client


def run(request: dict, execution: str = "exec-1") -> dict:
    return validate_lambda.handler({"request": request, "execution": execution})


def test_good_input_resolves_latest_to_a_version_and_its_embedder(s3) -> None:
    state = run({"input": LABELS, "ontology": "cell_type", "top_k": 5})
    job = state["job"]
    assert job["snapshot"] == s3.version
    assert job["embedder"] == "all-MiniLM-L6-v2"
    assert job["ontology"] == "cl"
    assert job["top_k"] == 5 and job["format"] == "txt" and job["chunk_size"] == 2
    assert job["save_snapshot"] is False
    assert state["saved"] == {"version": None}


@pytest.mark.parametrize(("request_", "message"), [
    ({"input": f"s3://{BUCKET}/inputs/missing.txt", "ontology": "cl"}, "does not exist; upload it first"),
    ({"input": LABELS, "ontology": "zebrafish"}, "unknown ontology 'zebrafish'"),
    ({"input": LABELS, "ontology": "cl", "top_k": 0}, "top_k must be an integer"),
    ({"input": LABELS, "ontology": "cl", "top_k": "3"}, "top_k must be an integer"),
    ({"input": f"s3://{BUCKET}/elsewhere/labels.txt", "ontology": "cl"},
     "outside this workflow's input folder"),
    ({"input": "labels.txt", "ontology": "cl"}, "must be an s3://bucket/key URI"),
    ({"input": f"s3://{BUCKET}/inputs/labels.pdf", "ontology": "cl"}, "no supported extension"),
    ({"input": LABELS, "ontology": "cl", "topk": 3}, "unknown input key(s) 'topk'"),
    ({"input": LABELS, "ontology": "mondo"}, "has no collection for ontology mondo"),
    ({"input": LABELS, "ontology": "cl", "snapshot": "20200101T000000Z-deadbeef"},
     "snapshot version '20200101T000000Z-deadbeef' not found"),
    ({"input": LABELS, "ontology": "cl", "save_snapshot": "yes"},
     "save_snapshot must be true or false"),
])
def test_invalid_input_fails_with_a_cause_naming_the_problem(s3, request_: dict, message: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        run(request_)
    assert message in str(caught.value)


def test_every_problem_is_reported_at_once(s3) -> None:
    with pytest.raises(InvalidInputError) as caught:
        run({"input": LABELS, "ontology": "fish", "top_k": 99})
    assert "unknown ontology" in str(caught.value) and "top_k" in str(caught.value)


def test_execution_names_that_would_escape_the_work_folder_are_refused(s3) -> None:
    with pytest.raises(InvalidInputError, match="execution name"):
        run({"input": LABELS, "ontology": "cl"}, execution="../../snapshots")
