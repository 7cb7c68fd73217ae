"""Merge: concatenate the parts into results/<execution>/annotations.csv and count the rows."""

from __future__ import annotations

from typing import Any

import boto3

from ontosearch.workflow import steps
from ontosearch.workflow.errors import brief_errors


@brief_errors
def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    return steps.merge(event["job"], event["execution"], boto3.client("s3"), event.get("manifest"))
