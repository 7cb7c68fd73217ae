"""The task agent's save-request poll against S3 (moto): it lists the exact key and reads only what exists.

On AWS a GetObject of a key that is not there answers 403, not 404, unless the caller may list the
bucket (https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObject.html, "Permissions"), and the
task role's listing grant is conditioned on s3:prefix. moto answers 404 either way, so these tests
pin what the agent sends: while there is no request, only a ListObjectsV2 whose Prefix is the exact
key (the request tests/iam_matrix.py authorizes with s3:prefix = that key), never a GetObject.
"""

from __future__ import annotations

import json

import boto3
import pytest
from moto import mock_aws

from ontosearch.task_agent import Saver
from ontosearch.workflow.save import SnapshotSaveError, read_save_request
from ontosearch.workflow.steps import save_request_key

BUCKET = "ontosearch-work"
EXECUTION = "run-1"


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
        sent: list[tuple[str, dict]] = []
        client.meta.events.register("provide-client-params.s3.*",
                                    lambda params, model, **_: sent.append((model.name, dict(params))))
        client.sent = sent
        yield client


def test_no_request_yet_is_asked_by_listing_the_exact_key_without_a_get(s3) -> None:
    key = save_request_key(EXECUTION)
    # a longer key that starts with the request's key must not count as the request
    s3.put_object(Bucket=BUCKET, Key=key + ".tmp", Body=b"{}")
    s3.sent.clear()
    assert read_save_request(s3, BUCKET, key) is None
    assert [name for name, _ in s3.sent] == ["ListObjectsV2"]
    assert s3.sent[0][1]["Prefix"] == key


def test_a_request_that_exists_is_read(s3) -> None:
    key = save_request_key(EXECUTION)
    s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps({"token": "t0k"}).encode())
    s3.sent.clear()
    assert read_save_request(s3, BUCKET, key) == {"token": "t0k"}
    assert [name for name, _ in s3.sent] == ["ListObjectsV2", "GetObject"]


def test_a_malformed_request_is_an_error_not_absence(s3) -> None:
    key = save_request_key(EXECUTION)
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"[]")
    with pytest.raises(SnapshotSaveError, match="is not a save request"):
        read_save_request(s3, BUCKET, key)


def test_a_refused_listing_raises_instead_of_passing_for_not_yet(s3) -> None:
    # Another bucket: S3 refuses the listing whatever the key; the poll must not read that as "no request".
    with pytest.raises(Exception, match="NoSuchBucket"):
        read_save_request(s3, "not-the-stack-bucket", save_request_key(EXECUTION))


def test_the_agent_polls_quietly_while_no_save_was_asked(s3, capsys) -> None:
    saver = Saver(s3, BUCKET, EXECUTION, "/nonexistent", every=0.0)
    for _ in range(3):
        saver.poll(agent=None)
    assert not saver.done
    assert "cannot read the save request" not in capsys.readouterr().err
    assert {name for name, _ in s3.sent} == {"ListObjectsV2"}


def test_a_request_left_by_an_earlier_execution_of_the_same_name_is_not_answered(s3) -> None:
    """A STANDARD execution's name may be used again 90 days after the last one closed, and nothing
    deletes the old work folder: its save request (with a long-expired token) must not make the new
    execution's task publish a snapshot nobody asked for. A request written after the start is read."""
    import time

    from ontosearch.workflow.save import STALE_BEFORE_START_SECONDS

    key = save_request_key(EXECUTION)
    s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps({"token": "old"}).encode())
    written = s3.head_object(Bucket=BUCKET, Key=key)["LastModified"].timestamp()
    later = written + 91 * 24 * 3600  # the new execution started 91 days later
    assert read_save_request(s3, BUCKET, key, not_before=later) is None
    saver = Saver(s3, BUCKET, EXECUTION, "/nonexistent", every=0.0, execution_start=later)
    saver.poll(agent=None)  # nothing to answer: it must not touch the agent
    assert not saver.done
    # within the clock slack, and without a start, it is this execution's own request
    assert read_save_request(s3, BUCKET, key, not_before=written + STALE_BEFORE_START_SECONDS / 2) == {
        "token": "old"}
    assert read_save_request(s3, BUCKET, key, not_before=time.time()) == {"token": "old"}
    assert read_save_request(s3, BUCKET, key) == {"token": "old"}
