"""`python -m components.synth --stack prod [--out FILE]`: the program's resources without AWS.

Runs `__main__.py` under Pulumi mocks with the config of `Pulumi.<stack>.yaml` and prints the
resource tree (type, name, parent). `--out` writes one JSON object per resource with the inputs
as the engine receives them (camelCase), secrets shown as "[secret]". No credentials, no Pulumi
CLI, no network, no Docker. The tests use this same machinery, so they check what synth shows.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import runpy
import string
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent
SECRET_MARK = "[secret]"
MOCK_ACCOUNT = "123456789012"
MOCK_PASSWORD_PREFIX = "MockToken"


class StackFileError(ValueError):
    """Pulumi.<stack>.yaml is missing or malformed."""


@dataclass(frozen=True)
class MockNetwork:
    """What the mocks answer about an existing VPC named in config (`ontosearch:vpcId`).

    As in EC2, a subnet is explicitly associated with a route table or implicitly with the VPC's main
    one, and DescribeRouteTables returns no association for the implicit case (so a lookup by subnet
    finds nothing: https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeRouteTables.html).
    `explicit_route_tables` maps subnet id -> its table; a subnet not listed uses the main table.
    None (the default): every subnet has an explicit table of its own.
    """

    cidr_block: str = "10.0.0.0/16"
    main_route_table_id: str = "rtb-0main000000000000"
    explicit_route_tables: Mapping[str, str] | None = None

    def explicit_table(self, subnet_id: str) -> str | None:
        if self.explicit_route_tables is None:
            return "rtb-" + _hash("rtb", subnet_id)
        return self.explicit_route_tables.get(subnet_id)

    def route_tables(self, args: Mapping[str, Any]) -> list[str]:
        """The tables a getRouteTable(s) data source finds (filters association.subnet-id, .main)."""
        subnets = {str(args["subnetId"])} if args.get("subnetId") else set()
        main = False
        for f in args.get("filters") or []:
            name, values = f["name"], [str(v) for v in f["values"]]
            if name == "association.subnet-id":
                subnets |= set(values)
            elif name == "association.main":
                main = "true" in values
            else:
                raise NotImplementedError(f"the mock network does not model the route-table filter {name!r}")
        if main:
            return [self.main_route_table_id]
        return sorted({t for s in subnets if (t := self.explicit_table(s)) is not None})


def _hash(*parts: str, n: int = 17) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:n]


def mock_password(name: str, length: int) -> str:
    """The value the mocks give a RandomPassword: known, alphanumeric, unique per resource."""
    alphabet = string.ascii_letters + string.digits
    digest = hashlib.sha256(name.encode()).digest() * 4
    body = "".join(alphabet[b % len(alphabet)] for b in digest)
    return (MOCK_PASSWORD_PREFIX + body)[:length]


def project_name(root: Path = ROOT) -> str:
    for line in (root / "Pulumi.yaml").read_text().splitlines():
        if line.startswith("name:"):
            return line.split(":", 1)[1].strip()
    raise ValueError(f"{root / 'Pulumi.yaml'} has no `name:`")


def load_stack_config(stack: str, root: Path = ROOT) -> dict[str, Any]:
    """`config:` of Pulumi.<stack>.yaml as {"ns:key": value} (native YAML values)."""
    import yaml

    path = root / f"Pulumi.{stack}.yaml"
    if not path.exists():
        known = sorted(p.name[len("Pulumi."):-len(".yaml")] for p in root.glob("Pulumi.*.yaml"))
        raise StackFileError(f"no stack file {path.name}; known stacks: {', '.join(known) or 'none'}")
    data = yaml.safe_load(path.read_text()) or {}
    config = data.get("config") or {}
    if not isinstance(config, dict):
        raise StackFileError(f"{path.name}: `config:` must be a mapping")
    return dict(config)


def engine_config(values: Mapping[str, Any], project: str) -> dict[str, str]:
    """Config as the engine passes it to programs: strings, JSON for structured values, namespaced keys."""
    out = {}
    for key, value in values.items():
        full = key if ":" in key else f"{project}:{key}"
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (dict, list)):
            text = json.dumps(value)
        else:
            text = str(value)
        out[full] = text
    return out


@dataclass
class Resource:
    type: str
    name: str
    parent: str | None
    inputs: dict[str, Any]
    # Inputs with secret values unwrapped (for tests that must see through secrets).
    raw_inputs: dict[str, Any] = field(repr=False, default_factory=dict)
    custom: bool = True
    urn: str = ""
    parent_urn: str | None = None
    id: str = ""
    protect: bool = False
    ignore_changes: tuple[str, ...] = ()
    dependencies: tuple[str, ...] = ()
    # What the (mock) provider returned: ids, ARNs, DNS names.
    state: dict[str, Any] = field(repr=False, default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "parent": self.parent, "inputs": self.inputs}


def _is_secret(value: Any) -> bool:
    from pulumi.runtime import rpc

    return rpc.is_rpc_secret(value)


def redact(value: Any) -> Any:
    """Replace every secret with SECRET_MARK (recursively)."""
    if _is_secret(value):
        return SECRET_MARK
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return _plain(value)


def unwrap(value: Any) -> Any:
    """Remove secret wrappers, keep the values (recursively)."""
    from pulumi.runtime import rpc

    if _is_secret(value):
        return unwrap(rpc.unwrap_rpc_secret(value))
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [unwrap(v) for v in value]
    return _plain(value)


def _plain(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _make_mocks(region: str, network: MockNetwork | None = None):
    import pulumi

    existing = network or MockNetwork()

    class Mocks(pulumi.runtime.Mocks):
        """Plausible, distinct ids and ARNs per resource so wiring is visible in the inputs."""

        def new_resource(self, args: pulumi.runtime.MockResourceArgs):
            inputs = dict(args.inputs)
            name, typ = args.name, args.typ
            h = _hash(typ, name)
            state: dict[str, Any] = dict(inputs)
            rid = f"{name}-{h[:8]}"
            service = typ.split(":")[1].split("/")[0] if typ.count(":") >= 2 else "mock"
            arn = f"arn:aws:{service}:{region}:{MOCK_ACCOUNT}:{name}/{h}"
            phys_name = unwrap(inputs.get("name")) or f"{name}-{h[:7]}"

            if typ == "random:index/randomPassword:RandomPassword":
                length = int(unwrap(inputs.get("length", 32)))
                state["result"] = mock_password(name, length)
                state["bcryptHash"] = "$2a$10$" + _hash("bcrypt", name, n=53)
            elif typ == "aws:ec2/vpc:Vpc":
                rid = f"vpc-{h}"
                arn = f"arn:aws:ec2:{region}:{MOCK_ACCOUNT}:vpc/{rid}"
            elif typ == "aws:ec2/subnet:Subnet":
                rid = f"subnet-{h}"
                arn = f"arn:aws:ec2:{region}:{MOCK_ACCOUNT}:subnet/{rid}"
            elif typ == "aws:ec2/securityGroup:SecurityGroup":
                rid = f"sg-{h}"
                arn = f"arn:aws:ec2:{region}:{MOCK_ACCOUNT}:security-group/{rid}"
            elif typ == "aws:ec2/routeTable:RouteTable":
                rid = f"rtb-{h}"
            elif typ == "aws:ec2/internetGateway:InternetGateway":
                rid = f"igw-{h}"
            elif typ == "aws:ec2/natGateway:NatGateway":
                rid = f"nat-{h}"
            elif typ == "aws:ec2/eip:Eip":
                rid = f"eipalloc-{h}"
                state["publicIp"] = "198.51.100.7"
            elif typ == "aws:ec2/vpcEndpoint:VpcEndpoint":
                rid = f"vpce-{h}"
            elif typ == "aws:s3/bucket:Bucket":
                rid = phys_name = unwrap(inputs.get("bucket")) or f"{name}-{h[:8]}".lower()
                arn = f"arn:aws:s3:::{rid}"
                state["bucket"] = rid
                state["bucketDomainName"] = f"{rid}.s3.amazonaws.com"
            elif typ == "aws:secretsmanager/secret:Secret":
                arn = f"arn:aws:secretsmanager:{region}:{MOCK_ACCOUNT}:secret:{phys_name}-{h[:6]}"
                rid = arn
            elif typ == "aws:iam/role:Role":
                arn = f"arn:aws:iam::{MOCK_ACCOUNT}:role/{phys_name}"
                rid = phys_name
            elif typ == "aws:ecr/repository:Repository":
                rid = phys_name
                arn = f"arn:aws:ecr:{region}:{MOCK_ACCOUNT}:repository/{phys_name}"
                state["repositoryUrl"] = f"{MOCK_ACCOUNT}.dkr.ecr.{region}.amazonaws.com/{phys_name}"
                state["registryId"] = MOCK_ACCOUNT
            elif typ == "docker-build:index:Image":
                tags = unwrap(inputs.get("tags")) or [f"{name}:latest"]
                digest = "sha256:" + hashlib.sha256(name.encode()).hexdigest()
                state["digest"] = digest
                state["ref"] = f"{tags[0]}@{digest}"
            elif typ == "aws:cloudwatch/logGroup:LogGroup":
                rid = phys_name = unwrap(inputs.get("name")) or f"/ontosearch/{name}-{h[:7]}"
                arn = f"arn:aws:logs:{region}:{MOCK_ACCOUNT}:log-group:{phys_name}"
            elif typ == "aws:lb/loadBalancer:LoadBalancer":
                suffix = f"app/{phys_name[:24]}/{h[:16]}"
                arn = f"arn:aws:elasticloadbalancing:{region}:{MOCK_ACCOUNT}:loadbalancer/{suffix}"
                rid = arn
                state["arnSuffix"] = suffix
                internal = "internal-" if unwrap(inputs.get("internal")) else ""
                state["dnsName"] = f"{internal}{phys_name[:24]}-{h[:10]}.{region}.elb.amazonaws.com"
                state["zoneId"] = "Z35SXDOTRQ7X7K"
            elif typ == "aws:lb/targetGroup:TargetGroup":
                suffix = f"targetgroup/{phys_name[:24]}/{h[:16]}"
                arn = f"arn:aws:elasticloadbalancing:{region}:{MOCK_ACCOUNT}:{suffix}"
                rid = arn
                state["arnSuffix"] = suffix
            elif typ == "aws:lb/listener:Listener":
                arn = f"arn:aws:elasticloadbalancing:{region}:{MOCK_ACCOUNT}:listener/app/{name}/{h}"
                rid = arn
            elif typ == "aws:acm/certificate:Certificate":
                arn = f"arn:aws:acm:{region}:{MOCK_ACCOUNT}:certificate/{h}"
                rid = arn
                domain = unwrap(inputs.get("domainName"))
                state["domainValidationOptions"] = [{
                    "domainName": domain,
                    "resourceRecordName": f"_{h[:12]}.{domain}.",
                    "resourceRecordType": "CNAME",
                    "resourceRecordValue": f"_{h[5:17]}.acm-validations.aws.",
                }]
            elif typ == "aws:acm/certificateValidation:CertificateValidation":
                rid = str(unwrap(inputs.get("certificateArn")))
            elif typ == "aws:route53/record:Record":
                state["fqdn"] = str(unwrap(inputs.get("name"))).rstrip(".")
            elif typ == "aws:ecs/cluster:Cluster":
                arn = f"arn:aws:ecs:{region}:{MOCK_ACCOUNT}:cluster/{phys_name}"
                rid = arn
            elif typ == "aws:ecs/service:Service":
                arn = f"arn:aws:ecs:{region}:{MOCK_ACCOUNT}:service/{phys_name}"
                rid = arn
            elif typ == "aws:ecs/taskDefinition:TaskDefinition":
                family = unwrap(inputs.get("family")) or name
                arn = f"arn:aws:ecs:{region}:{MOCK_ACCOUNT}:task-definition/{family}:1"
                rid = family
                state["revision"] = 1
                state["arnWithoutRevision"] = arn.rsplit(":", 1)[0]
            elif typ == "aws:kms/key:Key":
                rid = f"{h[:8]}-{h[8:12]}-4{h[12:15]}-a{h[15:17]}{h[:1]}-{h[1:13]}"
                arn = f"arn:aws:kms:{region}:{MOCK_ACCOUNT}:key/{rid}"
                state["keyId"] = rid
            elif typ == "aws:lambda/function:Function":
                # the real ARN formats: the IAM authorization matrix checks them against the reference
                arn = f"arn:aws:lambda:{region}:{MOCK_ACCOUNT}:function:{phys_name}"
            elif typ == "aws:sfn/stateMachine:StateMachine":
                arn = f"arn:aws:states:{region}:{MOCK_ACCOUNT}:stateMachine:{phys_name}"
                rid = arn
            elif typ == "aws:sns/topic:Topic":
                arn = f"arn:aws:sns:{region}:{MOCK_ACCOUNT}:{phys_name}"
                rid = arn

            state.setdefault("arn", arn)
            state.setdefault("name", phys_name)
            state.setdefault("id", rid)
            return rid, state

        def call(self, args: pulumi.runtime.MockCallArgs):
            token, a = args.token, dict(args.args)
            if token == "aws:index/getAvailabilityZones:getAvailabilityZones":
                names = [f"{region}{z}" for z in "abcdef"]
                return {"names": names, "zoneIds": [f"use1-az{i + 1}" for i in range(len(names))],
                        "id": region}
            if token == "aws:index/getCallerIdentity:getCallerIdentity":
                return {"accountId": MOCK_ACCOUNT, "arn": f"arn:aws:iam::{MOCK_ACCOUNT}:user/mock",
                        "userId": "AIDAMOCK", "id": MOCK_ACCOUNT}
            if token == "aws:index/getRegion:getRegion":
                return {"name": region, "region": region, "id": region,
                        "endpoint": f"ec2.{region}.amazonaws.com", "description": region}
            if token == "aws:index/getPartition:getPartition":
                return {"partition": "aws", "dnsSuffix": "amazonaws.com", "id": "aws"}
            if token == "aws:ecr/getAuthorizationToken:getAuthorizationToken":
                return {"userName": "AWS", "password": "mock-ecr-password",
                        "authorizationToken": "QVdTOm1vY2stZWNyLXBhc3N3b3Jk",
                        "proxyEndpoint": f"https://{MOCK_ACCOUNT}.dkr.ecr.{region}.amazonaws.com",
                        "expiresAt": "2030-01-01T00:00:00Z", "id": region}
            if token == "aws:route53/getZone:getZone":
                name = str(a.get("name", "example.com")).rstrip(".")
                zone_id = "Z" + _hash("zone", name, n=13).upper()
                return {"zoneId": zone_id, "id": zone_id, "name": name,
                        "arn": f"arn:aws:route53:::hostedzone/{zone_id}", "privateZone": False}
            if token == "aws:ec2/getVpc:getVpc":
                return {"id": a.get("id"), "cidrBlock": existing.cidr_block, "arn":
                        f"arn:aws:ec2:{region}:{MOCK_ACCOUNT}:vpc/{a.get('id')}"}
            if token == "aws:ec2/getRouteTables:getRouteTables":
                ids = existing.route_tables(a)
                return {"ids": ids, "id": region, "vpcId": a.get("vpcId")}
            if token == "aws:ec2/getRouteTable:getRouteTable":
                found = existing.route_tables(a)
                if len(found) != 1:  # the provider's singular data source fails on none or several
                    return {}, [("", f"query returned {len(found)} results for EC2 Route Table; "
                                     "change your search criteria")]
                return {"routeTableId": found[0], "id": found[0], "subnetId": a.get("subnetId"),
                        "vpcId": a.get("vpcId")}
            return a

    return Mocks()


class _RecordingMonitor:
    """Wraps MockMonitor.RegisterResource to record the parent of every resource."""

    @staticmethod
    def create(mocks, records: list[Resource]):
        from pulumi.runtime import rpc
        from pulumi.runtime.mocks import MockMonitor

        class Monitor(MockMonitor):
            def RegisterResource(self, request):  # noqa: N802 (gRPC method name)
                response = super().RegisterResource(request)
                urn = self.make_urn(request.parent, request.type, request.name)
                registered = self.resources.get(urn)
                if request.type != "pulumi:pulumi:Stack":
                    inputs = rpc.deserialize_properties(request.object)
                    parent = request.parent.split("::")[-1] if request.parent else None
                    if parent is not None and request.parent.split("::")[2].endswith("pulumi:pulumi:Stack"):
                        parent = None
                    records.append(Resource(
                        type=request.type, name=request.name, parent=parent,
                        inputs=redact(inputs), raw_inputs=unwrap(inputs), custom=bool(request.custom),
                        urn=urn,
                        parent_urn=request.parent if parent is not None else None,
                        id=response.id, protect=bool(request.protect),
                        ignore_changes=tuple(request.ignoreChanges),
                        dependencies=tuple(request.dependencies),
                        state=unwrap(dict(registered.state)) if registered else {}))
                return response

        return Monitor(mocks)


@dataclass
class SynthResult:
    stack: str
    resources: list[Resource]
    outputs: dict[str, Any]

    def of_type(self, typ: str) -> list[Resource]:
        return [r for r in self.resources if r.type == typ]

    def one(self, typ: str, name: str | None = None) -> Resource:
        found = [r for r in self.of_type(typ) if name is None or r.name == name]
        if len(found) != 1:
            raise LookupError(f"expected one {typ} {name or ''}, found {len(found)}")
        return found[0]


def synth(stack: str, config: Mapping[str, Any] | None = None, root: Path = ROOT,
          network: MockNetwork | None = None) -> SynthResult:
    """Run the program under mocks. `config` (as in a stack file) replaces Pulumi.<stack>.yaml's.

    `network`: what an existing VPC from config looks like to the mocks (default: MockNetwork()).
    """
    import pulumi
    from pulumi.runtime import mocks as pulumi_mocks
    from pulumi.runtime import settings
    from pulumi.runtime.stack import run_pulumi_func

    project = project_name(root)
    values = dict(load_stack_config(stack, root) if config is None else config)
    region = str(values.get("aws:region", "us-east-1"))
    records: list[Resource] = []
    mocks = _make_mocks(region, network)
    monitor = _RecordingMonitor.create(mocks, records)

    # Pulumi's runtime registers resources on the current event loop; an earlier asyncio.run() in the
    # same process (a test, a client) leaves the main thread without one, so give it a fresh one.
    try:
        asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        asyncio.set_event_loop(asyncio.new_event_loop())
    settings.reset_options()  # a fresh root stack per run (several synths in one process)
    pulumi.runtime.set_all_config(engine_config(values, project), [])
    pulumi.runtime.set_mocks(mocks, project=project, stack=stack, preview=False, monitor=monitor)
    outputs: dict[str, Any] = {}

    def program() -> None:
        sys.path.insert(0, str(root))
        try:
            runpy.run_path(str(root / "__main__.py"), run_name="__pulumi_program__")
        finally:
            sys.path.remove(str(root))

    settings.SETTINGS.rpc_manager.clear()
    settings.SETTINGS.outputs.clear()
    pulumi_mocks._sync_await(run_pulumi_func(program))
    root_resource = settings.get_root_resource()
    if root_resource is not None:
        outputs = _resolved_outputs(root_resource)
    return SynthResult(stack=stack, resources=records, outputs=outputs)


def _resolved_outputs(stack_resource: Any) -> dict[str, Any]:
    from pulumi.runtime import mocks as pulumi_mocks

    out = {}
    for key, value in getattr(stack_resource, "outputs", {}).items():
        try:
            out[key] = pulumi_mocks._sync_await(value.future())
        except Exception as exc:  # noqa: BLE001 (shown, not hidden)
            out[key] = f"<unresolved: {exc}>"
    return out


def print_tree(result: SynthResult, stream=sys.stdout) -> None:
    children: dict[str | None, list[Resource]] = {}
    for r in result.resources:
        children.setdefault(r.parent_urn, []).append(r)

    def walk(parent_urn: str | None, depth: int) -> None:
        for r in sorted(children.get(parent_urn, []), key=lambda r: (r.custom, r.type, r.name)):
            print(f"{'  ' * depth}{r.type}  {r.name}", file=stream)
            walk(r.urn, depth + 1)

    print(f"stack {result.stack}: {len(result.resources)} resources", file=stream)
    walk(None, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m components.synth", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", required=True, help="stack name: reads Pulumi.<stack>.yaml")
    parser.add_argument("--out", type=Path, help="write the resources as a JSON list to this file")
    args = parser.parse_args(argv)
    try:
        result = synth(args.stack)
    except (ConfigError, StackFileError) as exc:  # a user's mistake: one line, not a traceback
        print(f"synth: {exc}", file=sys.stderr)
        return 2
    if args.out:
        args.out.write_text(json.dumps([r.as_json() for r in result.resources], indent=2) + "\n")
    try:
        print_tree(result)
        if args.out:
            print(f"wrote {len(result.resources)} resources to {args.out}")
    except BrokenPipeError:  # e.g. `| head`: the reader has seen enough
        sys.stderr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
