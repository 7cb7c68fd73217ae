"""The throwaway stack of the opt-in real-AWS integration test (tests/test_aws_integration.py).

Everything the test decides lives here, pure or with its AWS and Pulumi collaborators passed in,
so tests/test_throwaway_stack.py checks it without AWS: whether the test may run at all, the stack's
name (within every limit the name ends up under), its config (dev's, with the batch workflow on and
nothing that outlives a destroy), what its outputs mean, the wait loops and their timeouts, what
counts as a healthy service and a finished execution, and the order of the teardown.
"""

from __future__ import annotations

import copy
import json
import re
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from components.config import NAMESPACE, ConfigError, StackConfig  # noqa: E402

# --- opt-in and prerequisites ------------------------------------------------------------------------

OPT_IN = "ONTOSEARCH_AWS_INTEGRATION"
ENV_REGION = "ONTOSEARCH_AWS_INTEGRATION_REGION"
ENV_VPC_ID = "ONTOSEARCH_AWS_INTEGRATION_VPC_ID"
ENV_SUBNET_IDS = "ONTOSEARCH_AWS_INTEGRATION_SUBNET_IDS"
ENV_HOSTED_ZONE = "ONTOSEARCH_AWS_INTEGRATION_HOSTED_ZONE"
ENV_CONFIG = "ONTOSEARCH_AWS_INTEGRATION_CONFIG"
ENV_SNAPSHOT = "ONTOSEARCH_AWS_INTEGRATION_SNAPSHOT"
_TRUE = {"1", "true", "yes"}


def aws_credentials_found() -> bool:
    """Whether boto3's credential chain finds credentials (env, profile, SSO, container, instance)."""
    import boto3

    return boto3.Session().get_credentials() is not None


def missing_prerequisites(env: Mapping[str, str], which: Callable[[str], str | None] = shutil.which,
                          credentials: Callable[[], bool] = aws_credentials_found) -> list[str]:
    """What keeps the test from running here, each as the reason the skip reports; [] = it runs."""
    missing = []
    if env.get(OPT_IN, "").strip().lower() not in _TRUE:
        missing.append(f"{OPT_IN}=1 is not set (the opt-in: the test deploys a real stack and costs money)")
    if which("pulumi") is None:
        missing.append("the Pulumi CLI (`pulumi`) is not on PATH")
    if not credentials():
        missing.append("no AWS credentials (boto3's credential chain found none)")
    return missing


def skip_reason(missing: Sequence[str]) -> str:
    return "real-AWS integration test not run: " + "; ".join(missing)


def docker_problem(which: Callable[[str], str | None] = shutil.which) -> str | None:
    """`pulumi up` builds the linux/arm64 images with Docker; without it the up fails after minutes."""
    if which("docker") is None:
        return ("`docker` is not on PATH: `pulumi up` builds the stack's linux/arm64 images with Docker "
                "buildx (README, Deploying); install Docker, or run the test where it is")
    return None


def backend_problem(backend_url: str, env: Mapping[str, str]) -> str | None:
    """A self-managed backend (file://, s3://, ...) encrypts stack secrets with a passphrase it must get."""
    if backend_url.startswith(("https://", "http://")):
        return None  # Pulumi Cloud (or a self-hosted service): its own secrets provider
    if "PULUMI_CONFIG_PASSPHRASE" in env or "PULUMI_CONFIG_PASSPHRASE_FILE" in env:
        return None
    return (f"the Pulumi backend {backend_url} keeps stack secrets encrypted with a passphrase: set "
            "PULUMI_CONFIG_PASSPHRASE (an empty value is allowed) or PULUMI_CONFIG_PASSPHRASE_FILE")


# --- settings from the environment ---------------------------------------------------------------------

class SettingsError(ValueError):
    """An ONTOSEARCH_AWS_INTEGRATION_* variable is wrong; the message names it and the fix."""


