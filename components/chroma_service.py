"""ChromaService: the always-on, token-protected Chroma service on ECS Fargate behind an ALB.

One task = restore (init) + chroma (loopback only) + auth proxy (the only port). Replicas each
restore the same read-only snapshot into their own ephemeral storage, so they scale reads and a
replaced task simply restores again; the deployment settings start the new task before the old
one leaves (100/200) and roll back when new tasks never get healthy.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from ontosearch import constants as c

from .encryption import decrypt_secrets_statement
from .task_args import ChromaTaskArgs
from .task_definition import RUNTIME_PLATFORM, TASK_VOLUME, TaskSpec, container_definitions

TLS_POLICY = "ELBSecurityPolicy-TLS13-1-2-2021-06"
# Time a new task gets (restore + Chroma load) before failing ALB checks count against it.
HEALTH_CHECK_GRACE_SECONDS = 300
# Service auto scaling keeps average CPU near this.
TARGET_CPU_PERCENT = 60
TARGET_5XX_THRESHOLD = 5


@dataclass(kw_only=True)
class ChromaServiceArgs(ChromaTaskArgs):
    public_subnet_ids: pulumi.Input[Sequence[str]]
    # Who may reach the ALB (validated CIDR blocks); empty: the VPC's CIDR, or the internet with a domain.
    allowed_cidrs: Sequence[str] = ()
    min_replicas: int = 1
    max_replicas: int = 1
    snapshot_version: str = "latest"
    domain: str | None = None
    hosted_zone: str | None = None
    alarm_email: str | None = None
    # Resources the service must wait for (e.g. the secret versions the proxy reads).
    depends_on: Sequence[pulumi.Resource] = field(default_factory=list)


def assume_role_policy(service: str, account_id: str) -> str:
    """Trust policy for an AWS service principal, limited to this account (confused deputy)."""
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"Service": service},
            "Action": "sts:AssumeRole",
            "Condition": {"StringEquals": {"aws:SourceAccount": account_id}},
        }],
    })


def execution_role_policy(repository_arns: Sequence[str], log_group_arn: str,
                          secret_arns: Sequence[str], key_arn: str | None = None,
                          region: str | None = None) -> str:
    """What ECS needs to start the task: pull our images, write its logs, read the two tokens.

    `key_arn`/`region`: the stack key the secrets are encrypted with (needed to read them).
    """
    statements = [
            # GetAuthorizationToken has no resource-level permissions; it grants nothing by itself.
            {"Sid": "EcrLogin", "Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"},
            {"Sid": "EcrPull", "Effect": "Allow",
             "Action": ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"],
             "Resource": list(repository_arns)},
            {"Sid": "Logs", "Effect": "Allow", "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
             "Resource": [log_group_arn, f"{log_group_arn}:*"]},
            {"Sid": "Tokens", "Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
             "Resource": list(secret_arns)},
    ]
    if key_arn is not None:
        if region is None:
            raise ValueError("region is required with key_arn")
        statements.append(decrypt_secrets_statement(key_arn, region))
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


def task_role_policy(bucket_arn: str) -> str:
    """What the running task may do: read snapshots, nothing else."""
    prefix = c.SNAPSHOT_PREFIX
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "ListSnapshots", "Effect": "Allow", "Action": "s3:ListBucket", "Resource": bucket_arn,
             "Condition": {"StringLike": {"s3:prefix": [f"{prefix}/", f"{prefix}/*"]}}},
            {"Sid": "ReadSnapshots", "Effect": "Allow", "Action": "s3:GetObject",
             "Resource": f"{bucket_arn}/{prefix}/*"},
        ],
    })


class ChromaService(pulumi.ComponentResource):
    cluster_arn: pulumi.Output[str]
    cluster_name: pulumi.Output[str]
    service_name: pulumi.Output[str]
    task_definition_arn: pulumi.Output[str]
    task_role_arn: pulumi.Output[str]
    task_role_name: pulumi.Output[str]
    execution_role_arn: pulumi.Output[str]
    execution_role_name: pulumi.Output[str]
    task_security_group_id: pulumi.Output[str]
    private_subnet_ids: pulumi.Output[list[str]]
    log_group_name: pulumi.Output[str]
    alarm_topic_arn: pulumi.Output[str]
    alb_dns_name: pulumi.Output[str]
    url: pulumi.Output[str]

    def __init__(self, name: str, args: ChromaServiceArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("ontosearch:infra:ChromaService", name, {}, opts)
        child = pulumi.ResourceOptions(parent=self)
        invoke = pulumi.InvokeOutputOptions(parent=self)
        region = aws.get_region_output(opts=invoke).region
        account_id = aws.get_caller_identity_output(opts=invoke).account_id

        # --- logs and roles -------------------------------------------------------------------
        log_group = aws.cloudwatch.LogGroup(
            f"{name}-logs", retention_in_days=args.log_retention_days, kms_key_id=args.kms_key_arn,
            opts=child)

        execution_role = aws.iam.Role(
            f"{name}-execution-role",
            description="ECS starts the Chroma task: image pull, logs, token secrets",
            assume_role_policy=account_id.apply(lambda a: assume_role_policy("ecs-tasks.amazonaws.com", a)),
            opts=child)
        execution_policy = aws.iam.RolePolicy(
            f"{name}-execution-policy",
            role=execution_role.id,
            policy=pulumi.Output.all(args.repository_arns, log_group.arn, args.token_secret_arn,
                                     args.admin_token_secret_arn, args.kms_key_arn, region).apply(
                lambda v: execution_role_policy(v[0], v[1], [v[2], v[3]], v[4], v[5])),
            opts=child)
        task_role = aws.iam.Role(
            f"{name}-task-role",
            description="The Chroma task at run time: read snapshots",
            assume_role_policy=account_id.apply(lambda a: assume_role_policy("ecs-tasks.amazonaws.com", a)),
            opts=child)
        task_policy = aws.iam.RolePolicy(
            f"{name}-task-policy",
            role=task_role.id,
            policy=pulumi.Output.from_input(args.bucket_arn).apply(task_role_policy),
            opts=child)

        # --- task definition ------------------------------------------------------------------
        containers = pulumi.Output.all(
            args.app_image, args.chroma_image, args.proxy_image, args.bucket_name, args.token_secret_arn,
            args.admin_token_secret_arn, log_group.name, region,
        ).apply(lambda v: json.dumps(container_definitions(TaskSpec(
            app_image=v[0], chroma_image=v[1], proxy_image=v[2], bucket=v[3], token_secret_arn=v[4],
            admin_token_secret_arn=v[5], log_group=v[6], region=v[7], snapshot_version=args.snapshot_version,
            wait_for_snapshot=True,
        ))))
        task_definition = aws.ecs.TaskDefinition(
            f"{name}-task",
            family=f"{pulumi.get_project()}-{pulumi.get_stack()}-chroma",
            cpu=str(args.cpu),
            memory=str(args.memory),
            network_mode="awsvpc",
            requires_compatibilities=["FARGATE"],
            runtime_platform=RUNTIME_PLATFORM,
            ephemeral_storage={"size_in_gib": args.ephemeral_storage_gib},
            volumes=[{"name": TASK_VOLUME}],
            execution_role_arn=execution_role.arn,
            task_role_arn=task_role.arn,
            container_definitions=containers,
            opts=child)

        # --- security groups ------------------------------------------------------------------
        allowed = list(args.allowed_cidrs)
        if args.domain:
            sources = "the allowed networks" if allowed else "the internet"
            alb_ingress = [
                {"protocol": "tcp", "from_port": port, "to_port": port,
                 "cidr_blocks": allowed or ["0.0.0.0/0"], "description": desc}
                for port, desc in ((443, f"HTTPS from {sources}"), (80, "HTTP, redirected to HTTPS"))
            ]
        else:
            sources = "the allowed networks" if allowed else "inside the VPC"
            alb_ingress = [{"protocol": "tcp", "from_port": 80, "to_port": 80,
                            "cidr_blocks": allowed or [args.vpc_cidr],
                            "description": f"HTTP from {sources} (internal ALB)"}]
        alb_sg = aws.ec2.SecurityGroup(
            f"{name}-alb-sg",
            vpc_id=args.vpc_id,
            description="ontosearch ALB",
            ingress=alb_ingress,
            egress=[{"protocol": "tcp", "from_port": c.PROXY_PORT, "to_port": c.PROXY_PORT,
                     "cidr_blocks": [args.vpc_cidr], "description": "to the auth proxy of the tasks"}],
            opts=child)
        task_ingress = [{"protocol": "tcp", "from_port": c.PROXY_PORT, "to_port": c.PROXY_PORT,
                         "security_groups": [alb_sg.id], "description": "auth proxy, from the ALB only"}]
        task_sg = aws.ec2.SecurityGroup(
            f"{name}-task-sg",
            vpc_id=args.vpc_id,
            description="ontosearch Chroma tasks: only the auth proxy port, only from the ALB",
            ingress=task_ingress,
            egress=[{"protocol": "tcp", "from_port": 443, "to_port": 443, "cidr_blocks": ["0.0.0.0/0"],
                     "description": "HTTPS to ECR, S3, Secrets Manager, CloudWatch Logs"}],
            opts=child)

        # --- load balancer --------------------------------------------------------------------
        alb = aws.lb.LoadBalancer(
            f"{name}-alb",
            load_balancer_type="application",
            internal=not args.domain,
            security_groups=[alb_sg.id],
            subnets=args.public_subnet_ids if args.domain else args.private_subnet_ids,
            drop_invalid_header_fields=True,
            enable_deletion_protection=args.deletion_protection,
            # Outlasts the proxy's upstream timeout and is outlasted by its keep-alive (see constants).
            idle_timeout=c.ALB_IDLE_TIMEOUT_SECONDS,
            opts=child)
        target_group = aws.lb.TargetGroup(
            f"{name}-tg",
            port=c.PROXY_PORT,
            protocol="HTTP",
            target_type="ip",
            vpc_id=args.vpc_id,
            deregistration_delay=30,
            health_check={
                "enabled": True,
                "path": c.HEARTBEAT_PATH,
                "protocol": "HTTP",
                "port": "traffic-port",
                "matcher": "200",
                "interval": 15,
                "timeout": 5,
                "healthy_threshold": 2,
                "unhealthy_threshold": 3,
            },
            opts=child)
        forward = [{"type": "forward", "target_group_arn": target_group.arn}]
        if args.domain:
            if not args.hosted_zone:
                raise ValueError("hosted_zone is required with domain")
            zone = aws.route53.get_zone_output(name=args.hosted_zone, private_zone=False, opts=invoke)
            certificate = aws.acm.Certificate(
                f"{name}-cert", domain_name=args.domain, validation_method="DNS",
                opts=pulumi.ResourceOptions(parent=self))
            option = certificate.domain_validation_options.apply(lambda opts_: opts_[0])
            validation_record = aws.route53.Record(
                f"{name}-cert-validation",
                zone_id=zone.zone_id,
                name=option.resource_record_name,
                type=option.resource_record_type,
                records=[option.resource_record_value],
                ttl=60,
                allow_overwrite=True,
                opts=child)
            validation = aws.acm.CertificateValidation(
                f"{name}-cert-validation",
                certificate_arn=certificate.arn,
                validation_record_fqdns=[validation_record.fqdn],
                opts=child)
            https = aws.lb.Listener(
                f"{name}-https",
                load_balancer_arn=alb.arn,
                port=443,
                protocol="HTTPS",
                ssl_policy=TLS_POLICY,
                certificate_arn=validation.certificate_arn,
                default_actions=forward,
                opts=child)
            redirect = aws.lb.Listener(
                f"{name}-http-redirect",
                load_balancer_arn=alb.arn,
                port=80,
                protocol="HTTP",
                default_actions=[{"type": "redirect", "redirect": {
                    "protocol": "HTTPS", "port": "443", "status_code": "HTTP_301"}}],
                opts=child)
            listeners = [https, redirect]
            aws.route53.Record(
                f"{name}-dns",
                zone_id=zone.zone_id,
                name=args.domain,
                type="A",
                aliases=[{"name": alb.dns_name, "zone_id": alb.zone_id, "evaluate_target_health": True}],
                opts=child)
            self.url = pulumi.Output.from_input(f"https://{args.domain}")
        else:
            listeners = [aws.lb.Listener(
                f"{name}-http",
                load_balancer_arn=alb.arn,
                port=80,
                protocol="HTTP",
                default_actions=forward,
                opts=child)]
            self.url = alb.dns_name.apply(lambda d: f"http://{d}")

        # --- cluster and service --------------------------------------------------------------
        cluster = aws.ecs.Cluster(
            f"{name}-cluster",
            settings=[{"name": "containerInsights", "value": "enabled"}],
            opts=child)
        service = aws.ecs.Service(
            f"{name}-service",
            cluster=cluster.arn,
            task_definition=task_definition.arn,
            desired_count=args.min_replicas,
            launch_type="FARGATE",
            platform_version="LATEST",
            network_configuration={
                "subnets": args.private_subnet_ids,
                "security_groups": [task_sg.id],
                "assign_public_ip": False,
            },
            load_balancers=[{"target_group_arn": target_group.arn, "container_name": c.PROXY_CONTAINER,
                             "container_port": c.PROXY_PORT}],
            # Per-task ephemeral storage: a new task restores before the old one is drained.
            deployment_minimum_healthy_percent=100,
            deployment_maximum_percent=200,
            deployment_circuit_breaker={"enable": True, "rollback": True},
            health_check_grace_period_seconds=HEALTH_CHECK_GRACE_SECONDS,
            enable_ecs_managed_tags=True,
            propagate_tags="SERVICE",
            wait_for_steady_state=False,
            opts=pulumi.ResourceOptions(
                parent=self,
                # The service starts tasks at once: their roles must already hold their policies (image
                # pull, logs, secrets, the snapshot read), or the first tasks fail with the images prebuilt.
                depends_on=[*listeners, execution_policy, task_policy, *args.depends_on],
                # Auto scaling owns the running count after creation.
                ignore_changes=["desiredCount"],
            ))

        # --- scaling --------------------------------------------------------------------------
        scaling_target = aws.appautoscaling.Target(
            f"{name}-scaling-target",
            service_namespace="ecs",
            scalable_dimension="ecs:service:DesiredCount",
            resource_id=pulumi.Output.concat("service/", cluster.name, "/", service.name),
            min_capacity=args.min_replicas,
            max_capacity=args.max_replicas,
            opts=child)
        aws.appautoscaling.Policy(
            f"{name}-cpu-scaling",
            policy_type="TargetTrackingScaling",
            service_namespace=scaling_target.service_namespace,
            scalable_dimension=scaling_target.scalable_dimension,
            resource_id=scaling_target.resource_id,
            target_tracking_scaling_policy_configuration={
                "target_value": TARGET_CPU_PERCENT,
                "predefined_metric_specification": {
                    "predefined_metric_type": "ECSServiceAverageCPUUtilization"},
                "scale_in_cooldown": 300,
                "scale_out_cooldown": 60,
            },
            opts=child)

        # --- alarms ---------------------------------------------------------------------------
        # Not encrypted with the AWS-managed SNS key: CloudWatch alarms cannot publish to such a topic
        # (alarm texts hold no secrets).
        topic = aws.sns.Topic(f"{name}-alarms", opts=child)
        if args.alarm_email:
            aws.sns.TopicSubscription(f"{name}-alarm-email", topic=topic.arn, protocol="email",
                                      endpoint=args.alarm_email, opts=child)
        actions = [topic.arn]
        lb_dimensions = {"LoadBalancer": alb.arn_suffix, "TargetGroup": target_group.arn_suffix}
        aws.cloudwatch.MetricAlarm(
            f"{name}-unhealthy-hosts",
            alarm_description="A Chroma task fails the ALB health check (heartbeat through the proxy)",
            namespace="AWS/ApplicationELB", metric_name="UnHealthyHostCount", dimensions=lb_dimensions,
            statistic="Maximum", period=60, evaluation_periods=3, threshold=0,
            comparison_operator="GreaterThanThreshold", treat_missing_data="notBreaching",
            alarm_actions=actions, ok_actions=actions, opts=child)
        aws.cloudwatch.MetricAlarm(
            f"{name}-target-5xx",
            alarm_description="Chroma or the proxy answers 5xx",
            namespace="AWS/ApplicationELB", metric_name="HTTPCode_Target_5XX_Count", dimensions=lb_dimensions,
            statistic="Sum", period=300, evaluation_periods=1, threshold=TARGET_5XX_THRESHOLD,
            comparison_operator="GreaterThanOrEqualToThreshold", treat_missing_data="notBreaching",
            alarm_actions=actions, ok_actions=actions, opts=child)
        aws.cloudwatch.MetricAlarm(
            f"{name}-alb-5xx",
            alarm_description="The ALB answers 5xx itself (e.g. 503: no healthy task)",
            namespace="AWS/ApplicationELB", metric_name="HTTPCode_ELB_5XX_Count",
            dimensions={"LoadBalancer": alb.arn_suffix},
            statistic="Sum", period=300, evaluation_periods=1, threshold=TARGET_5XX_THRESHOLD,
            comparison_operator="GreaterThanOrEqualToThreshold", treat_missing_data="notBreaching",
            alarm_actions=actions, ok_actions=actions, opts=child)
        service_dimensions = {"ClusterName": cluster.name, "ServiceName": service.name}
        aws.cloudwatch.MetricAlarm(
            f"{name}-tasks-below-desired",
            alarm_description="Fewer Chroma tasks running than desired for 5 minutes",
            metric_queries=[
                {"id": "running", "return_data": False, "metric": {
                    "namespace": "ECS/ContainerInsights", "metric_name": "RunningTaskCount",
                    "dimensions": service_dimensions, "period": 60, "stat": "Minimum"}},
                {"id": "desired", "return_data": False, "metric": {
                    "namespace": "ECS/ContainerInsights", "metric_name": "DesiredTaskCount",
                    "dimensions": service_dimensions, "period": 60, "stat": "Maximum"}},
                {"id": "missing", "expression": "desired - running", "label": "tasks missing",
                 "return_data": True},
            ],
            evaluation_periods=5, threshold=0, comparison_operator="GreaterThanThreshold",
            treat_missing_data="missing", alarm_actions=actions, ok_actions=actions, opts=child)

        self.cluster_arn = cluster.arn
        self.cluster_name = cluster.name
        self.service_name = service.name
        self.task_definition_arn = task_definition.arn
        self.task_role_arn = task_role.arn
        self.task_role_name = task_role.name
        self.execution_role_arn = execution_role.arn
        self.execution_role_name = execution_role.name
        self.task_security_group_id = task_sg.id
        self.private_subnet_ids = pulumi.Output.from_input(args.private_subnet_ids)
        self.log_group_name = log_group.name
        self.alarm_topic_arn = topic.arn
        self.alb_dns_name = alb.dns_name
        self.register_outputs({
            "cluster_arn": self.cluster_arn,
            "cluster_name": self.cluster_name,
            "service_name": self.service_name,
            "task_definition_arn": self.task_definition_arn,
            "task_role_arn": self.task_role_arn,
            "execution_role_arn": self.execution_role_arn,
            "task_security_group_id": self.task_security_group_id,
            "private_subnet_ids": self.private_subnet_ids,
            "log_group_name": self.log_group_name,
            "alarm_topic_arn": self.alarm_topic_arn,
            "alb_dns_name": self.alb_dns_name,
            "url": self.url,
        })
