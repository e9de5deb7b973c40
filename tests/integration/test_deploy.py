"""`handpipe deploy` and `handpipe destroy` against moto (CloudFormation with S3, SQS, ECR, Lambda, IAM, EC2 and
Secrets Manager), with recording stand-ins for Docker, `chalice` and the Lambda invocation; the templates through
cfn-lint; and `chalice package` of the app with the stage config deploy writes."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from handpipe.cli import build_parser
from handpipe.cli.deploy import cmd_deploy, cmd_destroy
from handpipe.deploy.chalice_config import chalice_policy, write_chalice_stage
from handpipe.deploy.clients import AwsClients, InvokeResult
from handpipe.deploy.errors import DeployError
from handpipe.deploy.plan import (
    NO_DATABASE_FUNCTIONS,
    DeployOptions,
    DestroyOptions,
    chalice_functions,
    function_name,
    min_db_connections,
    split_db_connections,
)
from handpipe.deploy.sequence import Deployment
from handpipe.deploy.stacks import load_template
from tests.support.paths import REPO

# moto creates what it can of a template and skips, with a warning, the types it does not know: here
# AWS::S3::BucketPolicy (and, on the "create" database path the tests do not take, the Secrets Manager ones).
pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse AWS::")

TEMPLATES = sorted((REPO / "infra").glob("*.yaml"))
REGION = "us-east-1"
APP_FUNCTIONS = chalice_functions((REPO / "app.py").read_text())


# ------------------------------------------------------------------------------------------- stand-ins


class RecordingDocker:
    """Has the docker SDK methods deploy uses (login, images.build, images.push, Image.tag) and notes every
    call; each build yields a new image id, each push a digest, as Docker would."""

    def __init__(self, fail_build: str | None = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.images = _RecordingImages(self, fail_build)

    def login(self, username: str, password: str, registry: str, reauth: bool = False) -> dict[str, str]:
        self.calls.append(("login", {"username": username, "registry": registry, "reauth": reauth}))
        return {"Status": "Login Succeeded"}


class _RecordingImage:
    def __init__(self, docker: RecordingDocker, image_id: str) -> None:
        self._docker = docker
        self.id = image_id

    def tag(self, repository: str, tag: str | None = None, **kwargs: Any) -> bool:
        self._docker.calls.append(("tag", {"image": self.id, "repository": repository, "tag": tag}))
        return True


class _RecordingImages:
    def __init__(self, docker: RecordingDocker, fail_build: str | None) -> None:
        self._docker = docker
        self._fail_build = fail_build
        self.built = 0

    def build(self, **kwargs: Any) -> tuple[_RecordingImage, Iterator[dict[str, str]]]:
        self._docker.calls.append(("build", kwargs))
        if self._fail_build:
            raise RuntimeError(self._fail_build)
        self.built += 1
        image_id = "sha256:" + hashlib.sha256(f"image {self.built} {uuid.uuid4()}".encode()).hexdigest()
        logs = iter([{"stream": "Step 1/6 : FROM public.ecr.aws/lambda/python:3.11\n"}, {"stream": " ---> 1\n"}])
        return _RecordingImage(self._docker, image_id), logs

    def push(self, repository: str, tag: str | None = None, **kwargs: Any) -> Iterator[dict[str, Any]]:
        self._docker.calls.append(("push", {"repository": repository, "tag": tag, **kwargs}))
        digest = "sha256:" + hashlib.sha256(f"{repository}:{tag}".encode()).hexdigest()
        return iter([{"status": "Pushed"}, {"aux": {"Tag": tag, "Digest": digest, "Size": 1234}}])

    def calls(self, kind: str) -> list[dict[str, Any]]:
        return [arguments for name, arguments in self._docker.calls if name == kind]


class RecordingRunner:
    """Notes the chalice commands and Lambda invocations deploy asks for instead of running them. For
    `chalice deploy` it leaves what Chalice would: a REST API (in moto) and its record in
    .chalice/deployed/STAGE.json; `chalice delete` removes both, as Chalice does."""

    def __init__(self, apigateway: Any, migrate_error: str | None = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self._apigateway = apigateway
        self._migrate_error = migrate_error

    def chalice(self, args: Sequence[str], *, cwd: Path, env: Mapping[str, str]) -> None:
        self.calls.append(("chalice", {"args": list(args), "cwd": Path(cwd), "env": dict(env)}))
        command, stage = args[0], args[args.index("--stage") + 1]
        deployed = Path(cwd) / ".chalice" / "deployed" / f"{stage}.json"
        if command == "deploy" and not deployed.exists():
            api_id = self._apigateway.create_rest_api(name=f"handpipe-{stage}")["id"]
            url = f"https://{api_id}.execute-api.{REGION}.amazonaws.com/api/"
            record = {"name": "rest_api", "resource_type": "rest_api", "rest_api_id": api_id, "rest_api_url": url}
            deployed.parent.mkdir(exist_ok=True)
            deployed.write_text(json.dumps({"resources": [record]}))
        elif command == "delete":
            api_id = json.loads(deployed.read_text())["resources"][0]["rest_api_id"]
            self._apigateway.delete_rest_api(restApiId=api_id)
            deployed.unlink()

    def invoke(self, function_name: str, payload: Mapping[str, Any]) -> InvokeResult:
        self.calls.append(("invoke", {"function": function_name, "payload": dict(payload)}))
        if self._migrate_error:
            return InvokeResult("Unhandled", {"errorType": "DatabaseUnavailable", "errorMessage": self._migrate_error})
        return InvokeResult(None, {"applied": [1, 2], "version": 2})


class RecordingClient:
    """A boto3 client that notes each operation it passes on (to check what destroy asked CloudFormation)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.operations: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self.operations.append((name, kwargs))
            return attribute(*args, **kwargs)

        return call


# ------------------------------------------------------------------------------------------- fixtures


@dataclass
class Account:
    aws: AwsClients
    session: Any
    endpoint: str

    def client(self, name: str) -> Any:
        return self.session.client(name, endpoint_url=self.endpoint)


@dataclass
class Network:
    vpc: str
    subnets: list[str]
    db_security_group: str
    db_secret_arn: str
    db_secret_name: str


@pytest.fixture(scope="module")
def account(moto_endpoint: str) -> Account:
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", aws_session_token="testing", region_name=REGION
    )
    return Account(AwsClients.from_session(session, moto_endpoint), session, moto_endpoint)