@dataclass(frozen=True)
class Settings:
    """Where and how the throwaway stack is deployed, beyond what it copies from dev."""

    region: str | None = None
    vpc_id: str | None = None
    subnet_ids: tuple[str, ...] = ()
    hosted_zone: str | None = None
    extra_config: Mapping[str, Any] = field(default_factory=dict)
    snapshot_dir: Path | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        region = env.get(ENV_REGION, "").strip() or None
        vpc_id = env.get(ENV_VPC_ID, "").strip() or None
        subnets = tuple(s.strip() for s in env.get(ENV_SUBNET_IDS, "").split(",") if s.strip())
        if (vpc_id is None) != (not subnets):
            raise SettingsError(f"{ENV_VPC_ID} and {ENV_SUBNET_IDS} go together: the VPC this machine can "
                                f"reach and at least two of its private subnets (comma-separated)")
        zone = env.get(ENV_HOSTED_ZONE, "").strip().lower().rstrip(".") or None
        raw = env.get(ENV_CONFIG, "").strip()
        extra: dict[str, Any] = {}
        if raw:
            try:
                extra = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise SettingsError(f"{ENV_CONFIG} is not JSON ({exc}); give an object such as "
                                    '{"ontosearch:cpu": 2048}') from None
            if not isinstance(extra, dict) or not all(isinstance(k, str) and ":" in k for k in extra):
                raise SettingsError(f"{ENV_CONFIG} must be a JSON object of namespaced config keys, "
                                    'e.g. {"ontosearch:mapConcurrency": 4}')
        snapshot = env.get(ENV_SNAPSHOT, "").strip() or None
        snapshot_dir = Path(snapshot).expanduser() if snapshot else None
        if snapshot_dir is not None and not (snapshot_dir / "manifest.json").is_file():
            raise SettingsError(f"{ENV_SNAPSHOT}={snapshot} holds no manifest.json; give a directory made by "
                                "`python -m ontosearch build-snapshot --ontologies cl`, or unset it")
        return cls(region, vpc_id, subnets, zone, extra, snapshot_dir)


def service_skip_reason(settings: Settings) -> str | None:
    """Why the service URL cannot be queried from here, or None when it can.

    Without a domain the ALB is internal (HTTP, admitting only the VPC's CIDR) and the stack makes a
    new VPC, which no machine outside it reaches. A hosted zone makes the ALB public HTTPS; an
    existing VPC puts it where this machine is (or reaches by VPN or peering from inside the CIDR).
    """
    if settings.hosted_zone or settings.extra_config.get(f"{NAMESPACE}:domain"):
        return None
    if settings.vpc_id or settings.extra_config.get(f"{NAMESPACE}:vpcId"):
        return None
    return (f"service URL not queried: the throwaway stack's ALB is internal (dev has no domain) in a new "
            f"VPC that this machine cannot reach; set {ENV_HOSTED_ZONE} (public HTTPS on <stack>.<zone>) or "
            f"{ENV_VPC_ID} + {ENV_SUBNET_IDS} (a VPC this machine is inside) to query it. The batch "
            f"execution and the service's health (through the AWS APIs) are checked either way")


# --- the stack's name ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class NameRule:
    """A name the stack name ends up in, and the rule for it."""

    what: str
    source: str
    pattern: re.Pattern[str]
    max_length: int
    derive: Callable[[str, str], str]  # (project, stack) -> the name as it is checked


