"""Split: read the input file once and write its rows to chunk objects in S3."""

from __future__ import annotations

from typing import Any

import boto3

from ontosearch.workflow import steps
from ontosearch.workflow.errors import brief_errors


@brief_errors
def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    return steps.split(event["job"], event["execution"], boto3.client("s3"))
