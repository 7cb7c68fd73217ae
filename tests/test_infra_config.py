"""Stack config: defaults, validation with messages that name the key, and the synth command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pulumi_harness import STACKS, stack_file_config, synth_with

from components.config import _KNOWN_KEYS, EXTRA_KEYS, FARGATE_SIZES, ConfigError, StackConfig

ROOT = Path(__file__).resolve().parent.parent


def _stack_values(stack: str) -> dict:
    return {k.split(":", 1)[1]: v for k, v in stack_file_config(stack).items() if k.startswith("ontosearch:")}


@pytest.mark.parametrize("stack", STACKS)
def test_stack_files_are_complete_valid_and_use_only_known_keys(stack):
    values = _stack_values(stack)
    unknown = set(values) - set(_KNOWN_KEYS) - set(EXTRA_KEYS)
    assert not unknown, f"Pulumi.{stack}.yaml has keys the program never reads: {unknown}"
    StackConfig.from_mapping(values)
    assert stack_file_config(stack)["aws:region"]


def test_every_key_has_a_default():
    cfg = StackConfig.from_mapping({})
    assert cfg.egress in ("nat", "endpoints")
    assert cfg.memory in FARGATE_SIZES[cfg.cpu]
    assert (cfg.min_replicas, cfg.max_replicas) == (1, 1)
    assert cfg.snapshot_version == "latest"
    assert cfg.domain is None and not cfg.https
    assert cfg.batch_workflow is False and cfg.deletion_protection is False


def test_dev_is_small_and_prod_matches_the_seed_spec():
    dev = StackConfig.from_mapping(_stack_values("dev"))
    prod = StackConfig.from_mapping(_stack_values("prod"))
    assert (dev.cpu, dev.memory, dev.min_replicas) == (1024, 2048, 1)
    assert dev.domain is None
    assert (prod.cpu, prod.memory) == (4096, 16384)
    assert prod.min_replicas >= 2 and prod.max_replicas >= prod.min_replicas
    assert prod.domain and prod.hosted_zone and prod.deletion_protection


def test_values_arrive_as_strings_from_the_engine_too():
    cfg = StackConfig.from_mapping({"cpu": "2048", "memory": "8192", "deletionProtection": "true",
                                    "vpcId": "vpc-0abc", "privateSubnetIds": '["subnet-1", "subnet-2"]'})
    assert (cfg.cpu, cfg.memory, cfg.deletion_protection) == (2048, 8192, True)
    assert cfg.private_subnet_ids == ("subnet-1", "subnet-2")


BAD = [
    ({"domain": "vector.example.com"},
     "config key ontosearch:hostedZone is required when ontosearch:domain is set"),
    ({"hostedZone": "example.com"}, "ontosearch:hostedZone is set but ontosearch:domain is not"),
    ({"domain": "vector.example.com", "hostedZone": "other.org"}, "ontosearch:domain"),
    ({"domain": "not a domain", "hostedZone": "example.com"}, "ontosearch:domain"),
    ({"cpu": 1000}, "ontosearch:cpu"),
    ({"cpu": 4096, "memory": 2048}, "ontosearch:memory=2048 is not valid with ontosearch:cpu=4096"),
    ({"cpu": "four"}, "ontosearch:cpu must be a whole number"),
    ({"minReplicas": 0}, "ontosearch:minReplicas"),
    ({"minReplicas": 3, "maxReplicas": 2},
     "ontosearch:maxReplicas (2) must be >= ontosearch:minReplicas (3)"),
    ({"egress": "internet"}, "ontosearch:egress must be one of nat, endpoints"),
    ({"azCount": 1}, "ontosearch:azCount"),
    ({"vpcCidr": "10.0.0.0/8"}, "ontosearch:vpcCidr"),
    ({"vpcCidr": "banana"}, "ontosearch:vpcCidr"),
    ({"vpcId": "vpc-0abc"}, "ontosearch:privateSubnetIds is required when ontosearch:vpcId is set"),
    ({"vpcId": "vpc-0abc", "privateSubnetIds": ["subnet-1", "subnet-2"], "domain": "a.example.com",
      "hostedZone": "example.com"}, "ontosearch:publicSubnetIds is required"),
    ({"privateSubnetIds": ["subnet-1", "subnet-2"]}, "ontosearch:vpcId"),
    ({"vpcId": "abc", "privateSubnetIds": ["subnet-1", "subnet-2"]}, "ontosearch:vpcId must be a VPC id"),
    ({"logRetentionDays": 10}, "ontosearch:logRetentionDays"),
    ({"ephemeralStorageGiB": 500}, "ontosearch:ephemeralStorageGiB"),
    ({"alarmEmail": "ops"}, "ontosearch:alarmEmail"),
    ({"deletionProtection": "maybe"}, "ontosearch:deletionProtection must be true or false"),
    ({"snapshotVersion": "../etc"}, "ontosearch:snapshotVersion"),
    ({"allowedCidrs": ["banana"]}, "config key ontosearch:allowedCidrs: 'banana' is not a CIDR block"),
    ({"allowedCidrs": ["10.50.0.1/16"]}, "did you mean 10.50.0.0/16?"),
    ({"allowedCidrs": ["fd00::/8"]}, "ontosearch:allowedCidrs: fd00::/8 is IPv6"),
    ({"allowedCidrs": ["0.0.0.0/0"]}, "ontosearch:allowedCidrs: 0.0.0.0/0 admits every address"),
    ({"allowedCidrs": ["10.50.0.0/16", "10.50.0.0/16"]}, "lists 10.50.0.0/16 twice"),
    ({"allowedCidrs": [f"10.{i}.0.0/16" for i in range(31)]}, "ontosearch:allowedCidrs lists 31 blocks"),
    ({"allowedCidrs": {"a": "10.0.0.0/8"}}, "ontosearch:allowedCidrs must be a list of strings"),
]


@pytest.mark.parametrize(("values", "message"), BAD, ids=["+".join(values) for values, _ in BAD])
def test_bad_config_raises_a_message_naming_the_key(values, message):
    with pytest.raises(ConfigError) as info:
        StackConfig.from_mapping(values)
    assert message in str(info.value)


def test_allowed_cidrs_default_to_none_and_accept_lists_json_and_comma_separated_text():
    assert StackConfig.from_mapping({}).allowed_cidrs == ()
    blocks = ("10.50.0.0/16", "192.168.8.0/22")
    assert StackConfig.from_mapping({"allowedCidrs": list(blocks)}).allowed_cidrs == blocks
    assert StackConfig.from_mapping({"allowedCidrs": json.dumps(list(blocks))}).allowed_cidrs == blocks
    assert StackConfig.from_mapping({"allowedCidrs": " 10.50.0.0/16, 192.168.8.0/22"}).allowed_cidrs == blocks


def test_bad_stack_config_fails_the_program_with_the_key_named():
    """Through the real path: Pulumi.<stack>.yaml -> engine config -> StackConfig.load()."""
    with pytest.raises(ConfigError, match="ontosearch:hostedZone is required when ontosearch:domain is set"):
        synth_with("prod", remove=("ontosearch:hostedZone",))
    with pytest.raises(ConfigError, match="ontosearch:memory=512 is not valid with ontosearch:cpu=4096"):
        synth_with("prod", {"ontosearch:memory": 512})
    with pytest.raises(ConfigError, match="ontosearch:allowedCidrs: '10.0.0.1/8' is not a CIDR block"):
        synth_with("dev", {"ontosearch:allowedCidrs": ["10.0.0.1/8"]})


def test_synth_command_prints_the_tree_and_writes_redacted_json(tmp_path):
    out = tmp_path / "prod.json"
    proc = subprocess.run([sys.executable, "-m", "components.synth", "--stack", "prod", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("stack prod: ")
    assert "  ontosearch:infra:ChromaService  chroma" in lines
    assert "    aws:ecs/service:Service  chroma-service" in lines
    resources = json.loads(out.read_text())
    assert all(set(r) == {"type", "name", "parent", "inputs"} for r in resources)
    by_name = {(r["type"], r["name"]): r for r in resources}
    service = by_name[("aws:ecs/service:Service", "chroma-service")]
    assert service["parent"] == "chroma"
    assert "networkConfiguration" in service["inputs"]  # camelCase, as the engine receives them
    secret = by_name[("aws:secretsmanager/secretVersion:SecretVersion", "tokens-read")]
    assert secret["inputs"]["secretString"] == "[secret]"
    assert by_name[("ontosearch:infra:ChromaService", "chroma")]["parent"] is None


def test_synth_command_names_the_known_stacks_for_an_unknown_one():
    proc = subprocess.run([sys.executable, "-m", "components.synth", "--stack", "staging"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "Pulumi.staging.yaml" in proc.stderr and "dev" in proc.stderr and "prod" in proc.stderr
