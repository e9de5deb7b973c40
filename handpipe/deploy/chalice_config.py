"""The Chalice side of a stage: its entry in .chalice/config.json and its IAM policy file (written by deploy),
and what `chalice deploy` recorded (the REST API), read back; the files are the only state kept locally."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import Problem
from .plan import (
    CHALICE_DEFAULT_TIMEOUT_S,
    DEFAULT_LOG_RETENTION_DAYS,
    DEFAULT_MAX_DB_CONNECTIONS,
    MIGRATE_TIMEOUT_S,
    NO_DATABASE_FUNCTIONS,
    function_name,
    max_upload_bytes,
)


def current_db_connections(project_dir: Path, stage: str) -> int:
    """The cap a stage has now: the sum of the reserved concurrency its config gives the functions (a
    re-deploy without --max-db-connections keeps it), or the default for a new stage."""
    config = json.loads((project_dir / ".chalice" / "config.json").read_text())
    functions = config.get("stages", {}).get(stage, {}).get("lambda_functions", {})
    total = sum(int(entry.get("reserved_concurrency") or 0) for entry in functions.values())
    return total or DEFAULT_MAX_DB_CONNECTIONS


def chalice_function_timeout(config: Mapping[str, Any], stage: str, name: str) -> int:
    """A function's lambda_timeout, looked up in the order Chalice uses."""
    stage_config = config.get("stages", {}).get(stage, {})
    for level in (
        stage_config.get("lambda_functions", {}).get(name, {}),
        stage_config,
        config.get("lambda_functions", {}).get(name, {}),
        config,
    ):
        if level.get("lambda_timeout") is not None:
            return int(level["lambda_timeout"])
    return CHALICE_DEFAULT_TIMEOUT_S


def chalice_policy(
    outputs: Mapping[str, str],
    *,
    stage: str,
    region: str,
    account: str,
    functions: Sequence[str],
    partition: str = "aws",
) -> dict[str, Any]:
    """The IAM policy of the Chalice functions (API, consumers, migrate, sweeps), which share one role: only
    this stage's bucket prefixes, queues, secret and log groups."""
    bucket_arn = outputs["BucketArn"]
    trigger_prefix = outputs.get("UploadTriggerPrefix") or "incoming/"  # upload-triggered intake reads these objects
    log_groups = [
        f"arn:{partition}:logs:{region}:{account}:log-group:/aws/lambda/{function_name(stage, name)}:*"
        for name in functions
    ]
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "Logs",
                "Effect": "Allow",
                "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
                "Resource": log_groups,
            },
            {
                # Presigned URLs are signed with these credentials, so PUT and GET cover uploads and downloads.
                "Sid": "VideosAndResults",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
                "Resource": [f"{bucket_arn}/videos/*", f"{bucket_arn}/results/*"],
            },
            {
                # Objects registered by s3_key (put in the bucket by other means) live under incoming/.
                "Sid": "RegisteredObjects",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:DeleteObject"],
                "Resource": sorted({f"{bucket_arn}/incoming/*", f"{bucket_arn}/{trigger_prefix}*"}),
            },
            {
                # Big videos go up in parts: the state of an upload (to resume it), and its abort.
                "Sid": "MultipartUploads",
                "Effect": "Allow",
                "Action": ["s3:ListMultipartUploadParts", "s3:AbortMultipartUpload"],
                "Resource": [f"{bucket_arn}/videos/*"],
            },
            {
                # Listing a video's objects, the health check's HeadBucket, and 404 (not 403) for missing keys.
                "Sid": "Bucket",
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": [bucket_arn],
            },
            {
                "Sid": "SendJobsAndWork",
                "Effect": "Allow",
                "Action": ["sqs:SendMessage", "sqs:GetQueueAttributes"],
                "Resource": [outputs["JobsQueueArn"], outputs["WorkQueueArn"], outputs["NotifyQueueArn"]],
            },
            {
                # deliver_notifications publishes every job end on the stage's topic.
                "Sid": "PublishJobEnds",
                "Effect": "Allow",
                "Action": ["sns:Publish"],
                "Resource": [outputs["JobEndsTopicArn"]],
            },
            {
                # The event source mappings of the SQS consumers poll with the functions' role.
                "Sid": "ConsumeJobsAndEvents",
                "Effect": "Allow",
                "Action": [
                    "sqs:ReceiveMessage",
                    "sqs:DeleteMessage",
                    "sqs:GetQueueAttributes",
                    "sqs:ChangeMessageVisibility",
                ],
                "Resource": [
                    outputs["JobsQueueArn"],
                    outputs["EventsQueueArn"],
                    outputs["NotifyQueueArn"],
                    outputs["UploadsQueueArn"],
                ],
            },
            {
                "Sid": "DatabaseSecret",
                "Effect": "Allow",
                "Action": ["secretsmanager:GetSecretValue"],
                "Resource": [outputs["DbSecretArn"]],
            },
            {
                # The master secret the owners' webhook signing secrets are derived from.
                "Sid": "WebhookSecret",
                "Effect": "Allow",
                "Action": ["secretsmanager:GetSecretValue"],
                "Resource": [outputs["WebhookSecretArn"]],
            },
            {
                # What Lambda needs to attach the functions to the VPC; these actions take no resource ARNs.
                "Sid": "VpcNetworkInterfaces",
                "Effect": "Allow",
                "Action": [
                    "ec2:CreateNetworkInterface",
                    "ec2:DescribeNetworkInterfaces",
                    "ec2:DeleteNetworkInterface",
                    "ec2:AssignPrivateIpAddresses",
                    "ec2:UnassignPrivateIpAddresses",
                ],
                "Resource": "*",
            },
        ],
    }


