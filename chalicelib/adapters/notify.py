"""The AWS side of job-end notifications: the SNS topic every job end is published on, with the message
attributes subscription filters use (owner, status, tag), as Rekognition Video's completion topic is
used; and the notify queue's redelivery delay, which grows with each failed attempt."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.shared.queues import queue_url_from_arn

logger = logging.getLogger("handpipe.notify")


class TopicUnavailable(Exception):
    """SNS refused or could not be reached; worth retrying later."""


class JobEndTopic:
    def __init__(self, sns_client: Any, topic_arn: str) -> None:
        self.sns = sns_client
        self.topic_arn = topic_arn

    def publish(self, body: str, attributes: Mapping[str, str | None]) -> str:
        """Publish `body`; attributes without a value are left out (SNS takes no empty attribute)."""
        message_attributes = {
            name: {"DataType": "String", "StringValue": value} for name, value in attributes.items() if value
        }
        try:
            response = self.sns.publish(TopicArn=self.topic_arn, Message=body, MessageAttributes=message_attributes)
        except (ClientError, BotoCoreError) as error:
            raise TopicUnavailable(f"publishing to {self.topic_arn} failed: {error}") from error
        message_id: str = response["MessageId"]
        return message_id


class Redelivery:
    """Sets when SQS delivers a failed record again (its visibility), instead of the queue's fixed
    timeout: the consumer's backoff. A failure is only logged: the record then comes back after the
    queue's own visibility timeout."""

    def __init__(self, sqs_client: Any) -> None:
        self.sqs = sqs_client

    def postpone(self, record: Mapping[str, Any], delay_s: int) -> bool:
        arn, handle = record.get("eventSourceARN"), record.get("receiptHandle")
        if not isinstance(arn, str) or not isinstance(handle, str):
            return False
        try:
            url = queue_url_from_arn(self.sqs, arn)
            self.sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=handle, VisibilityTimeout=delay_s)
        except (ClientError, BotoCoreError, ValueError) as error:
            logger.warning("could not delay the next delivery of a notification: %s", error)
            return False
        return True
