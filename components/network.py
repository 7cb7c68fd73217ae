"""Network: the VPC the tasks (and the workflow Lambdas) run in, with the egress they need.

Either an existing VPC named in config (nothing is created but, with `egress: endpoints`, the VPC
endpoints) or a new VPC over `azCount` AZs with private subnets for tasks and public subnets for an
internet-facing ALB and a NAT gateway. Tasks never get public IPs; their only ways out are
NAT (`egress: nat`) or VPC endpoints (`egress: endpoints`: S3 gateway + interface endpoints).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

# Interface endpoints a Fargate task needs to pull from ECR, write logs and read its secrets.
# (Image layers come from S3, through the gateway endpoint.)
TASK_INTERFACE_SERVICES = ("ecr.api", "ecr.dkr", "logs", "secretsmanager")


@dataclass
class NetworkArgs:
    egress: str
    az_count: int = 2
    vpc_cidr: str = "10.40.0.0/16"
    # Existing network (all three set together) instead of a new VPC.
    vpc_id: str | None = None
    private_subnet_ids: Sequence[str] = ()
    public_subnet_ids: Sequence[str] = ()
    # Public subnets (and an internet gateway) are created only when something needs them.
    public_subnets: bool = False
    # Interface endpoints for `egress: endpoints` (other components may need more, e.g. "states").
    interface_services: Sequence[str] = field(default_factory=lambda: list(TASK_INTERFACE_SERVICES))


def subnet_cidrs(vpc_cidr: str, count: int) -> list[str]:
    """Carve `count` equal subnets (prefix + 4) out of the VPC block, lowest first."""
    net = ipaddress.ip_network(vpc_cidr)
    subnets = list(net.subnets(prefixlen_diff=4))
    if count > len(subnets):
        raise ValueError(f"{vpc_cidr} is too small for {count} subnets")
    return [str(s) for s in subnets[:count]]


class Network(pulumi.ComponentResource):
    vpc_id: pulumi.Output[str]
    vpc_cidr: pulumi.Output[str]
    private_subnet_ids: pulumi.Output[list[str]]
    public_subnet_ids: pulumi.Output[list[str]]

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("ontosearch:infra:Network", name, {}, opts)
        child = pulumi.ResourceOptions(parent=self)
        if args.egress not in ("nat", "endpoints"):
            raise ValueError(f"egress must be 'nat' or 'endpoints', got {args.egress!r}")

        private_route_table_ids: list[pulumi.Input[str]] = []
        if args.vpc_id is not None:
            vpc = aws.ec2.get_vpc_output(id=args.vpc_id, opts=pulumi.InvokeOutputOptions(parent=self))
            self.vpc_id = pulumi.Output.from_input(args.vpc_id)
            self.vpc_cidr = vpc.cidr_block
            self.private_subnet_ids = pulumi.Output.from_input(list(args.private_subnet_ids))
            self.public_subnet_ids = pulumi.Output.from_input(list(args.public_subnet_ids))
            if args.egress == "endpoints":
                # The S3 gateway endpoint attaches to the route tables of the given private subnets.
                private_route_table_ids += self._route_tables_of(args.vpc_id, args.private_subnet_ids)
        else:
            self._create_vpc(name, args, child, private_route_table_ids)

        if args.egress == "endpoints":
            self._create_endpoints(name, args, child, private_route_table_ids)
        elif args.vpc_id is None:
            # NAT needs a free S3 gateway too: image layers then bypass NAT data charges.
            self._s3_gateway(name, private_route_table_ids, child)

        self.register_outputs({
            "vpc_id": self.vpc_id,
            "vpc_cidr": self.vpc_cidr,
            "private_subnet_ids": self.private_subnet_ids,
            "public_subnet_ids": self.public_subnet_ids,
        })

    def _route_tables_of(self, vpc_id: str, subnet_ids: Sequence[str]) -> list[pulumi.Output[str]]:
        """The route table each subnet uses: its explicit association, else the VPC's main table.

        A subnet without an explicit association uses the main route table, and EC2 reports no
        association for it, so a lookup by subnet id alone finds nothing (DescribeRouteTables:
        https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeRouteTables.html).
        """
        invoke = pulumi.InvokeOutputOptions(parent=self)
        main = aws.ec2.get_route_table_output(
            vpc_id=vpc_id, filters=[{"name": "association.main", "values": ["true"]}], opts=invoke)
        tables = []
        for subnet_id in subnet_ids:
            explicit = aws.ec2.get_route_tables_output(
                vpc_id=vpc_id, filters=[{"name": "association.subnet-id", "values": [subnet_id]}],
                opts=invoke)
            tables.append(pulumi.Output.all(explicit.ids, main.route_table_id).apply(
                lambda v: v[0][0] if v[0] else v[1]))
        return tables

    def _create_vpc(self, name: str, args: NetworkArgs, child: pulumi.ResourceOptions,
                    private_route_table_ids: list[pulumi.Input[str]]) -> None:
        vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=args.vpc_cidr,
            enable_dns_hostnames=True,  # interface endpoints' private DNS needs both
            enable_dns_support=True,
            tags={"Name": f"{name}-vpc"},
            opts=child,
        )
        azs = aws.get_availability_zones_output(
            state="available", opts=pulumi.InvokeOutputOptions(parent=self))
        cidrs = subnet_cidrs(args.vpc_cidr, 2 * args.az_count)
        need_public = args.public_subnets or args.egress == "nat"

        public_ids: list[pulumi.Output[str]] = []
        nat_gateway_id: pulumi.Output[str] | None = None
        if need_public:
            igw = aws.ec2.InternetGateway(
                f"{name}-igw", vpc_id=vpc.id, tags={"Name": f"{name}-igw"}, opts=child)
            public_table = aws.ec2.RouteTable(
                f"{name}-public-rt", vpc_id=vpc.id, tags={"Name": f"{name}-public"}, opts=child)
            aws.ec2.Route(f"{name}-public-default", route_table_id=public_table.id,
                          destination_cidr_block="0.0.0.0/0", gateway_id=igw.id, opts=child)
            for i in range(args.az_count):
                subnet = aws.ec2.Subnet(
                    f"{name}-public-{i}",
                    vpc_id=vpc.id,
                    cidr_block=cidrs[args.az_count + i],
                    availability_zone=azs.names.apply(lambda names, i=i: names[i % len(names)]),
                    map_public_ip_on_launch=False,  # only the ALB and NAT get public addresses
                    tags={"Name": f"{name}-public-{i}", "tier": "public"},
                    opts=child,
                )
                aws.ec2.RouteTableAssociation(f"{name}-public-{i}", subnet_id=subnet.id,
                                              route_table_id=public_table.id, opts=child)
                public_ids.append(subnet.id)
            if args.egress == "nat":
                # One NAT gateway: the cheap choice; an AZ outage then also cuts egress of the other AZ.
                eip = aws.ec2.Eip(f"{name}-nat-ip", domain="vpc", tags={"Name": f"{name}-nat"}, opts=child)
                nat = aws.ec2.NatGateway(
                    f"{name}-nat", allocation_id=eip.id, subnet_id=public_ids[0],
                    tags={"Name": f"{name}-nat"}, opts=pulumi.ResourceOptions(parent=self, depends_on=[igw]))
                nat_gateway_id = nat.id

        private_ids: list[pulumi.Output[str]] = []
        for i in range(args.az_count):
            subnet = aws.ec2.Subnet(
                f"{name}-private-{i}",
                vpc_id=vpc.id,
                cidr_block=cidrs[i],
                availability_zone=azs.names.apply(lambda names, i=i: names[i % len(names)]),
                map_public_ip_on_launch=False,
                tags={"Name": f"{name}-private-{i}", "tier": "private"},
                opts=child,
            )
            table = aws.ec2.RouteTable(f"{name}-private-rt-{i}", vpc_id=vpc.id,
                                       tags={"Name": f"{name}-private-{i}"}, opts=child)
            if nat_gateway_id is not None:
                aws.ec2.Route(f"{name}-private-default-{i}", route_table_id=table.id,
                              destination_cidr_block="0.0.0.0/0", nat_gateway_id=nat_gateway_id, opts=child)
            aws.ec2.RouteTableAssociation(f"{name}-private-{i}", subnet_id=subnet.id,
                                          route_table_id=table.id, opts=child)
            private_ids.append(subnet.id)
            private_route_table_ids.append(table.id)

        self.vpc_id = vpc.id
        self.vpc_cidr = vpc.cidr_block
        self.private_subnet_ids = pulumi.Output.all(*private_ids).apply(list)
        self.public_subnet_ids = pulumi.Output.all(*public_ids).apply(list)

    def _s3_gateway(self, name: str, route_table_ids: list[pulumi.Input[str]],
                    child: pulumi.ResourceOptions) -> None:
        region = aws.get_region_output(opts=pulumi.InvokeOutputOptions(parent=self))
        aws.ec2.VpcEndpoint(
            f"{name}-s3",
            vpc_id=self.vpc_id,
            service_name=region.region.apply(lambda r: f"com.amazonaws.{r}.s3"),
            vpc_endpoint_type="Gateway",
            # Subnets of an existing VPC may share a route table; each may be named once.
            route_table_ids=pulumi.Output.all(*route_table_ids).apply(lambda ids: sorted(set(ids))),
            tags={"Name": f"{name}-s3"},
            opts=child,
        )

    def _create_endpoints(self, name: str, args: NetworkArgs, child: pulumi.ResourceOptions,
                          route_table_ids: list[pulumi.Input[str]]) -> None:
        self._s3_gateway(name, route_table_ids, child)
        region = aws.get_region_output(opts=pulumi.InvokeOutputOptions(parent=self))
        endpoint_sg = aws.ec2.SecurityGroup(
            f"{name}-endpoints-sg",
            vpc_id=self.vpc_id,
            description="HTTPS from inside the VPC to the interface endpoints",
            ingress=[{"protocol": "tcp", "from_port": 443, "to_port": 443, "cidr_blocks": [self.vpc_cidr],
                      "description": "HTTPS from the VPC"}],
            tags={"Name": f"{name}-endpoints"},
            opts=child,
        )
        for service in args.interface_services:
            aws.ec2.VpcEndpoint(
                f"{name}-{service.replace('.', '-')}",
                vpc_id=self.vpc_id,
                service_name=region.region.apply(lambda r, s=service: f"com.amazonaws.{r}.{s}"),
                vpc_endpoint_type="Interface",
                private_dns_enabled=True,
                subnet_ids=self.private_subnet_ids,
                security_group_ids=[endpoint_sg.id],
                tags={"Name": f"{name}-{service}"},
                opts=child,
            )
