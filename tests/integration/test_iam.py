"""The IAM policies we ship, enforced for real: moto's IAM authentication checks every S3, SQS and
Secrets Manager call of an end-to-end run against the role that makes it (the API's policy from
`handpipe deploy`, the worker's from infra/handpipe.yaml), so a missing permission fails the run and an
action outside the policy is refused. The policies are linted with parliament too."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pymysql
import pytest
from botocore.exceptions import ClientError
from chalice.test import Client
from handpipe_worker.handler import Worker, WorkerSettings
from handpipe_worker.models import ModelCache
from moto.core import enable_iam_authentication

import app as chalice_app
from chalicelib.adapters.migrations import upgrade
from chalicelib.config import Settings
from chalicelib.runtime import Runtime, use_runtime
from chalicelib.shared.storage import ObjectStore, StorageUnavailable
from handpipe.deploy.chalice_config import chalice_policy
from handpipe.deploy.stacks import load_template
from handpipe.local.aws import aws_clients, provision, sns_client
from handpipe.local.pollers import LambdaContext
from tests.support.paths import REPO, data_path

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
API_KEY = "iam-test-key-0123456789abcdef"
APP_FUNCTIONS = ("api_handler", "plan_jobs", "record_events", "migrate", "sweep_stuck_jobs", "deliver_notifications")
MODELS = ModelCache()


def render(node: Any, values: dict[str, str]) -> Any:
    """A template's !Sub, !GetAtt and !Ref, filled in from `values` ("Bucket.Arn", "AWS::Region", ...)."""
    if isinstance(node, list):
        return [render(item, values) for item in node]
    if not isinstance(node, dict):
        return node
    if "Fn::Sub" in node:
        text = node["Fn::Sub"] if isinstance(node["Fn::Sub"], str) else node["Fn::Sub"][0]
        return re.sub(r"\$\{([^}]+)\}", lambda match: values[match.group(1)], text)
    if "Fn::GetAtt" in node:
        return values[".".join(node["Fn::GetAtt"])]
    if "Ref" in node:
        return values[node["Ref"]]
    return {key: render(value, values) for key, value in node.items()}


def worker_policy(values: dict[str, str]) -> dict[str, Any]:
    template = load_template((REPO / "infra" / "handpipe.yaml").read_text())
    [policy] = template["Resources"]["WorkerRole"]["Properties"]["Policies"]
    document: dict[str, Any] = render(policy["PolicyDocument"], values)
    return document


@dataclass
class Stage:
    bucket: str
    queues: dict[str, str]
    arns: dict[str, str]
    secret_arn: str
    database: str
    api: boto3.session.Session
    worker: boto3.session.Session
    api_policy: dict[str, Any]
    worker_policy: dict[str, Any]
    topic_arn: str = ""
    webhook_secret_arn: str = ""


# moto 5.2.5 checks some calls under names IAM does not have; AWS checks them as the action on the
# right, which our policies grant. Wherever the right is allowed, the test allows moto's name too.
MOTO_ACTION_NAMES = {  # moto's name: AWS's
    "s3:HeadBucket": "s3:ListBucket",  # HEAD on a bucket
    "sqs:SendMessageBatch": "sqs:SendMessage",
    "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
}


