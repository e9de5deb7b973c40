"""Sending contract messages to SQS, behind a class that takes its boto3 client in the constructor.
Shared by the app (jobs, work items) and the worker (events)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

logger = logging.getLogger("handpipe.queues")


def queue_url_from_arn(sqs_client: Any, arn: str) -> str:
    """The URL of the queue an SQS record came from (its eventSourceARN), at the client's endpoint:
    no GetQueueUrl call, which the roles are not allowed."""
    parts = arn.split(":")
    if len(parts) != 6 or parts[2] != "sqs":
        raise ValueError(f"not an SQS queue ARN: {arn!r}")
    return f"{str(sqs_client.meta.endpoint_url).rstrip('/')}/{parts[4]}/{parts[5]}"


class BatchAcknowledger:
    """What ReportBatchItemFailures would do for Chalice's SQS handlers, which cannot return a
    partial batch response (chalice 1.34 does not set FunctionResponseTypes): when some records of
    a batch fail, the ones handled are deleted from their queue before the handler raises, so only
    the failed ones are delivered again (and reach the dead-letter queue on their own)."""

    def __init__(self, sqs_client: Any) -> None:
        self.sqs = sqs_client

    def delete(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Delete the records (Lambda event records) from their queues; how many were deleted. A
        failure is logged, not raised: a record left behind is only handled again, harmlessly."""
        by_queue: dict[str, list[str]] = {}
        for record in records:
            arn, handle = record.get("eventSourceARN"), record.get("receiptHandle")
            if isinstance(arn, str) and isinstance(handle, str):
                by_queue.setdefault(arn, []).append(handle)
        deleted = 0
        for arn, handles in by_queue.items():
            try:
                url = queue_url_from_arn(self.sqs, arn)
                for start in range(0, len(handles), 10):
                    entries = [{"Id": str(n), "ReceiptHandle": h} for n, h in enumerate(handles[start : start + 10])]
                    response = self.sqs.delete_message_batch(QueueUrl=url, Entries=entries)
                    deleted += len(response.get("Successful", []))
                    for failure in response.get("Failed", []):
                        logger.warning("could not delete a handled message from %s: %s", url, failure)
            except (ClientError, BotoCoreError, ValueError) as error:
                logger.warning("could not delete handled messages from %s: %s", arn, error)
        return deleted


class QueueUnavailable(Exception):
    """SQS could not be reached or refused the message; worth retrying later."""


class Message(Protocol):
    def to_json(self) -> str: ...


class MessageQueue:
    def __init__(self, sqs_client: Any, queue_url: str) -> None:
        self.sqs = sqs_client
        self.url = queue_url

    def send(self, message: Message) -> str:
        try:
            response = self.sqs.send_message(QueueUrl=self.url, MessageBody=message.to_json())
        except (ClientError, BotoCoreError) as error:
            raise QueueUnavailable(f"sending to {self.url} failed: {error}") from error
        message_id: str = response["MessageId"]
        return message_id

    def send_many(self, messages: list[Any]) -> None:
        for start in range(0, len(messages), 10):
            entries = [{"Id": str(n), "MessageBody": m.to_json()} for n, m in enumerate(messages[start : start + 10])]
            try:
                response = self.sqs.send_message_batch(QueueUrl=self.url, Entries=entries)
            except (ClientError, BotoCoreError) as error:
                raise QueueUnavailable(f"sending to {self.url} failed: {error}") from error
            if response.get("Failed"):
                raise QueueUnavailable(f"SQS refused {len(response['Failed'])} message(s): {response['Failed'][0]}")

    def check(self) -> None:
        try:
            self.sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=["QueueArn"])
        except (ClientError, BotoCoreError) as error:
            raise QueueUnavailable(f"queue {self.url} does not answer: {error}") from error
