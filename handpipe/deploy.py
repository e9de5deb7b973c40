"""`handpipe deploy` and `handpipe destroy`: put a stage into an AWS account (worker image, CloudFormation stacks,
Chalice stage config and IAM policy, `chalice deploy`, migrations) and take it out again."""

from __future__ import annotations

import argparse
import ast
import base64
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

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
DB_CONNECTION_WEIGHTS: Mapping[str, int] = {API_HANDLER: 5, "record_events": 3, "plan_jobs": 2}
MIN_SHARE = 2
MIGRATE_TIMEOUT_S = 900

# The worker keeps the whole video in /tmp, next to the model files and the part it writes.
EPHEMERAL_HEADROOM_MB = 512
MAX_PRESIGNED_PUT_BYTES = 5 * 1024**3  # S3's limit for one PUT, which is how videos are uploaded

# Stage environment variables that deploy owns; it rewrites them on every run and leaves the others alone.
MANAGED_ENVIRONMENT = (
    "HANDPIPE_QUEUE_PREFIX",
    "HANDPIPE_BUCKET",
    "HANDPIPE_JOBS_QUEUE_URL",
    "HANDPIPE_WORK_QUEUE_URL",
    "HANDPIPE_DB_SECRET_ARN",
    "HANDPIPE_MAX_IN_FLIGHT",
    "HANDPIPE_MAX_UPLOAD_BYTES",
)


class DeployError(Exception):
    """A step failed. The text names the step, what went wrong and what to do about it."""


class Problem(Exception):
    """Raised inside a step when it knows better than the step's general advice what to do."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


# ------------------------------------------------------------------------------------------- interfaces


@dataclass(frozen=True)
class InvokeResult:
    function_error: str | None  # Lambda's FunctionError ("Unhandled") or None
    payload: Any


class Runner(Protocol):
    """What deploy runs outside boto3: the chalice command and a synchronous Lambda invocation."""

    def chalice(self, args: Sequence[str], *, cwd: Path, env: Mapping[str, str]) -> None: ...

    def invoke(self, function_name: str, payload: Mapping[str, Any]) -> InvokeResult: ...


class ProcessRunner:
    """Runs chalice as a subprocess (its output goes to the terminal) and invokes with a boto3 Lambda client."""

    def __init__(self, lambda_client: Any, chalice_command: Sequence[str] | None = None) -> None:
        self._lambda = lambda_client
        self._command = list(chalice_command) if chalice_command else None

    def _chalice_command(self) -> list[str]:
        if self._command:
            return self._command
        # Prefer the chalice of this interpreter's environment (.venv), which has the project's pins.
        beside = Path(sys.executable).with_name("chalice")
        found = str(beside) if beside.exists() else shutil.which("chalice")
        if not found:
            raise Problem("the chalice command is not installed", "run ./setup.sh, which installs it into .venv")
        return [found]

    def chalice(self, args: Sequence[str], *, cwd: Path, env: Mapping[str, str]) -> None:
        command = [*self._chalice_command(), *args]
        completed = subprocess.run(command, cwd=cwd, env={**os.environ, **env}, check=False)
        if completed.returncode != 0:
            raise RuntimeError(f"`chalice {' '.join(args)}` exited with status {completed.returncode}")

    def invoke(self, function_name: str, payload: Mapping[str, Any]) -> InvokeResult:
        response = self._lambda.invoke(
            FunctionName=function_name,
            InvocationType="RequestResponse",
            Payload=json.dumps(payload).encode(),
        )
        raw = response["Payload"].read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        return InvokeResult(function_error=response.get("FunctionError"), payload=body)


@dataclass
class AwsClients:
    """The boto3 clients deploy and destroy use, for one account and region."""

    cloudformation: Any
    ecr: Any
    ec2: Any
    s3: Any
    sts: Any
    secretsmanager: Any
    apigateway: Any
    region: str
    profile: str | None = None  # passed on to the chalice subprocess, which must act as the same identity

    @classmethod
    def from_session(cls, session: Any, endpoint_url: str | None = None) -> AwsClients:
        region = session.region_name
        if not region:
            raise Problem("no AWS region is configured", "pass --region, or set AWS_REGION / AWS_DEFAULT_REGION")

        def client(name: str) -> Any:
            return session.client(name, endpoint_url=endpoint_url) if endpoint_url else session.client(name)

        return cls(
            cloudformation=client("cloudformation"),
            ecr=client("ecr"),
            ec2=client("ec2"),
            s3=client("s3"),
            sts=client("sts"),
            secretsmanager=client("secretsmanager"),
            apigateway=client("apigateway"),
            region=region,
            profile=session.profile_name if session.profile_name != "default" else None,
        )

    def environment(self) -> dict[str, str]:
        """What a subprocess (chalice) needs in its environment to work in the same account and region."""
        env = {"AWS_DEFAULT_REGION": self.region, "AWS_REGION": self.region}
        if self.profile:
            env["AWS_PROFILE"] = self.profile
        return env


# ------------------------------------------------------------------------------------------- options


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


# ------------------------------------------------------------------------------------------- pure parts


def min_db_connections(functions: Sequence[str]) -> int:
    shared = [name for name in functions if name in DB_CONNECTION_WEIGHTS]
    return len(functions) - len(shared) + MIN_SHARE * len(shared)


def split_db_connections(total: int, functions: Sequence[str]) -> dict[str, int]:
    """Reserved concurrency for the Chalice functions so that together they never hold more than `total`
    database connections.

    Each Lambda container holds at most one connection (chalicelib.runtime keeps one per container), so a
    function's reserved concurrency bounds its connections. Functions that need no parallelism (migrate,
    scheduled sweeps) get 1; the rest is shared api_handler 5 : record_events 3 : plan_jobs 2, each at least 2,
    what rounding leaves going to the API."""
    if total < min_db_connections(functions):
        raise ValueError(f"--max-db-connections must be at least {min_db_connections(functions)}, got {total}")
    singles = {name: 1 for name in functions if name not in DB_CONNECTION_WEIGHTS}
    shared = [name for name in DB_CONNECTION_WEIGHTS if name in functions]
    budget = total - len(singles)
    weight = sum(DB_CONNECTION_WEIGHTS[name] for name in shared)
    shares = {name: max(MIN_SHARE, budget * DB_CONNECTION_WEIGHTS[name] // weight) for name in shared}
    if shares:
        shares[shared[0]] += budget - sum(shares.values())
    return {**shares, **singles}


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


def visibility_timeout(function_timeout_s: int) -> int:
    return min(MAX_VISIBILITY_S, VISIBILITY_FACTOR * int(function_timeout_s))


def max_upload_bytes(ephemeral_storage_mb: int) -> int:
    """The largest video a worker can hold in /tmp, and S3 takes in one presigned PUT."""
    return min(MAX_PRESIGNED_PUT_BYTES, (int(ephemeral_storage_mb) - EPHEMERAL_HEADROOM_MB) * 1024**2)


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
                "Resource": [f"{bucket_arn}/incoming/*"],
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
                "Resource": [outputs["JobsQueueArn"], outputs["WorkQueueArn"]],
            },
            {
                # The event source mappings of plan_jobs and record_events poll with the functions' role.
                "Sid": "ConsumeJobsAndEvents",
                "Effect": "Allow",
                "Action": [
                    "sqs:ReceiveMessage",
                    "sqs:DeleteMessage",
                    "sqs:GetQueueAttributes",
                    "sqs:ChangeMessageVisibility",
                ],
                "Resource": [outputs["JobsQueueArn"], outputs["EventsQueueArn"]],
            },
            {
                "Sid": "DatabaseSecret",
                "Effect": "Allow",
                "Action": ["secretsmanager:GetSecretValue"],
                "Resource": [outputs["DbSecretArn"]],
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
        }
    )
    config["environment_variables"] = environment
    per_function = {name: dict(value) for name, value in config.get("lambda_functions", {}).items()}
    if "migrate" in functions:
        # Migrations can run long; reserved concurrency 1 keeps two from fighting over the schema.
        per_function.setdefault("migrate", {})["lambda_timeout"] = MIGRATE_TIMEOUT_S
    for name in functions:
        entry = per_function.setdefault(name, {})
        if reserved is None:
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


def load_template(text: str) -> dict[str, Any]:
    """A CloudFormation YAML template as data, its short-form tags (!Ref, !Sub, ...) read as their long forms."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
        if isinstance(node, yaml.ScalarNode):
            value: Any = loader.construct_scalar(node)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
        if suffix == "Ref":
            return {"Ref": value}
        if suffix == "GetAtt" and isinstance(value, str):
            return {"Fn::GetAtt": value.split(".", 1)}
        return {f"Fn::{suffix}": value}

    Loader.add_multi_constructor("!", intrinsic)
    document: dict[str, Any] = yaml.load(text, Loader=Loader)  # a SafeLoader plus tag constructors
    return document


