"""`python -m ontosearch cost --stack prod [--labels N]`: what a stack costs per month, and per batch run.

Priced from what the stack would deploy, not from a hand-kept list: the Pulumi program is run under
mocks by `python -m components.synth --stack S --out FILE` in a subprocess (this package never
imports pulumi) and every billable resource in its output is counted. The always-on service runs
its desired replicas all month; one batch execution starts an on-demand task of the BatchWorkflow's
size for as long as it needs, plus Lambdas and state transitions. Break-even is the number of batch
executions per month that costs as much as keeping the service up.

Prices are us-east-1 list prices, one table below with the page each comes from; the quantities
that are guesses (traffic, log volume) are stated next to them in the output.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

HOURS_PER_MONTH = 730.0

# price key -> (USD, unit, source). us-east-1 list prices.
PRICES: dict[str, tuple[float, str, str]] = {
    "fargate_vcpu_hour": (
        0.03238,
        "per vCPU-hour, Linux/ARM64",
        "aws.amazon.com/fargate/pricing (ARCHITECTURE.md 2)",
    ),
    "fargate_gb_hour": (
        0.00356,
        "per GB-hour, Linux/ARM64",
        "aws.amazon.com/fargate/pricing (ARCHITECTURE.md 2)",
    ),
    "fargate_storage_gb_hour": (
        0.000111,
        "per GB-hour of ephemeral storage above 20 GB",
        "aws.amazon.com/fargate/pricing",
    ),
    "alb_hour": (0.0225, "per ALB-hour", "aws.amazon.com/elasticloadbalancing/pricing"),
    "alb_lcu_hour": (0.008, "per LCU-hour", "aws.amazon.com/elasticloadbalancing/pricing"),
    "public_ipv4_hour": (
        0.005,
        "per public IPv4 address-hour (internet-facing ALB: one per AZ)",
        "aws.amazon.com/vpc/pricing",
    ),
    "nat_hour": (0.045, "per NAT gateway-hour", "aws.amazon.com/vpc/pricing"),
    "nat_gb": (0.045, "per GB processed by a NAT gateway", "aws.amazon.com/vpc/pricing"),
    "endpoint_az_hour": (
        0.01,
        "per interface VPC endpoint per AZ-hour",
        "aws.amazon.com/privatelink/pricing",
    ),
    "endpoint_gb": (0.01, "per GB through interface endpoints", "aws.amazon.com/privatelink/pricing"),
    "secret_month": (0.40, "per secret-month", "aws.amazon.com/secrets-manager/pricing"),
    "secret_api_10k": (0.05, "per 10,000 API calls", "aws.amazon.com/secrets-manager/pricing"),
    "alarm_metric_month": (
        0.10,
        "per standard-resolution alarm metric-month",
        "aws.amazon.com/cloudwatch/pricing",
    ),
    "custom_metric_month": (
        0.30,
        "per custom metric-month (Container Insights)",
        "aws.amazon.com/cloudwatch/pricing",
    ),
    "logs_ingest_gb": (0.50, "per GB of logs ingested", "aws.amazon.com/cloudwatch/pricing"),
    "logs_store_gb_month": (0.03, "per GB-month of logs stored", "aws.amazon.com/cloudwatch/pricing"),
    "hosted_zone_month": (0.50, "per hosted zone-month", "aws.amazon.com/route53/pricing"),
    "kms_key_month": (1.00, "per customer managed KMS key-month", "aws.amazon.com/kms/pricing"),
    "s3_gb_month": (0.023, "per GB-month, S3 Standard", "aws.amazon.com/s3/pricing"),
    "s3_put_1k": (0.005, "per 1,000 PUT/LIST requests", "aws.amazon.com/s3/pricing"),
    "s3_get_1k": (0.0004, "per 1,000 GET requests", "aws.amazon.com/s3/pricing"),
    "ecr_gb_month": (0.10, "per GB-month of images", "aws.amazon.com/ecr/pricing"),
    "lambda_gb_s": (0.0000133334, "per GB-second, arm64", "aws.amazon.com/lambda/pricing"),
    "lambda_request_1m": (0.20, "per 1M requests", "aws.amazon.com/lambda/pricing"),
    "lambda_ephemeral_gb_s": (
        0.0000000309, "per GB-second of /tmp configured above the free 512 MB",
        "aws.amazon.com/lambda/pricing",
    ),
    "sfn_transition_1k": (
        0.025,
        "per 1,000 state transitions (Standard)",
        "aws.amazon.com/step-functions/pricing",
    ),
}

# Quantities no synthesized resource can tell; stated in every report.
ASSUMPTIONS: dict[str, Any] = {
    "alb_lcu": 1.0,  # average LCUs: a few queries/s of ~15 KB bodies stays under one LCU
    "logs_gb_month": 2.0,  # access logs + chroma logs of the service
    "nat_gb_month": 20.0,  # image pulls, snapshot downloads and AWS API traffic through NAT
    "endpoint_gb_month": 20.0,  # same traffic through interface endpoints instead
    "container_insights_metrics": 20,  # cluster + service + task-level metrics of one service
    "snapshot_gb": 0.5,  # archive of the three ontologies (bench: ~0.2-0.4 GB with 384-d vectors)
    "snapshot_versions": 5,  # retained snapshot versions
    "images_gb": 0.6,  # chroma + nginx mirrors + the project image in ECR
    "secret_calls_month": 10_000,  # task starts + Lambda cold starts reading the token
    # on-demand execution (BatchWorkflow defaults in components/batch_workflow.py when not deployed)
    "batch_task_vcpu": 1.0,
    "batch_task_gb": 2.0,
    "batch_task_start_s": 90.0,  # RunTask to ready: image pull + restore (seed spec: 60-90 s cold)
    "batch_rate_labels_per_s": 1000.0,  # embedding+query rate of one query Lambda (issue 5 target)
    "batch_map_concurrency": 10,
    "batch_chunk_size": 500,
    "lambda_query_gb": 3.008,
    "lambda_query_cold_s": 6.0,  # image init + embedder load, once per concurrent container
    # Split and Merge rows/s, measured by bench/workflow_scale.py over a moto S3 server on a 2-core
    # x86_64 machine (1M rows / 100k distinct, top_k 3, load ~5): Split 154-179k, Merge 77-81k.
    # The Lambdas' one vCPU (1,769 MB, arm64) and real S3 are not measured: these are the lower
    # figures measured, not a measurement on AWS.
    "split_rows_per_s": 150_000.0,
    "merge_rows_per_s": 75_000.0,
    "lambda_validate_s": 1.0,
    "sfn_fixed_transitions": 12,
}


def price(key: str) -> float:
    return PRICES[key][0]


def synth(stack: str, root: str | Path | None = None, python: str | None = None) -> list[dict[str, Any]]:
    """The stack's resources as `python -m components.synth` sees them (a subprocess: no pulumi here)."""
    root = Path(root) if root else Path(__file__).resolve().parent.parent
    if not (root / "components" / "synth.py").exists():
        raise RuntimeError(
            f"{root} holds no components/synth.py; run the cost command from the project checkout"
        )
    with tempfile.TemporaryDirectory(prefix="ontosearch-cost-") as scratch:
        out = Path(scratch) / "resources.json"
        done = subprocess.run(
            [python or sys.executable, "-m", "components.synth", "--stack", stack, "--out", str(out)],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0 or not out.exists():
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise RuntimeError(
                f"synth of stack {stack!r} failed (exit {done.returncode}): {' | '.join(tail)}; "
                f"check Pulumi.{stack}.yaml"
            )
        return json.loads(out.read_text())


def _inputs(resources: list[dict[str, Any]], type_suffix: str) -> list[dict[str, Any]]:
    return [r.get("inputs") or {} for r in resources if r["type"].endswith(type_suffix)]


def _number(value: Any, default: float) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _alarm_metrics(alarm: dict[str, Any]) -> int:
    queries = alarm.get("metricQueries")
    if queries:
        return sum(1 for q in queries if q.get("metric") is not None)
    return 1


def always_on(resources: list[dict[str, Any]], a: dict[str, Any]) -> list[dict[str, Any]]:
    """Monthly line items of the always-on service: (item, quantity, unit, unit price, monthly USD)."""
    items: list[dict[str, Any]] = []

    def add(item: str, quantity: float, unit: str, key: str) -> None:
        # Shared: what a batch-only deployment also keeps all month (network, secrets, bucket, images).
        shared = key.startswith(("nat_", "endpoint_", "secret_", "s3_", "ecr_", "hosted_zone", "kms_"))
        items.append(
            {
                "item": item,
                "quantity": quantity,
                "unit": unit,
                "price_key": key,
                "unit_price": price(key),
                "monthly": quantity * price(key),
                "shared": shared,
            }
        )

    services = _inputs(resources, "ecs/service:Service")
    task_defs = [t for t in _inputs(resources, "ecs/taskDefinition:TaskDefinition")]
    scaling = _inputs(resources, "appautoscaling/target:Target")
    for service in services:
        task = task_defs[0] if task_defs else {}
        replicas = _number(service.get("desiredCount"), 1)
        if scaling:
            replicas = max(replicas, _number(scaling[0].get("minCapacity"), replicas))
        vcpu = _number(task.get("cpu"), 1024) / 1024
        gb = _number(task.get("memory"), 2048) / 1024
        storage = _number((task.get("ephemeralStorage") or {}).get("sizeInGib"), 20)
        hours = replicas * HOURS_PER_MONTH
        add(
            f"Fargate ARM64 vCPU ({replicas:.0f} tasks x {vcpu:g} vCPU)",
            hours * vcpu,
            "vCPU-h",
            "fargate_vcpu_hour",
        )
        add(f"Fargate ARM64 memory ({replicas:.0f} tasks x {gb:g} GB)", hours * gb, "GB-h", "fargate_gb_hour")
        if storage > 20:
            add(
                f"Fargate ephemeral storage ({storage:g} GiB, 20 free)",
                hours * (storage - 20),
                "GB-h",
                "fargate_storage_gb_hour",
            )
    for alb in _inputs(resources, "lb/loadBalancer:LoadBalancer"):
        add("Application Load Balancer", HOURS_PER_MONTH, "h", "alb_hour")
        add(
            f"ALB capacity ({a['alb_lcu']:g} LCU average, assumed)",
            HOURS_PER_MONTH * a["alb_lcu"],
            "LCU-h",
            "alb_lcu_hour",
        )
        if not alb.get("internal"):
            ips = len(alb.get("subnets") or alb.get("subnetMappings") or [1, 1])
            add(
                f"public IPv4 of the internet-facing ALB ({ips} AZs)",
                HOURS_PER_MONTH * ips,
                "IP-h",
                "public_ipv4_hour",
            )
    nats = _inputs(resources, "ec2/natGateway:NatGateway")
    if nats:
        add(f"NAT gateways ({len(nats)})", HOURS_PER_MONTH * len(nats), "h", "nat_hour")
        add(f"NAT data ({a['nat_gb_month']:g} GB, assumed)", a["nat_gb_month"], "GB", "nat_gb")
        add(
            f"public IPv4 of the NAT gateways ({len(nats)})",
            HOURS_PER_MONTH * len(nats),
            "IP-h",
            "public_ipv4_hour",
        )
    interface = [
        e
        for e in _inputs(resources, "ec2/vpcEndpoint:VpcEndpoint")
        if e.get("vpcEndpointType") == "Interface"
    ]
    if interface:
        azs = sum(len(e.get("subnetIds") or [1]) for e in interface)
        names = ", ".join(str(e.get("serviceName", "?")).rsplit(".", 1)[-1] for e in interface)
        add(
            f"interface VPC endpoints ({len(interface)}: {names}; {azs} endpoint-AZs)",
            HOURS_PER_MONTH * azs,
            "endpoint-AZ-h",
            "endpoint_az_hour",
        )
        add(
            f"endpoint data ({a['endpoint_gb_month']:g} GB, assumed)",
            a["endpoint_gb_month"],
            "GB",
            "endpoint_gb",
        )
    secrets = _inputs(resources, "secretsmanager/secret:Secret")
    if secrets:
        add(f"Secrets Manager secrets ({len(secrets)})", len(secrets), "secret-month", "secret_month")
        add(
            f"Secrets Manager API calls ({a['secret_calls_month']:,}, assumed)",
            a["secret_calls_month"] / 10_000,
            "10K calls",
            "secret_api_10k",
        )
    alarms = _inputs(resources, "cloudwatch/metricAlarm:MetricAlarm")
    if alarms:
        metrics = sum(_alarm_metrics(alarm) for alarm in alarms)
        add(
            f"CloudWatch alarms ({len(alarms)} alarms, {metrics} metrics)",
            metrics,
            "alarm metric-month",
            "alarm_metric_month",
        )
    clusters = _inputs(resources, "ecs/cluster:Cluster")
    insights = any(
        s.get("name") == "containerInsights" and s.get("value") in ("enabled", "enhanced")
        for c in clusters
        for s in (c.get("settings") or [])
    )
    if insights:
        add(
            f"Container Insights metrics (~{a['container_insights_metrics']}, estimated)",
            a["container_insights_metrics"],
            "metric-month",
            "custom_metric_month",
        )
    if _inputs(resources, "cloudwatch/logGroup:LogGroup"):
        add(
            f"CloudWatch Logs ingested ({a['logs_gb_month']:g} GB, assumed)",
            a["logs_gb_month"],
            "GB",
            "logs_ingest_gb",
        )
        add(
            "CloudWatch Logs stored (retention window)", a["logs_gb_month"], "GB-month", "logs_store_gb_month"
        )
    keys = _inputs(resources, "kms/key:Key")
    if keys:
        add(f"KMS customer managed keys ({len(keys)})", len(keys), "key-month", "kms_key_month")
    zones = _inputs(resources, "route53/zone:Zone")
    if zones:
        add(f"Route 53 hosted zones ({len(zones)})", len(zones), "zone-month", "hosted_zone_month")
    if _inputs(resources, "s3/bucket:Bucket") or _inputs(resources, "s3/bucketV2:BucketV2"):
        gb = a["snapshot_gb"] * a["snapshot_versions"]
        add(
            f"S3 snapshots ({a['snapshot_versions']} versions x {a['snapshot_gb']:g} GB, assumed)",
            gb,
            "GB-month",
            "s3_gb_month",
        )
    repositories = _inputs(resources, "ecr/repository:Repository")
    if repositories:
        add(
            f"ECR images ({len(repositories)} repositories, {a['images_gb']:g} GB, assumed)",
            a["images_gb"],
            "GB-month",
            "ecr_gb_month",
        )
    return items


def lambda_memory_gb(root: str | Path | None = None, name: str = "LAMBDA_MEMORY") -> dict[str, float]:
    """The Lambdas' memory (GB) as components/batch_workflow.py deploys them: its LAMBDA_MEMORY
    literal (or another {step: MB} literal, such as LAMBDA_EPHEMERAL_MB), read from the source
    (importing the component would import Pulumi)."""
    import ast

    path = Path(root or Path(__file__).resolve().parent.parent) / "components" / "batch_workflow.py"
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        targets = getattr(node, "targets", [])
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == name for t in targets):
            return {step: mb / 1024 for step, mb in ast.literal_eval(node.value).items()}
    raise RuntimeError(f"no {name} in {path}")


