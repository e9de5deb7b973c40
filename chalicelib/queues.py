"""Sending contract messages to SQS, behind a class that takes its boto3 client in the constructor.
Shared by the app (jobs, work items) and the worker (events)."""

from __future__ import annotations

from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError


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
