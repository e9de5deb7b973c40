"""`handpipe deploy` and `handpipe destroy`: their flags, and the translation of a deploy's failures into
the CLI's errors. The work itself is handpipe.deploy's, which knows nothing of the command line."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..deploy.clients import AwsClients, ProcessRunner
from ..deploy.errors import DeployError, Problem
from ..deploy.plan import (
    DEFAULT_DAILY_QUOTA,
    DEFAULT_MAX_DB_CONNECTIONS,
    DEFAULT_THROTTLE_BURST,
    DEFAULT_THROTTLE_RATE,
    MIGRATE_TIMEOUT_S,
    DeployOptions,
    DestroyOptions,
)
from ..deploy.sequence import Deployment
from .errors import CliError


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage", required=True, help="the stage, e.g. dev or prod")
    parser.add_argument("--region", help="AWS region (default: your AWS configuration's)")
    parser.add_argument("--profile", help="AWS profile (default: your AWS configuration's)")
    parser.add_argument("--project-dir", default=".", help="the handpipe project (default: the current directory)")


def add_commands(subparsers: Any) -> None:
    """Register `deploy` and `destroy` on the `handpipe` command's subparsers."""
    deploy = subparsers.add_parser(
        "deploy",
        help="deploy a stage to AWS (stacks, worker image, chalice deploy, migrations)",
        description="Build and push the worker image, create or update the CloudFormation stacks, write the "
        "Chalice stage config and IAM policy, run `chalice deploy` and the migrations. Re-run it to update; "
        "options left out keep the stage's current settings. See docs/deploy.md.",
        epilog="examples:\n  handpipe deploy --stage dev\n"
        "  handpipe deploy --stage prod --worker-concurrency 50 --skip-build",
    )
    _common_arguments(deploy)
    image = deploy.add_argument_group("worker")
    built = image.add_mutually_exclusive_group()
    built.add_argument("--image-uri", help="use this image already in ECR instead of building one")
    built.add_argument(
        "--skip-build", action="store_true", help="keep the image the stage runs (settings-only update, no Docker)"
    )
    image.add_argument("--worker-memory", type=_positive, metavar="MB", help="worker memory (default 3008)")
    image.add_argument("--worker-timeout", type=_positive, metavar="S", help="worker timeout, up to 900 (default 900)")
    image.add_argument(
        "--worker-ephemeral-storage", type=_positive, metavar="MB", help="worker /tmp, 512-10240 (default 2560)"
    )
    image.add_argument("--worker-concurrency", type=_positive, metavar="N", help="workers at once (default 20)")
    network = deploy.add_argument_group("network")
    network.add_argument(
        "--subnet-ids", help="comma-separated subnets in 2+ zones (default: the stage's, or the default VPC's)"
    )
    endpoints = network.add_mutually_exclusive_group()
    endpoints.add_argument(
        "--vpc-endpoints", dest="vpc_endpoints", action="store_true", default=None, help="create endpoints (default)"
    )
    endpoints.add_argument(
        "--no-vpc-endpoints",
        dest="vpc_endpoints",
        action="store_false",
        help="the subnets reach SQS, S3 and Secrets Manager through a NAT gateway or existing endpoints",
    )
    database = deploy.add_argument_group("database")
    database.add_argument("--database", choices=["create", "existing"], help="a new RDS MySQL (default) or yours")
    database.add_argument("--db-secret-arn", help="(existing) secret with host, port, username, password, dbname")
    database.add_argument("--db-security-group-id", help="(existing) the database's security group, to admit the app")
    database.add_argument("--db-instance-class", help="(create) default db.t4g.micro")
    database.add_argument("--db-storage", type=_positive, metavar="GB", help="(create) default 20")
    database.add_argument("--db-engine-version", help="(create) MySQL version, default 8.4")
    database.add_argument(
        "--max-db-connections",
        type=_positive,
        metavar="N",
        help=f"cap on the app's database connections, split into reserved concurrency (default: the stage's "
        f"current cap, {DEFAULT_MAX_DB_CONNECTIONS} for a new stage); see docs/deploy.md",
    )
    reservation = database.add_mutually_exclusive_group()
    reservation.add_argument(
        "--reserved-concurrency",
        dest="reserve_concurrency",
        action="store_true",
        default=None,
        help="reserve concurrency for the functions (the default)",
    )
    reservation.add_argument(
        "--no-reserved-concurrency",
        dest="reserve_concurrency",
        action="store_false",
        help="reserve no concurrency (for accounts with a low concurrency limit); connections are then not capped",
    )
    deploy.add_argument("--cors-origins", help="comma-separated origins allowed to upload from a browser (default *)")
    limits = deploy.add_argument_group("API limits per key (the usage plan; api_key auth)")
    limits.add_argument(
        "--throttle-rate",
        type=float,
        metavar="RPS",
        help=f"steady requests per second (default {DEFAULT_THROTTLE_RATE:g})",
    )
    limits.add_argument(
        "--throttle-burst", type=_positive, metavar="N", help=f"burst above the rate (default {DEFAULT_THROTTLE_BURST})"
    )
    limits.add_argument(
        "--daily-quota", type=_positive, metavar="N", help=f"requests per day (default {DEFAULT_DAILY_QUOTA})"
    )
    deploy.set_defaults(run=cmd_deploy)

    destroy = subparsers.add_parser(
        "destroy",
        help="remove a stage from AWS (chalice delete, then the stacks)",
        description="Run `chalice delete`, then delete the stage's stacks. The bucket and the database are "
        "deleted too unless --keep-data is given.",
        epilog="examples:\n  handpipe destroy --stage dev\n  handpipe destroy --stage prod --keep-data",
    )
    _common_arguments(destroy)
    destroy.add_argument("--keep-data", action="store_true", help="keep the bucket and the database (and its secret)")
    destroy.set_defaults(run=cmd_destroy)


