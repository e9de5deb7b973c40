"""The AWS side of the one-process local stack: a moto server on loopback and the bucket and queues the
deployed stack would have (the pollers that feed the queues to handlers are in pollers.py)."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from chalicelib.shared.contracts import queue_names

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.literals import BucketLocationConstraintType
    from mypy_boto3_sns import SNSClient
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.literals import QueueAttributeNameType

logger = logging.getLogger(__name__)

DEFAULT_VISIBILITY_TIMEOUTS: Mapping[str, int] = {"jobs": 60, "work": 900, "events": 60, "notify": 60, "uploads": 60}
# SQS's maximum, so a failed message stays in its DLQ long enough to be looked at.
DLQ_RETENTION_S = 14 * 24 * 3600


# ---------------------------------------------------------------------------------------------
# moto server
# ---------------------------------------------------------------------------------------------


class MotoServer:
    """moto in server mode on 127.0.0.1, in a thread of this process.

    moto keeps its state in process-wide backends, so two servers in one process (or a server and
    `moto.mock_aws`) see the same buckets and queues. With `objects_dir`, the objects of the
    buckets named to keep_on_disk() are also kept in files there (handpipe.local.s3disk), so they
    outlive the process."""

    def __init__(self, port: int = 0, *, quiet: bool = True, objects_dir: str | Path | None = None) -> None:
        self._port = port
        self._quiet = quiet
        self._objects_dir = None if objects_dir is None else Path(objects_dir)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._mirror: Any = None
        self._endpoint_url: str | None = None

    @property
    def endpoint_url(self) -> str:
        if self._endpoint_url is None:
            raise RuntimeError("the moto server is not running; call start() first")
        return self._endpoint_url

    def start(self) -> str:
        """Start serving and return the endpoint URL, e.g. http://127.0.0.1:50123."""
        if self._server is not None:
            raise RuntimeError("the moto server is already running")
        # Imported here so the rest of this module works where moto (a dev dependency) is absent.
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        from .s3disk import DiskObjects, MirroringApp

        if self._quiet:
            # werkzeug logs every request at INFO; with pollers long-polling that drowns real output.
            werkzeug_logger = logging.getLogger("werkzeug")
            if werkzeug_logger.level == logging.NOTSET:
                werkzeug_logger.setLevel(logging.WARNING)
        disk = DiskObjects(self._objects_dir or ".")
        # What moto's ThreadedMotoServer serves, behind the layer that keeps objects on disk (it
        # passes everything through until keep_on_disk() names a bucket).
        self._mirror = MirroringApp(DomainDispatcherApplication(create_backend_app), disk, ())
        if self._port:
            # werkzeug answers a port in use with sys.exit; this says which port, as an OSError.
            _check_port_free(self._port)
        server = make_server("127.0.0.1", self._port, self._mirror, True, request_handler=MotoRequestHandler)
        self._thread = threading.Thread(target=server.serve_forever, name="moto", daemon=True)
        self._thread.start()
        self._server = server
        self._endpoint_url = f"http://127.0.0.1:{server.server_address[1]}"
        return self._endpoint_url

    def keep_on_disk(self, s3_client: S3Client, bucket: str) -> int:
        """Put the bucket's objects kept in `objects_dir` back into moto, then keep every later write
        and delete there too. The bucket must exist. Returns how many objects came back."""
        from .s3disk import restore

        if self._objects_dir is None:
            raise RuntimeError("this moto server keeps nothing on disk: give it an objects_dir")
        if self._mirror is None:
            raise RuntimeError("start the moto server first")
        restored = restore(s3_client, self._mirror.disk, bucket)
        self._mirror.s3 = s3_client
        self._mirror.buckets.add(bucket)
        return restored

    def stop(self) -> None:
        server, self._server = self._server, None
        self._endpoint_url = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def reset(self) -> None:
        """Forget every bucket, queue and message (moto's own reset endpoint)."""
        import urllib.request

        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def __enter__(self) -> MotoServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # Same option werkzeug sets, so a port in TIME_WAIT is not reported as taken.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise OSError(exc.errno, f"cannot serve moto on 127.0.0.1:{port}: {exc.strerror}") from exc


def aws_clients(endpoint_url: str, region: str = "us-east-1") -> tuple[S3Client, SQSClient]:
    """S3 and SQS clients for a moto endpoint, with moto's dummy credentials."""
    session = boto3.session.Session(
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        aws_session_token="testing",
        region_name=region,
    )
    # Path-style, because virtual-host URLs (bucket.127.0.0.1) do not resolve on loopback, and
    # presigned URLs handed to browsers or curl must work as they are.
    s3_config = Config(signature_version="s3v4", s3={"addressing_style": "path"})
    s3 = session.client("s3", endpoint_url=endpoint_url, config=s3_config)
    sqs = session.client("sqs", endpoint_url=endpoint_url)
    return s3, sqs


def sns_client(endpoint_url: str, region: str = "us-east-1") -> SNSClient:
    """An SNS client for a moto endpoint (the job-end topic), with moto's dummy credentials."""
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", aws_session_token="testing", region_name=region
    )
    return session.client("sns", endpoint_url=endpoint_url)


def topic_name(prefix: str = "handpipe") -> str:
    """The SNS topic every job end is published on (as infra/handpipe.yaml names it: handpipe-STAGE-job-ends)."""
    return f"{prefix}-job-ends"


