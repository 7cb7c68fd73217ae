"""Split: read the input file once and write its rows to chunk objects in S3."""

from __future__ import annotations

from typing import Any

import boto3

from ontosearch.workflow import steps


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    return steps.split(event["job"], event["execution"], boto3.client("s3"))