@pytest.fixture
def network(account: Account) -> Network:
    """A VPC of its own (one VPC takes one stage's endpoints) with two private subnets in two zones, and an
    existing database's security group and secret."""
    ec2 = account.aws.ec2
    octet = uuid.uuid4().int % 200 + 20
    vpc = ec2.create_vpc(CidrBlock=f"10.{octet}.0.0/16")["Vpc"]["VpcId"]
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})  # off in a new VPC, as in AWS
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.{octet}.{i}.0/24", AvailabilityZone=f"{REGION}{zone}")["Subnet"][
            "SubnetId"
        ]
        for i, zone in ((1, "a"), (2, "b"))
    ]
    group = ec2.create_security_group(GroupName=f"db-{uuid.uuid4().hex[:6]}", Description="mysql", VpcId=vpc)
    secret = account.aws.secretsmanager.create_secret(
        Name=f"handpipe-test-db-{uuid.uuid4().hex[:6]}",
        SecretString=json.dumps(
            {"host": "db.internal", "port": 3306, "username": "handpipe", "password": "pw", "dbname": "handpipe"}
        ),
    )
    return Network(vpc, subnets, group["GroupId"], secret["ARN"], secret["Name"])


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """What deploy reads of the project: app.py, the Chalice config, the templates and the Dockerfile."""
    copy = tmp_path / "project"
    copy.mkdir()
    shutil.copy(REPO / "app.py", copy / "app.py")
    shutil.copytree(REPO / "infra", copy / "infra")
    (copy / ".chalice").mkdir()
    shutil.copy(REPO / ".chalice" / "config.json", copy / ".chalice" / "config.json")
    (copy / "worker_image").mkdir()
    shutil.copy(REPO / "worker_image" / "Dockerfile", copy / "worker_image" / "Dockerfile")
    return copy


def unique_stage() -> str:
    # moto's state is shared by the whole session, so each deployment gets its own stage.
    return "t" + uuid.uuid4().hex[:8]


def deployment(account: Account, docker: RecordingDocker, runner: RecordingRunner, said: list[str]) -> Deployment:
    return Deployment(account.aws, runner, lambda: docker, say=said.append, sleep=lambda _: None, poll_s=0)


def existing_db_options(stage: str, project: Path, network: Network, **extra: Any) -> DeployOptions:
    return DeployOptions(
        stage=stage,
        project_dir=project,
        subnet_ids=network.subnets,
        db_secret_arn=network.db_secret_arn,
        db_security_group_id=network.db_security_group,
        **extra,
    )


# ------------------------------------------------------------------------------------------- templates


def test_templates_pass_cfn_lint() -> None:
    # cfn-lint's own runner, once for every template (its rules and schemas load once).
    from cfnlint.config import ConfigMixIn
    from cfnlint.runner import Runner

    assert {template.name for template in TEMPLATES} >= {"handpipe.yaml", "ecr.yaml"}
    matches = list(Runner(ConfigMixIn([str(template) for template in TEMPLATES])).run())
    assert not matches, "\n".join(str(match) for match in matches)


