"""The ontosearch Pulumi program: read the stack config, compose the components, export outputs."""

import pulumi

from components.batch_workflow import BatchWorkflow, BatchWorkflowArgs, args_from_config
from components.chroma_service import ChromaService, ChromaServiceArgs
from components.config import StackConfig
from components.encryption import StackKey, StackKeyArgs
from components.images import Images, ImagesArgs
from components.network import TASK_INTERFACE_SERVICES, Network, NetworkArgs
from components.storage import SnapshotBucket, SnapshotBucketArgs
from components.tokens import Tokens, TokensArgs

config = StackConfig.load()
network = Network("network", NetworkArgs(
    egress=config.egress,
    az_count=config.az_count,
    vpc_cidr=config.vpc_cidr,
    vpc_id=config.vpc_id,
    private_subnet_ids=config.private_subnet_ids,
    public_subnet_ids=config.public_subnet_ids,
    public_subnets=config.https,
    # The batch task's agent reports readiness to Step Functions: with endpoints egress it needs one.
    interface_services=[*TASK_INTERFACE_SERVICES, *(["states"] if config.batch_workflow else [])],
))
storage = SnapshotBucket("snapshots", SnapshotBucketArgs(deletion_protection=config.deletion_protection))
key = StackKey("encryption", StackKeyArgs(deletion_protection=config.deletion_protection))
tokens = Tokens("tokens", TokensArgs(kms_key_arn=key.key_arn, deletion_protection=config.deletion_protection))
images = Images("images", ImagesArgs(deletion_protection=config.deletion_protection))

# The inputs of the Chroma task (components.task_args.ChromaTaskArgs), the same for the always-on
# service and the batch workflow's on-demand task.
task_args = dict(
    vpc_id=network.vpc_id,
    vpc_cidr=network.vpc_cidr,
    private_subnet_ids=network.private_subnet_ids,
    bucket_name=storage.bucket_name,
    bucket_arn=storage.bucket_arn,
    token_secret_arn=tokens.token_secret_arn,
    admin_token_secret_arn=tokens.admin_token_secret_arn,
    app_image=images.app_image,
    chroma_image=images.chroma_image,
    proxy_image=images.proxy_image,
    repository_arns=images.repository_arns,
    kms_key_arn=key.key_arn,
    cpu=config.cpu,
    memory=config.memory,
    ephemeral_storage_gib=config.ephemeral_storage_gib,
    log_retention_days=config.log_retention_days,
    deletion_protection=config.deletion_protection,
)

service = ChromaService("chroma", ChromaServiceArgs(
    **task_args,
    public_subnet_ids=network.public_subnet_ids,
    allowed_cidrs=config.allowed_cidrs,
    min_replicas=config.min_replicas,
    max_replicas=config.max_replicas,
    snapshot_version=config.snapshot_version,
    domain=config.domain,
    hosted_zone=config.hosted_zone,
    alarm_email=config.alarm_email,
    depends_on=tokens.secret_versions,
))

if config.batch_workflow:
    workflow = BatchWorkflow("batch", BatchWorkflowArgs(
        **task_args,
        cluster_arn=service.cluster_arn,
        **args_from_config(config.extra),
    ))
    pulumi.export("batch_state_machine_arn", workflow.state_machine_arn)
    pulumi.export("batch_task_definition_arn", workflow.task_definition_arn)

pulumi.export("url", service.url)
pulumi.export("bucket_name", storage.bucket_name)
pulumi.export("token_secret_arn", tokens.token_secret_arn)
pulumi.export("admin_token_secret_arn", tokens.admin_token_secret_arn)
pulumi.export("kms_key_arn", key.key_arn)
pulumi.export("cluster_arn", service.cluster_arn)
pulumi.export("service_name", service.service_name)
pulumi.export("task_definition_arn", service.task_definition_arn)
pulumi.export("task_role_arn", service.task_role_arn)
pulumi.export("execution_role_arn", service.execution_role_arn)
pulumi.export("task_security_group_id", service.task_security_group_id)
pulumi.export("private_subnet_ids", network.private_subnet_ids)
pulumi.export("vpc_id", network.vpc_id)
pulumi.export("log_group_name", service.log_group_name)
pulumi.export("alarm_topic_arn", service.alarm_topic_arn)
pulumi.export("chroma_image", images.chroma_image)
pulumi.export("app_image", images.app_image)
