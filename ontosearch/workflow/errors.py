"""Errors the workflow's steps raise, named so the state machine can tell them apart.

Step Functions matches `Retry`/`Catch` on the error *name* (a Lambda's `errorType`, the
`error` of SendTaskFailure), so each class here is one retry policy: transient ones are
retried with backoff, the others fail the execution at once with a cause that says what to fix.
"""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar


class WorkflowError(RuntimeError):
    """Base class: `str(err)` is the cause shown on the failed execution."""


class InvalidInputError(WorkflowError):
    """The execution input cannot be run (missing file, unknown ontology, bad top_k...)."""


class ChunkQueryError(WorkflowError):
    """A chunk could not be annotated for a reason a retry will not fix."""


class ChromaUnavailableError(WorkflowError):
    """The task's proxy did not answer or answered 5xx: transient, retried with backoff."""


class ChromaAuthError(WorkflowError):
    """The task's proxy refused the token: the Lambda reads a different secret than the task."""


class TaskNotReadyError(WorkflowError):
    """The on-demand task did not become ready (restore failed, Chroma or the proxy never answered)."""


class MergeError(WorkflowError):
    """Parts are missing or inconsistent, so the output file would not account for every row."""


#: errors the query step retries (with the Lambda service's own transient errors)
TRANSIENT_ERRORS = (ChromaUnavailableError.__name__,)


# A failed lambda:invoke hands Step Functions the function's whole error body as the Cause, and a
# Cause holds at most 32,768 characters (botocore's stepfunctions model: SensitiveCause max 32768);
# a longer one is cut, and a cut JSON body can no longer be reduced to its message. The Lambda
# runtime writes the body with json.dumps, which spells a character in at most 6 (\uXXXX): a
# message of 4,096 characters and a stack trace of one frame stay far below the limit.
MAX_ERROR_MESSAGE_CHARS = 4096

Handler = TypeVar("Handler", bound=Callable[..., Any])


def brief_errors(handler: Handler) -> Handler:
    """Wrap a Lambda handler: a raised error keeps its class (the error name Step Functions retries
    or catches on) but its message is cut to MAX_ERROR_MESSAGE_CHARS and its stack trace to the
    raise here. The whole traceback still goes to the function's log (stderr)."""

    @functools.wraps(handler)
    def wrapper(event: Any, context: Any = None) -> Any:
        try:
            return handler(event, context)
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            message = str(exc)
            if len(message) > MAX_ERROR_MESSAGE_CHARS:
                exc.args = (message[: MAX_ERROR_MESSAGE_CHARS - 1] + "…",)
            raise exc.with_traceback(None) from None

    return wrapper  # type: ignore[return-value]
