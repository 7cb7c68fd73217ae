"""The decisions of the opt-in real-AWS integration test (tests/throwaway_stack.py), checked here without
AWS: the opt-in and its skip reasons, stack naming against the names the program really derives from it,
the throwaway config synthesized under the project's Pulumi mocks, config paths, outputs, the wait loops,
service and execution states, the teardown order, and the stop helpers against moto's ECS and Step
Functions."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import boto3
import pytest
import throwaway_stack as t
from moto import mock_aws
from pulumi.automation import OutputValue

from components.synth import load_stack_config, project_name, synth

PROJECT = project_name()
NAME = t.new_stack_name(PROJECT, now=datetime(2026, 6, 1, 10, 15, 0, tzinfo=UTC), token="a1b2c3")
ACCOUNT = "123456789012"


# --- opt-in ------------------------------------------------------------------------------------------------

def test_without_opt_in_cli_and_credentials_each_is_named_in_the_skip_reason():
    missing = t.missing_prerequisites({}, which=lambda _: None, credentials=lambda: False)
    reason = t.skip_reason(missing)
    assert "ONTOSEARCH_AWS_INTEGRATION=1 is not set" in reason
    assert "the Pulumi CLI (`pulumi`) is not on PATH" in reason
    assert "no AWS credentials" in reason
    assert reason.startswith("real-AWS integration test not run: ")


@pytest.mark.parametrize("value, runs", [
    ("1", True), ("true", True), ("YES", True), ("0", False), ("", False)])
def test_the_opt_in_is_an_explicit_yes(value, runs):
    missing = t.missing_prerequisites({t.OPT_IN: value}, which=lambda _: "/usr/bin/pulumi",
                                      credentials=lambda: True)
    assert (missing == []) is runs


def test_each_prerequisite_alone_keeps_the_test_from_running():
    env = {t.OPT_IN: "1"}
    assert t.missing_prerequisites(env, which=lambda _: None, credentials=lambda: True) == [
        "the Pulumi CLI (`pulumi`) is not on PATH"]
    assert t.missing_prerequisites(env, which=lambda _: "/bin/pulumi", credentials=lambda: False) == [
        "no AWS credentials (boto3's credential chain found none)"]


def test_docker_and_a_passphrase_backend_are_checked_before_anything_is_created():
    assert "docker" in t.docker_problem(which=lambda _: None)
    assert t.docker_problem(which=lambda _: "/usr/bin/docker") is None
    assert t.backend_problem("https://api.pulumi.com", {}) is None
    assert "PULUMI_CONFIG_PASSPHRASE" in t.backend_problem("file:///home/me/.pulumi", {})
    assert t.backend_problem("s3://state-bucket", {"PULUMI_CONFIG_PASSPHRASE": ""}) is None


# --- settings ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("env, message", [
    ({t.ENV_VPC_ID: "vpc-0abc"}, "go together"),
    ({t.ENV_SUBNET_IDS: "subnet-1,subnet-2"}, "go together"),
    ({t.ENV_CONFIG: "{cpu: 2048"}, "is not JSON"),
    ({t.ENV_CONFIG: '{"cpu": 2048}'}, "namespaced config keys"),
    ({t.ENV_CONFIG: "[1]"}, "namespaced config keys"),
    ({t.ENV_SNAPSHOT: "/nonexistent/snap"}, "holds no manifest.json"),
])
def test_wrong_settings_name_the_variable(env, message):
    with pytest.raises(t.SettingsError, match=message):
        t.Settings.from_env(env)


def test_settings_read_the_network_position_from_the_environment():
    settings = t.Settings.from_env({t.ENV_VPC_ID: " vpc-0abc ", t.ENV_SUBNET_IDS: "subnet-1, subnet-2,",
                                    t.ENV_HOSTED_ZONE: "Example.COM.", t.ENV_REGION: "eu-west-1"})
    assert settings.vpc_id == "vpc-0abc"
    assert settings.subnet_ids == ("subnet-1", "subnet-2")
    assert settings.hosted_zone == "example.com"
    assert settings.region == "eu-west-1"


def test_the_service_url_is_skipped_only_where_this_machine_cannot_reach_the_alb():
    reason = t.service_skip_reason(t.Settings())
    assert reason is not None and "internal" in reason
    assert t.ENV_HOSTED_ZONE in reason and t.ENV_VPC_ID in reason
    assert t.service_skip_reason(t.Settings(hosted_zone="example.com")) is None
    assert t.service_skip_reason(t.Settings(vpc_id="vpc-0abc", subnet_ids=("subnet-1", "subnet-2"))) is None
    assert t.service_skip_reason(t.Settings(extra_config={"ontosearch:domain": "it.example.com"})) is None


# --- names ---------------------------------------------------------------------------------------------

def test_a_new_stack_name_sorts_by_time_and_is_unique_per_run():
    assert NAME == "it-20260601-101500-a1b2c3"
    assert t.stack_name_problems(NAME, PROJECT) == []
    assert t.new_stack_name(PROJECT) != t.new_stack_name(PROJECT)


@pytest.mark.parametrize("name, broken", [
    ("it.2026", "task definition family of the service"),   # Pulumi allows '.', ECS families do not
    ("It-2026", "DNS label"),                                 # a domain label is lower case here
    ("-it", "DNS label"),
    ("it-" + "x" * 61, "DNS label"),                          # 64 characters
    ("it-" + "x" * 75, "Step Functions execution name"),
    ("it-" + "x" * 98, "Pulumi stack name"),                  # 101 characters
])
def test_names_outside_a_limit_are_refused_with_the_rule(name, broken):
    problems = t.stack_name_problems(name, PROJECT)
    assert any(problem.startswith(broken) for problem in problems), problems
    with pytest.raises(ValueError, match="is not usable"):
        t.new_stack_name(PROJECT, prefix=name)


def _strings(value, key=""):
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v, key)


def test_the_naming_rules_are_the_names_the_program_derives_from_the_stack_name():
    result = synth(NAME, config=t.throwaway_config(load_stack_config("dev"), NAME,
                                                   t.Settings(hosted_zone="example.com")))
    names = {value for resource in result.resources for key, value in _strings(resource.raw_inputs)
             if key in {"family", "name", "domainName"} and NAME in value}
    derived = {rule.derive(PROJECT, NAME) for rule in t.NAME_RULES}
    # every name-like input that carries the stack name is one the rules check ...
    assert {n for n in names if not n.endswith(".example.com") and not n.endswith(".example.com.")} <= derived
    # ... and the rules check names the program really makes, not guesses
    assert {f"{PROJECT}-{NAME}-chroma", f"{PROJECT}-{NAME}-batch", f"alias/{PROJECT}-{NAME}"} <= names
    assert f"{NAME}.example.com" in names


# --- config --------------------------------------------------------------------------------------------

def test_the_throwaway_config_is_devs_with_the_batch_workflow_on_and_no_deletion_protection():
    dev = load_stack_config("dev")
    config = t.throwaway_config(dev, NAME, t.Settings())
    assert config["ontosearch:batchWorkflow"] is True
    assert config["ontosearch:deletionProtection"] is False
    for key, value in dev.items():
        if key not in {"aws:defaultTags", "ontosearch:batchWorkflow", "ontosearch:deletionProtection"}:
            assert config[key] == value, key
    tags = config["aws:defaultTags"]["tags"]
    assert tags["stack"] == NAME and tags["purpose"] == "integration-test"
    assert tags["project"] == dev["aws:defaultTags"]["tags"]["project"]
    assert dev["aws:defaultTags"]["tags"]["stack"] == "dev"  # the stack file's values are not changed


def test_the_throwaway_stack_synthesizes_with_the_workflow_and_nothing_that_survives_destroy():
    result = synth(NAME, config=t.throwaway_config(load_stack_config("dev"), NAME, t.Settings()))
    assert result.of_type("aws:sfn/stateMachine:StateMachine")
    assert [r.name for r in result.resources if r.protect] == []
    assert all(b.raw_inputs.get("forceDestroy") is True for b in result.of_type("aws:s3/bucket:Bucket"))
    assert all(r.raw_inputs.get("forceDelete") is True
               for r in result.of_type("aws:ecr/repository:Repository"))
    assert all(s.raw_inputs.get("recoveryWindowInDays") == 0
               for s in result.of_type("aws:secretsmanager/secret:Secret"))
    assert all(not lb.raw_inputs.get("enableDeletionProtection")
               for lb in result.of_type("aws:lb/loadBalancer:LoadBalancer"))
    assert [k.raw_inputs.get("deletionWindowInDays") for k in result.of_type("aws:kms/key:Key")] == [7]


def test_settings_place_the_stack_in_a_region_a_vpc_or_behind_a_public_domain():
    extra = {"ontosearch:publicSubnetIds": ["subnet-3", "subnet-4"], "ontosearch:mapConcurrency": 4}
    settings = t.Settings(region="eu-west-1", vpc_id="vpc-0abc", subnet_ids=("subnet-1", "subnet-2"),
                          hosted_zone="example.com", extra_config=extra)
    config = t.throwaway_config(load_stack_config("dev"), NAME, settings)
    assert config["aws:region"] == "eu-west-1"
    assert config["ontosearch:vpcId"] == "vpc-0abc"
    assert config["ontosearch:privateSubnetIds"] == ["subnet-1", "subnet-2"]
    assert config["ontosearch:domain"] == f"{NAME}.example.com"
    assert config["ontosearch:hostedZone"] == "example.com"
    assert config["ontosearch:mapConcurrency"] == 4


@pytest.mark.parametrize("extra, message", [
    ({"ontosearch:deletionProtection": True}, "must be destroyable|needs False"),
    ({"ontosearch:batchWorkflow": False}, "needs True"),
    ({"ontosearch:cpu": 3}, "ontosearch:cpu"),
    ({"ontosearch:mapConcurrency": "ten"}, "ontosearch:mapConcurrency"),
])
def test_overrides_that_break_the_throwaway_stack_are_refused_before_anything_exists(extra, message):
    with pytest.raises(t.SettingsError, match=message):
        t.throwaway_config(load_stack_config("dev"), NAME, t.Settings(extra_config=extra))


def test_a_config_without_a_region_asks_for_one():
    dev = {k: v for k, v in load_stack_config("dev").items() if k != "aws:region"}
    with pytest.raises(t.SettingsError, match=t.ENV_REGION):
        t.throwaway_config(dev, NAME, t.Settings())
    assert t.throwaway_config(dev, NAME, t.Settings(region="eu-west-1"))["aws:region"] == "eu-west-1"


def test_secret_dev_config_cannot_be_copied():
    dev = {**load_stack_config("dev"), "ontosearch:alarmEmail": {"secure": "v1:abc"}}
    with pytest.raises(t.SettingsError, match="ontosearch:alarmEmail"):
        t.throwaway_config(dev, NAME, t.Settings())


def test_config_paths_follow_pulumis_property_path_syntax():
    paths = t.path_config({
        "aws:region": "us-east-1",
        "aws:defaultTags": {"tags": {"project": "ontosearch", "cost-center": 'a"b', "team.name": "x"}},
        "ontosearch:privateSubnetIds": ["subnet-1", "subnet-2"],
        "ontosearch:batchWorkflow": True,
        "ontosearch:cpu": 1024,
    })
    assert paths == {
        "aws:region": "us-east-1",
        "aws:defaultTags.tags.project": "ontosearch",
        'aws:defaultTags.tags["cost-center"]': 'a"b',
        'aws:defaultTags.tags["team.name"]': "x",
        "ontosearch:privateSubnetIds[0]": "subnet-1",
        "ontosearch:privateSubnetIds[1]": "subnet-2",
        "ontosearch:batchWorkflow": "true",
        "ontosearch:cpu": "1024",
    }
    assert t.path_config({"aws:defaultTags": {"tags": {'say "hi"': "1"}}}) == {
        'aws:defaultTags.tags["say \\"hi\\""]': "1"}
    with pytest.raises(t.SettingsError, match="empty"):
        t.path_config({"ontosearch:privateSubnetIds": []})
    with pytest.raises(t.SettingsError, match="namespace:name"):
        t.path_config({"cpu": 1024})


# --- outputs -------------------------------------------------------------------------------------------

OUTPUTS = {
    "url": "http://internal-chroma-alb-123.us-east-1.elb.amazonaws.com",
    "bucket_name": "snapshots-bucket-1a2b3c",
    "token_secret_arn": f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:tokens-read-AbCdEf",
    "cluster_arn": f"arn:aws:ecs:us-east-1:{ACCOUNT}:cluster/chroma-cluster-9f8e7d",
    "service_name": "chroma-service-5c4b3a",
    "batch_state_machine_arn": f"arn:aws:states:eu-west-1:{ACCOUNT}:stateMachine:batch-machine-1234567",
    "batch_task_definition_arn": f"arn:aws:ecs:eu-west-1:{ACCOUNT}:task-definition/{PROJECT}-{NAME}-batch:3",
}


def test_outputs_of_the_automation_api_are_read_into_what_the_test_needs():
    parsed = t.parse_outputs({k: OutputValue(v, k.endswith("secret_arn")) for k, v in OUTPUTS.items()})
    assert parsed.bucket == "snapshots-bucket-1a2b3c"
    assert parsed.region == "eu-west-1"
    assert parsed.batch_task_family == f"{PROJECT}-{NAME}-batch"


def test_a_stack_without_the_batch_outputs_is_named_as_such():
    partial = {k: v for k, v in OUTPUTS.items() if not k.startswith("batch_")}
    with pytest.raises(t.OutputsError,
                       match="batch_state_machine_arn, batch_task_definition_arn.*batchWorkflow"):
        t.parse_outputs(partial)
    with pytest.raises(t.OutputsError, match="task definition ARN"):
        t.parse_outputs({**OUTPUTS, "batch_task_definition_arn": "ontosearch-batch"})


# --- waiting -------------------------------------------------------------------------------------------

class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_wait_for_returns_the_value_once_done_and_reports_each_change():
    clock = FakeClock()
    polls = iter([t.Poll(False, "PENDING"), t.Poll(False, "PENDING"), t.Poll(False, "RUNNING"),
                  t.Poll(True, "DONE", 42)])
    seen: list[str] = []
    value = t.wait_for(lambda: next(polls), "thing", timeout=100, interval=10, clock=clock, sleep=clock.sleep,
                       on_change=seen.append)
    assert value == 42
    assert clock.sleeps == [10, 10, 10]
    assert seen == ["thing: PENDING", "thing: RUNNING", "thing: DONE"]


def test_wait_for_never_waits_past_its_timeout_and_names_the_last_state():
    clock = FakeClock()
    with pytest.raises(t.WaitTimeout, match=r"service: not done after 25 s; last state: 0/1 running"):
        t.wait_for(lambda: t.Poll(False, "0/1 running"), "service", timeout=25, interval=10, clock=clock,
                   sleep=clock.sleep)
    assert sum(clock.sleeps) == 25 and clock.sleeps == [10, 10, 5]


def test_a_probe_that_raises_ends_the_wait_at_once():
    clock = FakeClock()

    def probe():
        raise t.ServiceFailed("deployment FAILED")

    with pytest.raises(t.ServiceFailed):
        t.wait_for(probe, "service", timeout=600, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == []


def service(rollout="COMPLETED", running=1, desired=1, deployments=1, **extra):
    return {"serviceName": "chroma-service", "desiredCount": desired, "runningCount": running,
            "deployments": [{"status": "PRIMARY", "rolloutState": rollout, **extra}]
            + [{"status": "ACTIVE", "rolloutState": "COMPLETED"}] * (deployments - 1),
            "events": [{"message": "(service chroma-service) has started 1 tasks"}]}


def target(state, reason=None):
    health = {"State": state, **({"Reason": reason} if reason else {})}
    return {"Target": {"Id": "10.40.1.5", "Port": 8080}, "TargetHealth": health}


def test_the_service_is_healthy_once_deployed_running_and_passing_the_alb_checks():
    assert t.service_health(service(), [target("healthy")]).done


@pytest.mark.parametrize("svc, targets, shown", [
    (service(rollout="IN_PROGRESS"), [target("healthy")], "deployment IN_PROGRESS"),
    (service(running=0), [], "0/1 tasks running, targets: none registered"),
    (service(), [target("initial", "Elb.InitialHealthChecking")], "1 initial (Elb.InitialHealthChecking)"),
    (service(), [target("unhealthy", "Target.FailedHealthChecks")], "1 unhealthy"),
    (service(deployments=2), [target("healthy")], "2 deployment(s)"),
    (service(desired=0, running=0), [], "0/0 tasks running"),
])
def test_the_service_is_not_healthy_until_all_of_it_holds(svc, targets, shown):
    poll = t.service_health(svc, targets)
    assert not poll.done
    assert shown in poll.state


def test_a_failed_deployment_ends_the_wait_with_its_reason():
    with pytest.raises(t.ServiceFailed, match="circuit breaker.*has started 1 tasks"):
        t.service_health(service(rollout="FAILED", rolloutStateReason="ECS deployment circuit breaker: tasks "
                                 "failed to start."), [])


def test_execution_states():
    assert t.execution_poll({"status": "RUNNING"}) == t.Poll(False, "RUNNING")
    output = {"output": "s3://b/results/e/annotations.csv", "rows": 40}
    assert t.execution_poll({"status": "SUCCEEDED", "output": json.dumps(output)}).value == output
    for status in ("FAILED", "TIMED_OUT", "ABORTED"):
        with pytest.raises(t.ExecutionFailed, match=f"ended {status}: States.TaskFailed: task stopped"):
            t.execution_poll({"status": status, "error": "States.TaskFailed", "cause": "task stopped"})
    with pytest.raises(t.ExecutionFailed, match="not JSON"):
        t.execution_poll({"status": "SUCCEEDED", "output": "done"})


def test_the_execution_input_is_the_documented_one_and_the_results_are_where_the_readme_says():
    request = t.execution_input("bkt", "inputs/x/cell_types.txt", "cl", 3)
    assert request == {"input": "s3://bkt/inputs/x/cell_types.txt", "ontology": "cl", "top_k": 3,
                       "snapshot": "latest", "save_snapshot": False}
    execution = t.execution_name(NAME)
    assert t.results_key({"output": f"s3://bkt/results/{execution}/annotations.csv"}, "bkt", execution) == \
        f"results/{execution}/annotations.csv"
    with pytest.raises(t.ExecutionFailed):
        t.results_key({"output": f"s3://other/results/{execution}/annotations.csv"}, "bkt", execution)
    with pytest.raises(t.ExecutionFailed):
        t.results_key({"output": "s3://bkt/results/another/annotations.csv"}, "bkt", execution)


# --- teardown ------------------------------------------------------------------------------------------

def test_teardown_runs_in_phase_order_whatever_the_order_of_creation():
    ran: list[str] = []
    teardown = t.Teardown()
    teardown.add(t.Phase.LOCAL, "remove work dir", lambda: ran.append("remove work dir"))
    teardown.add(t.Phase.DESTROY, "destroy", lambda: ran.append("destroy"))
    teardown.add(t.Phase.FORGET, "remove stack", lambda: ran.append("remove stack"), requires="destroy")
    teardown.add(t.Phase.STOP_WORK, "stop batch tasks", lambda: ran.append("stop batch tasks"))
    teardown.add(t.Phase.STOP_WORK, "stop execution", lambda: ran.append("stop execution"))
    report = teardown.run()
    assert ran == ["stop execution", "stop batch tasks", "destroy", "remove stack", "remove work dir"]
    assert report.failed == []


def test_a_failed_destroy_keeps_the_stack_and_the_other_steps_still_run():
    ran: list[str] = []
    teardown = t.Teardown()

    def destroy():
        raise RuntimeError("DependencyViolation: sg-1 has a dependent object")

    def stop():
        raise RuntimeError("AccessDenied")

    teardown.add(t.Phase.DESTROY, "destroy", destroy)
    teardown.add(t.Phase.FORGET, "remove stack", lambda: ran.append("remove stack"), requires="destroy")
    teardown.add(t.Phase.STOP_WORK, "stop batch tasks", stop)
    teardown.add(t.Phase.LOCAL, "remove work dir", lambda: ran.append("remove work dir"))
    report = teardown.run()
    assert ran == ["remove work dir"]
    assert [(o.name, o.status) for o in report.failed] == [
        ("stop batch tasks", "failed"), ("destroy", "failed"), ("remove stack", "skipped")]
    assert "DependencyViolation" in report.summary()
    assert "destroy did not succeed" in report.summary()
    assert f"pulumi destroy --stack {NAME} --yes" in t.manual_cleanup(NAME)


def test_teardown_steps_are_registered_once_and_only_after_what_they_require():
    teardown = t.Teardown()
    with pytest.raises(ValueError, match="requires 'destroy'"):
        teardown.add(t.Phase.FORGET, "remove stack", lambda: None, requires="destroy")
    teardown.add(t.Phase.DESTROY, "destroy", lambda: None)
    with pytest.raises(ValueError, match="already registered"):
        teardown.add(t.Phase.DESTROY, "destroy", lambda: None)


def test_retry_gives_late_aws_dependencies_another_attempt():
    clock = FakeClock()
    attempts = iter([RuntimeError("DependencyViolation"), RuntimeError("DependencyViolation"), "destroyed"])

    def action():
        outcome = next(attempts)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert t.retry(action, attempts=3, pause=60, what="destroy", sleep=clock.sleep) == "destroyed"
    assert clock.sleeps == [60, 60]
    with pytest.raises(RuntimeError, match="always"):
        t.retry(lambda: (_ for _ in ()).throw(RuntimeError("always")), attempts=2, pause=1, what="x",
                sleep=clock.sleep)


@mock_aws
def test_stopping_batch_tasks_stops_only_the_batch_family():
    ecs = boto3.client("ecs", region_name="us-east-1")
    ec2 = boto3.client("ec2", region_name="us-east-1")
    vpc = ec2.create_vpc(CidrBlock="10.40.0.0/16")["Vpc"]["VpcId"]
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})  # moto needs it for awsvpc tasks
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.40.1.0/24")["Subnet"]["SubnetId"]
    cluster = ecs.create_cluster(clusterName="chroma-cluster")["cluster"]["clusterArn"]
    batch, service_family = f"{PROJECT}-{NAME}-batch", f"{PROJECT}-{NAME}-chroma"
    for family in (batch, service_family):
        ecs.register_task_definition(
            family=family, networkMode="awsvpc", requiresCompatibilities=["FARGATE"], cpu="1024",
            memory="2048", containerDefinitions=[{"name": "proxy", "image": "nginx", "memory": 512}])
        for _ in range(2):
            ecs.run_task(cluster=cluster, taskDefinition=family, launchType="FARGATE", networkConfiguration={
                "awsvpcConfiguration": {"subnets": [subnet], "securityGroups": []}})
    stopped = t.stop_batch_tasks(ecs, cluster, batch, "integration test teardown")
    assert len(stopped) == 2
    assert ecs.list_tasks(cluster=cluster, family=batch, desiredStatus="RUNNING")["taskArns"] == []
    running = ecs.list_tasks(cluster=cluster, family=service_family, desiredStatus="RUNNING")["taskArns"]
    assert len(running) == 2


@mock_aws
def test_a_running_execution_is_stopped_and_a_finished_one_left_alone():
    sfn = boto3.client("stepfunctions", region_name="us-east-1")
    machine = sfn.create_state_machine(
        name="batch-machine", roleArn=f"arn:aws:iam::{ACCOUNT}:role/batch-machine-role",
        definition=json.dumps({"StartAt": "Wait", "States": {"Wait": {"Type": "Pass", "End": True}}}),
    )["stateMachineArn"]
    execution = sfn.start_execution(stateMachineArn=machine, name=t.execution_name(NAME))["executionArn"]
    assert t.stop_execution_if_running(sfn, execution) is True
    assert sfn.describe_execution(executionArn=execution)["status"] == "ABORTED"
    assert t.stop_execution_if_running(sfn, execution) is False
