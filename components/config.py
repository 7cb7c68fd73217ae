"""Stack configuration: the handful of keys a platform engineer sets in `Pulumi.<stack>.yaml`.

Every key has a default or a clear error. Values are validated here, before any resource is
declared, so a typo fails in seconds with a message naming the key instead of half-way through
an `up`. `StackConfig.from_mapping` takes plain values so tests and `components.synth` can check
the rules without the Pulumi engine.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

NAMESPACE = "ontosearch"

EGRESS_MODES = ("nat", "endpoints")

# Fargate task sizes: cpu units -> allowed memory (MiB).
FARGATE_SIZES: dict[int, tuple[int, ...]] = {
    256: (512, 1024, 2048),
    512: tuple(range(1024, 4096 + 1, 1024)),
    1024: tuple(range(2048, 8192 + 1, 1024)),
    2048: tuple(range(4096, 16384 + 1, 1024)),
    4096: tuple(range(8192, 30720 + 1, 1024)),
    8192: tuple(range(16384, 61440 + 1, 4096)),
    16384: tuple(range(32768, 122880 + 1, 8192)),
}

# CloudWatch Logs accepts only these retention periods (days).
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192,
                      2557, 2922, 3288, 3653)

_DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# A security group holds at most 60 inbound rules, one per CIDR block and port; the internet-facing ALB
# opens two ports (https://docs.aws.amazon.com/vpc/latest/userguide/amazon-vpc-limits.html).
MAX_ALLOWED_CIDRS = 30


class ConfigError(ValueError):
    """A stack config value is missing or wrong; the message names the key and the fix."""


def _key(name: str) -> str:
    return f"{NAMESPACE}:{name}"


@dataclass(frozen=True)
class StackConfig:
    """Validated stack settings. Field docs live in the README's config table."""

    # Network: an existing VPC (vpc_id + subnets) or a new one.
    vpc_id: str | None = None
    private_subnet_ids: tuple[str, ...] = ()
    public_subnet_ids: tuple[str, ...] = ()
    vpc_cidr: str = "10.40.0.0/16"
    az_count: int = 2
    egress: str = "endpoints"
    # Networks that may reach the ALB (peered VPCs, a VPN); empty: the VPC's own CIDR for the internal
    # ALB, the internet for the public one.
    allowed_cidrs: tuple[str, ...] = ()
    # Public HTTPS entry point; without a domain the ALB is internal and speaks HTTP.
    domain: str | None = None
    hosted_zone: str | None = None
    # Task size and count.
    cpu: int = 1024
    memory: int = 2048
    min_replicas: int = 1
    max_replicas: int = 1
    ephemeral_storage_gib: int = 21
    # Data and operations.
    snapshot_version: str = "latest"
    log_retention_days: int = 30
    alarm_email: str | None = None
    deletion_protection: bool = False
    batch_workflow: bool = False
    # Keys other components read (e.g. the batch workflow's), kept raw for them to validate.
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def uses_existing_vpc(self) -> bool:
        return self.vpc_id is not None

    @property
    def https(self) -> bool:
        return self.domain is not None

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> StackConfig:
        """Build from `{key: value}` with keys as in the stack file (without the namespace).

        Values may be native (from YAML) or strings (as `pulumi.Config` returns them).
        """
        reader = _Reader(values)
        vpc_id = reader.text("vpcId")
        private_subnets = reader.text_list("privateSubnetIds")
        public_subnets = reader.text_list("publicSubnetIds")
        vpc_cidr = reader.text("vpcCidr") or cls.vpc_cidr
        az_count = reader.integer("azCount", cls.az_count)
        egress = (reader.text("egress") or cls.egress).lower()
        allowed_cidrs = _allowed_cidrs(reader.text_list("allowedCidrs"))
        domain = reader.text("domain")
        hosted_zone = reader.text("hostedZone")
        cpu = reader.integer("cpu", cls.cpu)
        memory = reader.integer("memory", cls.memory)
        min_replicas = reader.integer("minReplicas", cls.min_replicas)
        max_replicas = reader.integer("maxReplicas", max(min_replicas, cls.max_replicas))
        ephemeral = reader.integer("ephemeralStorageGiB", cls.ephemeral_storage_gib)
        snapshot_version = reader.text("snapshotVersion") or cls.snapshot_version
        retention = reader.integer("logRetentionDays", cls.log_retention_days)
        alarm_email = reader.text("alarmEmail")
        deletion_protection = reader.boolean("deletionProtection", cls.deletion_protection)
        batch_workflow = reader.boolean("batchWorkflow", cls.batch_workflow)

        if vpc_id is None:
            if private_subnets or public_subnets:
                raise ConfigError(
                    f"config keys {_key('privateSubnetIds')}/{_key('publicSubnetIds')} need "
                    f"{_key('vpcId')}: set the VPC they belong to, or remove them to create a new VPC")
            try:
                net = ipaddress.ip_network(vpc_cidr)
            except ValueError as exc:
                raise ConfigError(f"config key {_key('vpcCidr')} is not a CIDR block ({exc}); "
                                  f"use e.g. 10.40.0.0/16") from exc
            if net.version != 4 or not 16 <= net.prefixlen <= 24:
                raise ConfigError(f"config key {_key('vpcCidr')} must be an IPv4 block between /16 and /24, "
                                  f"got {vpc_cidr}")
            if not 2 <= az_count <= 6:
                raise ConfigError(f"config key {_key('azCount')} must be between 2 and 6 (an ALB needs "
                                  f"two AZs), got {az_count}")
        else:
            if not vpc_id.startswith("vpc-"):
                raise ConfigError(f"config key {_key('vpcId')} must be a VPC id like vpc-0abc..., "
                                  f"got {vpc_id!r}")
            if len(private_subnets) < 2:
                raise ConfigError(f"config key {_key('privateSubnetIds')} is required when {_key('vpcId')} "
                                  f"is set: list at least two private subnets in different AZs")
            if domain is not None and len(public_subnets) < 2:
                raise ConfigError(f"config key {_key('publicSubnetIds')} is required when {_key('vpcId')} "
                                  f"and {_key('domain')} are set: the internet-facing ALB needs two "
                                  f"public subnets")
            for sid in (*private_subnets, *public_subnets):
                if not sid.startswith("subnet-"):
                    raise ConfigError(f"config keys {_key('privateSubnetIds')}/{_key('publicSubnetIds')} "
                                      f"take "
                                      f"subnet ids like subnet-0abc..., got {sid!r}")

        if egress not in EGRESS_MODES:
            raise ConfigError(f"config key {_key('egress')} must be one of {', '.join(EGRESS_MODES)}, "
                              f"got {egress!r}")

        if domain is not None:
            domain = domain.lower().rstrip(".")
            if not _DOMAIN_RE.match(domain):
                raise ConfigError(f"config key {_key('domain')} is not a DNS name: {domain!r}")
            if hosted_zone is None:
                raise ConfigError(f"config key {_key('hostedZone')} is required when {_key('domain')} is set "
                                  f"(the Route53 public hosted zone, e.g. example.com)")
            hosted_zone = hosted_zone.lower().rstrip(".")
            if domain != hosted_zone and not domain.endswith("." + hosted_zone):
                raise ConfigError(f"config key {_key('domain')} ({domain}) is not inside "
                                  f"{_key('hostedZone')} ({hosted_zone})")
        elif hosted_zone is not None:
            raise ConfigError(f"config key {_key('hostedZone')} is set but {_key('domain')} is not; "
                              f"set both for HTTPS, or neither for an internal HTTP ALB")

        if cpu not in FARGATE_SIZES:
            raise ConfigError(f"config key {_key('cpu')} must be a Fargate CPU size "
                              f"({', '.join(map(str, FARGATE_SIZES))}), got {cpu}")
        if memory not in FARGATE_SIZES[cpu]:
            allowed = FARGATE_SIZES[cpu]
            raise ConfigError(f"config key {_key('memory')}={memory} is not valid with {_key('cpu')}={cpu}; "
                              f"Fargate allows {allowed[0]}..{allowed[-1]} MiB in steps of "
                              f"{allowed[1] - allowed[0]}")
        if min_replicas < 1:
            raise ConfigError(f"config key {_key('minReplicas')} must be at least 1 (the service is "
                              f"always on), got {min_replicas}")
        if max_replicas < min_replicas:
            raise ConfigError(f"config key {_key('maxReplicas')} ({max_replicas}) must be >= "
                              f"{_key('minReplicas')} ({min_replicas})")
        if max_replicas > 20:
            raise ConfigError(f"config key {_key('maxReplicas')} must be at most 20, got {max_replicas}")
        if not 21 <= ephemeral <= 200:
            raise ConfigError(f"config key {_key('ephemeralStorageGiB')} must be between 21 and 200 "
                              f"(Fargate limits), got {ephemeral}")
        if not _VERSION_RE.match(snapshot_version):
            raise ConfigError(f"config key {_key('snapshotVersion')} must be 'latest' or a published "
                              f"version name, got {snapshot_version!r}")
        if retention not in LOG_RETENTION_DAYS:
            raise ConfigError(f"config key {_key('logRetentionDays')} must be one of CloudWatch's periods "
                              f"({', '.join(map(str, LOG_RETENTION_DAYS))}), got {retention}")
        if alarm_email is not None and not _EMAIL_RE.match(alarm_email):
            raise ConfigError(f"config key {_key('alarmEmail')} is not an e-mail address: {alarm_email!r}")

        known = set(_KNOWN_KEYS)
        extra = {k: v for k, v in values.items() if k not in known}
        return cls(
            vpc_id=vpc_id, private_subnet_ids=private_subnets, public_subnet_ids=public_subnets,
            vpc_cidr=vpc_cidr, az_count=az_count, egress=egress, allowed_cidrs=allowed_cidrs,
            domain=domain, hosted_zone=hosted_zone,
            cpu=cpu, memory=memory, min_replicas=min_replicas, max_replicas=max_replicas,
            ephemeral_storage_gib=ephemeral, snapshot_version=snapshot_version, log_retention_days=retention,
            alarm_email=alarm_email, deletion_protection=deletion_protection, batch_workflow=batch_workflow,
            extra=extra,
        )

    @classmethod
    def load(cls) -> StackConfig:
        """Read the current stack's `ontosearch:*` config through the Pulumi engine."""
        import pulumi

        config = pulumi.Config(NAMESPACE)
        values: dict[str, Any] = {}
        for key in (*_KNOWN_KEYS, *EXTRA_KEYS):
            raw = config.get(key)
            if raw is not None:
                values[key] = raw
        return cls.from_mapping(values)


