"""The on-demand batch annotation workflow (issue 4).

`definition` builds the one state machine definition; the step functions (validate, split,
query a chunk, merge, request a snapshot save) live in `steps` as plain Python over S3, so the
Lambda handlers in lambdas/ stay thin; `local` runs the very definition on this machine with
aws-local-stepfunctions, a local replica of the task and the same step code.
"""