NAME_RULES: tuple[NameRule, ...] = (
    # pulumi/pulumi pkg/backend/diy/store.go ParseReference: "stack names are limited to 100
    # characters and may only contain alphanumeric, hyphens, underscores, or periods".
    NameRule("Pulumi stack name", "pulumi/pulumi pkg/backend/diy/store.go",
             re.compile(r"[A-Za-z0-9_.-]+"), 100, lambda project, stack: stack),
    # https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_RegisterTaskDefinition.html
    # (family: up to 255 letters, numbers, underscores and hyphens); components/chroma_service.py.
    NameRule("task definition family of the service",
             "https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_RegisterTaskDefinition.html",
             re.compile(r"[A-Za-z0-9_-]+"), 255, lambda project, stack: f"{project}-{stack}-chroma"),
    # Same rule; components/batch_workflow.py.
    NameRule("task definition family of the batch task",
             "https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_RegisterTaskDefinition.html",
             re.compile(r"[A-Za-z0-9_-]+"), 255, lambda project, stack: f"{project}-{stack}-batch"),
    # https://docs.aws.amazon.com/kms/latest/developerguide/alias-create.html (1-256 characters:
    # alphanumerics, /, _ and -); components/encryption.py.
    NameRule("KMS alias", "https://docs.aws.amazon.com/kms/latest/developerguide/alias-create.html",
             re.compile(r"alias/[A-Za-z0-9/_-]+"), 256, lambda project, stack: f"alias/{project}-{stack}"),
    # RFC 1035 section 2.3.1 (a label: letters, digits, inner hyphens, at most 63 octets), lower case
    # as components.config normalises `domain`: the public-HTTPS variant uses <stack>.<hosted zone>.
    NameRule("DNS label of <stack>.<hosted zone>", "https://www.rfc-editor.org/rfc/rfc1035#section-2.3.1",
             re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?"), 63, lambda project, stack: stack),
    # ontosearch.workflow.steps refuses execution names outside [A-Za-z0-9_-]{1,80} (they name S3
    # folders), inside https://docs.aws.amazon.com/step-functions/latest/apireference/API_StartExecution.html
    # (name: 1-80 characters).
    NameRule("Step Functions execution name",
             "https://docs.aws.amazon.com/step-functions/latest/apireference/API_StartExecution.html",
             re.compile(r"[A-Za-z0-9_-]+"), 80, lambda project, stack: execution_name(stack)),
)

STACK_PREFIX = "it"


def execution_name(stack: str) -> str:
    return f"{stack}-cells"


def stack_name_problems(stack: str, project: str) -> list[str]:
    """Every rule of NAME_RULES that `stack` breaks, as messages; [] = usable everywhere."""
    problems = []
    for rule in NAME_RULES:
        name = rule.derive(project, stack)
        if len(name) > rule.max_length:
            problems.append(f"{rule.what} {name!r} is {len(name)} characters, over {rule.max_length} "
                            f"({rule.source})")
        if not rule.pattern.fullmatch(name):
            problems.append(f"{rule.what} {name!r} has characters outside {rule.pattern.pattern} "
                            f"({rule.source})")
    return problems


def new_stack_name(project: str, prefix: str = STACK_PREFIX, now: datetime | None = None,
                   token: str | None = None) -> str:
    """`it-20260601-101500-1a2b3c`: sorts by start time, unique per run, valid under every NAME_RULE."""
    now = now or datetime.now(UTC)
    name = f"{prefix}-{now:%Y%m%d-%H%M%S}-{token or secrets.token_hex(3)}"
    problems = stack_name_problems(name, project)
    if problems:
        raise ValueError(f"stack name {name!r} is not usable: " + "; ".join(problems))
    return name


# --- the stack's config ---------------------------------------------------------------------------------

BATCH_WORKFLOW_KEY = f"{NAMESPACE}:batchWorkflow"
DELETION_PROTECTION_KEY = f"{NAMESPACE}:deletionProtection"
# What a throwaway stack must have, whatever dev or the overrides say: the batch workflow to test,
# and no deletion protection, or `destroy` would leave a protected bucket, key and ALB behind.
THROWAWAY_SETTINGS: Mapping[str, Any] = {BATCH_WORKFLOW_KEY: True, DELETION_PROTECTION_KEY: False}
TEST_TAG = ("purpose", "integration-test")


def _secret_keys(values: Mapping[str, Any], prefix: str = "") -> list[str]:
    found = []
    for key, value in values.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, Mapping):
            if set(value) == {"secure"}:
                found.append(path)
            else:
                found.extend(_secret_keys(value, path))
    return found


