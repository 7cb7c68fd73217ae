"""What `pulumi up` creates, per stack (issue 2, "What pulumi up on a stack creates")."""

from __future__ import annotations

import json
import re

import pytest
from pulumi_harness import (
    STACKS,
    MockNetwork,
    policies_of_role,
    stack_file_config,
    synth_stack,
    synth_with,
)

from components.config import StackConfig
from ontosearch import constants as c


def _config(stack: str) -> StackConfig:
    return StackConfig.from_mapping({k.split(":", 1)[1]: v for k, v in stack_file_config(stack).items()
                                     if k.startswith("ontosearch:")})


def _endpoint_services(result) -> dict[str, str]:
    """service suffix (e.g. "ecr.api") -> endpoint type."""
    out = {}
    for endpoint in result.of_type("aws:ec2/vpcEndpoint:VpcEndpoint"):
        service = endpoint.raw_inputs["serviceName"]
        assert service.startswith("com.amazonaws.us-east-1.")
        out[service.removeprefix("com.amazonaws.us-east-1.")] = endpoint.raw_inputs["vpcEndpointType"]
    return out


# --- 1. Network ----------------------------------------------------------------------------------

@pytest.mark.parametrize("stack", STACKS)
def test_new_vpc_spans_two_azs_with_private_subnets_for_the_tasks(stack):
    result = synth_stack(stack)
    vpc = result.one("aws:ec2/vpc:Vpc")
    assert vpc.raw_inputs["enableDnsHostnames"] is True and vpc.raw_inputs["enableDnsSupport"] is True
    private = [s for s in result.of_type("aws:ec2/subnet:Subnet") if s.name.startswith("network-private-")]
    assert len(private) >= 2
    assert len({s.raw_inputs["availabilityZone"] for s in private}) == len(private)
    assert all(s.raw_inputs["vpcId"] == vpc.id for s in private)
    assert sorted(result.outputs["private_subnet_ids"]) == sorted(s.id for s in private)


def test_prod_has_public_subnets_in_two_azs_for_the_internet_facing_alb():
    result = synth_stack("prod")
    public = [s for s in result.of_type("aws:ec2/subnet:Subnet") if s.name.startswith("network-public-")]
    assert len({s.raw_inputs["availabilityZone"] for s in public}) >= 2
    alb = result.one("aws:lb/loadBalancer:LoadBalancer").raw_inputs
    assert alb["internal"] is False
    assert sorted(alb["subnets"]) == sorted(s.id for s in public)
    igw = result.one("aws:ec2/internetGateway:InternetGateway")
    route = result.one("aws:ec2/route:Route", "network-public-default").raw_inputs
    assert (route["destinationCidrBlock"], route["gatewayId"]) == ("0.0.0.0/0", igw.id)


def test_dev_egress_is_one_nat_gateway_routed_from_every_private_subnet():
    result = synth_stack("dev")
    assert _config("dev").egress == "nat"
    nat = result.one("aws:ec2/natGateway:NatGateway")
    public_ids = {s.id for s in result.of_type("aws:ec2/subnet:Subnet")
                  if s.name.startswith("network-public-")}
    assert nat.raw_inputs["subnetId"] in public_ids
    private_tables = [t for t in result.of_type("aws:ec2/routeTable:RouteTable") if "private" in t.name]
    routes = [r.raw_inputs for r in result.of_type("aws:ec2/route:Route") if "private" in r.name]
    assert sorted(r["routeTableId"] for r in routes) == sorted(t.id for t in private_tables)
    assert all(r["natGatewayId"] == nat.id and r["destinationCidrBlock"] == "0.0.0.0/0" for r in routes)
    # Image layers come from S3: the free gateway endpoint keeps them off the NAT bill.
    assert _endpoint_services(result) == {"s3": "Gateway"}