def test_template_keeps_data_only_when_asked_and_wires_the_worker() -> None:
    template = load_template((REPO / "infra" / "handpipe.yaml").read_text())
    resources = template["Resources"]
    assert "AWS::LanguageExtensions" in str(template["Transform"])  # lets DeletionPolicy follow a parameter
    for name in ("Bucket", "DbInstance", "DbSecret", "DbSubnetGroup", "DbSecurityGroup"):
        assert resources[name]["DeletionPolicy"] == {"Fn::If": ["RetainData", "RetainExceptOnCreate", "Delete"]}, name
        assert resources[name]["UpdateReplacePolicy"] == "Retain", name
    assert template["Conditions"]["RetainData"] == {"Fn::Equals": [{"Ref": "DataRetention"}, "Retain"]}

    bucket = resources["Bucket"]["Properties"]
    assert bucket["PublicAccessBlockConfiguration"] == dict.fromkeys(
        ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"), True
    )
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
    assert "PUT" in bucket["CorsConfiguration"]["CorsRules"][0]["AllowedMethods"]
    rules = {rule["Id"]: rule for rule in bucket["LifecycleConfiguration"]["Rules"]}
    assert rules["abort-incomplete-multipart-uploads"]["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == 7
    assert rules["expire-tmp"]["Prefix"] == "tmp/"
    # Deleted or overwritten objects can be restored for a while; every request is logged.
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    assert rules["expire-noncurrent-versions"]["NoncurrentVersionExpiration"] == {
        "NoncurrentDays": {"Ref": "NoncurrentVersionDays"}
    }
    assert rules["remove-expired-delete-markers"]["ExpiredObjectDeleteMarker"] is True
    assert bucket["LoggingConfiguration"] == {"DestinationBucketName": {"Ref": "LogBucket"}, "LogFilePrefix": "access/"}
    assert resources["LogBucket"]["DeletionPolicy"] == resources["Bucket"]["DeletionPolicy"]
    [admit, _] = resources["LogBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert admit["Principal"] == {"Service": "logging.s3.amazonaws.com"} and admit["Action"] == "s3:PutObject"
    assert admit["Condition"]["ArnLike"] == {"aws:SourceArn": {"Fn::GetAtt": ["Bucket", "Arn"]}}

    for role in ("Jobs", "Work", "Events"):
        redrive = resources[f"{role}Queue"]["Properties"]["RedrivePolicy"]
        assert redrive["deadLetterTargetArn"] == {"Fn::GetAtt": [f"{role}DeadLetterQueue", "Arn"]}
    mapping = resources["WorkerEventSource"]["Properties"]
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["EventSourceArn"] == {"Fn::GetAtt": ["WorkQueue", "Arn"]}
    assert template["Parameters"]["WorkerTimeoutSeconds"]["MaxValue"] == 900
    assert resources["WorkerFunction"]["Properties"]["PackageType"] == "Image"

    # The "create" path's resources exist only with DatabaseMode=create; the endpoints only when asked for.
    for name in ("DbSecret", "DbSubnetGroup", "DbSecurityGroup", "DbInstance", "DbSecretAttachment"):
        assert resources[name]["Condition"] == "CreateDatabase", name
    for name in ("SqsEndpoint", "SecretsManagerEndpoint", "S3Endpoint"):
        assert resources[name]["Condition"] == "WithVpcEndpoints", name


def test_template_alarms_on_dead_letters_and_failed_jobs_and_keeps_logs_a_while() -> None:
    from chalicelib.shared import telemetry

    template = load_template((REPO / "infra" / "handpipe.yaml").read_text())
    resources = template["Resources"]
    topic = {"Fn::If": ["CreateAlarmTopic", {"Ref": "AlarmTopic"}, {"Ref": "AlarmTopicArn"}]}
    assert template["Outputs"]["AlarmTopicArn"]["Value"] == topic
    assert resources["AlarmTopic"]["Condition"] == "CreateAlarmTopic"
    assert template["Conditions"]["CreateAlarmTopic"] == {"Fn::Equals": [{"Ref": "AlarmTopicArn"}, ""]}
    alarms = {name: r["Properties"] for name, r in resources.items() if r["Type"] == "AWS::CloudWatch::Alarm"}
    for alarm in alarms.values():
        assert alarm["AlarmActions"] == [topic] and alarm["TreatMissingData"] == "notBreaching"
    # Each dead-letter queue: any message in it (Maximum over 5 minutes > 0) alarms.
    dead_letter = {
        alarm["Dimensions"][0]["Value"]["Fn::GetAtt"][0]: alarm
        for alarm in alarms.values()
        if alarm.get("MetricName") == "ApproximateNumberOfMessagesVisible"
    }
    assert set(dead_letter) == {f"{role}DeadLetterQueue" for role in ("Jobs", "Work", "Events")}
    for alarm in dead_letter.values():
        assert (alarm["Namespace"], alarm["Statistic"], alarm["Threshold"]) == ("AWS/SQS", "Maximum", 0)
        assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
    # The failed-job rate, from the EMF metrics the app sends (namespace, names and dimension as it sends them).
    rate = alarms["FailedJobRateAlarm"]
    stats = {m["Id"]: m["MetricStat"]["Metric"] for m in rate["Metrics"] if "MetricStat" in m}
    assert {m["MetricName"] for m in stats.values()} == {telemetry.JOBS_FAILED, telemetry.JOBS_SUCCEEDED}
    for metric in stats.values():
        assert metric["Namespace"] == telemetry.NAMESPACE
        assert metric["Dimensions"] == [{"Name": "stage", "Value": {"Ref": "Stage"}}]
    [expression] = [m for m in rate["Metrics"] if m.get("ReturnData")]
    assert "100 * FILL(failed, 0) / (FILL(failed, 0) + FILL(succeeded, 0))" in expression["Expression"]["Fn::Sub"]
    assert rate["Threshold"] == {"Ref": "FailedJobRatePercent"}

    # Logs expire: the worker's group here, the Chalice functions' through the stage's log_retention_in_days.
    assert resources["WorkerLogGroup"]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    assert resources["WorkerFunction"]["Properties"]["LoggingConfig"] == {"LogGroup": {"Ref": "WorkerLogGroup"}}
    worker_env = resources["WorkerFunction"]["Properties"]["Environment"]["Variables"]
    assert worker_env["HANDPIPE_STAGE"] == {"Ref": "Stage"}
    assert template["Outputs"]["LogRetentionDays"]["Value"] == {"Ref": "LogRetentionDays"}
    config = json.loads((REPO / ".chalice" / "config.json").read_text())
    assert config["stages"]["dev"]["log_retention_in_days"] == template["Parameters"]["LogRetentionDays"]["Default"]


# ------------------------------------------------------------------------------------------- pure parts


def test_db_connections_are_split_within_the_cap() -> None:
    assert set(APP_FUNCTIONS) >= {"api_handler", "plan_jobs", "record_events", "migrate"}
    for total in range(min_db_connections(APP_FUNCTIONS), 400):
        shares = split_db_connections(total, APP_FUNCTIONS)
        assert set(shares) == set(APP_FUNCTIONS) - set(NO_DATABASE_FUNCTIONS)  # they open no connection
        assert sum(shares.values()) == total
        assert min(shares[name] for name in ("api_handler", "plan_jobs", "record_events")) >= 2
        assert shares["api_handler"] >= shares["record_events"] >= shares["plan_jobs"]
        assert shares["migrate"] == 1
    with pytest.raises(ValueError, match="at least"):
        split_db_connections(min_db_connections(APP_FUNCTIONS) - 1, APP_FUNCTIONS)


def test_functions_read_from_app_py_are_the_ones_chalice_makes() -> None:
    import app

    chalice_view = {function.name for function in app.app.pure_lambda_functions}
    chalice_view |= {source.name for source in app.app.event_sources}
    if app.app.routes:
        chalice_view.add("api_handler")
    assert set(APP_FUNCTIONS) == chalice_view
    assert function_name("prod", "api_handler") == "handpipe-prod"
    assert function_name("prod", "migrate") == "handpipe-prod-migrate"


def test_cli_registers_deploy_and_destroy() -> None:
    args = build_parser().parse_args(
        ["deploy", "--stage", "prod", "--no-vpc-endpoints", "--db-secret-arn", "arn:x", "--max-db-connections", "60"]
    )
    assert args.run is cmd_deploy
    assert (args.stage, args.vpc_endpoints, args.db_secret_arn, args.max_db_connections) == ("prod", False, "arn:x", 60)
    assert args.reserve_concurrency is None and args.worker_memory is None  # left out: keep the stage's settings
    args = build_parser().parse_args(["destroy", "--stage", "prod", "--keep-data"])
    assert args.run is cmd_destroy and args.keep_data


# ------------------------------------------------------------------------------------------- deploy on moto


def test_deploy_update_and_destroy_on_moto(account: Account, network: Network, project: Path) -> None:
    stage = unique_stage()
    original_stages = json.loads((project / ".chalice" / "config.json").read_text())["stages"]
    docker, runner, said = RecordingDocker(), RecordingRunner(account.aws.apigateway), list[str]()
    result = deployment(account, docker, runner, said).deploy(
        existing_db_options(stage, project, network, max_db_connections=30)
    )
    outputs = result.outputs
    cloudformation = account.aws.cloudformation

    # Every step said what it was doing.
    for number in range(1, 10):
        assert any(line.startswith(f"[{number}/9] ") for line in said), number

    # The image was built from the worker Dockerfile for Lambda's platform and pushed to the stage's repository.
    ecr_outputs = {
        o["OutputKey"]: o["OutputValue"]
        for o in cloudformation.describe_stacks(StackName=f"handpipe-{stage}-ecr")["Stacks"][0]["Outputs"]
    }
    repository = ecr_outputs["RepositoryUri"]
    assert repository.endswith(f"/handpipe-{stage}-worker")
    [build] = docker.images.calls("build")
    assert (build["path"], build["dockerfile"], build["platform"]) == (
        str(project.resolve()),
        "worker_image/Dockerfile",
        "linux/amd64",
    )
    [tag] = docker.images.calls("tag")
    [login] = docker.images.calls("login")
    [push] = docker.images.calls("push")
    token = account.aws.ecr.get_authorization_token()["authorizationData"][0]
    assert login["registry"] == token["proxyEndpoint"]
    assert (push["repository"], push["tag"]) == (repository, tag["tag"]) and tag["repository"] == repository
    assert result.image_uri.startswith(f"{repository}@sha256:")

    # The stack: the worker from that image, wired to the "work" queue with partial batch responses.
    assert outputs["QueuePrefix"] == f"handpipe-{stage}"
    assert outputs["DbSecretArn"] == network.db_secret_arn and outputs["DatabaseMode"] == "existing"
    lambda_client = account.client("lambda")
    worker = lambda_client.get_function(FunctionName=outputs["WorkerFunctionName"])
    assert worker["Code"]["ImageUri"] == result.image_uri == outputs["WorkerImageUri"]
    configuration = worker["Configuration"]
    assert (configuration["MemorySize"], configuration["Timeout"]) == (3008, 900)
    assert str(configuration["Environment"]["Variables"]["HANDPIPE_EVENTS_QUEUE_URL"]) == outputs["EventsQueueUrl"]
    assert str(configuration["Environment"]["Variables"]["HANDPIPE_WORK_MAX_RECEIVES"]) == "3"
    assert configuration.get("VpcConfig", {}).get("SubnetIds", []) == []  # the worker stays out of the VPC
    assert lambda_client.get_function_concurrency(FunctionName=outputs["WorkerFunctionName"])[
        "ReservedConcurrentExecutions"
    ] == int(outputs["WorkerConcurrency"])
    [mapping] = lambda_client.list_event_source_mappings(FunctionName=outputs["WorkerFunctionName"])[
        "EventSourceMappings"
    ]
    assert mapping["EventSourceArn"] == outputs["WorkQueueArn"]
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["BatchSize"] == 1
    assert mapping["ScalingConfig"]["MaximumConcurrency"] == int(outputs["WorkerConcurrency"])

    # Queues: visibility 6x their consumer's timeout (plan_jobs 60 s, record_events 120 s, worker 900 s), DLQs.
    sqs = account.client("sqs")
    expected = {"jobs": (360, 5), "work": (5400, 3), "events": (720, 5), "notify": (360, 10)}
    for role, (visibility, receives) in expected.items():
        url = sqs.get_queue_url(QueueName=f"handpipe-{stage}-{role}")["QueueUrl"]
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        redrive = json.loads(attributes["RedrivePolicy"])
        assert int(attributes["VisibilityTimeout"]) == visibility, role
        assert redrive["deadLetterTargetArn"].endswith(f":handpipe-{stage}-{role}-dlq")
        assert int(redrive["maxReceiveCount"]) == receives
        assert attributes["QueueArn"] == outputs[f"{role.capitalize()}QueueArn"]

    s3 = account.aws.s3
    encryption = s3.get_bucket_encryption(Bucket=outputs["BucketName"])["ServerSideEncryptionConfiguration"]
    assert encryption["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"

    # The worker's role reaches only this stage's bucket prefixes and queues.
    iam = account.client("iam")
    role_name = configuration["Role"].rsplit("/", 1)[-1]
    [policy_name] = iam.list_role_policies(RoleName=role_name)["PolicyNames"]
    worker_policy = iam.get_role_policy(RoleName=role_name, PolicyName=policy_name)["PolicyDocument"]
    if isinstance(worker_policy, str):  # moto hands the document back as text (JSON, or a Python repr)
        worker_policy = ast.literal_eval(worker_policy) if worker_policy.startswith("{'") else json.loads(worker_policy)
    for statement in worker_policy["Statement"]:
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        assert "*" not in resources
        assert all(stage in resource or outputs["BucketName"] in resource for resource in resources), statement

    check_chalice_stage(project, stage, outputs, network, original_stages, cap=30)

    # chalice deploy ran with the stage's queue prefix, then the migrations ran in the VPC.
    assert [name for name, _ in runner.calls] == ["chalice", "invoke"]
    chalice_call, invoke_call = runner.calls[0][1], runner.calls[1][1]
    assert chalice_call["args"] == ["deploy", "--stage", stage] and chalice_call["cwd"] == project.resolve()
    assert chalice_call["env"]["HANDPIPE_QUEUE_PREFIX"] == outputs["QueuePrefix"]
    assert invoke_call["function"] == f"handpipe-{stage}-migrate"
    assert result.api_url and result.api_url.startswith("https://")

    # API Gateway admits the keys of the stage's usage plan (HANDPIPE_AUTH=api_key): one was made for the owner.
    gateway = account.aws.apigateway
    [plan] = [p for p in gateway.get_usage_plans()["items"] if p["name"] == f"handpipe-{stage}"]
    api_id = json.loads((project / ".chalice" / "deployed" / f"{stage}.json").read_text())["resources"][0][
        "rest_api_id"
    ]
    assert [(s["apiId"], s["stage"]) for s in plan["apiStages"]] == [(api_id, "api")]
    [key] = gateway.get_usage_plan_keys(usagePlanId=plan["id"])["items"]
    assert result.api_key and gateway.get_api_key(apiKey=key["id"], includeValue=True)["value"] == result.api_key
    # Each key is throttled and has a daily quota, so one caller cannot take the API from the others.
    assert plan["throttle"] == {"rateLimit": 20.0, "burstLimit": 40}
    assert plan["quota"]["limit"] == 50_000 and plan["quota"]["period"] == "DAY"
    # The key is in a file only its owner may read, never in the output.
    assert result.api_key_path == project / ".handpipe" / f"api-key-{stage}"
    assert result.api_key_path.read_text().strip() == result.api_key
    assert stat.S_IMODE(result.api_key_path.stat().st_mode) == 0o600
    assert not [line for line in said if result.api_key in line]
    assert any(str(result.api_key_path) in line for line in said)

    # Again with one setting changed: a new image and more memory; the rest of the stage is kept.
    said.clear()
    update = deployment(account, docker, runner, said).deploy(
        DeployOptions(stage=stage, project_dir=project, worker_memory_mb=4096)
    )
    assert any("updating handpipe-" in line for line in said)
    assert update.image_uri != result.image_uri
    worker = lambda_client.get_function(FunctionName=outputs["WorkerFunctionName"])
    assert worker["Code"]["ImageUri"] == update.image_uri
    assert worker["Configuration"]["MemorySize"] == 4096
    assert update.outputs["DbSecretArn"] == network.db_secret_arn
    assert update.outputs["SubnetIds"] == outputs["SubnetIds"]
    assert update.outputs["BucketName"] == outputs["BucketName"]
    assert update.api_key is None  # the plan has its key already
    [plan] = [p for p in gateway.get_usage_plans()["items"] if p["name"] == f"handpipe-{stage}"]
    assert plan["throttle"]["rateLimit"] == 20.0 and plan["quota"]["limit"] == 50_000  # kept
    deployment(account, docker, runner, said).deploy(
        DeployOptions(stage=stage, project_dir=project, skip_build=True, throttle_rate=5, daily_quota=1000)
    )
    [plan] = [p for p in gateway.get_usage_plans()["items"] if p["name"] == f"handpipe-{stage}"]
    assert plan["throttle"]["rateLimit"] == 5 and plan["throttle"]["burstLimit"] == 40
    assert plan["quota"]["limit"] == 1000
    check_chalice_stage(project, stage, update.outputs, network, original_stages, cap=30)  # the cap is kept

    # A settings-only update without Docker: same image, a shorter worker timeout, the queue follows it.
    builds = len(docker.images.calls("build"))
    deployment(account, docker, runner, said).deploy(
        DeployOptions(stage=stage, project_dir=project, skip_build=True, worker_timeout_s=600)
    )
    assert len(docker.images.calls("build")) == builds
    worker = lambda_client.get_function(FunctionName=outputs["WorkerFunctionName"])
    assert worker["Code"]["ImageUri"] == update.image_uri and worker["Configuration"]["Timeout"] == 600
    work_url = sqs.get_queue_url(QueueName=f"handpipe-{stage}-work")["QueueUrl"]
    visibility = sqs.get_queue_attributes(QueueUrl=work_url, AttributeNames=["VisibilityTimeout"])["Attributes"]
    assert visibility["VisibilityTimeout"] == "3600"

    # Destroy: chalice delete, the bucket emptied, both stacks gone.
    s3.put_object(Bucket=outputs["BucketName"], Key="videos/vid_1/clip.mp4", Body=b"video")
    said.clear()
    destroyed = deployment(account, docker, runner, said).destroy(DestroyOptions(stage=stage, project_dir=project))
    assert runner.calls[-1][0] == "chalice"
    assert runner.calls[-1][1]["args"] == ["delete", "--stage", stage]
    for name in (f"handpipe-{stage}", f"handpipe-{stage}-ecr"):
        with pytest.raises(Exception, match="does not exist"):
            cloudformation.describe_stacks(StackName=name)
    assert outputs["BucketName"] not in [bucket["Name"] for bucket in s3.list_buckets()["Buckets"]]
    assert not [url for url in sqs.list_queues().get("QueueUrls", []) if f"handpipe-{stage}-" in url]
    assert not [p for p in gateway.get_usage_plans()["items"] if p["name"] == f"handpipe-{stage}"]
    assert destroyed.retained == {}


def check_chalice_stage(
    project: Path,
    stage: str,
    outputs: Mapping[str, str],
    network: Network,
    original_stages: Mapping[str, Any],
    cap: int,
) -> None:
    """The stage deploy wrote: environment from the stack outputs, VPC settings, and a least-privilege policy."""
    config = json.loads((project / ".chalice" / "config.json").read_text())
    written = config["stages"][stage]
    # Only this stage changed.
    assert {name: value for name, value in config["stages"].items() if name != stage} == original_stages
    assert written["environment_variables"] == {
        "HANDPIPE_QUEUE_PREFIX": outputs["QueuePrefix"],
        "HANDPIPE_BUCKET": outputs["BucketName"],
        "HANDPIPE_JOBS_QUEUE_URL": outputs["JobsQueueUrl"],
        "HANDPIPE_WORK_QUEUE_URL": outputs["WorkQueueUrl"],
        "HANDPIPE_DB_SECRET_ARN": outputs["DbSecretArn"],
        "HANDPIPE_MAX_IN_FLIGHT": outputs["WorkerConcurrency"],
        "HANDPIPE_MAX_UPLOAD_BYTES": str(50 * 1024**3),
        "HANDPIPE_STAGE": stage,
        "HANDPIPE_NOTIFY_QUEUE_URL": outputs["NotifyQueueUrl"],
        "HANDPIPE_NOTIFY_TOPIC_ARN": outputs["JobEndsTopicArn"],
        "HANDPIPE_WEBHOOK_SECRET_ARN": outputs["WebhookSecretArn"],
        "HANDPIPE_UPLOAD_TRIGGER_PREFIX": "incoming/",
    }
    assert written["log_retention_in_days"] == int(outputs["LogRetentionDays"])
    assert written["subnet_ids"] == network.subnets == outputs["SubnetIds"].split(",")
    assert written["security_group_ids"] == [outputs["LambdaSecurityGroupId"]]
    assert written["autogen_policy"] is False
    assert written["iam_policy_file"] == f"policy-{stage}.json"
    reserved = {
        name: entry["reserved_concurrency"]
        for name, entry in written["lambda_functions"].items()
        if "reserved_concurrency" in entry
    }
    assert set(reserved) == set(APP_FUNCTIONS) - set(NO_DATABASE_FUNCTIONS)
    assert reserved == split_db_connections(cap, APP_FUNCTIONS) and sum(reserved.values()) == cap
    # The notification deliverer holds no connection and sits outside the VPC, where webhooks are reachable.
    deliverer = written["lambda_functions"]["deliver_notifications"]
    assert (deliverer["subnet_ids"], deliverer["security_group_ids"]) == ([], [])

    policy = json.loads((project / ".chalice" / f"policy-{stage}.json").read_text())
    bucket_arn = outputs["BucketArn"]
    allowed = {
        "s3": {bucket_arn, f"{bucket_arn}/videos/*", f"{bucket_arn}/results/*", f"{bucket_arn}/incoming/*"},
        "sqs": {
            outputs["JobsQueueArn"],
            outputs["WorkQueueArn"],
            outputs["EventsQueueArn"],
            outputs["NotifyQueueArn"],
            outputs["UploadsQueueArn"],
        },
        "secretsmanager": {outputs["DbSecretArn"], outputs["WebhookSecretArn"]},
        "sns": {outputs["JobEndsTopicArn"]},
    }
    granted: dict[str, set[str]] = {"s3": set(), "sqs": set(), "secretsmanager": set(), "sns": set()}
    actions: set[str] = set()
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        services = {action.split(":")[0] for action in statement["Action"]}
        actions.update(statement["Action"])
        if resources == ["*"]:
            assert services == {"ec2"}, statement  # network interfaces take no resource ARNs; nothing else is "*"
            continue
        for service in services:
            if service == "logs":
                assert all(f":log-group:/aws/lambda/handpipe-{stage}" in resource for resource in resources)
                continue
            assert set(resources) <= allowed[service], statement
            granted[service] |= set(resources)
    assert granted == allowed
    assert {"sqs:SendMessage", "sqs:ReceiveMessage", "sqs:DeleteMessage", "s3:PutObject", "s3:GetObject"} <= actions
    assert "secretsmanager:GetSecretValue" in actions and "ec2:CreateNetworkInterface" in actions
    send = next(statement for statement in policy["Statement"] if "sqs:SendMessage" in statement["Action"])
    # never to "events" (the worker's); "notify" takes the job ends the consumers and the API announce
    assert set(send["Resource"]) == {outputs["JobsQueueArn"], outputs["WorkQueueArn"], outputs["NotifyQueueArn"]}
    assert not any("*" == action.split(":")[1] for action in actions)


def test_destroy_keep_data_retains_the_bucket_and_database(account: Account, network: Network, project: Path) -> None:
    stage = unique_stage()
    docker, runner, said = RecordingDocker(), RecordingRunner(account.aws.apigateway), list[str]()
    outputs = deployment(account, docker, runner, said).deploy(existing_db_options(stage, project, network)).outputs
    account.aws.s3.put_object(Bucket=outputs["BucketName"], Key="results/vid_1/job_1/result.json.gz", Body=b"{}")

    recorder = RecordingClient(account.aws.cloudformation)
    aws = AwsClients(**{**vars(account.aws), "cloudformation": recorder})
    destroyer = Deployment(aws, runner, lambda: docker, say=said.append, sleep=lambda _: None, poll_s=0)
    result = destroyer.destroy(DestroyOptions(stage=stage, project_dir=project, keep_data=True))

    # The deployed stack already says Retain (the default), so destroy deletes it without changing that.
    operations = [name for name, _ in recorder.operations if name in ("update_stack", "delete_stack")]
    assert operations == ["delete_stack", "delete_stack"]
    assert result.retained == {
        "bucket": outputs["BucketName"],
        "access log bucket": outputs["LogBucketName"],
        "webhook signing secret": f"handpipe/{stage}/webhook-signing",
    }
    assert account.aws.secretsmanager.describe_secret(SecretId=f"handpipe/{stage}/webhook-signing")["ARN"]
    # Nothing emptied the bucket. (moto ignores a DeletionPolicy set with Fn::If; the template test covers it,
    # and moto fails to delete a non-empty bucket, so the object is still there to look at.)
    assert account.aws.s3.get_object(Bucket=outputs["BucketName"], Key="results/vid_1/job_1/result.json.gz")


def test_destroy_sets_data_retention_before_deleting(account: Account, network: Network, project: Path) -> None:
    stage = unique_stage()
    docker, runner, said = RecordingDocker(), RecordingRunner(account.aws.apigateway), list[str]()
    # The secret by name, as a user may give it: the stack gets its full ARN.
    options = existing_db_options(stage, project, network)
    options.db_secret_arn = network.db_secret_name
    deployment(account, docker, runner, said).deploy(options)
    recorder = RecordingClient(account.aws.cloudformation)
    aws = AwsClients(**{**vars(account.aws), "cloudformation": recorder})
    Deployment(aws, runner, lambda: docker, say=said.append, sleep=lambda _: None, poll_s=0).destroy(
        DestroyOptions(stage=stage, project_dir=project)
    )
    changes = [(name, kwargs) for name, kwargs in recorder.operations if name in ("update_stack", "delete_stack")]
    assert [name for name, _ in changes] == ["update_stack", "delete_stack", "delete_stack"]
    parameters = {p["ParameterKey"]: p["ParameterValue"] for p in changes[0][1]["Parameters"]}
    assert parameters["DataRetention"] == "Delete"
    assert parameters["ExistingDbSecretArn"] == network.db_secret_arn  # everything else as it was
    assert changes[1][1]["StackName"] == f"handpipe-{stage}"


# ------------------------------------------------------------------------------------------- failures


def test_a_failing_build_names_the_step_and_what_to_do(account: Account, network: Network, project: Path) -> None:
    docker, runner, said = (
        RecordingDocker(fail_build="no space left on device"),
        RecordingRunner(account.aws.apigateway),
        list[str](),
    )
    with pytest.raises(DeployError) as failure:
        deployment(account, docker, runner, said).deploy(existing_db_options(unique_stage(), project, network))
    message = str(failure.value)
    assert "step 3/9 (building the worker image" in message
    assert "no space left on device" in message
    assert "what to do: start Docker" in message
    assert runner.calls == []  # nothing after the failed step ran


def test_a_failing_migration_names_the_step_and_where_to_look(
    account: Account, network: Network, project: Path
) -> None:
    stage = unique_stage()
    runner = RecordingRunner(account.aws.apigateway, "(2003, \"Can't connect to MySQL server on 'db.internal'\")")
    with pytest.raises(DeployError) as failure:
        deployment(account, RecordingDocker(), runner, []).deploy(existing_db_options(stage, project, network))
    message = str(failure.value)
    assert f"step 8/9 (migrating the database (invoking handpipe-{stage}-migrate))" in message
    assert "Can't connect to MySQL server" in message
    assert f"aws logs tail /aws/lambda/handpipe-{stage}-migrate" in message


def test_a_vpc_without_dns_hostnames_is_refused_with_the_fix(account: Account, project: Path) -> None:
    ec2 = account.aws.ec2
    vpc = ec2.create_vpc(CidrBlock="10.251.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.251.{i}.0/24", AvailabilityZone=f"{REGION}{zone}")["Subnet"][
            "SubnetId"
        ]
        for i, zone in ((1, "a"), (2, "b"))
    ]
    with pytest.raises(DeployError, match="enableDnsHostnames off") as failure:
        deployment(account, RecordingDocker(), RecordingRunner(account.aws.apigateway), []).deploy(
            DeployOptions(stage=unique_stage(), project_dir=project, subnet_ids=subnets)
        )
    assert f"aws ec2 modify-vpc-attribute --vpc-id {vpc} --enable-dns-hostnames" in str(failure.value)


def test_an_aws_stage_without_authentication_is_refused(
    account: Account, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stage = unique_stage()
    config_path = project / ".chalice" / "config.json"
    config = json.loads(config_path.read_text())
    config.setdefault("stages", {})[stage] = {"environment_variables": {"HANDPIPE_AUTH": "none"}}
    config_path.write_text(json.dumps(config))
    runner = RecordingRunner(account.aws.apigateway)
    with pytest.raises(DeployError, match=r"step 1/9 .*HANDPIPE_AUTH=none in .chalice/config.json") as failure:
        deployment(account, RecordingDocker(), runner, []).deploy(DeployOptions(stage=stage, project_dir=project))
    assert "use api_key (the default) or iam" in str(failure.value)
    config["stages"].pop(stage)
    config_path.write_text(json.dumps(config))
    monkeypatch.setenv("HANDPIPE_AUTH", "none")
    with pytest.raises(DeployError, match="HANDPIPE_AUTH=none in your environment"):
        deployment(account, RecordingDocker(), runner, []).deploy(DeployOptions(stage=stage, project_dir=project))
    assert runner.calls == []
    with pytest.raises(Exception, match="does not exist"):
        account.aws.cloudformation.describe_stacks(StackName=f"handpipe-{stage}")


def test_subnets_in_one_zone_are_refused_before_anything_is_created(account: Account, project: Path) -> None:
    ec2 = account.aws.ec2
    vpc = ec2.create_vpc(CidrBlock="10.250.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.250.{i}.0/24", AvailabilityZone=f"{REGION}a")["Subnet"]["SubnetId"]
        for i in (1, 2)
    ]
    stage = unique_stage()
    with pytest.raises(DeployError, match=r"step 1/9 .* one availability zone") as failure:
        deployment(account, RecordingDocker(), RecordingRunner(account.aws.apigateway), []).deploy(
            DeployOptions(stage=stage, project_dir=project, subnet_ids=subnets)
        )
    assert "--subnet-ids" in str(failure.value)
    with pytest.raises(Exception, match="does not exist"):
        account.aws.cloudformation.describe_stacks(StackName=f"handpipe-{stage}-ecr")


# ------------------------------------------------------------------------------------------- chalice package


SAMPLE_STAGE = "dev"


def sample_outputs(stage: str) -> dict[str, str]:
    account, arn = "123456789012", f"arn:aws:sqs:{REGION}:123456789012"
    queue_url = f"https://sqs.{REGION}.amazonaws.com/{account}/handpipe-{stage}"
    return {
        "QueuePrefix": f"handpipe-{stage}",
        "BucketName": f"handpipe-{stage}-{account}-abcd1234",
        "BucketArn": f"arn:aws:s3:::handpipe-{stage}-{account}-abcd1234",
        "JobsQueueUrl": f"{queue_url}-jobs",
        "WorkQueueUrl": f"{queue_url}-work",
        "EventsQueueUrl": f"{queue_url}-events",
        "JobsQueueArn": f"{arn}:handpipe-{stage}-jobs",
        "WorkQueueArn": f"{arn}:handpipe-{stage}-work",
        "EventsQueueArn": f"{arn}:handpipe-{stage}-events",
        "NotifyQueueUrl": f"{queue_url}-notify",
        "NotifyQueueArn": f"{arn}:handpipe-{stage}-notify",
        "JobEndsTopicArn": f"arn:aws:sns:{REGION}:{account}:handpipe-{stage}-job-ends",
        "WebhookSecretArn": f"arn:aws:secretsmanager:{REGION}:{account}:secret:handpipe/{stage}/webhook-signing-Ab12Cd",
        "UploadsQueueArn": f"{arn}:handpipe-{stage}-uploads",
        "DbSecretArn": f"arn:aws:secretsmanager:{REGION}:{account}:secret:handpipe/{stage}/database-abcd-Xy12Zw",
        "WorkerConcurrency": "20",
        "WorkerEphemeralStorageMB": "2560",
        "SubnetIds": "subnet-0a1b2c3d4e5f60718,subnet-0f1e2d3c4b5a69788",
        "LambdaSecurityGroupId": "sg-0123456789abcdef0",
        "LogRetentionDays": "14",
        "Stage": stage,
    }


def test_chalice_package_of_the_stage_deploy_writes(tmp_path: Path) -> None:
    """`chalice package --stage dev` of the app, with the stage as `handpipe deploy --stage dev` writes it:
    the SAM template has every SQS consumer app.py declares, on the stage's queues, in the VPC, with the
    reserved concurrency and the policy deploy wrote."""
    copy = tmp_path / "project"
    copy.mkdir()
    shutil.copy(REPO / "app.py", copy / "app.py")
    shutil.copy(REPO / "requirements.txt", copy / "requirements.txt")
    shutil.copytree(REPO / "chalicelib", copy / "chalicelib", ignore=shutil.ignore_patterns("__pycache__"))
    (copy / ".chalice").mkdir()
    shutil.copy(REPO / ".chalice" / "config.json", copy / ".chalice" / "config.json")
    outputs = sample_outputs(SAMPLE_STAGE)
    reserved = split_db_connections(40, APP_FUNCTIONS)
    write_chalice_stage(
        copy, SAMPLE_STAGE, outputs, region=REGION, account="123456789012", functions=APP_FUNCTIONS, reserved=reserved
    )

    template = chalice_package(copy, tmp_path / "out", env={"HANDPIPE_QUEUE_PREFIX": outputs["QueuePrefix"]})
    functions = {
        name: resource["Properties"]
        for name, resource in template["Resources"].items()
        if resource["Type"] == "AWS::Serverless::Function"
    }
    handlers = {properties["Handler"].split(".", 1)[1]: properties for properties in functions.values()}
    handlers["api_handler"] = handlers.pop("app")
    assert set(handlers) == set(APP_FUNCTIONS)

    import app

    sqs_sources = [source for source in app.app.event_sources if hasattr(source, "queue")]
    assert {source.name for source in sqs_sources} >= {"plan_jobs", "record_events"}
    for source in sqs_sources:
        events = [e for e in handlers[source.name]["Events"].values() if e["Type"] == "SQS"]
        assert len(events) == 1, source.name
        queue = json.dumps(events[0]["Properties"]["Queue"])
        role = source.queue.rsplit("-", 1)[-1]  # the app was imported here with the default prefix
        assert queue.endswith(f':handpipe-{SAMPLE_STAGE}-{role}"}}'), queue
        assert events[0]["Properties"]["BatchSize"] == getattr(source, "batch_size")  # noqa: B009 - SQS sources only
    assert handlers["plan_jobs"]["Events"]["PlanJobsSqsEventSource"]["Properties"]["BatchSize"] == 1
    assert handlers["record_events"]["Events"]["RecordEventsSqsEventSource"]["Properties"]["BatchSize"] == 10

    policy = json.loads((copy / ".chalice" / f"policy-{SAMPLE_STAGE}.json").read_text())
    for name, properties in handlers.items():
        if name in NO_DATABASE_FUNCTIONS:  # outside the VPC, where webhooks are, with no reserved concurrency
            assert "VpcConfig" not in properties and "ReservedConcurrentExecutions" not in properties, name
        else:
            assert properties["VpcConfig"] == {
                "SubnetIds": outputs["SubnetIds"].split(","),
                "SecurityGroupIds": [outputs["LambdaSecurityGroupId"]],
            }, name
            assert properties["ReservedConcurrentExecutions"] == reserved[name], name
        assert properties["Environment"]["Variables"]["HANDPIPE_DB_SECRET_ARN"] == outputs["DbSecretArn"]
        role = template["Resources"][properties["Role"]["Fn::GetAtt"][0]]["Properties"]
        assert [p["PolicyDocument"] for p in role["Policies"]] == [policy], name
    assert handlers["migrate"]["Timeout"] == 900
    # Every function's log group expires, after the stack's LogRetentionDays; metrics carry the stage.
    retention = {
        json.dumps(resource["Properties"]["LogGroupName"]): resource["Properties"]["RetentionInDays"]
        for resource in template["Resources"].values()
        if resource["Type"] == "AWS::Logs::LogGroup"
    }
    assert len(retention) == len(handlers) and set(retention.values()) == {14}, retention
    for name, properties in handlers.items():
        assert properties["Environment"]["Variables"]["HANDPIPE_STAGE"] == SAMPLE_STAGE, name


def chalice_package(project: Path, out: Path, env: Mapping[str, str]) -> dict[str, Any]:
    chalice = Path(sys.executable).with_name("chalice")
    command = [str(chalice if chalice.exists() else "chalice"), "package", "--stage", SAMPLE_STAGE, str(out)]
    environment = {**os.environ, "AWS_DEFAULT_REGION": REGION, **env}
    completed = subprocess.run(command, cwd=project, env=environment, capture_output=True, text=True, timeout=180)
    if completed.returncode != 0 and "pip" in (completed.stdout + completed.stderr).lower():
        # Packaging requirements needs pip to reach PyPI; without it, package the app alone and say so.
        warnings.warn(
            f"chalice package could not package requirements.txt (offline?); retried without them:\n"
            f"{completed.stderr[-500:]}",
            stacklevel=2,
        )
        (project / "requirements.txt").write_text("")
        shutil.rmtree(out, ignore_errors=True)
        completed = subprocess.run(command, cwd=project, env=environment, capture_output=True, text=True, timeout=180)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return dict(json.loads((out / "sam.json").read_text()))


def test_chalice_deploy_of_a_fresh_checkout_says_to_run_handpipe_deploy_first(tmp_path: Path) -> None:
    """The stage's policy file is written by `handpipe deploy`; before that, chalice's own error (it
    names the missing file) must say so instead of only "Unable to load IAM policy file policy-dev.json"."""
    copy = tmp_path / "project"
    copy.mkdir()
    shutil.copy(REPO / "app.py", copy / "app.py")
    (copy / "requirements.txt").write_text("")
    shutil.copytree(REPO / "chalicelib", copy / "chalicelib", ignore=shutil.ignore_patterns("__pycache__"))
    (copy / ".chalice").mkdir()
    shutil.copy(REPO / ".chalice" / "config.json", copy / ".chalice" / "config.json")
    chalice = Path(sys.executable).with_name("chalice")
    completed = subprocess.run(
        [str(chalice if chalice.exists() else "chalice"), "package", "--stage", "dev", str(tmp_path / "out")],
        cwd=copy,
        env={**os.environ, "AWS_DEFAULT_REGION": REGION},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert completed.returncode != 0
    assert "Unable to load IAM policy file" in completed.stderr
    last = [line for line in completed.stderr.splitlines() if line.strip()][-1]
    assert (
        last.startswith("RuntimeError: Unable to load IAM policy file")
        and "run-handpipe-deploy--stage-dev-first" in last
    )


def test_chalice_policy_names_only_the_stage() -> None:
    outputs = sample_outputs("prod")
    policy = chalice_policy(outputs, stage="prod", region=REGION, account="123456789012", functions=APP_FUNCTIONS)
    text = json.dumps(policy)
    assert "handpipe-dev" not in text and "handpipe-prod" in text
    logs = next(statement for statement in policy["Statement"] if statement["Sid"] == "Logs")
    assert "log-group:/aws/lambda/handpipe-prod:*" in " ".join(logs["Resource"])
    assert len(logs["Resource"]) == len(APP_FUNCTIONS)


def test_without_subnets_deploy_takes_two_zones_of_the_default_vpc(account: Account) -> None:
    said: list[str] = []
    chosen = deployment(
        account, RecordingDocker(), RecordingRunner(account.aws.apigateway), said
    ).network.default_vpc_subnets()
    subnets = account.aws.ec2.describe_subnets(SubnetIds=chosen)["Subnets"]
    [default_vpc] = account.aws.ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    assert len(chosen) == 2 and len({subnet["AvailabilityZone"] for subnet in subnets}) == 2
    assert {subnet["VpcId"] for subnet in subnets} == {default_vpc["VpcId"]}
    assert any("default VPC" in line for line in said)
