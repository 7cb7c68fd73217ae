"""`python -m ontosearch cost`: prices what the synthesized stack deploys, per month and per batch run."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from ontosearch import cost

ROOT = Path(__file__).resolve().parent.parent


def _resources(**overrides):
    """A small stack as components.synth writes it: the billable resources the pricing reads."""
    service = {"desiredCount": 2}
    task = {"cpu": "4096", "memory": "16384", "ephemeralStorage": {"sizeInGib": 21}}
    resources = [
        {"type": "aws:ecs/service:Service", "name": "svc", "inputs": service},
        {"type": "aws:ecs/taskDefinition:TaskDefinition", "name": "task", "inputs": task},
        {"type": "aws:appautoscaling/target:Target", "name": "scale", "inputs": {"minCapacity": 2}},
        {
            "type": "aws:lb/loadBalancer:LoadBalancer",
            "name": "alb",
            "inputs": {"internal": False, "subnets": ["a", "b"]},
        },
        {"type": "aws:ec2/vpcEndpoint:VpcEndpoint", "name": "s3", "inputs": {"vpcEndpointType": "Gateway"}},
        {
            "type": "aws:ec2/vpcEndpoint:VpcEndpoint",
            "name": "logs",
            "inputs": {"vpcEndpointType": "Interface", "subnetIds": ["a", "b"], "serviceName": "x.logs"},
        },
        {"type": "aws:secretsmanager/secret:Secret", "name": "read", "inputs": {}},
        {"type": "aws:secretsmanager/secret:Secret", "name": "admin", "inputs": {}},
        {"type": "aws:cloudwatch/metricAlarm:MetricAlarm", "name": "a1", "inputs": {}},
        {
            "type": "aws:cloudwatch/metricAlarm:MetricAlarm",
            "name": "a2",
            "inputs": {
                "metricQueries": [
                    {"id": "m1", "metric": {}},
                    {"id": "m2", "metric": {}},
                    {"id": "e", "expression": "m1-m2"},
                ]
            },
        },
    ]
    return resources + overrides.get("extra", [])


def _item(items, key):
    return [i for i in items if i["price_key"] == key]


def test_fargate_is_priced_for_desired_replicas_at_arm64_rates():
    items = cost.always_on(_resources(), cost.ASSUMPTIONS)
    (vcpu,) = _item(items, "fargate_vcpu_hour")
    (memory,) = _item(items, "fargate_gb_hour")
    assert vcpu["quantity"] == pytest.approx(2 * 4 * 730)
    assert vcpu["monthly"] == pytest.approx(2 * 4 * 730 * 0.03238)
    assert memory["monthly"] == pytest.approx(2 * 16 * 730 * 0.00356)
    (storage,) = _item(items, "fargate_storage_gb_hour")
    assert storage["quantity"] == pytest.approx(2 * 730 * 1)  # only the GiB above the free 20


def test_interface_endpoints_are_priced_per_az_and_gateway_endpoints_are_free():
    items = cost.always_on(_resources(), cost.ASSUMPTIONS)
    (endpoints,) = _item(items, "endpoint_az_hour")
    assert endpoints["quantity"] == pytest.approx(2 * 730)


def test_alarm_metrics_count_each_metric_of_a_metric_math_alarm():
    items = cost.always_on(_resources(), cost.ASSUMPTIONS)
    (alarms,) = _item(items, "alarm_metric_month")
    assert alarms["quantity"] == 3


def test_nat_gateways_zones_and_kms_keys_are_priced_only_when_the_stack_creates_them():
    without = cost.always_on(_resources(), cost.ASSUMPTIONS)
    assert not _item(without, "nat_hour") and not _item(without, "hosted_zone_month")
    assert not _item(without, "kms_key_month")
    extra = [
        {"type": "aws:ec2/natGateway:NatGateway", "name": "nat", "inputs": {}},
        {"type": "aws:route53/zone:Zone", "name": "zone", "inputs": {}},
        {"type": "aws:kms/key:Key", "name": "key", "inputs": {}},
    ]
    with_them = cost.always_on(_resources(extra=extra), cost.ASSUMPTIONS)
    assert _item(with_them, "nat_hour")[0]["monthly"] == pytest.approx(730 * 0.045)
    assert _item(with_them, "hosted_zone_month")[0]["monthly"] == pytest.approx(0.50)
    assert _item(with_them, "kms_key_month")[0]["monthly"] == pytest.approx(1.00)


def test_batch_execution_cost_grows_with_labels_and_break_even_follows():
    small = cost.estimate("test", 10_000, resources=_resources())
    large = cost.estimate("test", 1_000_000, resources=_resources())
    assert 0 < small["per_execution"] < large["per_execution"]
    assert small["break_even_executions_per_month"] > large["break_even_executions_per_month"]
    assert small["break_even_executions_per_month"] == pytest.approx(
        small["service_only_monthly"] / small["per_execution"]
    )
    # Fargate bills at least a minute: a tiny run still pays for one.
    tiny = cost.batch_execution(1, dict(cost.ASSUMPTIONS, batch_task_start_s=0.0))
    (task,) = [i for i in tiny if i["price_key"] == "fargate_vcpu_hour"]
    assert task["quantity"] >= cost.ASSUMPTIONS["batch_task_vcpu"] * 60 / 3600


def test_every_price_names_its_source():
    for key, (usd, unit, source) in cost.PRICES.items():
        assert usd > 0 and unit and source.startswith("aws.amazon.com/"), key


def test_cost_module_never_imports_pulumi():
    tree = ast.parse(Path(cost.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not any(name.split(".")[0].startswith("pulumi") for name in imported)


def test_cost_command_prices_the_prod_stack_from_synth():
    done = subprocess.run(
        [sys.executable, "-m", "ontosearch", "cost", "--stack", "prod", "--labels", "10000"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "Fargate ARM64 vCPU (2 tasks x 4 vCPU)" in text  # Pulumi.prod.yaml: 2 replicas of 4096 CPU
    assert "TOTAL per month" in text and "TOTAL per execution" in text
    assert "Break-even:" in text and "10,000 labels" in text


def test_cost_command_rejects_an_unknown_stack_with_a_clear_message():
    done = subprocess.run(
        [sys.executable, "-m", "ontosearch", "cost", "--stack", "nosuchstack"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert "nosuchstack" in done.stderr


def test_cost_command_rejects_nonpositive_labels():
    done = subprocess.run(
        [sys.executable, "-m", "ontosearch", "cost", "--labels", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "--labels" in done.stderr


def test_a_20m_row_execution_of_2m_distinct_labels_is_priced_per_row_and_per_label():
    """Expected figures worked by hand from the price table and the deployed Lambda memory
    (components/batch_workflow.py: split and merge 1,769 MB, query 3,008 MB, validate 512 MB):
    4,000 chunks of 500 labels; Split 20M rows / 150,000 rows/s = 133.33 s, Merge 20M / 75,000 =
    266.67 s; queries ceil(4,000 / 10 lanes) x 0.5 s + 6 s cold = 206 s; the task from start to
    StopTask after Merge: 90 + 206 + 266.67 + 10 = 572.67 s. A Distributed Map bills one
    transition per child execution started plus the child's own (QueryChunk: one), so 12 + 2 x
    4,000 = 8,012 transitions (concepts-transitions.html)."""
    items = {i["item"].split(" (")[0]: i for i in cost.batch_execution(2_000_000, cost.ASSUMPTIONS,
                                                                        rows=20_000_000)}
    assert items["split Lambda"]["quantity"] == pytest.approx(133.333 * 1.727539, rel=1e-4)  # GB-s
    assert items["split Lambda"]["cost"] == pytest.approx(0.0030712, rel=1e-3)
    assert items["merge Lambda"]["quantity"] == pytest.approx(266.667 * 1.727539, rel=1e-4)
    assert items["merge Lambda"]["cost"] == pytest.approx(0.0061424, rel=1e-3)
    assert items["validate Lambda"]["quantity"] == pytest.approx(0.5)
    assert items["query Lambdas"]["quantity"] == pytest.approx(4000 * 2.9375 * 0.5 + 10 * 2.9375 * 6)
    assert items["query Lambdas"]["cost"] == pytest.approx(0.080684, rel=1e-3)
    assert items["on-demand task vCPU"]["quantity"] == pytest.approx(572.667 / 3600, rel=1e-4)
    assert items["on-demand task vCPU"]["cost"] == pytest.approx(0.0051508, rel=1e-3)
    assert items["on-demand task memory"]["cost"] == pytest.approx(0.0011326, rel=1e-3)
    assert items["Step Functions transitions"]["quantity"] == pytest.approx(8.012)
    assert items["Step Functions transitions"]["cost"] == pytest.approx(0.2003)
    assert items["S3 PUTs"]["cost"] == pytest.approx(0.04002)
    assert items["S3 GETs"]["cost"] == pytest.approx(0.0032016)
    # /tmp above 512 MB: query 1.5 GB x (4000 x 0.5 s + 10 x 6 s), split 1.5 GB x 133.3 s,
    # merge 9.5 GB x 266.7 s, validate 1.5 GB x 1 s; $0.0000000309 a GB-second
    tmp = items["Lambda /tmp above 512 MB"]
    assert tmp["quantity"] == pytest.approx(1.5 * 2060 + 1.5 * 20e6 / 150e3 + 9.5 * 20e6 / 75e3 + 1.5)
    assert tmp["cost"] == pytest.approx(5824.83 * 0.0000000309, rel=1e-4)
    assert sum(i["cost"] for i in items.values()) == pytest.approx(0.34051 + 0.00018, rel=1e-4)


def test_rows_default_to_labels_and_more_rows_cost_more_only_in_split_merge_and_the_task():
    same = {i["price_key"] + i["item"][:12]: i["cost"]
            for i in cost.batch_execution(10_000, cost.ASSUMPTIONS)}
    more = {i["price_key"] + i["item"][:12]: i["cost"]
            for i in cost.batch_execution(10_000, cost.ASSUMPTIONS, rows=5_000_000)}
    changed = {k for k in same if more[k] != pytest.approx(same[k])}
    assert changed == {"lambda_gb_ssplit Lambda", "lambda_gb_smerge Lambda", "fargate_vcpu_houron-demand ta",
                       "fargate_gb_houron-demand ta", "lambda_ephemeral_gb_sLambda /tmp "}


def test_child_transitions_and_lambda_memory_come_from_the_definition_and_the_component():
    assert cost.child_transitions() == 1  # QueryChunk, then the child ends
    memory = cost.lambda_memory_gb()
    assert memory["split"] == memory["merge"] == pytest.approx(1769 / 1024)
    assert memory["query"] == pytest.approx(3008 / 1024)