def with_moto_aliases(policy: dict[str, Any]) -> dict[str, Any]:
    statements = []
    for statement in policy["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        statements.append(statement)
        aliases = sorted(moto for moto, real in MOTO_ACTION_NAMES.items() if real in actions)
        if aliases:
            statements.append({**statement, "Sid": f"{statement.get('Sid', '')}MotoNames", "Action": aliases})
        if "sns:Publish" in actions:
            # moto 5.2.5 asks IAM about every SNS call for resource "*" (as about Secrets Manager's), so a
            # policy scoped to the topic (ours, as it must be) can never pass there; the test checks the
            # real statement on the topic's ARN with moto's evaluator instead (api_permits).
            statements.append({**statement, "Sid": f"{statement.get('Sid', '')}MotoAnyResource", "Resource": "*"})
        if "s3:DeleteObject" in actions:
            # A multi-object delete: AWS checks s3:DeleteObject on each key, moto once on the bucket.
            buckets = sorted({r.split("/", 1)[0] for r in resources if r.startswith("arn:aws:s3:::")})
            statements.append(
                {
                    "Sid": f"{statement.get('Sid', '')}MotoMultiDelete",
                    "Effect": "Allow",
                    "Action": "s3:DeleteObject",
                    "Resource": buckets,
                }
            )
    return {**policy, "Statement": statements}


def role_session(iam: Any, sts: Any, name: str, policy: dict[str, Any], endpoint: str) -> boto3.session.Session:
    """A role with this one inline policy, and a session with its temporary credentials, as a Lambda gets."""
    trust = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}],
    }
    role = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))["Role"]
    iam.put_role_policy(RoleName=name, PolicyName=name, PolicyDocument=json.dumps(with_moto_aliases(policy)))
    credentials = sts.assume_role(RoleArn=role["Arn"], RoleSessionName=name)["Credentials"]
    return boto3.session.Session(
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"],
        region_name=REGION,
    )


@pytest.fixture
def stage(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stage]:
    """What `handpipe deploy` makes, in moto (made before IAM is enforced, as CloudFormation would)."""
    s3, sqs = aws_clients(moto_endpoint)
    name = f"iam{uuid.uuid4().hex[:8]}"
    resources = provision(s3, sqs, bucket=f"{name}-bucket", prefix=name, max_receives=2, sns=sns_client(moto_endpoint))
    arns = {
        role: sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        for role, url in resources.queue_urls.items()
    }
    admin = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION)
    iam = admin.client("iam", endpoint_url=moto_endpoint)
    sts = admin.client("sts", endpoint_url=moto_endpoint)
    database = f"handpipe_iam_{uuid.uuid4().hex[:8]}"
    server = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", autocommit=True)
    server.cursor().execute(f"CREATE DATABASE `{database}`")
    secret = admin.client("secretsmanager", endpoint_url=moto_endpoint).create_secret(
        Name=f"handpipe/{name}/database",
        SecretString=json.dumps(
            {"host": "127.0.0.1", "port": 3306, "username": "root", "password": "", "dbname": database}
        ),
    )["ARN"]
    webhook_secret = admin.client("secretsmanager", endpoint_url=moto_endpoint).create_secret(
        Name=f"handpipe/{name}/webhook-signing", SecretString=uuid.uuid4().hex
    )["ARN"]
    bucket_arn = f"arn:aws:s3:::{resources.bucket}"
    assert resources.topic_arn
    outputs = {
        "BucketArn": bucket_arn,
        "JobsQueueArn": arns["jobs"],
        "WorkQueueArn": arns["work"],
        "EventsQueueArn": arns["events"],
        "NotifyQueueArn": arns["notify"],
        "JobEndsTopicArn": resources.topic_arn,
        "UploadsQueueArn": arns["uploads"],
        "DbSecretArn": secret,
        "WebhookSecretArn": webhook_secret,
    }
    api_policy = chalice_policy(outputs, stage=name, region=REGION, account=ACCOUNT, functions=APP_FUNCTIONS)
    values = {
        "Bucket.Arn": bucket_arn,
        "WorkQueue.Arn": arns["work"],
        "EventsQueue.Arn": arns["events"],
        "AWS::Partition": "aws",
        "AWS::Region": REGION,
        "AWS::AccountId": ACCOUNT,
        "Stage": name,
    }
    rendered_worker_policy = worker_policy(values)
    api = role_session(iam, sts, f"{name}-api", api_policy, moto_endpoint)
    worker = role_session(iam, sts, f"{name}-worker", rendered_worker_policy, moto_endpoint)
    # The Lambda's environment: its role's credentials; clients made without arguments use them.
    frozen = api.get_credentials().get_frozen_credentials()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", frozen.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", frozen.secret_key)
    monkeypatch.setenv("AWS_SESSION_TOKEN", frozen.token)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    try:
        yield Stage(
            resources.bucket,
            dict(resources.queue_urls),
            arns,
            secret,
            database,
            api,
            worker,
            api_policy,
            rendered_worker_policy,
            topic_arn=resources.topic_arn,
            webhook_secret_arn=webhook_secret,
        )
    finally:
        server.cursor().execute(f"DROP DATABASE IF EXISTS `{database}`")
        server.close()