_KNOWN_KEYS = (
    "vpcId", "privateSubnetIds", "publicSubnetIds", "vpcCidr", "azCount", "egress", "allowedCidrs", "domain",
    "hostedZone",
    "cpu", "memory", "minReplicas", "maxReplicas", "ephemeralStorageGiB", "snapshotVersion",
    "logRetentionDays", "alarmEmail", "deletionProtection", "batchWorkflow",
)

# Keys owned by optional components (read into StackConfig.extra; those components validate them).
EXTRA_KEYS: tuple[str, ...] = ("mapConcurrency", "workflowTimeoutSeconds", "readyTimeoutSeconds")


def _allowed_cidrs(blocks: tuple[str, ...]) -> tuple[str, ...]:
    """The ALB's allowed source networks: IPv4 network addresses, no duplicates, no 0.0.0.0/0."""
    key = _key("allowedCidrs")
    seen: set[ipaddress.IPv4Network] = set()
    for block in blocks:
        try:
            net = ipaddress.ip_network(block)
        except ValueError as exc:
            host = _host_bits_hint(block)
            raise ConfigError(f"config key {key}: {block!r} is not a CIDR block ({exc}); "
                              f"{host or 'write a network like 10.50.0.0/16'}") from None
        if net.version != 4:
            raise ConfigError(f"config key {key}: {block} is IPv6; the ALB's rules take IPv4 blocks, "
                              f"e.g. 10.50.0.0/16")
        if net.prefixlen == 0:
            raise ConfigError(f"config key {key}: {block} admits every address; list the networks of the "
                              f"clients (peered VPCs, VPN), or remove the key for the default (the VPC; "
                              f"the internet with {_key('domain')})")
        if net in seen:
            raise ConfigError(f"config key {key} lists {block} twice; EC2 refuses duplicate rules")
        seen.add(net)
    if len(blocks) > MAX_ALLOWED_CIDRS:
        raise ConfigError(f"config key {key} lists {len(blocks)} blocks; at most {MAX_ALLOWED_CIDRS} fit in "
                          f"the ALB's security group (60 inbound rules, two ports); merge adjacent networks")
    return tuple(str(ipaddress.ip_network(b)) for b in blocks)