def throwaway_config(dev: Mapping[str, Any], stack: str, settings: Settings) -> dict[str, Any]:
    """The throwaway stack's config, as a stack file holds it ({"ns:key": native value}).

    dev's config, then the settings (region, VPC, public domain, extra keys), then THROWAWAY_SETTINGS;
    the stack tag names the throwaway stack. Validated like `pulumi up` would, before anything exists.
    """
    secret = _secret_keys(dev)
    if secret:
        raise SettingsError(f"Pulumi.dev.yaml holds secret config ({', '.join(secret)}), encrypted for the "
                            f"dev stack only; give those keys to the throwaway stack through {ENV_CONFIG}")
    config = copy.deepcopy(dict(dev))
    if settings.region:
        config["aws:region"] = settings.region
    if settings.vpc_id:
        config[f"{NAMESPACE}:vpcId"] = settings.vpc_id
        config[f"{NAMESPACE}:privateSubnetIds"] = list(settings.subnet_ids)
    if settings.hosted_zone:
        config[f"{NAMESPACE}:domain"] = f"{stack}.{settings.hosted_zone}"
        config[f"{NAMESPACE}:hostedZone"] = settings.hosted_zone
    for key, value in settings.extra_config.items():
        if key in THROWAWAY_SETTINGS and value != THROWAWAY_SETTINGS[key]:
            raise SettingsError(f"{ENV_CONFIG} sets {key}={value!r}, but the throwaway stack needs "
                                f"{THROWAWAY_SETTINGS[key]!r} (it tests the batch workflow and must be "
                                f"destroyable); drop the key")
        config[key] = copy.deepcopy(value)
    config.update(THROWAWAY_SETTINGS)
    if not config.get("aws:region"):
        raise SettingsError(f"Pulumi.dev.yaml sets no aws:region; set {ENV_REGION}")
    default_tags = config.get("aws:defaultTags") or {}
    tags = dict(default_tags.get("tags") or {})
    tags["stack"] = stack
    tags[TEST_TAG[0]] = TEST_TAG[1]
    config["aws:defaultTags"] = {**default_tags, "tags": tags}

    ours = {key.split(":", 1)[1]: value for key, value in config.items() if key.startswith(f"{NAMESPACE}:")}
    try:
        parsed = StackConfig.from_mapping(ours)
        from components.batch_workflow import args_from_config

        args_from_config(parsed.extra)
    except ConfigError as exc:
        raise SettingsError(f"the throwaway stack's config is not valid: {exc}") from None
    if not parsed.batch_workflow or parsed.deletion_protection:
        raise SettingsError(f"{BATCH_WORKFLOW_KEY}/{DELETION_PROTECTION_KEY} no longer switch the batch "
                            "workflow and deletion protection (components/config.py); "
                            "update THROWAWAY_SETTINGS")
    return config


_PROPERTY_NAME = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")


def _segment(key: str) -> str:
    # pulumi/pulumi sdk/go/common/resource/properties_path.go: a bare property name is
    # [a-zA-Z_$][a-zA-Z0-9_$]*; any other key is written ["..."] with \" for a quote.
    if _PROPERTY_NAME.fullmatch(key):
        return f".{key}"
    escaped = key.replace('"', '\\"')
    return f'["{escaped}"]'


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def path_config(config: Mapping[str, Any]) -> dict[str, str]:
    """The config as `pulumi config set --path` keys and string values (Stack.set_all_config(path=True))."""
    out: dict[str, str] = {}

    def walk(path: str, value: Any) -> None:
        if isinstance(value, Mapping):
            if not value:
                raise SettingsError(f"config {path} is an empty object, which a config path cannot express")
            for key, item in value.items():
                walk(path + _segment(str(key)), item)
        elif isinstance(value, (list, tuple)):
            if not value:
                raise SettingsError(f"config {path} is an empty list, which a config path cannot express")
            for index, item in enumerate(value):
                walk(f"{path}[{index}]", item)
        elif value is not None:
            out[path] = _text(value)

    for key, value in config.items():
        namespace, sep, name = key.partition(":")
        if not sep or not _PROPERTY_NAME.fullmatch(name):
            raise SettingsError(f"config key {key!r} is not namespace:name")
        walk(key, value)
    return out


# --- outputs ------------------------------------------------------------------------------------------

REQUIRED_OUTPUTS = ("url", "bucket_name", "token_secret_arn", "cluster_arn", "service_name",
                    "batch_state_machine_arn", "batch_task_definition_arn")


class OutputsError(ValueError):
    """The stack's outputs are not those of a stack with the batch workflow."""


def arn_region(arn: str) -> str:
    parts = arn.split(":")
    if len(parts) < 6 or parts[0] != "arn" or not parts[3]:
        raise OutputsError(f"{arn!r} is not a regional ARN")
    return parts[3]