def child_transitions() -> int:
    """State transitions of one QueryChunks child execution that succeeds at the first attempt:
    the states on its path from StartAt to the end, read from the deployed definition."""
    from ontosearch.workflow import definition as wd
    from ontosearch.workflow.local import local_settings

    processor = wd.build_definition(local_settings())["States"]["QueryChunks"]["ItemProcessor"]
    count, state = 0, processor["StartAt"]
    while state is not None:
        count += 1
        spec = processor["States"][state]
        state = None if spec.get("End") else spec.get("Next")
    return count


def batch_execution(labels: int, a: dict[str, Any], rows: int | None = None) -> list[dict[str, Any]]:
    """Line items of one batch execution of `rows` input rows (default: `labels`) holding `labels`
    distinct labels: Split and Merge work per row, the queries per distinct label."""
    items: list[dict[str, Any]] = []
    rows = labels if rows is None else rows

    def add(item: str, quantity: float, unit: str, key: str, scale: float = 1.0) -> None:
        items.append(
            {
                "item": item,
                "quantity": quantity,
                "unit": unit,
                "price_key": key,
                "unit_price": price(key),
                "cost": quantity * price(key) / scale,
            }
        )

    memory = lambda_memory_gb()
    chunks = max(1, math.ceil(labels / a["batch_chunk_size"]))
    lanes = max(1, min(a["batch_map_concurrency"], chunks))
    chunk_s = a["batch_chunk_size"] / a["batch_rate_labels_per_s"]
    query_s = math.ceil(chunks / lanes) * chunk_s + a["lambda_query_cold_s"]
    split_s = rows / a["split_rows_per_s"]
    merge_s = rows / a["merge_rows_per_s"]
    # the task starts after Split and is stopped after Merge (StopTask): it is billed meanwhile
    # (Fargate bills at least one minute)
    task_s = max(60.0, a["batch_task_start_s"] + query_s + merge_s + 10.0)
    add(
        f"on-demand task vCPU ({a['batch_task_vcpu']:g} vCPU x {task_s:.0f} s: start "
        f"{a['batch_task_start_s']:.0f} s + queries {query_s:.0f} s + merge {merge_s:.0f} s + stop)",
        a["batch_task_vcpu"] * task_s / 3600,
        "vCPU-h",
        "fargate_vcpu_hour",
    )
    add(
        f"on-demand task memory ({a['batch_task_gb']:g} GB x {task_s:.0f} s)",
        a["batch_task_gb"] * task_s / 3600,
        "GB-h",
        "fargate_gb_hour",
    )
    query_gb = memory["query"]
    gb_s = chunks * query_gb * chunk_s + lanes * query_gb * a["lambda_query_cold_s"]
    add(
        f"query Lambdas ({chunks} chunks of {a['batch_chunk_size']} at "
        f"{a['batch_rate_labels_per_s']:g} labels/s, "
        f"{query_gb:g} GB, {lanes} cold starts)",
        gb_s,
        "GB-s",
        "lambda_gb_s",
    )
    add(f"split Lambda ({rows:,} rows at {a['split_rows_per_s']:,.0f} rows/s = {split_s:.0f} s x "
        f"{memory['split']:g} GB)", split_s * memory["split"], "GB-s", "lambda_gb_s")
    add(f"merge Lambda ({rows:,} rows at {a['merge_rows_per_s']:,.0f} rows/s = {merge_s:.0f} s x "
        f"{memory['merge']:g} GB)", merge_s * memory["merge"], "GB-s", "lambda_gb_s")
    add(f"validate Lambda ({a['lambda_validate_s']:g} s x {memory['validate']:g} GB)",
        a["lambda_validate_s"] * memory["validate"], "GB-s", "lambda_gb_s")
    add(f"Lambda requests ({chunks + 4})", (chunks + 4) / 1e6, "1M requests", "lambda_request_1m")
    # /tmp above the free 512 MB is billed for the time each function runs
    tmp_gb = lambda_memory_gb(name="LAMBDA_EPHEMERAL_MB")
    extra_tmp = {step: max(0.0, gb - 0.5) for step, gb in tmp_gb.items()}
    run_s = {"query": chunks * chunk_s + lanes * a["lambda_query_cold_s"], "split": split_s, "merge": merge_s,
             "validate": a["lambda_validate_s"]}
    tmp_gb_s = sum(extra_tmp.get(step, 0.0) * seconds for step, seconds in run_s.items())
    extra = ", ".join(f"{step} {extra_tmp.get(step, 0.0):g} GB" for step in run_s)
    add(f"Lambda /tmp above 512 MB ({extra})", tmp_gb_s, "GB-s", "lambda_ephemeral_gb_s")
    # A Distributed Map bills one state transition for each child execution it starts, and a
    # STANDARD child's own transitions as any execution's
    # (https://docs.aws.amazon.com/step-functions/latest/dg/concepts-transitions.html, "Transitions
    # in Distributed Map state"); retries would add theirs.
    per_chunk = 1 + child_transitions()
    transitions = a["sfn_fixed_transitions"] + per_chunk * chunks
    add(
        f"Step Functions transitions ({transitions}: {a['sfn_fixed_transitions']} + {per_chunk} a chunk)",
        transitions / 1000,
        "1K transitions",
        "sfn_transition_1k",
    )
    add(f"S3 PUTs (input, {chunks} chunks, {chunks} parts, row list, manifest, output)",
        (2 * chunks + 4) / 1000, "1K requests", "s3_put_1k")
    add(
        f"S3 GETs (snapshot, input, {chunks} chunks, {chunks} parts, row list, manifest)",
        (2 * chunks + 4) / 1000,
        "1K requests",
        "s3_get_1k",
    )
    return items