def chalice_stage_config(
    current: Mapping[str, Any],
    outputs: Mapping[str, str],
    *,
    stage: str,
    functions: Sequence[str],
    reserved: Mapping[str, int] | None,
) -> dict[str, Any]:
    """The stage's entry in .chalice/config.json: `current` with the keys deploy owns rewritten."""
    config = json.loads(json.dumps(current))  # a deep copy; keep whatever else the user put there
    config.setdefault("api_gateway_stage", "api")
    config["autogen_policy"] = False
    config["iam_policy_file"] = f"policy-{stage}.json"
    config["subnet_ids"] = [s for s in outputs["SubnetIds"].split(",") if s]
    config["security_group_ids"] = [outputs["LambdaSecurityGroupId"]]
    environment = dict(config.get("environment_variables", {}))
    # Credentials come from Secrets Manager at run time, never from the stage's plain config.
    environment.pop("HANDPIPE_DB_URL", None)
    environment.update(
        {
            "HANDPIPE_QUEUE_PREFIX": outputs["QueuePrefix"],
            "HANDPIPE_BUCKET": outputs["BucketName"],
            "HANDPIPE_JOBS_QUEUE_URL": outputs["JobsQueueUrl"],
            "HANDPIPE_WORK_QUEUE_URL": outputs["WorkQueueUrl"],
            "HANDPIPE_DB_SECRET_ARN": outputs["DbSecretArn"],
            "HANDPIPE_MAX_IN_FLIGHT": outputs["WorkerConcurrency"],
            "HANDPIPE_MAX_UPLOAD_BYTES": str(max_upload_bytes(int(outputs["WorkerEphemeralStorageMB"]))),
            "HANDPIPE_STAGE": stage,  # the "stage" dimension of the app's metrics, as the worker's
            "HANDPIPE_NOTIFY_QUEUE_URL": outputs["NotifyQueueUrl"],
            "HANDPIPE_NOTIFY_TOPIC_ARN": outputs["JobEndsTopicArn"],
            "HANDPIPE_WEBHOOK_SECRET_ARN": outputs["WebhookSecretArn"],
            "HANDPIPE_UPLOAD_TRIGGER_PREFIX": outputs.get("UploadTriggerPrefix") or "incoming/",
        }
    )
    config["environment_variables"] = environment
    # The functions' log groups expire as the worker's does (the stack's LogRetentionDays).
    config["log_retention_in_days"] = int(outputs.get("LogRetentionDays") or DEFAULT_LOG_RETENTION_DAYS)
    per_function = {name: dict(value) for name, value in config.get("lambda_functions", {}).items()}
    if "migrate" in functions:
        # Migrations can run long; reserved concurrency 1 keeps two from fighting over the schema.
        per_function.setdefault("migrate", {})["lambda_timeout"] = MIGRATE_TIMEOUT_S
    for name in functions:
        entry = per_function.setdefault(name, {})
        if name in NO_DATABASE_FUNCTIONS:
            # No connection to bound, and out of the VPC: it reaches SQS, SNS, Secrets Manager and webhooks directly.
            entry.pop("reserved_concurrency", None)
            entry["subnet_ids"], entry["security_group_ids"] = [], []
        elif reserved is None:
            entry.pop("reserved_concurrency", None)
        else:
            entry["reserved_concurrency"] = reserved[name]
    config["lambda_functions"] = per_function
    return config


