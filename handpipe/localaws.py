"""The AWS side of the one-process local stack: a moto server on loopback, the bucket and queues the
deployed stack would have, and pollers that hand SQS batches to handlers the way Lambda does."""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
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
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.literals import QueueAttributeNameType
    from mypy_boto3_sqs.type_defs import (
        DeleteMessageBatchRequestEntryTypeDef,
        MessageAttributeValueOutputTypeDef,
        MessageTypeDef,
    )

logger = logging.getLogger(__name__)

DEFAULT_VISIBILITY_TIMEOUTS: Mapping[str, int] = {"jobs": 60, "work": 900, "events": 60}
# SQS's maximum, so a failed message stays in its DLQ long enough to be looked at.
DLQ_RETENTION_S = 14 * 24 * 3600
MAX_SQS_BATCH = 10

SqsHandler = Callable[[dict[str, Any], "LambdaContext"], Any]
ErrorCallback = Callable[[str, BaseException], None]

# The system attributes Lambda copies into a record; SQS may return others that Lambda drops.
_RECORD_ATTRIBUTES = (
    "ApproximateReceiveCount",
    "SentTimestamp",
    "SenderId",
    "ApproximateFirstReceiveTimestamp",
    "AWSTraceHeader",
    "SequenceNumber",
    "MessageGroupId",
    "MessageDeduplicationId",
    "DeadLetterQueueSourceArn",
)


# ---------------------------------------------------------------------------------------------
# moto server
# ---------------------------------------------------------------------------------------------


class MotoServer:
    """moto in server mode on 127.0.0.1, in a thread of this process.

    moto keeps its state in process-wide backends, so two servers in one process (or a server and
    `moto.mock_aws`) see the same buckets and queues. With `objects_dir`, the objects of the
    buckets named to keep_on_disk() are also kept in files there (handpipe.s3disk), so they
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


def provision(
    s3_client: S3Client,
    sqs_client: SQSClient,
    *,
    bucket: str,
    prefix: str = "handpipe",
    max_receives: int = 3,
    visibility_timeouts: Mapping[str, int] | None = None,
) -> Resources:
    """Create (or bring up to date) the bucket and the queues with their dead-letter queues.

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
        redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receives}
        url = _ensure_queue(
            sqs_client,
            name,
            {"VisibilityTimeout": str(timeouts[role]), "RedrivePolicy": json.dumps(redrive)},
        )
        queue_urls[role], dlq_urls[role] = url, dlq_url
        queue_arns[role], dlq_arns[role] = queue_arn(sqs_client, url), dlq_arn
    return Resources(bucket=bucket, queue_urls=queue_urls, dlq_urls=dlq_urls, queue_arns=queue_arns, dlq_arns=dlq_arns)


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


# ---------------------------------------------------------------------------------------------
# Lambda event-source mapping emulation
# ---------------------------------------------------------------------------------------------


class LambdaContext:
    """The parts of Lambda's context object our handlers (and Chalice) use."""

    def __init__(
        self,
        function_name: str,
        timeout_s: float,
        *,
        memory_limit_in_mb: int = 1024,
        region: str = "us-east-1",
        account_id: str = "123456789012",
    ) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.aws_request_id = str(uuid.uuid4())
        self.memory_limit_in_mb = memory_limit_in_mb
        self.invoked_function_arn = f"arn:aws:lambda:{region}:{account_id}:function:{function_name}"
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = f"{time.strftime('%Y/%m/%d')}/[$LATEST]{uuid.uuid4().hex}"
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


@dataclass(frozen=True)
class PollerStats:
    """A snapshot of what one poller has done since it started."""

    batches: int  # handler invocations
    messages_received: int
    messages_deleted: int
    items_failed: int  # messages a handler reported in batchItemFailures
    handler_errors: int  # invocations that raised, timed out or returned an invalid response
    receive_errors: int
    busy: bool  # a batch is between receive and delete


