"""The VPC a stage runs in: the default VPC's subnets when none are given, the checks that the subnets can
hold the database and the endpoints, and waiting for Lambda to release its network interfaces on destroy."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from .errors import Problem, error_message


class Network:
    """EC2 reads (and one wait) for one account and region."""

    def __init__(
        self, ec2: Any, region: str, say: Callable[[str], None], sleep: Callable[[float], None], poll_s: float
    ) -> None:
        self._ec2 = ec2
        self._region = region
        self.say = say
        self.sleep = sleep
        self.poll_s = poll_s

    def default_vpc_subnets(self) -> list[str]:
        vpcs = self._ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
        if not vpcs:
            raise Problem(
                f"no --subnet-ids given and region {self._region} has no default VPC",
                "pass --subnet-ids with subnets in two or more availability zones of the VPC for the database",
            )
        vpc = vpcs[0]["VpcId"]
        subnets = self._ec2.describe_subnets(
            Filters=[{"Name": "vpc-id", "Values": [vpc]}, {"Name": "default-for-az", "Values": ["true"]}]
        )["Subnets"]
        # Two zones are what the database needs; each more would add an interface endpoint per service.
        chosen = sorted(subnets, key=lambda s: s["AvailabilityZone"])[:2]
        self.say(f"  no --subnet-ids: using the default VPC {vpc}: {', '.join(s['SubnetId'] for s in chosen)}")
        return [s["SubnetId"] for s in chosen]

    def check(self, subnet_ids: Sequence[str], endpoints: bool) -> tuple[str, list[str]]:  # noqa: C901 - one check per network requirement, each its own message
        """The subnets' VPC and route tables, after checking they can hold a database and the endpoints."""
        try:
            subnets = self._ec2.describe_subnets(SubnetIds=list(subnet_ids))["Subnets"]
        except Exception as error:
            raise Problem(f"cannot find the subnets {', '.join(subnet_ids)}: {error_message(error)}") from error
        vpcs = {s["VpcId"] for s in subnets}
        if len(vpcs) != 1:
            raise Problem(f"the subnets are in different VPCs ({', '.join(sorted(vpcs))})", "pass subnets of one VPC")
        zones = [s["AvailabilityZone"] for s in subnets]
        if len(set(zones)) < 2:
            raise Problem(
                "the subnets are all in one availability zone; an RDS subnet group needs two or more",
                "pass --subnet-ids with subnets in two or more availability zones",
            )
        if endpoints and len(set(zones)) != len(zones):
            raise Problem(
                "two of the subnets are in the same availability zone; an interface endpoint takes one per zone",
                "pass one subnet per zone, or --no-vpc-endpoints if the subnets reach AWS through a NAT gateway",
            )
        vpc = vpcs.pop()
        if endpoints:
            # Interface endpoints with private DNS (how the Lambdas find them) need both attributes on.
            for attribute, key, flag in (
                ("enableDnsSupport", "EnableDnsSupport", "--enable-dns-support"),
                ("enableDnsHostnames", "EnableDnsHostnames", "--enable-dns-hostnames"),
            ):
                answer = self._ec2.describe_vpc_attribute(VpcId=vpc, Attribute=attribute)
                if not answer.get(key, {}).get("Value"):
                    raise Problem(
                        f"VPC {vpc} has {attribute} off; the VPC endpoints' private DNS needs it on",
                        f"aws ec2 modify-vpc-attribute --vpc-id {vpc} {flag} (or deploy with --no-vpc-endpoints "
                        "if the subnets reach AWS through a NAT gateway)",
                    )
        route_tables: list[str] = []
        for subnet in subnet_ids:
            tables = self._ec2.describe_route_tables(Filters=[{"Name": "association.subnet-id", "Values": [subnet]}])[
                "RouteTables"
            ]
            if not tables:  # a subnet without its own table uses the VPC's main one
                tables = self._ec2.describe_route_tables(
                    Filters=[{"Name": "vpc-id", "Values": [vpc]}, {"Name": "association.main", "Values": ["true"]}]
                )["RouteTables"]
            for table in tables:
                if table["RouteTableId"] not in route_tables:
                    route_tables.append(table["RouteTableId"])
        return vpc, route_tables

    def check_no_conflicting_endpoints(self, vpc: str) -> None:
        # Private DNS of a second SQS or Secrets Manager endpoint in one VPC fails the stack late; say so now.
        wanted = {f"com.amazonaws.{self._region}.{name}" for name in ("sqs", "secretsmanager")}
        endpoints = self._ec2.describe_vpc_endpoints(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["VpcEndpoints"]
        taken = [
            f"{e['ServiceName']} ({e['VpcEndpointId']})"
            for e in endpoints
            if e.get("ServiceName") in wanted and e.get("PrivateDnsEnabled") and e.get("State") != "deleted"
        ]
        if taken:
            raise Problem(
                f"VPC {vpc} already has endpoints with private DNS for {', '.join(taken)}",
                "the Lambdas can use those: deploy with --no-vpc-endpoints",
            )

    def wait_for_interfaces_released(self, group: str, timeout_s: float) -> None:
        deadline = time.time() + timeout_s
        last_note = 0.0
        while True:
            interfaces = self._ec2.describe_network_interfaces(Filters=[{"Name": "group-id", "Values": [group]}])[
                "NetworkInterfaces"
            ]
            if not interfaces:
                self.say(f"  none left in {group}")
                return
            if time.time() >= deadline:
                raise Problem(f"{len(interfaces)} network interface(s) still use {group}")
            if time.time() - last_note >= 60:
                last_note = time.time()
                self.say(f"  {len(interfaces)} interface(s) still in use by {group}; waiting")
            self.sleep(self.poll_s)