def template_parameters(template_text: str) -> dict[str, dict[str, Any]]:
    return dict(load_template(template_text).get("Parameters", {}))


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


def usage_plan_name(stage: str) -> str:
    return f"{APP_NAME}-{stage}"


DEFAULT_THROTTLE_RATE = 20.0  # requests/s per key: well above one client's polling, far below the account's 10,000
DEFAULT_THROTTLE_BURST = 40
DEFAULT_DAILY_QUOTA = 50_000  # requests/day per key


def api_key_path(project: Path, stage: str) -> Path:
    """Where deploy leaves the key it made for a stage (.handpipe/ is git-ignored)."""
    return project / ".handpipe" / f"api-key-{stage}"


def write_secret(path: Path, value: str) -> None:
    """Write a secret readable by its owner only: created 0600, so it is never readable by others,
    not even between the write and a chmod."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    os.chmod(path, 0o600)  # an existing file keeps its mode through O_CREAT


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


def _error_code(error: Exception) -> str:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _error_message(error: Exception) -> str:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Message", error))


# ------------------------------------------------------------------------------------------- the work


class Deployment:
    """Deploys or destroys one stage. Every client is injected: boto3 clients, a docker SDK client factory
    (called only when an image is built), a runner for chalice and Lambda invocations, and the output."""

    def __init__(
        self,
        aws: AwsClients,
        runner: Runner,
        docker: Callable[[], Any] | None = None,
        *,
        say: Callable[[str], None] = print,
        sleep: Callable[[float], None] = time.sleep,
        poll_s: float = 10.0,
    ) -> None:
        self.aws = aws
        self.runner = runner
        self._docker_factory = docker
        self.say = say
        self.sleep = sleep
        self.poll_s = poll_s
        self._step_number = 0
        self._step_total = 0
        self._account: str | None = None

    # -- steps ----------------------------------------------------------------------------------

    @contextmanager
    def _step(self, title: str, hint: str) -> Iterator[None]:
        self._step_number += 1
        where = f"step {self._step_number}/{self._step_total}"
        self.say(f"[{self._step_number}/{self._step_total}] {title}")
        try:
            yield
        except DeployError:
            raise
        except KeyboardInterrupt:
            raise DeployError(f"{where} ({title}) was interrupted; run the command again to finish") from None
        except Problem as problem:
            raise DeployError(f"{where} ({title}) failed: {problem}\n  what to do: {problem.hint or hint}") from problem
        except Exception as error:  # anything else: name the step and give its advice
            message = _error_message(error) if _error_code(error) else str(error) or type(error).__name__
            raise DeployError(f"{where} ({title}) failed: {message}\n  what to do: {hint}") from error

    def _begin(self, total: int) -> None:
        self._step_number = 0
        self._step_total = total

    @property
    def account(self) -> str:
        if self._account is None:
            self._account = str(self.aws.sts.get_caller_identity()["Account"])
        return self._account

    # -- deploy ---------------------------------------------------------------------------------

    def deploy(self, options: DeployOptions) -> DeployResult:
        stage = options.stage
        project = options.project_dir.resolve()
        stack_name = main_stack_name(stage)
        self._begin(9)

        with self._step(
            f"checking the project, the AWS account and the network for stage {stage!r}",
            "configure AWS credentials (aws configure, or AWS_PROFILE / --profile) for the target account",
        ):
            check_stage(stage)
            check_auth_mode(project, stage, os.environ)
            for needed in ("app.py", ".chalice/config.json", DOCKERFILE, str(MAIN_TEMPLATE), str(ECR_TEMPLATE)):
                if not (project / needed).exists():
                    raise Problem(
                        f"{project / needed} is missing", "run from the handpipe project or pass --project-dir"
                    )
            functions = chalice_functions((project / "app.py").read_text())
            self.say(f"  account {self.account}, region {self.aws.region}")
            self.say(f"  Chalice functions in app.py: {', '.join(functions)}")
            previous = self._previous_parameters(stack_name)
            parameters = self._main_parameters(options, previous, project)
            reserve = parameters.get("ReserveConcurrency", "true") == "true"
            connections = options.max_db_connections or current_db_connections(project, stage)
            if reserve and connections < min_db_connections(functions):
                raise Problem(
                    f"--max-db-connections {connections} is too few for {len(functions)} functions",
                    f"pass at least {min_db_connections(functions)}, or --no-reserved-concurrency",
                )

        with self._step(
            f"image repository (stack {ecr_stack_name(stage)})",
            f"look at the stack's events in the CloudFormation console ({ecr_stack_name(stage)})",
        ):
            ecr_outputs = self._apply_stack(
                ecr_stack_name(stage),
                project / ECR_TEMPLATE,
                self._full_parameters(project / ECR_TEMPLATE, {"Stage": stage}),
            )
            repository = ecr_outputs["RepositoryUri"]

        if options.image_uri or options.skip_build:
            with self._step("worker image: not building (--image-uri or --skip-build)", "check --image-uri"):
                image_uri = options.image_uri or previous.get("WorkerImageUri", "")
                if not image_uri:
                    raise Problem("the stage has no image yet", "deploy once without --skip-build")
                self.say(f"  {image_uri}")
            with self._step("pushing the worker image: nothing to push", "check --image-uri"):
                pass
        else:
            docker_client = None
            with self._step(
                f"building the worker image (docker build -f {DOCKERFILE} .)",
                f"start Docker and check that `docker build -f {DOCKERFILE} .` works in {project}",
            ):
                docker_client = self._docker()
                tag = self._build(docker_client, project, repository, stage)
            with self._step(
                f"pushing the worker image to {repository}",
                "check that your credentials may push to ECR (ecr:GetAuthorizationToken, ecr:*Layer*, ecr:PutImage)",
            ):
                image_uri = self._push(docker_client, repository, tag)
                self.say(f"  {image_uri}")

        parameters["WorkerImageUri"] = image_uri
        creating_db = parameters["DatabaseMode"] == "create" and previous.get("DatabaseMode") != "create"
        with self._step(
            f"stack {stack_name}: bucket, queues, worker, network, database"
            + (" (a new RDS database takes 10-20 minutes)" if creating_db else ""),
            f"look at the failed resources in the CloudFormation console (stack {stack_name}), fix, and run again",
        ):
            outputs = self._apply_stack(stack_name, project / MAIN_TEMPLATE, parameters)

        reserved = split_db_connections(connections, functions) if reserve else None
        with self._step(
            f"writing .chalice/config.json (stage {stage}) and .chalice/policy-{stage}.json",
            "check that .chalice/config.json is valid JSON and writable",
        ):
            config_path, policy_path = write_chalice_stage(
                project,
                stage,
                outputs,
                region=self.aws.region,
                account=self.account,
                functions=functions,
                reserved=reserved,
            )
            if reserved:
                shares = ", ".join(f"{name} {count}" for name, count in reserved.items())
                self.say(f"  reserved concurrency (at most {connections} DB connections): {shares}")
            else:
                self.say("  no reserved concurrency (--no-reserved-concurrency): DB connections are not capped")

        with self._step(
            f"chalice deploy --stage {stage}",
            f"read chalice's message above; run `chalice deploy --stage {stage}` in {project} to retry this step",
        ):
            # Chalice imports app.py to find the consumers; their queue names come from this variable.
            env = {**self.aws.environment(), "HANDPIPE_QUEUE_PREFIX": outputs["QueuePrefix"]}
            self.runner.chalice(["deploy", "--stage", stage], cwd=project, env=env)

        migrate = function_name(stage, "migrate")
        with self._step(
            f"migrating the database (invoking {migrate})",
            f"read the function's log (aws logs tail /aws/lambda/{migrate}); check that the database admits "
            f"security group {outputs['LambdaSecurityGroupId']}, that the subnets reach Secrets Manager (VPC "
            "endpoints or a NAT gateway), and that the secret holds host, port, username, password and dbname",
        ):
            result = self.runner.invoke(migrate, {})
            if result.function_error:
                payload = result.payload if isinstance(result.payload, dict) else {"errorMessage": result.payload}
                kind = payload.get("errorType", result.function_error)
                raise RuntimeError(f"{migrate} failed: {kind}: {payload.get('errorMessage')}")
            migration = result.payload
            applied = migration.get("applied") if isinstance(migration, dict) else None
            version = migration.get("version") if isinstance(migration, dict) else None
            self.say(f"  schema version {version}" + (f" (applied {applied})" if applied else " (already current)"))

        with self._step(
            f"API keys: usage plan {usage_plan_name(stage)}",
            "look at the stage's API in the API Gateway console (Usage plans); run deploy again to retry",
        ):
            key = self._ensure_usage_plan(project, stage, options)

        url = api_url(project, stage)
        self.say(f"deployed stage {stage}" + (f": API at {url}" if url else ""))
        self.say(f"  bucket {outputs['BucketName']}, worker {outputs['WorkerFunctionName']}, image {image_uri}")
        return DeployResult(
            outputs=outputs,
            image_uri=image_uri,
            api_url=url,
            config_path=config_path,
            policy_path=policy_path,
            migration=migration,
            api_key=key,
            api_key_path=api_key_path(project, stage) if key else None,
        )

    def _ensure_usage_plan(self, project: Path, stage: str, options: DeployOptions) -> str | None:
        """With HANDPIPE_AUTH=api_key (the default) API Gateway admits only keys of a usage plan of the API's
        stage, and Chalice makes neither: make the plan, and on the first deploy one key for its owner."""
        config = json.loads((project / ".chalice" / "config.json").read_text())
        mode = stage_environment(config, stage).get("HANDPIPE_AUTH", "api_key")  # chalicelib.config's default
        if mode != "api_key":
            self.say(f"  HANDPIPE_AUTH={mode}: the API takes no keys")
            return None
        api_id = deployed_rest_api(project, stage).get("rest_api_id")
        if not api_id:
            raise Problem(f"chalice recorded no REST API for stage {stage} in .chalice/deployed/{stage}.json")
        api_stage = config["stages"][stage].get("api_gateway_stage") or config.get("api_gateway_stage") or "api"
        gateway = self.aws.apigateway
        name = usage_plan_name(stage)
        plan = self._usage_plan(name)
        throttle = plan.get("throttle", {}) if plan else {}
        quota = plan.get("quota", {}) if plan else {}
        rate = options.throttle_rate or float(throttle.get("rateLimit") or DEFAULT_THROTTLE_RATE)
        burst = options.throttle_burst or int(throttle.get("burstLimit") or DEFAULT_THROTTLE_BURST)
        daily = options.daily_quota or int(quota.get("limit") or DEFAULT_DAILY_QUOTA)
        if plan is None:
            plan = gateway.create_usage_plan(
                name=name,
                description=f"handpipe {stage}: callers of the API (x-api-key)",
                apiStages=[{"apiId": api_id, "stage": api_stage}],
                throttle={"rateLimit": rate, "burstLimit": burst},
                quota={"limit": daily, "period": "DAY"},
            )
        else:
            gateway.update_usage_plan(
                usagePlanId=plan["id"],
                patchOperations=[
                    {"op": "replace", "path": "/throttle/rateLimit", "value": f"{rate:g}"},
                    {"op": "replace", "path": "/throttle/burstLimit", "value": str(burst)},
                    {"op": "replace", "path": "/quota/limit", "value": str(daily)},
                    {"op": "replace", "path": "/quota/period", "value": "DAY"},
                ],
            )
        self.say(f"  each key: {rate:g} requests/s (bursts of {burst}), {daily} a day")
        if {"apiId": api_id, "stage": api_stage} not in [
            {"apiId": s.get("apiId"), "stage": s.get("stage")} for s in plan.get("apiStages", [])
        ]:
            # Chalice made a new REST API (e.g. after a delete); the plan must cover it.
            gateway.update_usage_plan(
                usagePlanId=plan["id"],
                patchOperations=[{"op": "add", "path": "/apiStages", "value": f"{api_id}:{api_stage}"}],
            )
        keys = gateway.get_usage_plan_keys(usagePlanId=plan["id"]).get("items", [])
        if keys:
            self.say(f"  usage plan {name} ({plan['id']}) has {len(keys)} key(s); docs/deploy.md shows how to add one")
            return None
        key = gateway.create_api_key(
            name=f"{APP_NAME}-{stage}-owner", description=f"handpipe {stage}: the deployer's key", enabled=True
        )
        gateway.create_usage_plan_key(usagePlanId=plan["id"], keyId=key["id"], keyType="API_KEY")
        # Written to a file only the user can read: a key printed to stdout ends up in CI logs and scrollback.
        path = api_key_path(project, stage)
        write_secret(path, str(key["value"]))
        self.say(f"  API key {key['id']} for the x-api-key header: written to {path} (mode 0600)")
        self.say(f"  (shown again by: aws apigateway get-api-key --api-key {key['id']} --include-value)")
        return str(key["value"])

    def _usage_plan(self, name: str) -> dict[str, Any] | None:
        for page in self.aws.apigateway.get_paginator("get_usage_plans").paginate():
            for plan in page.get("items", []):
                if plan.get("name") == name:
                    return dict(plan)
        return None

    def _remove_usage_plan(self, stage: str) -> None:
        """Remove the stage's usage plan (API Gateway refuses to delete an API a plan still covers) and the
        keys deploy made for it; other keys are only detached."""
        gateway = self.aws.apigateway
        plan = self._usage_plan(usage_plan_name(stage))
        if plan is None:
            self.say(f"  no usage plan {usage_plan_name(stage)}")
            return
        for key in gateway.get_usage_plan_keys(usagePlanId=plan["id"]).get("items", []):
            gateway.delete_usage_plan_key(usagePlanId=plan["id"], keyId=key["id"])
            if str(key.get("name", "")).startswith(f"{APP_NAME}-{stage}-"):
                gateway.delete_api_key(apiKey=key["id"])
            else:
                self.say(f"  detached API key {key.get('name', key['id'])}, which deploy did not make; it is kept")
        stages = [f"{s['apiId']}:{s['stage']}" for s in plan.get("apiStages", [])]
        if stages:
            gateway.update_usage_plan(
                usagePlanId=plan["id"],
                patchOperations=[{"op": "remove", "path": "/apiStages", "value": value} for value in stages],
            )
        gateway.delete_usage_plan(usagePlanId=plan["id"])
        self.say(f"  removed usage plan {usage_plan_name(stage)}")

    def _docker(self) -> Any:
        if self._docker_factory is None:
            raise Problem("no Docker client", "install Docker, or pass --image-uri with an image already in ECR")
        try:
            return self._docker_factory()
        except Exception as error:
            raise Problem(
                f"cannot reach Docker: {error}",
                "start the Docker daemon (docker info must work), or pass --image-uri with an image already in ECR",
            ) from error

    def _build(self, docker_client: Any, project: Path, repository: str, stage: str) -> str:
        image, logs = docker_client.images.build(
            path=str(project),
            dockerfile=DOCKERFILE,
            tag=f"{APP_NAME}-worker:{stage}",
            # Lambda runs the worker on x86_64 (the stack says so), whatever machine builds it.
            platform="linux/amd64",
            pull=True,
            rm=True,
        )
        steps = [entry["stream"].strip() for entry in logs if str(entry.get("stream", "")).startswith("Step ")]
        if steps:
            self.say(f"  {len(steps)} build steps, the last: {steps[-1][:100]}")
        # Tag by content, so an unchanged image keeps its tag and the worker is not updated for nothing.
        tag = "img-" + str(image.id).split(":")[-1][:16]
        image.tag(repository, tag=tag)
        self.say(f"  built {image.id}, tagged {repository}:{tag}")
        return tag

    def _push(self, docker_client: Any, repository: str, tag: str) -> str:
        token = self.aws.ecr.get_authorization_token()["authorizationData"][0]
        username, password = base64.b64decode(token["authorizationToken"]).decode().split(":", 1)
        docker_client.login(username=username, password=password, registry=token["proxyEndpoint"], reauth=True)
        digest = None
        for line in docker_client.images.push(
            repository,
            tag=tag,
            stream=True,
            decode=True,
            auth_config={"username": username, "password": password},
        ):
            if line.get("error"):
                raise RuntimeError(f"docker push: {line['error']}")
            aux = line.get("aux") or {}
            digest = aux.get("Digest", digest)
        # By digest, so the function runs exactly what was pushed even if the tag moves later.
        return f"{repository}@{digest}" if digest else f"{repository}:{tag}"

    # -- stack parameters -----------------------------------------------------------------------

    def _previous_parameters(self, stack_name: str) -> dict[str, str]:
        stack = self._describe_stack(stack_name)
        if stack is None:
            return {}
        return {p["ParameterKey"]: p.get("ParameterValue", "") for p in stack.get("Parameters", [])}

    def _full_parameters(
        self, template: Path, given: Mapping[str, Any], previous: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """Every parameter, explicitly: template default < previous value < given. Sending them all keeps an
        update from silently reverting a setting to its default (CloudFormation applies defaults, not previous
        values, to parameters an update leaves out)."""
        declared = template_parameters(template.read_text())
        values = {name: str(spec["Default"]) for name, spec in declared.items() if "Default" in spec}
        values.update({name: value for name, value in (previous or {}).items() if name in declared})
        values.update({name: str(value) for name, value in given.items() if value is not None})
        return values

    def _main_parameters(self, options: DeployOptions, previous: Mapping[str, str], project: Path) -> dict[str, str]:
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
                described = self.aws.secretsmanager.describe_secret(SecretId=secret)
            except Exception as error:
                raise Problem(
                    f"cannot find the database secret {secret}: {_error_message(error)}",
                    "pass the ARN (or name) of a secret in this account and region (--db-secret-arn)",
                ) from error
            # The full ARN, also when a name was given: the policy grants exactly this secret.
            given["ExistingDbSecretArn"] = described["ARN"]

        # The queues' visibility timeouts follow their consumers' timeouts.
        worker_timeout = int(
            options.worker_timeout_s or previous.get("WorkerTimeoutSeconds") or DEFAULT_WORKER_TIMEOUT_S
        )
        given["WorkVisibilityTimeoutSeconds"] = visibility_timeout(worker_timeout)
        given["JobsVisibilityTimeoutSeconds"] = visibility_timeout(chalice_function_timeout(config, stage, "plan_jobs"))
        given["EventsVisibilityTimeoutSeconds"] = visibility_timeout(
            chalice_function_timeout(config, stage, "record_events")
        )

        endpoints = (given.get("CreateVpcEndpoints") or previous.get("CreateVpcEndpoints", "true")) == "true"
        subnets = options.subnet_ids or [s for s in previous.get("SubnetIds", "").split(",") if s]
        if not subnets:
            subnets = self._default_vpc_subnets()
        vpc, route_tables = self._check_network(subnets, endpoints)
        given.update(VpcId=vpc, SubnetIds=",".join(subnets), RouteTableIds=",".join(route_tables))
        if endpoints and previous.get("CreateVpcEndpoints") != "true":
            self._check_no_conflicting_endpoints(vpc)
        return self._full_parameters(project / MAIN_TEMPLATE, given, previous)

    def _default_vpc_subnets(self) -> list[str]:
        vpcs = self.aws.ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
        if not vpcs:
            raise Problem(
                f"no --subnet-ids given and region {self.aws.region} has no default VPC",
                "pass --subnet-ids with subnets in two or more availability zones of the VPC for the database",
            )
        vpc = vpcs[0]["VpcId"]
        subnets = self.aws.ec2.describe_subnets(
            Filters=[{"Name": "vpc-id", "Values": [vpc]}, {"Name": "default-for-az", "Values": ["true"]}]
        )["Subnets"]
        # Two zones are what the database needs; each more would add an interface endpoint per service.
        chosen = sorted(subnets, key=lambda s: s["AvailabilityZone"])[:2]
        self.say(f"  no --subnet-ids: using the default VPC {vpc}: {', '.join(s['SubnetId'] for s in chosen)}")
        return [s["SubnetId"] for s in chosen]

    def _check_network(self, subnet_ids: Sequence[str], endpoints: bool) -> tuple[str, list[str]]:
        """The subnets' VPC and route tables, after checking they can hold a database and the endpoints."""
        try:
            subnets = self.aws.ec2.describe_subnets(SubnetIds=list(subnet_ids))["Subnets"]
        except Exception as error:
            raise Problem(f"cannot find the subnets {', '.join(subnet_ids)}: {_error_message(error)}") from error
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
                answer = self.aws.ec2.describe_vpc_attribute(VpcId=vpc, Attribute=attribute)
                if not answer.get(key, {}).get("Value"):
                    raise Problem(
                        f"VPC {vpc} has {attribute} off; the VPC endpoints' private DNS needs it on",
                        f"aws ec2 modify-vpc-attribute --vpc-id {vpc} {flag} (or deploy with --no-vpc-endpoints "
                        "if the subnets reach AWS through a NAT gateway)",
                    )
        route_tables: list[str] = []
        for subnet in subnet_ids:
            tables = self.aws.ec2.describe_route_tables(
                Filters=[{"Name": "association.subnet-id", "Values": [subnet]}]
            )["RouteTables"]
            if not tables:  # a subnet without its own table uses the VPC's main one
                tables = self.aws.ec2.describe_route_tables(
                    Filters=[{"Name": "vpc-id", "Values": [vpc]}, {"Name": "association.main", "Values": ["true"]}]
                )["RouteTables"]
            for table in tables:
                if table["RouteTableId"] not in route_tables:
                    route_tables.append(table["RouteTableId"])
        return vpc, route_tables

    def _check_no_conflicting_endpoints(self, vpc: str) -> None:
        # Private DNS of a second SQS or Secrets Manager endpoint in one VPC fails the stack late; say so now.
        wanted = {f"com.amazonaws.{self.aws.region}.{name}" for name in ("sqs", "secretsmanager")}
        endpoints = self.aws.ec2.describe_vpc_endpoints(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["VpcEndpoints"]
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

    # -- stacks ---------------------------------------------------------------------------------

    def _describe_stack(self, name: str) -> dict[str, Any] | None:
        try:
            stacks = self.aws.cloudformation.describe_stacks(StackName=name)["Stacks"]
        except Exception as error:
            if "does not exist" in _error_message(error):
                return None
            raise
        return stacks[0] if stacks else None

    def _apply_stack(self, name: str, template: Path, parameters: Mapping[str, str]) -> dict[str, str]:
        """Create or update a stack, wait for it, and return its outputs."""
        stack = self._describe_stack(name)
        if stack is not None and stack["StackStatus"] == "ROLLBACK_COMPLETE":
            # A first creation that failed leaves a stack that can only be deleted.
            self.say(f"  {name} failed to create earlier (ROLLBACK_COMPLETE); deleting it before creating it again")
            self._delete_stack(name)
            stack = None
        if stack is not None and stack["StackStatus"].endswith("_IN_PROGRESS"):
            raise Problem(
                f"stack {name} is busy ({stack['StackStatus']})",
                "wait until it settles (CloudFormation console) and run the command again",
            )
        arguments = {
            "StackName": name,
            "TemplateBody": template.read_text(),
            "Parameters": [{"ParameterKey": key, "ParameterValue": value} for key, value in parameters.items()],
            "Capabilities": CAPABILITIES,
            "Tags": [{"Key": "handpipe:stage", "Value": parameters.get("Stage", "")}],
        }
        started = time.time()
        if stack is None:
            self.say(f"  creating {name}")
            self.aws.cloudformation.create_stack(**arguments)
            goal = "CREATE_COMPLETE"
        else:
            self.say(f"  updating {name}")
            try:
                self.aws.cloudformation.update_stack(**arguments)
            except Exception as error:
                if "No updates are to be performed" in _error_message(error):
                    self.say("  no changes")
                    return self._outputs(stack)
                raise
            goal = "UPDATE_COMPLETE"
        final = self._wait_for_stack(name, started)
        if final["StackStatus"] != goal:
            reasons = self._failure_reasons(name, started)
            raise Problem(
                f"stack {name} ended in {final['StackStatus']}"
                + (": " + "; ".join(reasons) if reasons else f" ({final.get('StackStatusReason', 'no reason given')})")
            )
        return self._outputs(final)

    @staticmethod
    def _outputs(stack: Mapping[str, Any]) -> dict[str, str]:
        return {o["OutputKey"]: str(o["OutputValue"]) for o in stack.get("Outputs", [])}

    def _wait_for_stack(self, name: str, started: float) -> dict[str, Any]:
        """Poll until the stack settles, printing its resources' progress as it goes."""
        seen: set[str] = set()
        last_note = time.time()
        while True:
            stack = self._describe_stack(name)
            if stack is None:
                return {"StackStatus": "DELETE_COMPLETE", "StackName": name}
            self._print_events(stack["StackId"], started, seen)
            status = str(stack["StackStatus"])
            if not status.endswith("_IN_PROGRESS"):
                return stack
            if time.time() - last_note >= 60:
                last_note = time.time()
                self.say(f"  still {status} ({(last_note - started) / 60:.0f} min)")
            self.sleep(self.poll_s)

    def _stack_events(self, stack: str) -> list[dict[str, Any]]:
        try:
            return list(self.aws.cloudformation.describe_stack_events(StackName=stack).get("StackEvents", []))
        except Exception:  # progress output is a courtesy; never fail a deploy over it
            return []

    def _print_events(self, stack: str, started: float, seen: set[str]) -> None:
        for event in reversed(self._stack_events(stack)):
            if event["EventId"] in seen or event["Timestamp"].timestamp() < started - 5:
                continue
            seen.add(event["EventId"])
            if event.get("ResourceType") == "AWS::CloudFormation::Stack":
                continue
            reason = f": {event['ResourceStatusReason']}" if event.get("ResourceStatusReason") else ""
            self.say(f"  {event['ResourceStatus']:<20} {event['LogicalResourceId']}{reason}"[:240])

    def _failure_reasons(self, stack: str, started: float) -> list[str]:
        reasons = []
        for event in self._stack_events(stack):
            if event["Timestamp"].timestamp() < started - 5 or not str(event.get("ResourceStatus")).endswith("FAILED"):
                continue
            reason = event.get("ResourceStatusReason", "")
            # CloudFormation reports every resource it cancelled because of the real failure; skip those.
            if "cancelled" not in reason.lower():
                reasons.append(f"{event['LogicalResourceId']}: {reason}")
        return reasons[:5]

    def _delete_stack(self, name: str) -> None:
        stack = self._describe_stack(name)
        if stack is None:
            return
        started = time.time()
        self.aws.cloudformation.delete_stack(StackName=name)
        final = self._wait_for_stack_id(stack["StackId"], started)
        if final != "DELETE_COMPLETE":
            reasons = self._failure_reasons(stack["StackId"], started)
            raise Problem(f"stack {name} ended in {final}" + (": " + "; ".join(reasons) if reasons else ""))

    def _wait_for_stack_id(self, stack_id: str, started: float) -> str:
        # A deleted stack is found only by its id, not by its name.
        seen: set[str] = set()
        while True:
            stack = self._describe_stack(stack_id)
            if stack is None:
                return "DELETE_COMPLETE"
            self._print_events(stack_id, started, seen)
            status = str(stack["StackStatus"])
            if not status.endswith("_IN_PROGRESS"):
                return status
            self.sleep(self.poll_s)

    # -- destroy --------------------------------------------------------------------------------

    def destroy(self, options: DestroyOptions) -> DestroyResult:
        stage = options.stage
        project = options.project_dir.resolve()
        stack_name = main_stack_name(stage)
        result = DestroyResult()
        self._begin(8)
        keep = "Retain" if options.keep_data else "Delete"

        with self._step(
            f"checking the AWS account and the stacks of stage {stage!r}",
            "configure AWS credentials (aws configure, or AWS_PROFILE / --profile) for the account of the stage",
        ):
            check_stage(stage)
            self.say(f"  account {self.account}, region {self.aws.region}")
            stack = self._describe_stack(stack_name)
            outputs = self._outputs(stack) if stack else {}
            resources = self._stack_resources(stack_name) if stack else {}
            if stack is None:
                self.say(f"  no stack {stack_name}")

        with self._step(
            f"removing usage plan {usage_plan_name(stage)} and its API keys",
            "remove the plan in the API Gateway console (Usage plans) and run again",
        ):
            self._remove_usage_plan(stage)

        deployed = project / ".chalice" / "deployed" / f"{stage}.json"
        with self._step(
            f"chalice delete --stage {stage}",
            f"read chalice's message above; run `chalice delete --stage {stage}` in {project} to retry this step",
        ):
            if deployed.is_file():
                self.runner.chalice(["delete", "--stage", stage], cwd=project, env=self.aws.environment())
                result.removed.append(f"Chalice app (stage {stage})")
            else:
                self.say(f"  nothing recorded in {deployed.relative_to(project)}: no Chalice deployment to delete here")

        group = outputs.get("LambdaSecurityGroupId")
        with self._step(
            "waiting for Lambda to release the functions' network interfaces",
            f"wait a while and run `handpipe destroy --stage {stage}` again (Lambda frees them within about 40 min)",
        ):
            if group:
                self._wait_for_network_interfaces(group, options.eni_timeout_s)
            else:
                self.say("  no security group of the stage's Lambdas; nothing to wait for")

        with self._step(
            f"setting DataRetention={keep} on stack {stack_name}",
            f"run again; if the stack cannot be updated, delete it in the CloudFormation console ({stack_name})",
        ):
            if stack is not None:
                self._set_retention(stack, keep, options.keep_data)
            else:
                self.say("  no stack")

        bucket = outputs.get("BucketName")
        with self._step(
            "emptying the bucket" if not options.keep_data else "keeping the bucket (--keep-data)",
            f"empty it yourself (aws s3 rm s3://{bucket} --recursive) and run again",
        ):
            if bucket and not options.keep_data:
                count = self._empty_bucket(bucket)
                self.say(f"  removed {count} object(s) from {bucket}")
                logs = outputs.get("LogBucketName")
                if logs:  # its access logs too, or the stack could not delete the log bucket
                    self.aws.s3.put_bucket_logging(Bucket=bucket, BucketLoggingStatus={})
                    self.say(f"  removed {self._empty_bucket(logs)} access log(s) from {logs}")
            elif bucket:
                self.say(f"  {bucket} stays, with its videos and results")

        with self._step(
            f"deleting stack {stack_name}",
            f"look at the failed resources in the CloudFormation console ({stack_name}) and run again",
        ):
            if stack is not None:
                self._delete_stack(stack_name)
                result.removed.append(f"stack {stack_name}")
            else:
                self.say("  no stack")

        with self._step(
            f"deleting stack {ecr_stack_name(stage)} (the worker images)",
            f"look at the stack in the CloudFormation console ({ecr_stack_name(stage)}) and run again",
        ):
            if self._describe_stack(ecr_stack_name(stage)) is not None:
                self._delete_stack(ecr_stack_name(stage))
                result.removed.append(f"stack {ecr_stack_name(stage)}")
            else:
                self.say("  no stack")

        if options.keep_data:
            kept = {
                "bucket": bucket,
                "access log bucket": resources.get("LogBucket"),
                "database instance": resources.get("DbInstance"),
                "database secret": resources.get("DbSecret"),
                "database subnet group": resources.get("DbSubnetGroup"),
                "database security group": resources.get("DbSecurityGroup"),
            }
            result.retained = {kind: value for kind, value in kept.items() if value}
        self.say(f"destroyed stage {stage}" + ("; kept:" if result.retained else ""))
        for kind, value in result.retained.items():
            self.say(f"  {kind}: {value}")
        if result.retained:
            self.say("  docs/deploy.md (Tearing down) shows how to delete them later")
        return result

    def _stack_resources(self, stack_name: str) -> dict[str, str]:
        listed = self.aws.cloudformation.describe_stack_resources(StackName=stack_name)["StackResources"]
        return {r["LogicalResourceId"]: r.get("PhysicalResourceId", "") for r in listed if r.get("LogicalResourceId")}

    def _set_retention(self, stack: Mapping[str, Any], value: str, required: bool) -> None:
        current = {p["ParameterKey"]: p.get("ParameterValue", "") for p in stack.get("Parameters", [])}
        if current.get("DataRetention") == value:
            self.say(f"  already {value}")
            return
        if not str(stack["StackStatus"]).endswith("_COMPLETE") or stack["StackStatus"] == "DELETE_COMPLETE":
            message = f"stack {stack['StackName']} is {stack['StackStatus']} and cannot be updated"
            if required:  # never delete a stack whose data the user asked to keep while it says Delete
                raise Problem(
                    message, "fix the stack in the CloudFormation console, then run destroy --keep-data again"
                )
            self.say(f"  {message}; deleting it as it is")
            return
        current["DataRetention"] = value
        # The stack's own template, so destroy changes nothing but the retention.
        body = self.aws.cloudformation.get_template(StackName=stack["StackName"], TemplateStage="Original")
        template = body["TemplateBody"]
        started = time.time()
        self.aws.cloudformation.update_stack(
            StackName=stack["StackName"],
            TemplateBody=template if isinstance(template, str) else json.dumps(template),
            Parameters=[{"ParameterKey": key, "ParameterValue": val} for key, val in current.items()],
            Capabilities=CAPABILITIES,
        )
        final = self._wait_for_stack(stack["StackName"], started)
        if final["StackStatus"] != "UPDATE_COMPLETE":
            raise Problem(f"stack {stack['StackName']} ended in {final['StackStatus']}")

    def _wait_for_network_interfaces(self, group: str, timeout_s: float) -> None:
        deadline = time.time() + timeout_s
        last_note = 0.0
        while True:
            interfaces = self.aws.ec2.describe_network_interfaces(Filters=[{"Name": "group-id", "Values": [group]}])[
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

    def _empty_bucket(self, bucket: str) -> int:
        s3 = self.aws.s3
        try:
            s3.head_bucket(Bucket=bucket)
        except Exception as error:
            if _error_code(error) in ("404", "NoSuchBucket", "NotFound"):
                return 0
            raise
        count = 0
        # Versions and delete markers too, in case versioning was turned on by hand.
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
            entries = [
                {"Key": item["Key"], "VersionId": item["VersionId"]}
                for item in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]
            ]
            for start in range(0, len(entries), 1000):
                batch = entries[start : start + 1000]
                s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
                count += len(batch)
        for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
            for upload in page.get("Uploads", []):
                s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        return count


# ------------------------------------------------------------------------------------------- command line


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
    from .cli import CliError

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
    try:
        _real_deployment(args).deploy(options)
    except DeployError as error:
        raise CliError(f"deploy {error}") from None
    except Problem as error:
        raise CliError(f"{error}\n  what to do: {error.hint}" if error.hint else str(error)) from None
    return 0


def cmd_destroy(args: argparse.Namespace) -> int:
    from .cli import CliError

    options = DestroyOptions(stage=args.stage, project_dir=Path(args.project_dir), keep_data=args.keep_data)
    try:
        _real_deployment(args).destroy(options)
    except DeployError as error:
        raise CliError(f"destroy {error}") from None
    except Problem as error:
        raise CliError(f"{error}\n  what to do: {error.hint}" if error.hint else str(error)) from None
    return 0
