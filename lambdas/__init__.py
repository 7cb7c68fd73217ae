"""Thin AWS Lambda handlers of the batch workflow: parse the event, call ontosearch.workflow.steps.

Each module exposes `handler(event, context)`; the deployed image runs e.g. `lambdas.query.handler`,
and the local runner (ontosearch.workflow.local) calls the very same functions. Raised exceptions
keep their class name, which becomes the error name Step Functions retries or catches on.
"""
