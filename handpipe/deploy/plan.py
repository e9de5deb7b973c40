"""What a stage's deploy is asked for and what follows from it without asking AWS: the options and results,
the names of a stage's stacks and functions, the Lambda functions of app.py, and the limits and shares
(database connections, queue visibility, upload size) computed from them."""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import Problem

APP_NAME = "handpipe"
STAGE_MAX_LENGTH = 20
# Every resource name embeds the stage; "local" is the local stack's stage in .chalice/config.json.
RESERVED_STAGES = ("local",)
CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"]
MAIN_TEMPLATE = Path("infra") / "handpipe.yaml"
ECR_TEMPLATE = Path("infra") / "ecr.yaml"
DOCKERFILE = "worker_image/Dockerfile"

# Decorators with which app.py makes a Lambda function of its own (routes all share "api_handler").
CHALICE_HANDLER_DECORATORS = (
    "lambda_function",
    "schedule",
    "on_sqs_message",
    "on_s3_event",
    "on_sns_message",
    "on_cw_event",
    "on_kinesis_record",
    "on_dynamodb_record",
)
API_HANDLER = "api_handler"
CHALICE_DEFAULT_TIMEOUT_S = 60

# AWS advises a queue visibility timeout of at least 6x the timeout of the function its event source feeds.
VISIBILITY_FACTOR = 6
MAX_VISIBILITY_S = 43_200
DEFAULT_WORKER_TIMEOUT_S = 900

DEFAULT_MAX_DB_CONNECTIONS = 40
# How the connections left after one for each other function are shared (each of these gets at least 2).
DB_CONNECTION_WEIGHTS: Mapping[str, int] = {API_HANDLER: 5, "record_events": 3, "plan_jobs": 2, "intake_uploads": 1}
MIN_SHARE = 2
# Functions that never open the database: outside the connection budget, with no reserved concurrency, and
# outside the VPC (deliver_notifications POSTs webhooks to the internet, which the VPC's subnets may not reach).
NO_DATABASE_FUNCTIONS = ("deliver_notifications",)
MIGRATE_TIMEOUT_S = 900

# The worker reads videos with ranged GETs (never whole into /tmp), and above the stage's multipart threshold
# they go up in parts: so the limit is the one handpipe sets, not /tmp's size nor S3's 5 GiB for one PUT.
EPHEMERAL_HEADROOM_MB = 512
MAX_PRESIGNED_PUT_BYTES = 5 * 1024**3  # S3's limit for one PUT: bigger files are multipart uploads
MAX_VIDEO_BYTES = 50 * 1024**3

# Stage environment variables that deploy owns; it rewrites them on every run and leaves the others alone.
MANAGED_ENVIRONMENT = (
    "HANDPIPE_QUEUE_PREFIX",
    "HANDPIPE_BUCKET",
    "HANDPIPE_JOBS_QUEUE_URL",
    "HANDPIPE_WORK_QUEUE_URL",
    "HANDPIPE_DB_SECRET_ARN",
    "HANDPIPE_MAX_IN_FLIGHT",
    "HANDPIPE_MAX_UPLOAD_BYTES",
    "HANDPIPE_STAGE",
    "HANDPIPE_NOTIFY_QUEUE_URL",
    "HANDPIPE_NOTIFY_TOPIC_ARN",
    "HANDPIPE_WEBHOOK_SECRET_ARN",
    "HANDPIPE_UPLOAD_TRIGGER_PREFIX",
)

DEFAULT_LOG_RETENTION_DAYS = 30  # infra/handpipe.yaml's LogRetentionDays default

DEFAULT_THROTTLE_RATE = 20.0  # requests/s per key: well above one client's polling, far below the account's 10,000

DEFAULT_THROTTLE_BURST = 40

DEFAULT_DAILY_QUOTA = 50_000  # requests/day per key


@dataclass
class DeployOptions:
    """What `handpipe deploy` was asked for. None means: keep what the stage has (or the template's default on
    the first deploy), so re-running deploy with no options updates the code and keeps the settings."""

    stage: str
    project_dir: Path
    image_uri: str | None = None  # an image already in ECR: skip the build and the push
    skip_build: bool = False  # keep the image the stage runs (a settings-only update, no Docker needed)
    subnet_ids: list[str] | None = None
    vpc_endpoints: bool | None = None
    database: str | None = None  # "create" or "existing"
    db_secret_arn: str | None = None
    db_security_group_id: str | None = None
    db_instance_class: str | None = None
    db_storage_gb: int | None = None
    db_engine_version: str | None = None
    worker_memory_mb: int | None = None
    worker_timeout_s: int | None = None
    worker_ephemeral_storage_mb: int | None = None
    worker_concurrency: int | None = None
    reserve_concurrency: bool | None = None
    max_db_connections: int | None = None  # None: what the stage's config reserves now, else the default
    cors_origins: str | None = None
    # Per API key, enforced by API Gateway before a request reaches a Lambda, so one caller cannot
    # take the API (and the workers behind it) from the others. None: the plan's current value, else the default.
    throttle_rate: float | None = None  # steady requests per second
    throttle_burst: int | None = None  # requests at once above the steady rate
    daily_quota: int | None = None  # requests per day