def write_chalice_stage(
    project_dir: Path,
    stage: str,
    outputs: Mapping[str, str],
    *,
    region: str,
    account: str,
    functions: Sequence[str],
    reserved: Mapping[str, int] | None,
) -> tuple[Path, Path]:
    """Write the stage into .chalice/config.json and its policy into .chalice/policy-STAGE.json."""
    chalice_dir = project_dir / ".chalice"
    config_path = chalice_dir / "config.json"
    config = json.loads(config_path.read_text())
    stages = config.setdefault("stages", {})
    stages[stage] = chalice_stage_config(
        stages.get(stage, {}), outputs, stage=stage, functions=functions, reserved=reserved
    )
    policy_path = chalice_dir / f"policy-{stage}.json"
    partition = outputs["BucketArn"].split(":")[1]
    policy = chalice_policy(
        outputs, stage=stage, region=region, account=account, functions=functions, partition=partition
    )
    # Written to a temporary name first, so an interrupted deploy never leaves half a config behind.
    for path, document in ((policy_path, policy), (config_path, config)):
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(document, indent=2) + "\n")
        temporary.replace(path)
    return config_path, policy_path


def deployed_rest_api(project_dir: Path, stage: str) -> dict[str, Any]:
    """What `chalice deploy` recorded of the stage's REST API (rest_api_id, rest_api_url), if anything."""
    deployed = project_dir / ".chalice" / "deployed" / f"{stage}.json"
    if not deployed.is_file():
        return {}
    for resource in json.loads(deployed.read_text()).get("resources", []):
        if resource.get("name") == "rest_api":
            return dict(resource)
    return {}


def api_url(project_dir: Path, stage: str) -> str | None:
    url = deployed_rest_api(project_dir, stage).get("rest_api_url")
    return str(url) if url else None


def stage_environment(config: Mapping[str, Any], stage: str) -> dict[str, str]:
    """The environment Chalice gives the stage's functions (and app.py at packaging): top level, then stage."""
    return {
        **config.get("environment_variables", {}),
        **config.get("stages", {}).get(stage, {}).get("environment_variables", {}),
    }


def check_auth_mode(project: Path, stage: str, environ: Mapping[str, str]) -> None:
    """An AWS stage must check its callers: HANDPIPE_AUTH=none would leave the API open to the internet."""
    config_file = project / ".chalice" / "config.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    for where, mode in (
        (f".chalice/config.json (stage {stage})", stage_environment(config, stage).get("HANDPIPE_AUTH")),
        ("your environment", environ.get("HANDPIPE_AUTH")),
    ):
        if mode == "none":
            raise Problem(
                f"HANDPIPE_AUTH=none in {where}: an AWS stage would answer anyone on the internet",
                "use api_key (the default) or iam; HANDPIPE_AUTH=none is only for a local stack (handpipe up)",
            )