def test_prod_egress_is_vpc_endpoints_and_no_nat():
    result = synth_stack("prod")
    assert _config("prod").egress == "endpoints"
    assert result.of_type("aws:ec2/natGateway:NatGateway") == []
    assert _endpoint_services(result) == {
        "s3": "Gateway", "ecr.api": "Interface", "ecr.dkr": "Interface", "logs": "Interface",
        "secretsmanager": "Interface",
    }
    private_ids = sorted(result.outputs["private_subnet_ids"])
    endpoint_sg = result.one("aws:ec2/securityGroup:SecurityGroup", "network-endpoints-sg")
    for endpoint in result.of_type("aws:ec2/vpcEndpoint:VpcEndpoint"):
        inputs = endpoint.raw_inputs
        if inputs["vpcEndpointType"] == "Interface":
            assert inputs["privateDnsEnabled"] is True
            assert sorted(inputs["subnetIds"]) == private_ids
            assert inputs["securityGroupIds"] == [endpoint_sg.id]
        else:
            private_tables = [t.id for t in result.of_type("aws:ec2/routeTable:RouteTable")
                              if "private" in t.name]
            assert sorted(inputs["routeTableIds"]) == sorted(private_tables)
    # no route to the internet from private subnets
    assert [r.name for r in result.of_type("aws:ec2/route:Route")] == ["network-public-default"]


def test_existing_vpc_from_config_is_used_and_no_vpc_is_created():
    result = synth_with("prod", {
        "ontosearch:vpcId": "vpc-0123456789abcdef0",
        "ontosearch:privateSubnetIds": ["subnet-0aaa", "subnet-0bbb"],
        "ontosearch:publicSubnetIds": ["subnet-0ccc", "subnet-0ddd"],
    })
    for typ in ("aws:ec2/vpc:Vpc", "aws:ec2/subnet:Subnet", "aws:ec2/internetGateway:InternetGateway",
                "aws:ec2/natGateway:NatGateway"):
        assert result.of_type(typ) == []
    service = result.one("aws:ecs/service:Service").raw_inputs
    assert service["networkConfiguration"]["subnets"] == ["subnet-0aaa", "subnet-0bbb"]
    alb = result.one("aws:lb/loadBalancer:LoadBalancer").raw_inputs
    assert alb["subnets"] == ["subnet-0ccc", "subnet-0ddd"]
    assert result.one("aws:lb/targetGroup:TargetGroup").raw_inputs["vpcId"] == "vpc-0123456789abcdef0"
    assert "ecr.dkr" in _endpoint_services(result)  # egress: endpoints still creates the endpoints


EXISTING_VPC = {
    "ontosearch:vpcId": "vpc-0123456789abcdef0",
    "ontosearch:privateSubnetIds": ["subnet-0aaa", "subnet-0bbb"],
    "ontosearch:publicSubnetIds": ["subnet-0ccc", "subnet-0ddd"],
}


def _s3_gateway_route_tables(result) -> list[str]:
    (gateway,) = [e for e in result.of_type("aws:ec2/vpcEndpoint:VpcEndpoint")
                  if e.raw_inputs["vpcEndpointType"] == "Gateway"]
    return sorted(gateway.raw_inputs["routeTableIds"])


@pytest.mark.parametrize(("explicit", "expected"), [
    ({"subnet-0aaa": "rtb-0aaa", "subnet-0bbb": "rtb-0bbb"}, ["rtb-0aaa", "rtb-0bbb"]),
    ({"subnet-0aaa": "rtb-0aaa"}, ["rtb-0aaa", "rtb-0main"]),  # subnet-0bbb: implicitly the main table
    ({}, ["rtb-0main"]),  # both on the main table: named once
], ids=["explicit", "one-on-main", "both-on-main"])
def test_existing_vpc_s3_gateway_uses_each_private_subnets_route_table_or_the_main_one(explicit, expected):
    """A subnet without an explicit association uses the VPC's main route table (EC2 reports none for it)."""
    network = MockNetwork(main_route_table_id="rtb-0main", explicit_route_tables=explicit)
    result = synth_with("prod", EXISTING_VPC, network=network)
    assert _s3_gateway_route_tables(result) == expected