@dataclass
class DestroyOptions:
    stage: str
    project_dir: Path
    keep_data: bool = False
    eni_timeout_s: float = 45 * 60  # Lambda releases a deleted function's VPC interfaces within about 20-40 minutes


@dataclass
class DeployResult:
    outputs: dict[str, str]
    image_uri: str
    api_url: str | None
    config_path: Path
    policy_path: Path
    migration: Any = None
    api_key: str | None = None  # the key created for the stage's usage plan on its first deploy
    api_key_path: Path | None = None  # where that key was written (mode 0600); never printed


@dataclass
class DestroyResult:
    removed: list[str] = field(default_factory=list)
    retained: dict[str, str] = field(default_factory=dict)  # what --keep-data kept, by kind


def main_stack_name(stage: str) -> str:
    return f"{APP_NAME}-{stage}"


def ecr_stack_name(stage: str) -> str:
    return f"{APP_NAME}-{stage}-ecr"


def function_name(stage: str, config_name: str) -> str:
    """The deployed name of one of app.py's functions, as Chalice names it (the API handler has no suffix)."""
    return f"{APP_NAME}-{stage}" if config_name == API_HANDLER else f"{APP_NAME}-{stage}-{config_name}"


def usage_plan_name(stage: str) -> str:
    return f"{APP_NAME}-{stage}"


def chalice_functions(app_source: str) -> list[str]:
    """The Lambda functions Chalice makes of app.py, by their names in .chalice/config.json: api_handler for
    the routes and one for each decorated handler. Read from the source, so app.py is never imported here."""
    names: list[str] = []
    for node in ast.walk(ast.parse(app_source)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for decorator in node.decorator_list:
            call = decorator if isinstance(decorator, ast.Call) else None
            target = call.func if call else decorator
            if not (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)):
                continue
            if target.value.id != "app":
                continue
            if target.attr == "route" and API_HANDLER not in names:
                names.insert(0, API_HANDLER)
            elif target.attr in CHALICE_HANDLER_DECORATORS:
                given = [k.value for k in (call.keywords if call else []) if k.arg == "name"]
                name = given[0].value if given and isinstance(given[0], ast.Constant) else node.name
                names.append(str(name))
    return names


def check_stage(stage: str) -> None:
    if stage in RESERVED_STAGES:
        raise Problem(f"the stage {stage!r} belongs to the local stack", "pick another name, e.g. --stage dev")
    valid = (
        0 < len(stage) <= STAGE_MAX_LENGTH
        and stage[0].isascii()
        and stage[0].islower()
        and all(c.isascii() and (c.islower() or c.isdigit() or c == "-") for c in stage)
    )
    if not valid:
        raise Problem(
            f"invalid stage name {stage!r}",
            f"use lower-case letters, digits and '-', starting with a letter, at most {STAGE_MAX_LENGTH} characters",
        )


def min_db_connections(functions: Sequence[str]) -> int:
    functions = [name for name in functions if name not in NO_DATABASE_FUNCTIONS]
    shared = [name for name in functions if name in DB_CONNECTION_WEIGHTS]
    return len(functions) - len(shared) + MIN_SHARE * len(shared)


def split_db_connections(total: int, functions: Sequence[str]) -> dict[str, int]:
    """Reserved concurrency for the Chalice functions so that together they never hold more than `total`
    database connections.

    Each Lambda container holds at most one connection (chalicelib.runtime keeps one per container), so a
    function's reserved concurrency bounds its connections. Functions that need no parallelism (migrate,
    scheduled sweeps) get 1; the rest is shared api_handler 5 : record_events 3 : plan_jobs 2 : intake_uploads 1,
    each at least 2, what rounding leaves going to the API."""
    if total < min_db_connections(functions):
        raise ValueError(f"--max-db-connections must be at least {min_db_connections(functions)}, got {total}")
    singles = {name: 1 for name in functions if name not in DB_CONNECTION_WEIGHTS and name not in NO_DATABASE_FUNCTIONS}
    shared = [name for name in DB_CONNECTION_WEIGHTS if name in functions]
    budget = total - len(singles)
    weight = sum(DB_CONNECTION_WEIGHTS[name] for name in shared)
    shares = {name: max(MIN_SHARE, budget * DB_CONNECTION_WEIGHTS[name] // weight) for name in shared}
    if shares:
        shares[shared[0]] += budget - sum(shares.values())
    return {**shares, **singles}


def visibility_timeout(function_timeout_s: int) -> int:
    return min(MAX_VISIBILITY_S, VISIBILITY_FACTOR * int(function_timeout_s))


def max_upload_bytes(ephemeral_storage_mb: int) -> int:
    """The largest video a stage takes: 50 GiB, in a multipart upload (the worker's /tmp no longer
    bounds it: segments read their byte ranges of the object; `ephemeral_storage_mb` is kept for callers)."""
    return MAX_VIDEO_BYTES