def estimate(
    stack: str,
    labels: int = 100_000,
    assumptions: dict[str, Any] | None = None,
    resources: list[dict[str, Any]] | None = None,
    rows: int | None = None,
) -> dict[str, Any]:
    a = dict(ASSUMPTIONS, **(assumptions or {}))
    resources = synth(stack) if resources is None else resources
    monthly_items = always_on(resources, a)
    execution_items = batch_execution(labels, a, rows)
    monthly = sum(i["monthly"] for i in monthly_items)
    shared = sum(i["monthly"] for i in monthly_items if i["shared"])
    per_execution = sum(i["cost"] for i in execution_items)
    return {
        "stack": stack,
        "labels": labels,
        "rows": labels if rows is None else rows,
        "resources": len(resources),
        "resource_types": dict(Counter(r["type"] for r in resources)),
        "always_on": monthly_items,
        "always_on_monthly": monthly,
        "execution": execution_items,
        "per_execution": per_execution,
        "shared_monthly": shared,
        "service_only_monthly": monthly - shared,
        "break_even_executions_per_month": (monthly - shared) / per_execution if per_execution else None,
        "assumptions": a,
        "prices": {k: {"usd": v[0], "unit": v[1], "source": v[2]} for k, v in PRICES.items()},
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        f"Always-on service, stack {result['stack']} ({result['resources']} synthesized resources), "
        "us-east-1 list prices, 730 h/month:"
    ]
    for item in result["always_on"]:
        lines.append(
            f"  {item['item']:<78} {item['quantity']:>10,.1f} {item['unit']:<18} "
            f"x ${item['unit_price']:<9g} = ${item['monthly']:>8,.2f}"
        )
    lines.append(
        f"  {'TOTAL per month':<78} {'':>10} {'':<18}   {'':<9}   ${result['always_on_monthly']:>8,.2f}"
    )
    lines.append("")
    lines.append(
        f"One batch execution of {result['rows']:,} rows, {result['labels']:,} distinct labels "
        "(on-demand task + Lambdas + Step Functions):"
    )
    for item in result["execution"]:
        lines.append(
            f"  {item['item']:<78} {item['quantity']:>10,.4f} {item['unit']:<18} "
            f"x ${item['unit_price']:<9g} = ${item['cost']:>8,.4f}"
        )
    lines.append(
        f"  {'TOTAL per execution':<78} {'':>10} {'':<18}   {'':<9}   ${result['per_execution']:>8,.4f}"
    )
    lines.append("")
    even = result["break_even_executions_per_month"]
    lines.append(
        f"Of the ${result['always_on_monthly']:,.2f} per month, ${result['shared_monthly']:,.2f} "
        "(network egress, secrets, bucket, images) is paid by a batch-only deployment too; "
        f"${result['service_only_monthly']:,.2f} is the service itself."
    )
    lines.append(
        f"Break-even: {even:,.0f} executions of {result['labels']:,} labels per month cost as much as "
        "the always-on service's own part; below that the on-demand workflow is cheaper."
    )
    return "\n".join(lines) + "\n"