def test_mock_network_refuses_a_subnet_lookup_for_a_subnet_on_the_main_table():
    """The mocks fail the singular lookup as the provider does, so code relying on it fails here too."""
    network = MockNetwork(explicit_route_tables={"subnet-0aaa": "rtb-0aaa"})
    assert network.route_tables({"subnetId": "subnet-0bbb"}) == []
    assert network.route_tables({"subnetId": "subnet-0aaa"}) == ["rtb-0aaa"]
    assert network.route_tables({"filters": [{"name": "association.main", "values": ["true"]}]}) == [
        network.main_route_table_id]


# --- 2. Snapshot bucket --------------------------------------------------------------------------

@pytest.mark.parametrize("stack", STACKS)
def test_snapshot_bucket_is_private_versioned_encrypted_and_tls_only(stack):
    result = synth_stack(stack)
    bucket = result.one("aws:s3/bucket:Bucket")
    block = result.one("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock").raw_inputs
    assert block["bucket"] == bucket.id
    for key in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"):
        assert block[key] is True, key
    versioning = result.one("aws:s3/bucketVersioning:BucketVersioning").raw_inputs
    assert versioning == {"bucket": bucket.id, "versioningConfiguration": {"status": "Enabled"}}
    sse = result.one("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration")
    assert sse.raw_inputs["bucket"] == bucket.id
    rule = sse.raw_inputs["rules"][0]["applyServerSideEncryptionByDefault"]
    assert rule["sseAlgorithm"] in ("AES256", "aws:kms")
    ownership = result.one("aws:s3/bucketOwnershipControls:BucketOwnershipControls").raw_inputs
    assert ownership["rule"]["objectOwnership"] == "BucketOwnerEnforced"
    policy = result.one("aws:s3/bucketPolicy:BucketPolicy").raw_inputs
    assert policy["bucket"] == bucket.id
    (statement,) = json.loads(policy["policy"])["Statement"]
    assert statement["Effect"] == "Deny" and statement["Principal"] == "*"
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    arn = f"arn:aws:s3:::{bucket.id}"
    assert sorted(statement["Resource"]) == [arn, f"{arn}/*"]
    assert result.outputs["bucket_name"] == bucket.id


def test_prod_bucket_is_protected_and_dev_bucket_is_disposable():
    prod = synth_stack("prod").one("aws:s3/bucket:Bucket")
    dev = synth_stack("dev").one("aws:s3/bucket:Bucket")
    assert prod.protect is True and prod.raw_inputs["forceDestroy"] is False
    assert dev.protect is False and dev.raw_inputs["forceDestroy"] is True


# --- 3. Tokens -----------------------------------------------------------------------------------

@pytest.mark.parametrize("stack", STACKS)
def test_two_generated_tokens_are_stored_in_secrets_manager(stack):
    result = synth_stack(stack)
    secrets = {s.name: s.id for s in result.of_type("aws:secretsmanager/secret:Secret")}
    versions = {v.name: v.raw_inputs["secretId"]
                for v in result.of_type("aws:secretsmanager/secretVersion:SecretVersion")}
    assert versions == secrets
    assert set(secrets) == {"tokens-read", "tokens-admin"}
    assert result.outputs["token_secret_arn"] == secrets["tokens-read"]
    assert result.outputs["admin_token_secret_arn"] == secrets["tokens-admin"]
    # The service starts only once both secrets have a value.
    service = result.one("aws:ecs/service:Service")
    version_urns = {v.urn for v in result.of_type("aws:secretsmanager/secretVersion:SecretVersion")}
    assert version_urns <= set(service.dependencies)


# --- 4. ChromaService ----------------------------------------------------------------------------

@pytest.mark.parametrize("stack", STACKS)
def test_cluster_has_container_insights(stack):
    cluster = synth_stack(stack).one("aws:ecs/cluster:Cluster").raw_inputs
    assert {"name": "containerInsights", "value": "enabled"} in cluster["settings"]


