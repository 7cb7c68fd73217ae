"""The stack's customer-managed KMS key: encrypts the token secrets and the log groups.

A key of our own (rather than the AWS-managed ones) means reading a token needs two grants, on the
secret and on the key, and the key's policy names exactly which AWS services may use it. Rotation
is on; with deletion protection the key waits the longest window before it can be deleted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws


@dataclass
class StackKeyArgs:
    deletion_protection: bool = False


def key_policy(account_id: str, region: str, partition: str = "aws") -> str:
    """Account (IAM) administers and grants use; CloudWatch Logs may use it for this account's log groups.

    `partition` is the stack's (aws, aws-cn, aws-us-gov): ARNs name it
    (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference-arns.html).
    """
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [
            {
                # AWS's default key statement: without it the key becomes unmanageable. Resource "*"
                # in a key policy means this key only.
                "Sid": "AccountAdministersThroughIam",
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:{partition}:iam::{account_id}:root"},
                "Action": "kms:*",
                "Resource": "*",
            },
            {
                "Sid": "CloudWatchLogsOfThisAccount",
                "Effect": "Allow",
                "Principal": {"Service": f"logs.{region}.amazonaws.com"},
                "Action": ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*",
                           "kms:Describe*"],
                "Resource": "*",
                "Condition": {"ArnLike": {"kms:EncryptionContext:aws:logs:arn":
                                          f"arn:{partition}:logs:{region}:{account_id}:log-group:*"}},
            },
        ],
    })


def decrypt_secrets_statement(key_arn: str, region: str) -> dict:
    """IAM statement a role needs (besides GetSecretValue) to read a secret encrypted with the key."""
    return {
        "Sid": "DecryptTokensViaSecretsManager",
        "Effect": "Allow",
        "Action": "kms:Decrypt",
        "Resource": key_arn,
        "Condition": {"StringEquals": {"kms:ViaService": f"secretsmanager.{region}.amazonaws.com"}},
    }


class StackKey(pulumi.ComponentResource):
    key_arn: pulumi.Output[str]
    key_id: pulumi.Output[str]

    def __init__(self, name: str, args: StackKeyArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("ontosearch:infra:StackKey", name, {}, opts)
        invoke = pulumi.InvokeOutputOptions(parent=self)
        account_id = aws.get_caller_identity_output(opts=invoke).account_id
        region = aws.get_region_output(opts=invoke).region
        partition = aws.get_partition_output(opts=invoke).partition
        key = aws.kms.Key(
            f"{name}-key",
            description=f"ontosearch {pulumi.get_stack()}: token secrets and logs",
            enable_key_rotation=True,
            deletion_window_in_days=30 if args.deletion_protection else 7,
            policy=pulumi.Output.all(account_id, region, partition).apply(lambda v: key_policy(*v)),
            opts=pulumi.ResourceOptions(parent=self, protect=args.deletion_protection),
        )
        aws.kms.Alias(f"{name}-alias", name=f"alias/{pulumi.get_project()}-{pulumi.get_stack()}",
                      target_key_id=key.key_id, opts=pulumi.ResourceOptions(parent=self))
        self.key_arn = key.arn
        self.key_id = key.key_id
        self.register_outputs({"key_arn": self.key_arn, "key_id": self.key_id})