def task_family(task_definition_arn: str) -> str:
    """`arn:aws:ecs:r:a:task-definition/FAMILY:REV` -> FAMILY."""
    resource = task_definition_arn.split(":", 5)[-1]
    kind, _, rest = resource.partition("/")
    family, _, revision = rest.rpartition(":")
    if kind != "task-definition" or not family or not revision.isdigit():
        raise OutputsError(f"{task_definition_arn!r} is not a task definition ARN "
                           "(task-definition/FAMILY:REV)")
    return family


@dataclass(frozen=True)
class StackOutputs:
    url: str
    bucket: str
    token_secret_arn: str
    cluster_arn: str
    service_name: str
    state_machine_arn: str
    batch_task_definition_arn: str

    @property
    def region(self) -> str:
        return arn_region(self.state_machine_arn)

    @property
    def batch_task_family(self) -> str:
        return task_family(self.batch_task_definition_arn)


def parse_outputs(outputs: Mapping[str, Any]) -> StackOutputs:
    """From `Stack.outputs()` (OutputValue objects) or plain values."""
    values = {key: getattr(value, "value", value) for key, value in outputs.items()}
    missing = [key for key in REQUIRED_OUTPUTS if not isinstance(values.get(key), str) or not values[key]]
    if missing:
        raise OutputsError(f"the stack has no output {', '.join(missing)}; is {BATCH_WORKFLOW_KEY} on? "
                           f"(outputs: {', '.join(sorted(values)) or 'none'})")
    parsed = StackOutputs(values["url"], values["bucket_name"], values["token_secret_arn"],
                          values["cluster_arn"], values["service_name"], values["batch_state_machine_arn"],
                          values["batch_task_definition_arn"])
    task_family(parsed.batch_task_definition_arn)  # a malformed ARN fails here, not during teardown
    arn_region(parsed.state_machine_arn)
    return parsed


# --- waiting ------------------------------------------------------------------------------------------

# Bounds of the waits (seconds). A new task restores the snapshot (~1 min for CL), starts Chroma and the
# proxy, then needs two passing ALB health checks 15 s apart; ECS gives it 300 s of grace. A batch
# execution of the 40 example labels starts a Fargate task (30-60 s) and runs cold Lambdas.
SERVICE_HEALTHY_TIMEOUT = 20 * 60
EXECUTION_TIMEOUT = 30 * 60
SNAPSHOT_BUILD_TIMEOUT = 20 * 60
COMMAND_TIMEOUT = 20 * 60  # one project command: publish-snapshot (CL), annotate (40 labels)
SERVICE_URL_TIMEOUT = 10 * 60  # DNS of a new ALB (or a new record) can take minutes to resolve
POLL_SECONDS = 15
# `pulumi destroy` is tried this many times, this far apart. A VPC Lambda's network interfaces outlive
# the function and hold its security group and subnets; the AWS provider waits for them
# (hashicorp/terraform-provider-aws internal/service/ec2, deleteLingeringENIs), within a timeout.
DESTROY_ATTEMPTS = 3
DESTROY_PAUSE_SECONDS = 120


@dataclass(frozen=True)
class Poll:
    done: bool
    state: str
    value: Any = None


class WaitTimeout(TimeoutError):
    pass


def wait_for(probe: Callable[[], Poll], what: str, timeout: float, interval: float = POLL_SECONDS,
             clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
             on_change: Callable[[str], None] | None = None) -> Any:
    """Poll until `probe` says done (returns its value); a probe that raises ends the wait at once.

    Raises WaitTimeout naming `what` and the last state seen, never waits past `timeout`.
    """
    deadline = clock() + timeout
    last = None
    while True:
        poll = probe()
        if poll.state != last and on_change is not None:
            on_change(f"{what}: {poll.state}")
        last = poll.state
        if poll.done:
            return poll.value
        remaining = deadline - clock()
        if remaining <= 0:
            raise WaitTimeout(f"{what}: not done after {timeout:.0f} s; last state: {last}")
        sleep(min(interval, remaining))


class ServiceFailed(RuntimeError):
    """The service's deployment failed; waiting longer cannot help."""