@pytest.mark.parametrize("stack", STACKS)
def test_service_runs_the_task_behind_the_target_group_with_safe_deployments(stack):
    result = synth_stack(stack)
    cfg = _config(stack)
    service = result.one("aws:ecs/service:Service")
    inputs = service.raw_inputs
    assert inputs["cluster"] == result.one("aws:ecs/cluster:Cluster").id
    assert inputs["taskDefinition"].startswith("arn:aws:ecs:us-east-1:123456789012:task-definition/")
    assert inputs["launchType"] == "FARGATE"
    assert inputs["desiredCount"] == cfg.min_replicas
    assert "desiredCount" in service.ignore_changes  # auto scaling owns it after creation
    tg = result.one("aws:lb/targetGroup:TargetGroup")
    assert inputs["loadBalancers"] == [{"targetGroupArn": tg.id, "containerName": c.PROXY_CONTAINER,
                                        "containerPort": c.PROXY_PORT}]
    # Each task restores into its own ephemeral storage: start new before stopping old, roll back on failure.
    assert inputs["deploymentMinimumHealthyPercent"] == 100
    assert inputs["deploymentMaximumPercent"] == 200
    assert inputs["deploymentCircuitBreaker"] == {"enable": True, "rollback": True}
    assert inputs["healthCheckGracePeriodSeconds"] >= 120


def _nginx_seconds(config: str, directive: str) -> list[int]:
    """Every value of `directive` in an nginx config, in seconds (nginx time units s/m/h; bare = s)."""
    units = {"": 1, "s": 1, "m": 60, "h": 3600}
    return [int(n) * units[u] for n, u in re.findall(rf"^\s*{directive}\s+(\d+)([smh]?);", config, re.M)]


@pytest.mark.parametrize("stack", STACKS)
def test_alb_idle_timeout_outlasts_the_proxys_upstream_wait_and_nginx_keepalive_outlasts_the_alb(stack):
    """A query Chroma answers within the proxy's timeout reaches the client (not the ALB's 504), and the
    ALB, not nginx, closes idle connections (AWS: the application's idle timeout must exceed the ALB's)."""
    from ontosearch.proxy import task_proxy_config

    idle = synth_stack(stack).one("aws:lb/loadBalancer:LoadBalancer").raw_inputs["idleTimeout"]
    config = task_proxy_config()  # the snippet the task's proxy renders
    upstream = _nginx_seconds(config, "proxy_read_timeout") + _nginx_seconds(config, "proxy_send_timeout")
    (keepalive,) = _nginx_seconds(config, "keepalive_timeout")  # server level: overrides the image's 65 s
    assert upstream and idle > max(upstream)
    assert keepalive > idle
    # ELB attribute idle_timeout.timeout_seconds: 1-4000
    # (https://docs.aws.amazon.com/elasticloadbalancing/latest/APIReference/API_LoadBalancerAttribute.html)
    assert 1 <= idle <= 4000


@pytest.mark.parametrize("stack", STACKS)
def test_service_is_created_only_once_its_task_roles_hold_their_policies(stack):
    """The service starts tasks at once; a role without its policy yet cannot pull, log or restore."""
    result = synth_stack(stack)
    service = result.one("aws:ecs/service:Service")
    (task,) = [t for t in result.of_type("aws:ecs/taskDefinition:TaskDefinition")
               if t.state["arn"] == service.raw_inputs["taskDefinition"]]
    for role_arn in (task.raw_inputs["executionRoleArn"], task.raw_inputs["taskRoleArn"]):
        policies = policies_of_role(result, role_arn)
        assert policies, role_arn
        assert policies <= set(service.dependencies), f"the service does not wait for {policies}"


@pytest.mark.parametrize("stack", STACKS)
def test_target_group_is_ip_and_health_checks_the_heartbeat_through_the_proxy(stack):
    tg = synth_stack(stack).one("aws:lb/targetGroup:TargetGroup").raw_inputs
    assert tg["targetType"] == "ip"
    assert tg["port"] == c.PROXY_PORT and tg["protocol"] == "HTTP"
    assert tg["healthCheck"]["path"] == c.HEARTBEAT_PATH == "/api/v2/heartbeat"
    assert tg["healthCheck"]["matcher"] == "200"


