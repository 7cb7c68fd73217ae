"""Errors the workflow's steps raise, named so the state machine can tell them apart.

Step Functions matches `Retry`/`Catch` on the error *name* (a Lambda's `errorType`, the
`error` of SendTaskFailure), so each class here is one retry policy: transient ones are
retried with backoff, the others fail the execution at once with a cause that says what to fix.
"""

from __future__ import annotations


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