def price_table() -> str:
    lines = ["| price | USD | unit | source |", "|---|---:|---|---|"]
    for key, (usd, unit, source) in PRICES.items():
        lines.append(f"| {key} | {usd:g} | {unit} | {source} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ontosearch cost",
        description="Monthly cost of a stack's always-on service, the cost of one batch execution of "
        "N labels, "
        "and the break-even number of executions per month, from the synthesized stack and list "
        "prices (us-east-1).",
    )
    parser.add_argument(
        "--stack", default="prod", help="stack name: prices Pulumi.<stack>.yaml (default prod)"
    )
    parser.add_argument(
        "--labels", type=int, default=100_000, help="distinct labels per batch execution (default 100,000)"
    )
    parser.add_argument(
        "--rows", type=int, help="input rows per batch execution (default: as many as --labels)"
    )
    parser.add_argument(
        "--rate",
        type=float,
        help=f"labels/s of one query Lambda (default {ASSUMPTIONS['batch_rate_labels_per_s']:g})",
    )
    parser.add_argument("--json", action="store_true", help="print the full estimate as JSON")
    parser.add_argument("--prices", action="store_true", help="print the price table with sources and exit")
    args = parser.parse_args(argv)
    if args.prices:
        print(price_table())
        return 0
    if args.labels < 1:
        print("cost: --labels must be at least 1", file=sys.stderr)
        return 2
    if args.rows is not None and args.rows < args.labels:
        print("cost: --rows must be at least --labels (each distinct label is at least one row)",
              file=sys.stderr)
        return 2
    overrides = {"batch_rate_labels_per_s": args.rate} if args.rate else {}
    if args.rate is not None and args.rate <= 0:
        print("cost: --rate must be a positive number of labels per second", file=sys.stderr)
        return 2
    try:
        result = estimate(args.stack, args.labels, overrides, rows=args.rows)
    except RuntimeError as exc:
        print(f"cost: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else render(result), end="" if not args.json else "\n")
    return 0
