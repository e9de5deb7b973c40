"""The parameters of the main stack (infra/handpipe.yaml) for one deploy: the one place that reconciles the
options given, the stage's current values and the template's defaults."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .chalice_config import chalice_function_timeout
from .errors import Problem, error_message
from .network import Network
from .plan import DEFAULT_WORKER_TIMEOUT_S, MAIN_TEMPLATE, DeployOptions, visibility_timeout
from .stacks import Stacks
from .webhook_secret import ensure_webhook_secret


def main_parameters(  # noqa: C901 - one branch per optional template parameter
    options: DeployOptions,
    previous: Mapping[str, str],
    project: Path,
    *,
    stacks: Stacks,
    network: Network,
    secretsmanager: Any,
) -> dict[str, str]:
    """The main stack's parameters: what was asked, else what the stage has, else the template's defaults;
    the database mode and secret checked, the queues' visibility following their consumers' timeouts."""
    config = json.loads((project / ".chalice" / "config.json").read_text())
    stage = options.stage
    given: dict[str, Any] = {
        "Stage": stage,
        "WorkerMemoryMB": options.worker_memory_mb,
        "WorkerTimeoutSeconds": options.worker_timeout_s,
        "WorkerEphemeralStorageMB": options.worker_ephemeral_storage_mb,
        "WorkerConcurrency": options.worker_concurrency,
        "DbInstanceClass": options.db_instance_class,
        "DbAllocatedStorageGB": options.db_storage_gb,
        "DbEngineVersion": options.db_engine_version,
        "UploadCorsOrigins": options.cors_origins,
    }
    if options.reserve_concurrency is not None:
        given["ReserveConcurrency"] = "true" if options.reserve_concurrency else "false"
    if options.vpc_endpoints is not None:
        given["CreateVpcEndpoints"] = "true" if options.vpc_endpoints else "false"

    # The database: an existing one when its secret is given, else what the stage had, else a new one.
    mode = options.database or ("existing" if options.db_secret_arn else previous.get("DatabaseMode", "create"))
    if mode not in ("create", "existing"):
        raise Problem(f"unknown database mode {mode!r}", "use --database create or --database existing")
    if mode == "existing" and previous.get("DatabaseMode") == "create":
        raise Problem(
            "the stage has its own database; switching to an existing one would remove it from the stack",
            "keep --database create, or `handpipe destroy` the stage (--keep-data keeps the data) and deploy anew",
        )
    given["DatabaseMode"] = mode
    if options.db_security_group_id:
        given["ExistingDbSecurityGroupId"] = options.db_security_group_id
    if mode == "existing":
        secret = options.db_secret_arn or previous.get("ExistingDbSecretArn")
        if not secret:
            raise Problem(
                "--database existing needs the database's secret",
                "pass --db-secret-arn ARN: a Secrets Manager secret with host, port, username, password, dbname",
            )
        try:
            described = secretsmanager.describe_secret(SecretId=secret)
        except Exception as error:
            raise Problem(
                f"cannot find the database secret {secret}: {error_message(error)}",
                "pass the ARN (or name) of a secret in this account and region (--db-secret-arn)",
            ) from error
        # The full ARN, also when a name was given: the policy grants exactly this secret.
        given["ExistingDbSecretArn"] = described["ARN"]

    given["WebhookSecretArn"] = ensure_webhook_secret(secretsmanager, stage)

    # The queues' visibility timeouts follow their consumers' timeouts.
    worker_timeout = int(options.worker_timeout_s or previous.get("WorkerTimeoutSeconds") or DEFAULT_WORKER_TIMEOUT_S)
    given["WorkVisibilityTimeoutSeconds"] = visibility_timeout(worker_timeout)
    given["JobsVisibilityTimeoutSeconds"] = visibility_timeout(chalice_function_timeout(config, stage, "plan_jobs"))
    given["EventsVisibilityTimeoutSeconds"] = visibility_timeout(
        chalice_function_timeout(config, stage, "record_events")
    )
    given["NotifyVisibilityTimeoutSeconds"] = visibility_timeout(
        chalice_function_timeout(config, stage, "deliver_notifications")
    )
    given["UploadsVisibilityTimeoutSeconds"] = visibility_timeout(
        chalice_function_timeout(config, stage, "intake_uploads")
    )

    endpoints = (given.get("CreateVpcEndpoints") or previous.get("CreateVpcEndpoints", "true")) == "true"
    subnets = options.subnet_ids or [s for s in previous.get("SubnetIds", "").split(",") if s]
    if not subnets:
        subnets = network.default_vpc_subnets()
    vpc, route_tables = network.check(subnets, endpoints)
    given.update(VpcId=vpc, SubnetIds=",".join(subnets), RouteTableIds=",".join(route_tables))
    if endpoints and previous.get("CreateVpcEndpoints") != "true":
        network.check_no_conflicting_endpoints(vpc)
    return stacks.full_parameters(project / MAIN_TEMPLATE, given, previous)