class QueuePoller:
    """Feeds one SQS queue to a handler from a background thread, as Lambda's event-source mapping
    does with ReportBatchItemFailures on.

    Success deletes the batch except the messages named in a returned batchItemFailures; a raise
    deletes nothing, so SQS redelivers after the visibility timeout and, after maxReceiveCount
    receives, moves the message to the DLQ. A handler cannot be pre-empted in a thread, so one that
    outlives `timeout_s` runs to the end and is then treated as timed out (nothing deleted).
    Start several pollers on one queue for concurrency."""

    def __init__(
        self,
        sqs_client: SQSClient,
        queue_url: str,
        handler: SqsHandler,
        *,
        name: str,
        batch_size: int = 10,
        timeout_s: float = 60,
        wait_seconds: int = 1,
        memory_limit_in_mb: int = 1024,
        on_error: ErrorCallback | None = None,
    ) -> None:
        if not 1 <= batch_size <= MAX_SQS_BATCH:
            raise ValueError(f"batch_size must be between 1 and {MAX_SQS_BATCH}, got {batch_size}")
        if not 0 <= wait_seconds <= 20:
            raise ValueError(f"wait_seconds must be between 0 and 20, got {wait_seconds}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.name = name
        self.queue_url = queue_url
        self.queue_name = queue_url.rstrip("/").rsplit("/", 1)[-1]
        self._sqs = sqs_client
        self._handler = handler
        self._batch_size = batch_size
        self._timeout_s = timeout_s
        self._wait_seconds = wait_seconds
        self._memory_limit_in_mb = memory_limit_in_mb
        self._on_error = on_error
        self._queue_arn = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._busy = False
        self._batches = 0
        self._received = 0
        self._deleted = 0
        self._items_failed = 0
        self._handler_errors = 0
        self._receive_errors = 0

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"poller {self.name} was already started")
        # Looked up here, in the caller's thread, so a missing queue fails loudly and at once.
        self._queue_arn = queue_arn(self._sqs, self.queue_url)
        self._thread = threading.Thread(target=self._run, name=f"poller-{self.name}", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the thread to stop after its current receive or batch, without waiting."""
        self._stop.set()

    def stop(self, timeout: float | None = 10.0) -> bool:
        """Stop polling, letting a batch in progress finish; True if the thread has ended."""
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def __enter__(self) -> QueuePoller:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- introspection --------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def stats(self) -> PollerStats:
        with self._lock:
            return PollerStats(
                batches=self._batches,
                messages_received=self._received,
                messages_deleted=self._deleted,
                items_failed=self._items_failed,
                handler_errors=self._handler_errors,
                receive_errors=self._receive_errors,
                busy=self._busy,
            )

    def is_idle(self) -> bool:
        """True when no batch is between receive and delete."""
        with self._lock:
            return not self._busy

    # -- the loop -------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                response = self._sqs.receive_message(
                    QueueUrl=self.queue_url,
                    MaxNumberOfMessages=self._batch_size,
                    WaitTimeSeconds=self._wait_seconds,
                    AttributeNames=["All"],
                    MessageAttributeNames=["All"],
                )
            except Exception as exc:  # like the real mapping, keep polling through outages
                if self._stop.is_set():
                    break
                with self._lock:
                    self._receive_errors += 1
                logger.warning("poller %s: receive from %s failed: %s", self.name, self.queue_name, exc)
                self._stop.wait(1.0)
                continue
            messages = response.get("Messages", [])
            if not messages:
                if self._wait_seconds == 0:
                    self._stop.wait(0.1)  # no long poll to pace us
                continue
            with self._lock:
                # Held until the deletes are done, so at every moment a batch shows either as
                # in-flight messages in SQS or as a busy poller, and drain() cannot miss it.
                self._busy = True
                self._batches += 1
                self._received += len(messages)
            try:
                self._deliver(messages)
            finally:
                with self._lock:
                    self._busy = False

    def _deliver(self, messages: Sequence[MessageTypeDef]) -> None:
        event = {"Records": [self._record(message) for message in messages]}
        region = self._queue_arn.split(":")[3]
        account = self._queue_arn.split(":")[4]
        context = LambdaContext(
            self.name,
            self._timeout_s,
            memory_limit_in_mb=self._memory_limit_in_mb,
            region=region,
            account_id=account,
        )
        started = time.monotonic()
        try:
            result = self._handler(event, context)
        except Exception as exc:  # a failing handler must not kill the poller
            self._fail(exc, len(messages))
            return
        elapsed = time.monotonic() - started
        if elapsed > self._timeout_s:
            self._fail(TimeoutError(f"Task timed out after {elapsed:.2f} seconds"), len(messages))
            return
        try:
            failed = _batch_item_failures(result, {message["MessageId"] for message in messages})
        except ValueError as exc:
            self._fail(exc, len(messages))
            return
        with self._lock:
            self._items_failed += len(failed)
        self._delete([message for message in messages if message["MessageId"] not in failed])

    def _fail(self, exc: BaseException, count: int) -> None:
        with self._lock:
            self._handler_errors += 1
        logger.error(
            "poller %s: handler failed on a batch of %d from queue %s; SQS will redeliver",
            self.name,
            count,
            self.queue_name,
            exc_info=exc,
        )
        if self._on_error is not None:
            try:
                self._on_error(self.name, exc)
            except Exception:  # a broken callback must not kill the poller
                logger.exception("poller %s: on_error callback failed", self.name)

    def _delete(self, messages: Sequence[MessageTypeDef]) -> None:
        if not messages:
            return
        entries: list[DeleteMessageBatchRequestEntryTypeDef] = [
            {"Id": str(i), "ReceiptHandle": message["ReceiptHandle"]} for i, message in enumerate(messages)
        ]
        try:
            response = self._sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=entries)
        except Exception as exc:  # undeleted messages just come back, as on Lambda
            logger.warning("poller %s: delete from %s failed: %s", self.name, self.queue_name, exc)
            return
        for failure in response.get("Failed", []):
            logger.warning(
                "poller %s: could not delete a message from %s: %s",
                self.name,
                self.queue_name,
                failure.get("Message", failure.get("Code")),
            )
        with self._lock:
            self._deleted += len(response.get("Successful", []))

    def _record(self, message: MessageTypeDef) -> dict[str, Any]:
        attributes: Mapping[Any, str] = message.get("Attributes", {})
        record: dict[str, Any] = {
            "messageId": message["MessageId"],
            "receiptHandle": message["ReceiptHandle"],
            "body": message.get("Body", ""),
            "attributes": {name: attributes[name] for name in _RECORD_ATTRIBUTES if name in attributes},
            "messageAttributes": {
                name: _lambda_message_attribute(value) for name, value in message.get("MessageAttributes", {}).items()
            },
            "md5OfBody": message.get("MD5OfBody", ""),
            "eventSource": "aws:sqs",
            "eventSourceARN": self._queue_arn,
            "awsRegion": self._queue_arn.split(":")[3],
        }
        if "MD5OfMessageAttributes" in message:
            record["md5OfMessageAttributes"] = message["MD5OfMessageAttributes"]
        return record


def _lambda_message_attribute(value: MessageAttributeValueOutputTypeDef) -> dict[str, Any]:
    # Lambda spells the keys in camelCase and carries binary values as base64 text.
    converted: dict[str, Any] = {
        "stringListValues": list(value.get("StringListValues", [])),
        "binaryListValues": [base64.b64encode(item).decode("ascii") for item in value.get("BinaryListValues", [])],
        "dataType": value["DataType"],
    }
    if "StringValue" in value:
        converted["stringValue"] = value["StringValue"]
    if "BinaryValue" in value:
        converted["binaryValue"] = base64.b64encode(value["BinaryValue"]).decode("ascii")
    return converted


def _batch_item_failures(result: object, message_ids: set[str]) -> set[str]:
    """The message ids a handler reported as failed; ValueError where Lambda would fail the batch."""
    if not isinstance(result, Mapping):
        return set()
    items = result.get("batchItemFailures")
    if items is None:
        return set()
    if not isinstance(items, list):
        raise ValueError(f"batchItemFailures must be a list, got {type(items).__name__}")
    failed: set[str] = set()
    for item in items:
        identifier = item.get("itemIdentifier") if isinstance(item, Mapping) else None
        if not isinstance(identifier, str) or identifier not in message_ids:
            raise ValueError(f"batchItemFailures names no message of this batch: {item!r}")
        failed.add(identifier)
    return failed


# ---------------------------------------------------------------------------------------------
# Waiting for quiet
# ---------------------------------------------------------------------------------------------


def drain(
    pollers: Iterable[QueuePoller],
    sqs_client: SQSClient,
    queue_urls: Mapping[str, str] | Iterable[str],
    timeout_s: float = 30.0,
    *,
    poll_interval_s: float = 0.1,
) -> bool:
    """Wait until the queues hold no visible, in-flight or delayed messages and no poller is
    running a handler; False if that did not happen within `timeout_s`.

    `queue_urls` may be Resources.queue_urls (a dict by role) or a list of URLs."""
    poller_list = list(pollers)
    urls = list(queue_urls.values()) if isinstance(queue_urls, Mapping) else list(queue_urls)
    deadline = time.monotonic() + timeout_s
    while True:
        # Queue counts are read one queue at a time, so a handler could move a message from a
        # queue not yet read to one already read. Requiring the pollers to be idle, with no new
        # batch, on both sides of the reads rules that out.
        before = _activity(poller_list)
        if before is not None and _queues_empty(sqs_client, urls) and _activity(poller_list) == before:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_interval_s)


def stop_all(pollers: Iterable[QueuePoller], timeout_s: float = 10.0) -> bool:
    """Stop several pollers in about the time of one long poll; True if all have ended."""
    poller_list = list(pollers)
    # Signal all first: stopping them one by one would wait out each one's long poll in turn.
    for poller in poller_list:
        poller.request_stop()
    deadline = time.monotonic() + timeout_s
    return all([poller.stop(max(0.0, deadline - time.monotonic())) for poller in poller_list])


def _activity(pollers: Sequence[QueuePoller]) -> tuple[int, ...] | None:
    snapshots = [poller.stats for poller in pollers]
    if any(snapshot.busy for snapshot in snapshots):
        return None
    return tuple(snapshot.batches for snapshot in snapshots)


def _queues_empty(sqs: SQSClient, urls: Sequence[str]) -> bool:
    for url in urls:
        attributes = sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
                # Delayed messages (retries with DelaySeconds) will still arrive, so count them.
                "ApproximateNumberOfMessagesDelayed",
            ],
        )["Attributes"]
        if any(int(value) for value in attributes.values()):
            return False
    return True