def api_permits(stage: Stage, action: str, resource: str) -> bool:
    from moto.iam.access_control import IAMPolicy, PermissionResult

    verdict = IAMPolicy(json.dumps(stage.api_policy)).is_action_permitted(action, resource)
    return bool(verdict == PermissionResult.PERMITTED)


def denied(call: Any, **kwargs: Any) -> bool:
    try:
        call(**kwargs)
    except ClientError as error:
        code = error.response["Error"]["Code"]
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        # moto's SQS (JSON protocol) reports a refusal as code "403"
        return code in ("AccessDenied", "AccessDeniedException", "InvalidAccessKeyId", "403") or (
            status == 403 and code != "SignatureDoesNotMatch"
        )
    return False


def take(sqs: Any, url: str) -> list[str]:
    bodies: list[str] = []
    for _ in range(100):  # bounded
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        if not messages:
            return bodies
        for message in messages:
            bodies.append(message["Body"])
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return bodies


def test_each_role_does_its_whole_job_and_nothing_else(stage: Stage, moto_endpoint: str) -> None:
    def client(session: boto3.session.Session, service: str) -> Any:
        config = None
        if service == "s3":
            from botocore.config import Config

            config = Config(signature_version="s3v4", s3={"addressing_style": "path"})
        return session.client(service, endpoint_url=moto_endpoint, config=config)

    api_s3, api_sqs = client(stage.api, "s3"), client(stage.api, "sqs")
    worker_s3, worker_sqs = client(stage.worker, "s3"), client(stage.worker, "sqs")
    settings = Settings(
        bucket=stage.bucket,
        jobs_queue_url=stage.queues["jobs"],
        work_queue_url=stage.queues["work"],
        db_secret_arn=stage.secret_arn,  # read with the API role, as in AWS
        api_keys={API_KEY: "tester"},
        region=REGION,
        notify_queue_url=stage.queues["notify"],
        notify_topic_arn=stage.topic_arn,
        webhook_secret_arn=stage.webhook_secret_arn,
    )
    worker = Worker(worker_s3, worker_sqs, WorkerSettings(events_queue_url=stage.queues["events"]), models=MODELS)
    clip = data_path("videos/asl_thanks_two_hands.mkv")
    rt = Runtime(settings, s3_client=api_s3, sqs_client=api_sqs, sns_client=client(stage.api, "sns"))
    # The job-end topic's subscriber: an SQS queue, made (as the subscription) by the account's admin.
    admin_sqs = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    ).client("sqs", endpoint_url=moto_endpoint)
    sink = admin_sqs.create_queue(QueueName=f"{stage.bucket}-sink")["QueueUrl"]
    sink_arn = admin_sqs.get_queue_attributes(QueueUrl=sink, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION).client(
        "sns", endpoint_url=moto_endpoint
    ).subscribe(TopicArn=stage.topic_arn, Protocol="sqs", Endpoint=sink_arn)
    # moto 5.2.5 asks IAM about Secrets Manager calls for resource "*", so a policy scoped to the one
    # secret (ours, as it must be) can never pass there: the secret is read, with the API role's
    # credentials, before enforcement starts, and the statement is checked with moto's evaluator on
    # the secret's real ARN instead.
    upgrade(rt.database)  # the migrate function
    assert rt.webhook_master_secret  # the same for the webhook signing master secret
    assert api_permits(stage, "secretsmanager:GetSecretValue", stage.webhook_secret_arn)
    assert api_permits(stage, "sns:Publish", stage.topic_arn)
    assert not api_permits(stage, "sns:Publish", stage.topic_arn.replace("job-ends", "other"))
    assert api_permits(stage, "secretsmanager:GetSecretValue", stage.secret_arn)
    assert not api_permits(stage, "secretsmanager:GetSecretValue", stage.secret_arn.replace("database", "other"))
    with enable_iam_authentication():
        # Credentials IAM does not know no longer pass: moto enforces IAM from here on.
        stranger = boto3.session.Session(aws_access_key_id="x", aws_secret_access_key="y", region_name=REGION)
        assert denied(client(stranger, "s3").list_objects_v2, Bucket=stage.bucket)
        use_runtime(rt)
        try:
            with Client(chalice_app.app) as app:

                def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
                    sent = None if body is None else json.dumps(body).encode()
                    headers = {"content-type": "application/json", "x-api-key": API_KEY}
                    response = getattr(app.http, method.lower())(path, body=sent, headers=headers)
                    return response.status_code, json.loads(response.body or b"null")

                assert call("GET", "/health")[1]["status"] == "ok"
                status, video = call("POST", "/videos", {"filename": "thanks.mkv", "size_bytes": clip.stat().st_size})
                assert status == 201, video
                # A presigned URL carries the API role's signature, so the role must allow the PUT it
                # names. moto 5.2.5 cannot check a presigned URL under IAM (it reads only the Authorization
                # header, and answers 500), so the same PUT is made with the same credentials directly.
                assert video["upload"]["url"].split("?")[0].endswith(f"/{stage.bucket}/{video['s3_key']}")
                api_s3.put_object(
                    Bucket=stage.bucket,
                    Key=video["s3_key"],
                    Body=clip.read_bytes(),
                    ContentType=video["upload"]["headers"]["Content-Type"],
                )
                status, job = call("POST", f"/videos/{video['id']}/jobs", {})
                assert status == 202, job

                def deliver(function: str, queue: str, bodies: list[str]) -> None:
                    event = app.events.generate_sqs_event(message_bodies=bodies, queue_name=queue)
                    app.lambda_.invoke(function, event)

                for _ in range(20):  # bounded: probe, segments, render
                    deliver("plan_jobs", "handpipe-jobs", take(api_sqs, stage.queues["jobs"]))
                    items = take(worker_sqs, stage.queues["work"])  # the worker's event source polls as the worker
                    if not items:
                        break
                    records = [
                        {"messageId": str(n), "body": body, "attributes": {"ApproximateReceiveCount": "1"}}
                        for n, body in enumerate(items)
                    ]
                    report = worker.handle_batch({"Records": records}, LambdaContext("worker", 900))
                    assert not report.get("batchItemFailures"), report
                    deliver("record_events", "handpipe-events", take(api_sqs, stage.queues["events"]))
                finished = call("GET", f"/jobs/{job['id']}")[1]
                assert finished["status"] == "SUCCEEDED", finished
                # Its end: announced on the notify queue, published on the topic, both with the API role.
                notices = take(api_sqs, stage.queues["notify"])
                assert len(notices) == 1 and json.loads(notices[0])["kind"] == "topic"
                deliver("deliver_notifications", "handpipe-notify", notices)
                result = call("GET", f"/jobs/{job['id']}/result")[1]
                assert result["result"]["url"].split("?")[0].endswith(f"/{stage.bucket}/{result['result']['key']}")
                body = api_s3.get_object(Bucket=stage.bucket, Key=result["result"]["key"])["Body"].read()
                assert body[:2] == b"\x1f\x8b"  # what the download URL gives, with the API role's credentials
                assert call("GET", f"/jobs/{job['id']}/export?format=csv")[0] == 200
                key = f"results/{video['id']}/{job['id']}/result.json.gz"

                # Outside the policies: refused.
                assert denied(api_s3.put_object, Bucket=stage.bucket, Key="models/evil.task", Body=b"x")
                assert denied(api_sqs.receive_message, QueueUrl=stage.queues["work"])
                assert denied(worker_s3.delete_object, Bucket=stage.bucket, Key=video["s3_key"])
                assert denied(worker_s3.put_object, Bucket=stage.bucket, Key=video["s3_key"], Body=b"x")
                assert denied(worker_sqs.send_message, QueueUrl=stage.queues["jobs"], MessageBody="{}")
                assert denied(worker_sqs.receive_message, QueueUrl=stage.queues["events"])
                assert denied(client(stage.worker, "secretsmanager").get_secret_value, SecretId=stage.secret_arn)
                assert denied(client(stage.worker, "sns").publish, TopicArn=stage.topic_arn, Message="{}")
                assert denied(worker_sqs.send_message, QueueUrl=stage.queues["notify"], MessageBody="{}")
                # A multi-object delete the role may not make: S3 answers 200 with the keys it refused,
                # and the store says so instead of counting them as removed.
                with pytest.raises(StorageUnavailable, match="refused to delete"):
                    ObjectStore(worker_s3, stage.bucket).delete_prefix(f"results/{video['id']}/")

                status, done = call("DELETE", f"/videos/{video['id']}")
                assert status == 200 and done["objects_removed"] >= 3, done
                assert api_s3.list_objects_v2(Bucket=stage.bucket, Prefix=f"results/{video['id']}/")["KeyCount"] == 0
                assert denied(worker_s3.get_object, Bucket=stage.bucket, Key=key) is False  # a 404 now, not a 403
        finally:
            use_runtime(None)
    [published] = take(admin_sqs, sink)
    event = json.loads(json.loads(published)["Message"])
    assert (event["type"], event["job_id"]) == ("job.succeeded", job["id"])


