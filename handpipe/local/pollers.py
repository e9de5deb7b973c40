"""Lambda's SQS event-source mapping, emulated for the local stack and the tests: pollers that hand SQS
batches to handlers the way Lambda does, a Lambda context object, and waiting until the queues are quiet."""

from __future__ import annotations

import base64
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import (
        DeleteMessageBatchRequestEntryTypeDef,
        MessageAttributeValueOutputTypeDef,
        MessageTypeDef,
    )

from .aws import queue_arn

logger = logging.getLogger(__name__)

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