def service_health(service: Mapping[str, Any], targets: Sequence[Mapping[str, Any]]) -> Poll:
    """Healthy = the deployment completed, every desired task runs, and as many ALB targets pass.

    `service` is one entry of ECS DescribeServices, `targets` the TargetHealthDescriptions of
    ELBv2 DescribeTargetHealth for its target group (the ALB's own checks of the heartbeat path).
    Shapes: https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_Deployment.html and
    https://docs.aws.amazon.com/elasticloadbalancing/latest/APIReference/API_TargetHealth.html.
    """
    deployments = service.get("deployments") or []
    primary = next((d for d in deployments if d.get("status") == "PRIMARY"), None)
    rollout = (primary or {}).get("rolloutState")
    if rollout == "FAILED":
        events = "; ".join(e.get("message", "") for e in (service.get("events") or [])[:3])
        reason = primary.get("rolloutStateReason", "no reason given")
        raise ServiceFailed(f"service {service.get('serviceName')} deployment FAILED: {reason}; "
                            f"latest events: {events}")
    desired = int(service.get("desiredCount") or 0)
    running = int(service.get("runningCount") or 0)
    states: dict[str, int] = {}
    for target in targets:
        health = target.get("TargetHealth") or {}
        label = health.get("State", "unknown")
        if health.get("Reason"):
            label += f" ({health['Reason']})"
        states[label] = states.get(label, 0) + 1
    healthy = states.get("healthy", 0)
    shown = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "none registered"
    state = (f"deployment {rollout or 'state unknown'}, {len(deployments)} deployment(s), "
             f"{running}/{desired} tasks running, targets: {shown}")
    done = (desired >= 1 and running >= desired and healthy >= desired and len(deployments) == 1
            and rollout in (None, "COMPLETED"))
    return Poll(done, state)


class ExecutionFailed(RuntimeError):
    """The batch execution ended other than SUCCEEDED."""


def execution_poll(describe: Mapping[str, Any]) -> Poll:
    """From Step Functions DescribeExecution: done with the parsed output once SUCCEEDED.

    https://docs.aws.amazon.com/step-functions/latest/apireference/API_DescribeExecution.html
    """
    status = describe.get("status")
    if status == "SUCCEEDED":
        try:
            output = json.loads(describe.get("output") or "")
        except json.JSONDecodeError:
            raise ExecutionFailed(f"execution succeeded but its output is not JSON: "
                                  f"{describe.get('output')!r}") from None
        return Poll(True, "SUCCEEDED", output)
    if status == "RUNNING":
        return Poll(False, "RUNNING")
    raise ExecutionFailed(f"execution {describe.get('name', '')} ended {status}: "
                          f"{describe.get('error', 'no error')}: {describe.get('cause', 'no cause')}")


def execution_input(bucket: str, key: str, ontology: str, top_k: int) -> dict[str, Any]:
    """The input the README documents for starting an execution, for one uploaded file."""
    from ontosearch.workflow.steps import REQUEST_KEYS

    request = {"input": f"s3://{bucket}/{key}", "ontology": ontology, "top_k": top_k, "snapshot": "latest",
               "save_snapshot": False}
    unknown = set(request) - REQUEST_KEYS
    if unknown:
        raise ValueError(f"execution input keys {sorted(unknown)} are not among the workflow's "
                         f"{sorted(REQUEST_KEYS)}")
    return request


def results_key(output: Mapping[str, Any], bucket: str, execution: str) -> str:
    """The key of the results CSV, checked to be where the README says: results/<execution>/ in the bucket."""
    from ontosearch.workflow.steps import output_key, parse_s3_uri

    got_bucket, key = parse_s3_uri(output.get("output"))
    if got_bucket != bucket or key != output_key(execution):
        raise ExecutionFailed(f"execution output {output.get('output')!r} is not "
                              f"s3://{bucket}/{output_key(execution)}")
    return key


# --- teardown -----------------------------------------------------------------------------------------

class Phase(IntEnum):
    """Teardown order. Work still running keeps the cluster (ECS refuses to delete a cluster with
    running tasks) and costs money, so it stops first; the stack is forgotten only once destroyed,
    or nothing would remember what is left; local files go last."""

    STOP_WORK = 1
    DESTROY = 2
    FORGET = 3
    LOCAL = 4


