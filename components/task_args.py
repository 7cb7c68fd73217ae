"""ChromaTaskArgs: the stack inputs every Chroma task needs, wherever it runs.

The always-on service and the batch workflow's on-demand task run the same task (restore + chroma +
auth proxy) in the same private subnets, from the same snapshots, images, token secrets and stack
key. Their Args classes extend this one, so the program fills these inputs once for both and a new
shared input cannot be added to one component and forgotten in the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi


# kw_only: subclasses add their own required fields after these defaulted ones.
@dataclass(kw_only=True)
class ChromaTaskArgs:
    vpc_id: pulumi.Input[str]
    vpc_cidr: pulumi.Input[str]
    private_subnet_ids: pulumi.Input[Sequence[str]]
    bucket_name: pulumi.Input[str]
    bucket_arn: pulumi.Input[str]
    token_secret_arn: pulumi.Input[str]
    admin_token_secret_arn: pulumi.Input[str]
    app_image: pulumi.Input[str]
    chroma_image: pulumi.Input[str]
    proxy_image: pulumi.Input[str]
    repository_arns: pulumi.Input[Sequence[str]]
    # The stack key: encrypts the log groups; the token secrets are encrypted with it, so a task
    # cannot read its tokens without it (required for both components).
    kms_key_arn: pulumi.Input[str]
    cpu: int = 1024
    memory: int = 2048
    ephemeral_storage_gib: int = 21
    log_retention_days: int = 30
    deletion_protection: bool = False
