"""Save: ask the task agent to publish the task's data as a new snapshot version.

Invoked with waitForTaskToken: the agent answers the token once the version is published.
"""

from __future__ import annotations

from typing import Any

import boto3

from ontosearch.workflow import steps
from ontosearch.workflow.errors import brief_errors


@brief_errors
def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    return steps.request_save(event["job"], event["execution"], event["token"], boto3.client("s3"))
