"""A moto S3 with one bucket, for tests of code that reads and writes the workflow's objects.

A plain module (not a pytest plugin): each test module's own `s3` fixture yields from `bucket`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws


def bucket(monkeypatch: pytest.MonkeyPatch, name: str) -> Iterator[Any]:
    """An S3 client on moto holding the empty bucket `name` (fake credentials, us-east-1)."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket=name)
        yield client