def test_prod_alb_serves_https_with_a_route53_validated_certificate_and_modern_tls():
    result = synth_stack("prod")
    cfg = _config("prod")
    alb = result.one("aws:lb/loadBalancer:LoadBalancer")
    listeners = {r.raw_inputs["port"]: r.raw_inputs for r in result.of_type("aws:lb/listener:Listener")}
    assert set(listeners) == {80, 443}
    https = listeners[443]
    assert https["protocol"] == "HTTPS" and https["loadBalancerArn"] == alb.id
    assert https["sslPolicy"] == "ELBSecurityPolicy-TLS13-1-2-2021-06"
    tg = result.one("aws:lb/targetGroup:TargetGroup")
    assert https["defaultActions"] == [{"type": "forward", "targetGroupArn": tg.id}]
    cert = result.one("aws:acm/certificate:Certificate")
    assert cert.raw_inputs == {"domainName": cfg.domain, "validationMethod": "DNS"}
    validation = result.one("aws:acm/certificateValidation:CertificateValidation").raw_inputs
    assert https["certificateArn"] == validation["certificateArn"] == cert.id  # waits for validation
    record = result.one("aws:route53/record:Record", "chroma-cert-validation").raw_inputs
    assert record["type"] == "CNAME" and record["name"].endswith(cfg.domain + ".")
    assert validation["validationRecordFqdns"] == [record["name"].rstrip(".")]
    redirect = listeners[80]
    assert redirect["protocol"] == "HTTP"
    assert redirect["defaultActions"] == [{"type": "redirect", "redirect": {
        "protocol": "HTTPS", "port": "443", "statusCode": "HTTP_301"}}]
    assert alb.raw_inputs["dropInvalidHeaderFields"] is True
    assert alb.raw_inputs["enableDeletionProtection"] is True


def test_prod_domain_is_a_route53_alias_to_the_alb():
    result = synth_stack("prod")
    cfg = _config("prod")
    alb = result.one("aws:lb/loadBalancer:LoadBalancer")
    dns = result.one("aws:route53/record:Record", "chroma-dns").raw_inputs
    validation = result.one("aws:route53/record:Record", "chroma-cert-validation").raw_inputs
    assert dns["name"] == cfg.domain and dns["type"] == "A"
    assert dns["zoneId"] == validation["zoneId"] and dns["zoneId"].startswith("Z")
    (alias,) = dns["aliases"]
    assert alias["name"] == alb.state["dnsName"]
    assert alias["zoneId"] == alb.state["zoneId"] and alias["evaluateTargetHealth"] is True
    assert result.outputs["url"] == f"https://{cfg.domain}"


def test_dev_without_domain_gets_an_internal_http_alb():
    result = synth_stack("dev")
    assert _config("dev").domain is None
    alb = result.one("aws:lb/loadBalancer:LoadBalancer").raw_inputs
    assert alb["internal"] is True
    assert sorted(alb["subnets"]) == sorted(result.outputs["private_subnet_ids"])
    (listener,) = result.of_type("aws:lb/listener:Listener")
    assert (listener.raw_inputs["port"], listener.raw_inputs["protocol"]) == (80, "HTTP")
    for typ in ("aws:acm/certificate:Certificate", "aws:route53/record:Record"):
        assert result.of_type(typ) == []
    assert result.outputs["url"].startswith("http://internal-")


@pytest.mark.parametrize("stack", STACKS)
def test_logs_are_kept_for_the_configured_days(stack):
    log_groups = synth_stack(stack).of_type("aws:cloudwatch/logGroup:LogGroup")
    assert "chroma-logs" in {g.name for g in log_groups}
    for log_group in log_groups:  # the service's and the batch workflow's
        assert log_group.raw_inputs["retentionInDays"] == _config(stack).log_retention_days, log_group.name