def _real_deployment(args: argparse.Namespace) -> Deployment:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError

    try:
        session = boto3.session.Session(profile_name=args.profile, region_name=args.region)
    except BotoCoreError as error:  # e.g. an unknown --profile
        raise Problem(f"cannot use the AWS configuration: {error}", "check --profile and ~/.aws/config") from error
    aws = AwsClients.from_session(session)
    # A migration may run up to the function's timeout; never retry it on a read timeout.
    lambda_client = session.client(
        "lambda", config=Config(read_timeout=MIGRATE_TIMEOUT_S + 30, retries={"max_attempts": 1})
    )

    def docker_client() -> Any:
        import docker

        return docker.from_env(timeout=900)

    return Deployment(aws, ProcessRunner(lambda_client), docker_client)


def cmd_deploy(args: argparse.Namespace) -> int:
    options = DeployOptions(
        stage=args.stage,
        project_dir=Path(args.project_dir),
        image_uri=args.image_uri,
        skip_build=args.skip_build,
        subnet_ids=[s.strip() for s in args.subnet_ids.split(",") if s.strip()] if args.subnet_ids else None,
        vpc_endpoints=args.vpc_endpoints,
        database=args.database,
        db_secret_arn=args.db_secret_arn,
        db_security_group_id=args.db_security_group_id,
        db_instance_class=args.db_instance_class,
        db_storage_gb=args.db_storage,
        db_engine_version=args.db_engine_version,
        worker_memory_mb=args.worker_memory,
        worker_timeout_s=args.worker_timeout,
        worker_ephemeral_storage_mb=args.worker_ephemeral_storage,
        worker_concurrency=args.worker_concurrency,
        reserve_concurrency=args.reserve_concurrency,
        max_db_connections=args.max_db_connections,
        cors_origins=args.cors_origins,
        throttle_rate=args.throttle_rate,
        throttle_burst=args.throttle_burst,
        daily_quota=args.daily_quota,
    )
    return _reported("deploy", lambda: _real_deployment(args).deploy(options))


def cmd_destroy(args: argparse.Namespace) -> int:
    options = DestroyOptions(stage=args.stage, project_dir=Path(args.project_dir), keep_data=args.keep_data)
    return _reported("destroy", lambda: _real_deployment(args).destroy(options))


def _reported(verb: str, work: Callable[[], object]) -> int:
    """Run deploy or destroy; their failures become CliErrors, printed without a traceback."""
    try:
        work()
    except DeployError as error:
        raise CliError(f"{verb} {error}") from None
    except Problem as error:
        raise CliError(f"{error}\n  what to do: {error.hint}" if error.hint else str(error)) from None
    return 0
