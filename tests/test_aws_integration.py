"""Opt-in real-AWS integration test: deploy a throwaway stack, annotate through it, destroy it.

The check to run before a first production deploy: everything else in tests/ runs without AWS, and
mocks, botocore shapes and the local state machine do not know every rule AWS enforces. This test
drives the real program with Pulumi's Automation API (`pulumi.automation`, same pinned `pulumi`):

1. creates a stack named `it-<UTC time>-<6 hex>` (tests/throwaway_stack.py: valid as a Pulumi stack
   name, in the task definition families, the KMS alias, a DNS label and the execution name), with
   `Pulumi.dev.yaml`'s config plus `ontosearch:batchWorkflow: true`, `ontosearch:deletionProtection:
   false` and the tags `stack=<name>`, `purpose=integration-test`; runs `pulumi up`;
2. meanwhile builds a CL snapshot (`python -m ontosearch build-snapshot --ontologies cl`) and, once up,
   publishes it into the stack's bucket (`python -m ontosearch publish-snapshot DIR --bucket B`), the
   README's deploy steps with no manual step after them;
3. waits (at most 20 min) until the service is healthy, read through the AWS APIs: the ECS deployment
   COMPLETED, every desired task running, as many targets passing the ALB's heartbeat check;
4. annotates examples/cell_types.txt (40 labels, CL, top 3) with local `annotate --snapshot` on that
   snapshot, through the service URL (`annotate` with CHROMA_URL and CHROMA_TOKEN_SECRET_ARN, i.e.
   `ontosearch.connect` with the token from the stack's Secrets Manager output), and through one batch
   execution (upload to inputs/, start the state machine, wait at most 30 min, read
   results/<execution>/annotations.csv); both must agree with the local result under the rule of
   tests/result_comparison.py (same rows, statuses and term ids per rank; scores within rounding);
5. always tears down, in this order: stop the execution if still running, stop batch tasks, `pulumi
   destroy` (up to 3 attempts), `pulumi stack rm` (only after a successful destroy, which also deletes
   the `Pulumi.<stack>.yaml` written next to the program), local files. An incomplete teardown fails
   the test with the commands to finish it by hand.

Where the service URL is reached from (the network position). dev has no `domain`, so the ALB is
internal: plain HTTP on port 80, its security group admitting only the VPC's own CIDR
(components/chroma_service.py), and the stack creates a new VPC, which nothing outside AWS can reach.
So the service URL is queried only when the stack is deployed where this machine can reach it:
- ONTOSEARCH_AWS_INTEGRATION_HOSTED_ZONE=example.com (a public Route53 zone of the account): the stack
  gets `domain: <stack>.example.com`, i.e. a public HTTPS ALB with an ACM certificate (prod's shape);
  reachable from anywhere;
- ONTOSEARCH_AWS_INTEGRATION_VPC_ID + ONTOSEARCH_AWS_INTEGRATION_SUBNET_IDS (two private subnets): the
  stack goes into that existing VPC (with dev's `egress: nat` its private subnets must already route to
  a NAT), and this machine must reach the ALB from an address inside the VPC's CIDR: run the test on a
  host in that VPC (a CI runner on EC2), or over a VPN whose traffic enters the VPC from inside its CIDR;
- neither: `test_the_service_url_...` is SKIPPED with that reason. The service's health (step 3) and the
  batch execution (whose Lambdas run inside the VPC) are checked either way.

Running it (needs the Pulumi CLI 3.x logged in to a backend, AWS credentials of an admin-like deployer,
Docker with buildx for linux/arm64 images, as for `pulumi up`; README, Deploying):

    ONTOSEARCH_AWS_INTEGRATION=1 .venv/bin/python -m pytest tests/test_aws_integration.py -ra
    # optional: ONTOSEARCH_AWS_INTEGRATION_REGION=eu-west-1 (default: dev's aws:region),
    #   ONTOSEARCH_AWS_INTEGRATION_HOSTED_ZONE / _VPC_ID / _SUBNET_IDS (above),
    #   ONTOSEARCH_AWS_INTEGRATION_CONFIG='{"ontosearch:mapConcurrency": 4}' (more config keys),
    #   ONTOSEARCH_AWS_INTEGRATION_SNAPSHOT=DIR (a CL snapshot already built, skips the build)
    # a file:// or s3:// backend also needs PULUMI_CONFIG_PASSPHRASE (may be empty)

Without ONTOSEARCH_AWS_INTEGRATION=1, the `pulumi` CLI on PATH or AWS credentials found by boto3's
credential chain, both tests are skipped and `-ra` names each missing one. Progress lines go to the
terminal; the Pulumi output and every command's output to a log file whose path is printed first.
A run takes about 45-90 minutes (`pulumi up` builds and pushes the images, then destroy waits for
the Lambdas' network interfaces) and costs roughly $0.20-0.50: dev's resources run for about an hour
at $98.11 a month (`python -m ontosearch cost --stack dev`: $0.13 an hour, of which the NAT gateway
and the ALB are most), plus the image pulls through the NAT gateway, ECR storage and the KMS key and
secrets prorated, and one batch execution of 40 labels (about $0.002). A stack left behind by an
interrupted run costs about $3.20 a day: the failure message and `pulumi stack ls` name it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import throwaway_stack as t
from result_comparison import LabelResult, compare_results, parse_results

from components.synth import load_stack_config, project_name
from ontosearch import constants as c

EXAMPLE = t.ROOT / "examples" / "cell_types.txt"
ONTOLOGY = "cl"
TOP_K = 3
SHOWN_DIFFERENCES = 20

MISSING = t.missing_prerequisites(os.environ)
try:
    SETTINGS, SETTINGS_ERROR = t.Settings.from_env(os.environ), None
except t.SettingsError as exc:
    SETTINGS, SETTINGS_ERROR = t.Settings(), str(exc)
SERVICE_SKIP = t.service_skip_reason(SETTINGS)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(MISSING), reason=t.skip_reason(MISSING)),
    pytest.mark.timeout(4 * 60 * 60),  # a --timeout meant for unit tests must not cut an `up` short
]


class Log:
    """Progress lines to the terminal and a log file; bulk output (Pulumi, commands) to the file only."""

    def __init__(self, path: Path, pytestconfig: pytest.Config) -> None:
        self.path = path
        self._file = path.open("a", encoding="utf-8", buffering=1)
        self._terminal = pytestconfig.pluginmanager.get_plugin("terminalreporter")
        self._capture = pytestconfig.pluginmanager.get_plugin("capturemanager")

    def line(self, message: str) -> None:
        """Also shown live: a run takes the better part of an hour."""
        text = f"[aws-integration {time.strftime('%H:%M:%S')}] {message}"
        self._file.write(text + "\n")
        if self._terminal is None or self._capture is None:
            print(text, file=sys.stderr, flush=True)
            return
        with self._capture.global_and_fixture_disabled():
            self._terminal.write_line(text)

    def raw(self, text: str) -> None:
        self._file.write(text if text.endswith("\n") else text + "\n")

    def close(self) -> None:
        self._file.close()


def command_env(region: str, **extra: str) -> dict[str, str]:
    """The environment of a project command: the stack's region, no Chroma settings of the caller's."""
    env = {k: v for k, v in os.environ.items()
           if k not in {c.ENV_URL, c.ENV_TOKEN, c.ENV_ADMIN_TOKEN, c.ENV_TOKEN_SECRET_ARN, c.ENV_PATH}}
    env.update(AWS_REGION=region, AWS_DEFAULT_REGION=region, **extra)
    return env


def run_command(log: Log, args: list[str], env: Mapping[str, str], what: str) -> None:
    log.line(f"{what}: python -m ontosearch {' '.join(args)}")
    done = subprocess.run([sys.executable, "-m", "ontosearch", *args], cwd=t.ROOT, env=dict(env),
                          capture_output=True, text=True, timeout=t.COMMAND_TIMEOUT)
    log.raw(f"$ {' '.join(args)}\n{done.stdout}{done.stderr}")
    if done.returncode != 0:
        pytest.fail(f"{what} exited {done.returncode}: {(done.stderr or done.stdout)[-3000:]}")


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Deployment:
    stack: str
    outputs: t.StackOutputs
    session: Any  # boto3.Session in the stack's region
    snapshot_dir: Path
    version: str
    work: Path
    log: Log
    teardown: t.Teardown


@pytest.fixture(scope="module")
def log(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Log]:
    path = tmp_path_factory.mktemp("aws-integration-log") / "aws-integration.log"
    log = Log(path, pytestconfig)
    log.line(f"log file: {path}")
    yield log
    log.close()


def _service_probe(session: Any, outputs: t.StackOutputs) -> Any:
    ecs, elb = session.client("ecs"), session.client("elbv2")

    def probe() -> t.Poll:
        services = ecs.describe_services(cluster=outputs.cluster_arn, services=[outputs.service_name])
        service = (services.get("services") or [{}])[0]
        targets: list[dict] = []
        for balancer in service.get("loadBalancers") or []:
            targets += elb.describe_target_health(
                TargetGroupArn=balancer["targetGroupArn"])["TargetHealthDescriptions"]
        return t.service_health(service, targets)

    return probe


@pytest.fixture(scope="module")
def deployment(log: Log, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    if SETTINGS_ERROR:
        pytest.fail(SETTINGS_ERROR)
    problem = t.docker_problem()
    if problem:
        pytest.fail(problem)
    import boto3
    from pulumi import automation as auto

    from ontosearch.snapshot_store import SnapshotStore, read_pointer

    name = t.new_stack_name(project_name())
    config = t.throwaway_config(load_stack_config("dev"), name, SETTINGS)
    work = tmp_path_factory.mktemp("aws-integration")
    teardown = t.Teardown()
    region = str(config["aws:region"])
    log.line(f"throwaway stack {name} in {region}; teardown runs whatever happens")
    try:
        workspace = auto.LocalWorkspace(work_dir=str(t.ROOT))
        problem = t.backend_problem(workspace.who_am_i().url or "", os.environ)
        if problem:
            pytest.fail(problem)

        if SETTINGS.snapshot_dir is not None:
            snapshot_dir, build = SETTINGS.snapshot_dir, None
        else:  # built while `pulumi up` runs
            snapshot_dir = work / "snapshot"
            build_log = (work / "build-snapshot.log").open("w", encoding="utf-8")
            build = subprocess.Popen(
                [sys.executable, "-m", "ontosearch", "build-snapshot", "--ontologies", ONTOLOGY,
                 "--out", str(snapshot_dir), "--no-progress"],
                cwd=t.ROOT, env=command_env(region), stdout=build_log,
                stderr=subprocess.STDOUT)
            teardown.add(t.Phase.LOCAL, "stop the snapshot build", lambda: (stop_process(build),
                                                                            build_log.close()))
            log.line(f"building the CL snapshot in {snapshot_dir} (log {build_log.name})")

        stack = auto.create_stack(name, work_dir=str(t.ROOT))
        teardown.add(t.Phase.DESTROY, "destroy", lambda: t.retry(
            lambda: stack.destroy(on_output=log.raw, color="never"), attempts=t.DESTROY_ATTEMPTS,
            pause=t.DESTROY_PAUSE_SECONDS, what="pulumi destroy", log=log.line))
        teardown.add(t.Phase.FORGET, "remove the stack", lambda: workspace.remove_stack(name),
                     requires="destroy")
        stack.set_all_config({k: auto.ConfigValue(v) for k, v in t.path_config(config).items()}, path=True)

        log.line("pulumi up (builds and pushes the images; typically 15-40 minutes)")
        stack.up(on_output=log.raw, color="never")
        outputs = t.parse_outputs(stack.outputs())
        session = boto3.Session(region_name=outputs.region)
        ecs = session.client("ecs")
        teardown.add(t.Phase.STOP_WORK, "stop batch tasks", lambda: t.stop_batch_tasks(
            ecs, outputs.cluster_arn, outputs.batch_task_family, "integration test teardown"))
        log.line(f"up: service {outputs.url}, bucket {outputs.bucket}")

        if build is not None:
            try:
                code = build.wait(timeout=t.SNAPSHOT_BUILD_TIMEOUT)
            except subprocess.TimeoutExpired:
                pytest.fail(f"build-snapshot did not finish in {t.SNAPSHOT_BUILD_TIMEOUT} s; "
                            f"see {build_log.name}")
            if code != 0:
                pytest.fail(f"build-snapshot exited {code}: {Path(build_log.name).read_text()[-3000:]}")
        run_command(log, ["publish-snapshot", str(snapshot_dir), "--bucket", outputs.bucket],
                    command_env(outputs.region), "publish the snapshot")
        pointer = read_pointer(session.client("s3"), SnapshotStore(outputs.bucket))
        assert pointer is not None, f"publish-snapshot left no {c.POINTER_KEY} in {outputs.bucket}"
        log.line(f"published snapshot version {pointer.version}")

        t.wait_for(_service_probe(session, outputs), "service", t.SERVICE_HEALTHY_TIMEOUT, on_change=log.line)
        yield Deployment(name, outputs, session, snapshot_dir, pointer.version, work, log, teardown)
    finally:
        report = teardown.run(log.line)
        if report.failed:
            raise t.TeardownError(f"teardown incomplete: {report.summary()}; {t.manual_cleanup(name)}")
        log.line(f"stack {name} destroyed and removed")


@pytest.fixture(scope="module")
def local_results(deployment: Deployment) -> list[LabelResult]:
    """What `annotate` on this machine says about the example, with the very snapshot the stack serves."""
    out = deployment.work / "local.csv"
    run_command(deployment.log, ["annotate", "--input", str(EXAMPLE), "--ontology", ONTOLOGY,
                                 "--top-k", str(TOP_K), "--snapshot", str(deployment.snapshot_dir),
                                 "--output", str(out), "--quiet"],
                command_env(deployment.outputs.region), "local annotate")
    results = parse_results(out.read_text(encoding="utf-8"), "local annotate")
    assert results, "local annotate wrote no rows"
    return results


def assert_agree(local: list[LabelResult], text: str, name: str) -> None:
    differences = compare_results(local, parse_results(text, name), "local annotate", name)
    shown = "\n".join(differences[:SHOWN_DIFFERENCES])
    hidden = len(differences) - SHOWN_DIFFERENCES
    more = f"\n... and {hidden} more" if hidden > 0 else ""
    assert not differences, f"{name} disagrees with local annotate:\n{shown}{more}"


# When the test cannot run at all, the module's reason (the missing prerequisites) is the one shown.
@pytest.mark.skipif(SERVICE_SKIP is not None and not MISSING, reason=SERVICE_SKIP or "")
def test_the_service_url_annotates_the_example_like_local_annotate(deployment: Deployment,
                                                                   local_results: list[LabelResult]):
    from ontosearch.connect import ConnectError, connect, token_from_secret
    from ontosearch.matcher import find_collection

    outputs = deployment.outputs
    try:
        client = connect(url=outputs.url, token=token_from_secret(outputs.token_secret_arn),
                         wait=t.SERVICE_URL_TIMEOUT)
    except ConnectError as exc:
        pytest.fail(f"{exc}. This machine must reach {outputs.url}: a public domain from "
                    f"{t.ENV_HOSTED_ZONE}, or a host inside (or connected into) the VPC of {t.ENV_VPC_ID}")
    assert find_collection(client, ONTOLOGY).count() > 0

    out = deployment.work / "service.csv"
    run_command(deployment.log, ["annotate", "--input", str(EXAMPLE), "--ontology", ONTOLOGY,
                                 "--top-k", str(TOP_K), "--output", str(out), "--quiet"],
                command_env(outputs.region, **{c.ENV_URL: outputs.url,
                                               c.ENV_TOKEN_SECRET_ARN: outputs.token_secret_arn}),
                "annotate through the service URL")
    assert_agree(local_results, out.read_text(encoding="utf-8"), "the service")


def test_one_batch_execution_annotates_the_example_like_local_annotate(deployment: Deployment,
                                                                      local_results: list[LabelResult]):
    outputs, log = deployment.outputs, deployment.log
    s3, sfn = deployment.session.client("s3"), deployment.session.client("stepfunctions")
    execution = t.execution_name(deployment.stack)
    key = f"{c.WORKFLOW_INPUT_PREFIX}{execution}/{EXAMPLE.name}"
    s3.upload_file(str(EXAMPLE), outputs.bucket, key)
    request = t.execution_input(outputs.bucket, key, ONTOLOGY, TOP_K)
    arn = sfn.start_execution(stateMachineArn=outputs.state_machine_arn, name=execution,
                              input=json.dumps(request))["executionArn"]
    deployment.teardown.add(t.Phase.STOP_WORK, "stop the batch execution",
                            lambda: t.stop_execution_if_running(sfn, arn))
    log.line(f"started execution {execution}")

    output = t.wait_for(lambda: t.execution_poll(sfn.describe_execution(executionArn=arn)),
                        f"execution {execution}", t.EXECUTION_TIMEOUT, on_change=log.line)
    log.line(f"execution output: {json.dumps(output)}")
    results = s3.get_object(Bucket=outputs.bucket, Key=t.results_key(output, outputs.bucket, execution))
    assert output.get("snapshot") == deployment.version, "the execution did not use the published snapshot"
    assert output.get("rows") == len(local_results)
    assert_agree(local_results, results["Body"].read().decode("utf-8"), "the batch execution")