@pytest.mark.parametrize("stack", STACKS)
def test_alarms_cover_unhealthy_targets_5xx_and_missing_tasks(stack):
    result = synth_stack(stack)
    topic = result.one("aws:sns/topic:Topic")
    alarms = {a.name: a.raw_inputs for a in result.of_type("aws:cloudwatch/metricAlarm:MetricAlarm")}
    tg = result.one("aws:lb/targetGroup:TargetGroup")
    unhealthy = alarms["chroma-unhealthy-hosts"]
    assert unhealthy["metricName"] == "UnHealthyHostCount"
    assert unhealthy["comparisonOperator"] == "GreaterThanThreshold" and unhealthy["threshold"] == 0
    assert unhealthy["dimensions"]["TargetGroup"] == tg.state["arnSuffix"]
    assert alarms["chroma-target-5xx"]["metricName"] == "HTTPCode_Target_5XX_Count"
    missing = alarms["chroma-tasks-below-desired"]
    metrics = {q["id"]: q for q in missing["metricQueries"]}
    assert metrics["running"]["metric"]["metricName"] == "RunningTaskCount"
    assert metrics["desired"]["metric"]["metricName"] == "DesiredTaskCount"
    assert metrics["missing"]["expression"] == "desired - running"
    assert missing["comparisonOperator"] == "GreaterThanThreshold" and missing["threshold"] == 0
    service = result.one("aws:ecs/service:Service")
    assert metrics["running"]["metric"]["dimensions"]["ServiceName"] == service.state["name"]
    for alarm in alarms.values():
        assert alarm["alarmActions"] == [topic.id]
    subscriptions = result.of_type("aws:sns/topicSubscription:TopicSubscription")
    cfg = _config(stack)
    if cfg.alarm_email:
        (sub,) = subscriptions
        assert sub.raw_inputs["endpoint"] == cfg.alarm_email and sub.raw_inputs["topic"] == topic.id
    else:
        assert subscriptions == []


@pytest.mark.parametrize("stack", STACKS)
def test_service_scales_reads_between_min_and_max_replicas(stack):
    result = synth_stack(stack)
    cfg = _config(stack)
    target = result.one("aws:appautoscaling/target:Target").raw_inputs
    assert (target["minCapacity"], target["maxCapacity"]) == (cfg.min_replicas, cfg.max_replicas)
    assert target["scalableDimension"] == "ecs:service:DesiredCount"
    cluster = result.one("aws:ecs/cluster:Cluster")
    service = result.one("aws:ecs/service:Service")
    assert target["resourceId"] == f"service/{cluster.state['name']}/{service.state['name']}"
    policy = result.one("aws:appautoscaling/policy:Policy").raw_inputs
    assert policy["policyType"] == "TargetTrackingScaling"
    assert policy["resourceId"] == target["resourceId"]


def test_prod_runs_at_least_two_replicas():
    cfg = _config("prod")
    assert cfg.min_replicas >= 2 and cfg.max_replicas >= cfg.min_replicas


# --- structure -----------------------------------------------------------------------------------

@pytest.mark.parametrize("stack", STACKS)
def test_every_resource_belongs_to_a_component_named_for_its_role(stack):
    result = synth_stack(stack)
    components = {r.name: r.type for r in result.resources if not r.custom}
    assert components.items() >= {
        "network": "ontosearch:infra:Network",
        "snapshots": "ontosearch:infra:SnapshotBucket",
        "tokens": "ontosearch:infra:Tokens",
        "encryption": "ontosearch:infra:StackKey",
        "images": "ontosearch:infra:Images",
        "chroma": "ontosearch:infra:ChromaService",
    }.items()
    for resource in result.resources:
        if resource.custom:
            assert resource.parent in components, f"{resource.type} {resource.name} has no component parent"
            assert resource.name.startswith(resource.parent + "-")


def test_batch_workflow_with_endpoints_egress_adds_a_step_functions_endpoint():
    """The batch task's agent calls SendTaskSuccess: without NAT it needs the `states` endpoint."""
    result = synth_with("prod", {"ontosearch:batchWorkflow": True})
    assert _endpoint_services(result).get("states") == "Interface"
    assert "states" not in _endpoint_services(synth_stack("prod"))