# Findings parliament may report, each with why it is right as it is.
ACCEPTED_FINDINGS = {
    # Lambda's VPC attachment: these EC2 actions are what AWSLambdaVPCAccessExecutionRole grants on "*";
    # the interfaces do not exist before Lambda makes them, so there is no ARN to name.
    ("RESOURCE_STAR", "ec2:AssignPrivateIpAddresses"),
    ("RESOURCE_STAR", "ec2:CreateNetworkInterface"),
    ("RESOURCE_STAR", "ec2:DeleteNetworkInterface"),
    ("RESOURCE_STAR", "ec2:UnassignPrivateIpAddresses"),
}


def lint(policy: dict[str, Any]) -> list[str]:
    from parliament import analyze_policy_string

    problems = []
    for finding in analyze_policy_string(json.dumps(policy)).findings:
        actions = finding.detail if isinstance(finding.detail, list) else [str(finding.detail)]
        unaccepted = [a for a in actions if (finding.issue, a) not in ACCEPTED_FINDINGS]
        if unaccepted:
            problems.append(f"{finding.issue}: {unaccepted}")
    return problems


def test_the_policies_pass_parliament() -> None:
    arn = f"arn:aws:sqs:{REGION}:{ACCOUNT}:handpipe-prod"
    outputs = {
        "BucketArn": f"arn:aws:s3:::handpipe-prod-{ACCOUNT}-abcd1234",
        "JobsQueueArn": f"{arn}-jobs",
        "WorkQueueArn": f"{arn}-work",
        "EventsQueueArn": f"{arn}-events",
        "NotifyQueueArn": f"{arn}-notify",
        "JobEndsTopicArn": f"arn:aws:sns:{REGION}:{ACCOUNT}:handpipe-prod-job-ends",
        "UploadsQueueArn": f"{arn}-uploads",
        "DbSecretArn": f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:handpipe/prod/database-AbCdEf",
        "WebhookSecretArn": f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:handpipe/prod/webhook-signing-AbCdEf",
    }
    api = chalice_policy(outputs, stage="prod", region=REGION, account=ACCOUNT, functions=APP_FUNCTIONS)
    worker = worker_policy(
        {
            "Bucket.Arn": outputs["BucketArn"],
            "WorkQueue.Arn": outputs["WorkQueueArn"],
            "EventsQueue.Arn": outputs["EventsQueueArn"],
            "AWS::Partition": "aws",
            "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT,
            "Stage": "prod",
        }
    )
    assert lint(api) == []
    assert lint(worker) == []
    # parliament does find what it should: a typo'd action, and a wildcard resource.
    broken = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObjects", "Resource": "*"}]}
    assert lint(broken)