def _host_bits_hint(block: str) -> str | None:
    """For `10.0.0.1/16` (host bits set): the network the user probably meant."""
    try:
        net = ipaddress.ip_network(block, strict=False)
    except ValueError:
        return None
    return f"did you mean {net}?"


class _Reader:
    """Typed access to raw config values with errors that name the key."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = values

    def _raw(self, key: str) -> Any:
        value = self._values.get(key)
        if isinstance(value, str) and value.strip() == "":
            return None
        return value

    def text(self, key: str) -> str | None:
        value = self._raw(key)
        if value is None:
            return None
        if isinstance(value, (dict, list, bool)):
            raise ConfigError(f"config key {_key(key)} must be a string, got {value!r}")
        return str(value).strip()

    def integer(self, key: str, default: int) -> int:
        value = self._raw(key)
        if value is None:
            return default
        if isinstance(value, bool):
            raise ConfigError(f"config key {_key(key)} must be a whole number, got {value!r}")
        try:
            return int(str(value).strip())
        except ValueError:
            raise ConfigError(f"config key {_key(key)} must be a whole number, got {value!r}") from None

    def boolean(self, key: str, default: bool) -> bool:
        value = self._raw(key)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in {"true", "yes", "1"}:
            return True
        if text in {"false", "no", "0"}:
            return False
        raise ConfigError(f"config key {_key(key)} must be true or false, got {value!r}")

    def text_list(self, key: str) -> tuple[str, ...]:
        value = self._raw(key)
        if value is None:
            return ()
        if isinstance(value, str):
            stripped = value.strip()
            if stripped.startswith("["):
                try:
                    value = json.loads(stripped)
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"config key {_key(key)} is not a valid list ({exc})") from None
            else:
                value = [part for part in stripped.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"config key {_key(key)} must be a list of strings, got {value!r}")
        return tuple(v.strip() for v in value)
