"""Validate: check the execution input and resolve the snapshot before any task starts."""

from __future__ import annotations

import os
from typing import Any

import boto3

from ontosearch.constants import ENV_WORKFLOW_BUCKET, ENV_WORKFLOW_CHUNK_SIZE
from ontosearch.workflow import steps
from ontosearch.workflow.errors import brief_errors


@brief_errors
def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    chunk_size = steps.env_int(ENV_WORKFLOW_CHUNK_SIZE, steps.DEFAULT_CHUNK_SIZE)
    return steps.validate(event.get("request"), event.get("execution"), boto3.client("s3"),
                          os.environ[ENV_WORKFLOW_BUCKET], chunk_size=chunk_size)