# ---------------------------------------------------------------------------------------------
# Provisioning
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resources:
    """What provision() made; the dicts are keyed by queue role ("jobs", "work", "events")."""

    bucket: str
    queue_urls: dict[str, str]
    dlq_urls: dict[str, str]
    queue_arns: dict[str, str]
    dlq_arns: dict[str, str]
    topic_arn: str | None = None  # the job-end topic, when provision() was given an SNS client


def provision(
    s3_client: S3Client,
    sqs_client: SQSClient,
    *,
    bucket: str,
    prefix: str = "handpipe",
    max_receives: int = 3,
    visibility_timeouts: Mapping[str, int] | None = None,
    max_receives_by_role: Mapping[str, int] | None = None,
    sns: SNSClient | None = None,
    upload_trigger_prefix: str | None = None,
) -> Resources:
    """Create (or bring up to date) the bucket and the queues with their dead-letter queues, with
    `sns` the job-end topic, and have the bucket notify the "uploads" queue of objects created under
    `upload_trigger_prefix` (None: not). `max_receives_by_role` overrides `max_receives` for some queues (the
    notify queue retries a webhook more often than the pipeline retries a message).

    Safe to run again: existing resources get the requested settings rather than an error."""
    if max_receives < 1:
        raise ValueError(f"max_receives must be at least 1, got {max_receives}")
    names = queue_names(prefix)
    unknown = sorted(set(visibility_timeouts or {}) - set(names))
    if unknown:
        raise ValueError(f"visibility_timeouts for unknown role(s): {', '.join(unknown)}")
    timeouts = {**DEFAULT_VISIBILITY_TIMEOUTS, **(visibility_timeouts or {})}

    _ensure_bucket(s3_client, bucket)
    queue_urls: dict[str, str] = {}
    dlq_urls: dict[str, str] = {}
    queue_arns: dict[str, str] = {}
    dlq_arns: dict[str, str] = {}
    for role, name in names.items():
        dlq_url = _ensure_queue(sqs_client, f"{name}-dlq", {"MessageRetentionPeriod": str(DLQ_RETENTION_S)})
        dlq_arn = queue_arn(sqs_client, dlq_url)
        receives = (max_receives_by_role or {}).get(role, max_receives)
        redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": receives}
        url = _ensure_queue(
            sqs_client,
            name,
            {"VisibilityTimeout": str(timeouts[role]), "RedrivePolicy": json.dumps(redrive)},
        )
        queue_urls[role], dlq_urls[role] = url, dlq_url
        queue_arns[role], dlq_arns[role] = queue_arn(sqs_client, url), dlq_arn
    topic_arn = sns.create_topic(Name=topic_name(prefix))["TopicArn"] if sns is not None else None  # idempotent
    if upload_trigger_prefix is not None:
        notify_uploads(s3_client, sqs_client, bucket, queue_urls["uploads"], upload_trigger_prefix)
    return Resources(
        bucket=bucket,
        queue_urls=queue_urls,
        dlq_urls=dlq_urls,
        queue_arns=queue_arns,
        dlq_arns=dlq_arns,
        topic_arn=topic_arn,
    )


def _ensure_bucket(s3: S3Client, bucket: str) -> None:
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            raise
        region = s3.meta.region_name
        try:
            # us-east-1 is the one region that rejects an explicit LocationConstraint.
            if region in (None, "us-east-1"):
                s3.create_bucket(Bucket=bucket)
            else:
                location = cast("BucketLocationConstraintType", region)
                s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": location})
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass  # another provision() got there between our check and our create
    # Browsers upload straight to S3 with presigned PUTs, which CORS must allow.
    s3.put_bucket_cors(
        Bucket=bucket,
        CORSConfiguration={
            "CORSRules": [
                {
                    "AllowedMethods": ["GET", "PUT", "HEAD"],
                    "AllowedOrigins": ["*"],
                    "AllowedHeaders": ["*"],
                    "ExposeHeaders": ["ETag"],
                    "MaxAgeSeconds": 3000,
                }
            ]
        },
    )


def _ensure_queue(sqs: SQSClient, name: str, attributes: Mapping[QueueAttributeNameType, str]) -> str:
    # CreateQueue refuses an existing queue whose attributes differ, so look it up first and
    # update it in place; that is what makes a second run with new timeouts succeed.
    try:
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    except sqs.exceptions.QueueDoesNotExist:
        try:
            return sqs.create_queue(QueueName=name, Attributes=dict(attributes))["QueueUrl"]
        except sqs.exceptions.QueueNameExists:
            url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    sqs.set_queue_attributes(QueueUrl=url, Attributes=dict(attributes))
    return url


def queue_arn(sqs: SQSClient, queue_url: str) -> str:
    return sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]


def notify_uploads(s3: S3Client, sqs: SQSClient, bucket: str, queue_url: str, prefix: str) -> None:
    """What the deployed stack's bucket does (infra/handpipe.yaml): S3 sends an ObjectCreated
    notification to the queue for each object under `prefix`; the queue's policy admits S3 for this
    bucket only (moto does not enforce it, AWS does)."""
    arn = queue_arn(sqs, queue_url)
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "s3.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": arn,
                "Condition": {"ArnLike": {"aws:SourceArn": f"arn:aws:s3:::{bucket}"}},
            }
        ],
    }
    sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"Policy": json.dumps(policy)})
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "Id": "handpipe-upload-trigger",
                    "QueueArn": arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": prefix}]}},
                }
            ]
        },
    )
