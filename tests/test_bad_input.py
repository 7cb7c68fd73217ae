"""Bad input, property-based: every parser a user's data reaches fails cleanly and loses no row.

Issue 6 "Bad input": the execution input of the batch workflow (the Validate Lambda), execution
names, and the label files (`annotate`'s readers, which the Split Lambda reuses) get arbitrary values
from hypothesis. The properties: never an exception other than the project's own clear error (no
crash, no traceback for the user), and every input row accounted for exactly once.

S3 is moto; the snapshot the Validate step resolves is a real one published by publish_snapshot.
"""

from __future__ import annotations

import json
import os
import string
from collections.abc import Iterator

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto import mock_aws
from snapshot_fixtures import make_snapshot

from lambdas import validate as validate_lambda
from ontosearch.constants import (
    ENV_WORKFLOW_BUCKET,
    ENV_WORKFLOW_CHUNK_SIZE,
    ONTOLOGIES,
    ONTOLOGY_ALIASES,
    WORKFLOW_INPUT_PREFIX,
)
from ontosearch.workflow import steps
from ontosearch.workflow.errors import InvalidInputError

BUCKET = "ontosearch-bad-input"
INPUTS = {
    "txt": b"T cell\nhepatocyte\n",
    "csv": b"label,n\nT cell,1\n",
    "tsv": b"label\tn\nT cell\t1\n",
    "jsonl": b'{"label": "T cell"}\n',
}
PROPERTY_SETTINGS = settings(max_examples=150, deadline=None,
                             suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                    HealthCheck.too_slow])


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    names = ("AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL",
             ENV_WORKFLOW_BUCKET, ENV_WORKFLOW_CHUNK_SIZE)
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update({"AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "test",
                       "AWS_SECRET_ACCESS_KEY": "test", ENV_WORKFLOW_BUCKET: BUCKET,
                       ENV_WORKFLOW_CHUNK_SIZE: "3"})
    os.environ.pop("AWS_ENDPOINT_URL", None)
    work = tmp_path_factory.mktemp("bad-input")
    snapshot = work / "snapshot"
    make_snapshot(work, snapshot, {"cl_bad_input": 20}, verify=False)
    from ontosearch.snapshot_store import publish_snapshot

    try:
        with mock_aws():
            client = boto3.client("s3")
            client.create_bucket(Bucket=BUCKET)
            for fmt, body in INPUTS.items():
                client.put_object(Bucket=BUCKET, Key=f"{WORKFLOW_INPUT_PREFIX}labels.{fmt}", Body=body)
            client.put_object(Bucket=BUCKET, Key="elsewhere/labels.txt", Body=b"x\n")
            client.version = publish_snapshot(snapshot, BUCKET, s3=client, log=lambda _m: None).version
            yield client
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# --- execution input (the Validate Lambda) -------------------------------------------------------

json_scalars = (st.none() | st.booleans() | st.integers(-2**40, 2**40)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20))
json_values = st.recursive(
    json_scalars,
    lambda children: (st.lists(children, max_size=3)
                      | st.dictionaries(st.text(max_size=6), children, max_size=3)),
    max_leaves=6,
)
input_uris = st.one_of(
    st.sampled_from([f"s3://{BUCKET}/{WORKFLOW_INPUT_PREFIX}labels.{fmt}" for fmt in INPUTS]),
    st.sampled_from([f"s3://{BUCKET}/elsewhere/labels.txt", f"s3://other/{WORKFLOW_INPUT_PREFIX}labels.txt",
                     f"s3://{BUCKET}/{WORKFLOW_INPUT_PREFIX}", f"s3://{BUCKET}/{WORKFLOW_INPUT_PREFIX}x.pdf",
                     f"s3://{BUCKET}/{WORKFLOW_INPUT_PREFIX}missing.csv", "s3://", "s3:///x.txt", "",
                     f"S3://{BUCKET}/{WORKFLOW_INPUT_PREFIX}labels.txt", f"s3://{BUCKET}/../inputs/labels.txt"]),
    st.builds(lambda name, ext: f"s3://{BUCKET}/{WORKFLOW_INPUT_PREFIX}{name}{ext}",
              st.text(max_size=30), st.sampled_from(["", ".txt", ".CSV", ".jsonl", ".tsv", ".gz"])),
    json_values,
)
field_values = {
    "input": input_uris,
    "ontology": st.sampled_from([*ONTOLOGY_ALIASES, "CL", " Uberon ", "fish", ""]) | json_values,
    "top_k": st.integers(-3, 60) | json_values,
    "snapshot": st.sampled_from(["latest", "20200101T000000Z-deadbeef", "../LATEST", ""]) | json_values,
    "save_snapshot": st.booleans() | json_values,
    "column": st.sampled_from(["label", "", "n"]) | json_values,
}
requests = st.one_of(
    json_values,
    st.fixed_dictionaries({}, optional=field_values),
    st.builds(lambda base, extra: {**base, **extra}, st.fixed_dictionaries({}, optional=field_values),
              st.dictionaries(st.text(max_size=8), json_values, max_size=2)),
)
executions = st.one_of(st.just("exec-1"), st.text(max_size=90),
                       st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=1, max_size=80))


def check_clear_error(exc: BaseException) -> None:
    message = str(exc)
    assert message and "Traceback" not in message and "\n" not in message


@PROPERTY_SETTINGS
@given(request=requests, execution=executions)
def test_execution_input_is_validated_or_refused_with_a_clear_error(s3, request, execution) -> None:
    try:
        state = validate_lambda.handler({"request": request, "execution": execution})
    except InvalidInputError as exc:
        check_clear_error(exc)
        return
    job = state["job"]
    assert isinstance(request, dict) and set(request) <= steps.REQUEST_KEYS
    assert job["ontology"] in ONTOLOGIES
    assert isinstance(job["top_k"], int) and 1 <= job["top_k"] <= steps.MAX_TOP_K
    assert job["input"].startswith(f"s3://{BUCKET}/{WORKFLOW_INPUT_PREFIX}")
    assert job["format"] in INPUTS
    assert job["snapshot"] == s3.version
    assert state["saved"] == {"version": None}
    json.dumps(state)  # the state machine passes it on as JSON


@PROPERTY_SETTINGS
@given(execution=executions, index=st.integers(0, 99999))
def test_execution_names_never_escape_the_work_and_results_folders(execution, index) -> None:
    try:
        keys = [steps.chunk_key(execution, index), steps.part_key(execution, index),
                steps.output_key(execution), steps.save_request_key(execution)]
    except InvalidInputError as exc:
        check_clear_error(exc)
        return
    for key in keys:
        parts = key.split("/")
        assert parts[1] == execution and ".." not in parts and "" not in parts
