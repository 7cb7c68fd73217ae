"""Query: annotate one chunk through the task's auth proxy and write its part.

The token (Secrets Manager) and the embedder are loaded once per container and reused by every
chunk the container serves.
"""

from __future__ import annotations

import os
from typing import Any

import boto3

from ontosearch.constants import ENV_TOKEN_SECRET_ARN
from ontosearch.workflow import chroma_access, steps
from ontosearch.workflow.errors import brief_errors


def _client(url: str) -> Any:
    from ontosearch.connect import token_from_secret

    return chroma_access.client_for(url, token_from_secret(os.environ[ENV_TOKEN_SECRET_ARN]))


def _embedder(name: str) -> Any:
    from ontosearch.embedders import get_embedder

    return get_embedder(name)


@brief_errors
def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    return steps.query_chunk(event, boto3.client("s3"), _client, _embedder)
