"""Keeps a work item invisible while a worker runs it, a short while at a time, so the item of a
worker that died (killed, out of memory, crashed) is back in the queue within seconds, not after a
visibility timeout long enough for the slowest segment."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.shared.queues import queue_url_from_arn

logger = logging.getLogger("handpipe.worker.heartbeat")


class Heartbeat:
    """While `beating(record)` is open, sets the record's message visibility to `visibility_s`
    (or the queue's own visibility timeout, if shorter) at once and again every third of it: a
    living worker's item never reappears, a dead worker's item reappears within that long of its
    last beat. A record without a receipt handle or source queue (a hand-made event) gets none."""

    def __init__(self, sqs_client: Any, *, visibility_s: int = 120) -> None:
        if visibility_s < 0:
            raise ValueError(f"visibility_s must be 0 (no heartbeat) or more, got {visibility_s}")
        self.sqs = sqs_client
        self.visibility_s = visibility_s
        self.beats = 0  # successful extensions since this object was made
        self._queue_visibility: dict[str, int] = {}

    def visibility_for(self, url: str) -> int:
        """The visibility a beat sets: never longer than the queue's own timeout, which Lambda requires
        to be at least the function's timeout, so that a short queue timeout (a test's) stays short."""
        if url not in self._queue_visibility:
            try:
                attributes = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["VisibilityTimeout"])
                self._queue_visibility[url] = int(attributes["Attributes"]["VisibilityTimeout"])
            except (ClientError, BotoCoreError, KeyError, ValueError) as error:
                logger.warning("could not read the visibility timeout of %s: %s", url, error)
                return self.visibility_s
        return max(1, min(self.visibility_s, self._queue_visibility[url]))

    @contextmanager
    def beating(self, record: Mapping[str, Any]) -> Iterator[None]:
        arn, handle = record.get("eventSourceARN"), record.get("receiptHandle")
        if not self.visibility_s or not isinstance(arn, str) or not isinstance(handle, str):
            yield
            return
        try:
            url = queue_url_from_arn(self.sqs, arn)
        except ValueError:
            yield
            return
        stop = threading.Event()
        visibility = self.visibility_for(url)
        self._beat(url, handle, visibility)
        thread = threading.Thread(target=self._run, args=(url, handle, visibility, stop), name="heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            # Stopped before the handler returns: Lambda freezes a container's threads between calls.
            stop.set()
            thread.join()

    def _run(self, url: str, handle: str, visibility: int, stop: threading.Event) -> None:
        while not stop.wait(visibility / 3):
            self._beat(url, handle, visibility)

    def _beat(self, url: str, handle: str, visibility: int) -> None:
        try:
            self.sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=handle, VisibilityTimeout=visibility)
            self.beats += 1
        except (ClientError, BotoCoreError) as error:
            # The item then reappears when its visibility runs out; a second worker running the same
            # segment is harmless (parts and events are idempotent), only wasted.
            logger.warning("could not extend the visibility of a work item: %s", error)