@dataclass(frozen=True)
class Outcome:
    name: str
    status: str  # "ok", "failed", "skipped"
    detail: str = ""


@dataclass
class TeardownReport:
    outcomes: list[Outcome]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != "ok"]

    def summary(self) -> str:
        return "; ".join(f"{o.name}: {o.status}{' (' + o.detail + ')' if o.detail else ''}"
                         for o in self.outcomes)


@dataclass
class _Step:
    phase: Phase
    name: str
    action: Callable[[], Any]
    requires: str | None
    order: int


class TeardownError(RuntimeError):
    pass


class Teardown:
    """Steps registered as the test creates things, run in Phase order whatever the order of creation.

    Within a phase the latest registered runs first (like contextlib.ExitStack). A failed step does
    not stop the others, except those that `require` it: they are skipped, with the reason.
    """

    def __init__(self) -> None:
        self._steps: list[_Step] = []

    def add(self, phase: Phase, name: str, action: Callable[[], Any], requires: str | None = None) -> None:
        if any(step.name == name for step in self._steps):
            raise ValueError(f"teardown step {name!r} is already registered")
        if requires is not None and not any(step.name == requires for step in self._steps):
            raise ValueError(f"teardown step {name!r} requires {requires!r}, which is not registered")
        self._steps.append(_Step(phase, name, action, requires, len(self._steps)))

    def run(self, log: Callable[[str], None] = lambda _: None) -> TeardownReport:
        done: dict[str, str] = {}
        outcomes = []
        for step in sorted(self._steps, key=lambda s: (s.phase, -s.order)):
            if step.requires is not None and done.get(step.requires) != "ok":
                outcome = Outcome(step.name, "skipped", f"{step.requires} did not succeed")
            else:
                log(f"teardown: {step.name}")
                try:
                    step.action()
                    outcome = Outcome(step.name, "ok")
                except Exception as exc:  # noqa: BLE001 - every step runs; the report names each failure
                    outcome = Outcome(step.name, "failed", f"{type(exc).__name__}: {exc}")
            done[step.name] = outcome.status
            outcomes.append(outcome)
            detail = f" ({outcome.detail})" if outcome.detail else ""
            log(f"teardown: {step.name}: {outcome.status}{detail}")
        return TeardownReport(outcomes)


def manual_cleanup(stack: str) -> str:
    """What to run by hand when the teardown could not finish."""
    return (f"the stack {stack} may still hold resources (tagged stack={stack}, "
            f"{TEST_TAG[0]}={TEST_TAG[1]}); from {ROOT}: "
            f"`pulumi destroy --stack {stack} --yes && pulumi stack rm {stack} --yes`")


def retry(action: Callable[[], Any], attempts: int, pause: float, what: str,
          sleep: Callable[[float], None] = time.sleep, log: Callable[[str], None] = lambda _: None) -> Any:
    """Run `action` up to `attempts` times; AWS releases some dependencies late (a VPC Lambda's network
    interfaces keep its security group and subnets for minutes after the function is gone)."""
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as exc:
            if attempt == attempts:
                raise
            log(f"{what}: attempt {attempt} of {attempts} failed ({type(exc).__name__}: {exc}); "
                f"again in {pause:.0f} s")
            sleep(pause)
    raise AssertionError("unreachable")


def stop_batch_tasks(ecs: Any, cluster: str, family: str, reason: str) -> list[str]:
    """Stop the batch task family's running tasks in the cluster (a stopped execution runs no Catch,
    so its task would run on until its own deadline); tasks of other families are left alone."""
    arns: list[str] = []
    for page in ecs.get_paginator("list_tasks").paginate(cluster=cluster, family=family,
                                                         desiredStatus="RUNNING"):
        arns.extend(page.get("taskArns") or [])
    for arn in arns:
        ecs.stop_task(cluster=cluster, task=arn, reason=reason)
    return arns


def stop_execution_if_running(sfn: Any, execution_arn: str) -> bool:
    if sfn.describe_execution(executionArn=execution_arn)["status"] != "RUNNING":
        return False
    sfn.stop_execution(executionArn=execution_arn, error="IntegrationTestTeardown",
                       cause="the integration test is tearing its stack down")
    return True
