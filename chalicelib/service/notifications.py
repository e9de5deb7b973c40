"""Job-end notifications. `announce_job_end` records the end in the transaction that ends the job
(an outbox: nothing is lost if the process dies right after); `send_announcements` hands recorded
ends to the notify queue, one message for the SNS topic and one per webhook; `deliver_notification`
(the notify queue's consumer) publishes or POSTs, raising on failure so SQS retries it with backoff
and its dead-letter queue keeps what never got through. None of it ever holds up a job."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

from chalicelib.domain.ports import JobRepository
from chalicelib.domain.records import Announcement, Job
from chalicelib.service.common import new_id, now_ms
from chalicelib.service.notifications_secrets import SecretVersions, derive_secret
from chalicelib.shared.queues import MessageQueue
from chalicelib.shared.signatures import SIGNATURE_HEADER, sign_body
from chalicelib.shared.states import JobStatus

logger = logging.getLogger("handpipe.notifications")

EVENT_TYPES = {
    JobStatus.SUCCEEDED: "job.succeeded",
    JobStatus.FAILED: "job.failed",
    JobStatus.CANCELLED: "job.cancelled",
}
SECRET_VERSION_HEADER = "X-Handpipe-Secret-Version"
EVENT_ID_HEADER = "X-Handpipe-Event-Id"
# A summary larger than this goes out as its top-level numbers only: events stay far below SQS's and
# SNS's 256 KB, whatever a video's summary holds.
MAX_SUMMARY_BYTES = 16 * 1024
MAX_ERROR_CHARS = 2000
MAX_RETRY_DELAY_S = 900
TOPIC, WEBHOOK = "topic", "webhook"


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


def _summary(summary: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if summary is None:
        return None
    if len(json.dumps(summary, separators=(",", ":"))) <= MAX_SUMMARY_BYTES:
        return dict(summary)
    small = {
        k: v
        for k, v in summary.items()
        if isinstance(v, int | float | bool) or v is None or (isinstance(v, str) and len(v) <= 200)
    }
    return {**small, "truncated": True}


def job_end_event(job: Job, event_id: str) -> dict[str, Any]:
    """The event a job's end is announced with (docs/notifications.md): `summary` when it succeeded,
    `error` when it failed or was cancelled."""
    event: dict[str, Any] = {
        "type": EVENT_TYPES[JobStatus(job.status)],
        "event_id": event_id,
        "job_id": job.id,
        "video_id": job.video_id,
        "status": job.status,
        "tag": job.tag,
    }
    if job.status == JobStatus.SUCCEEDED:
        event["summary"] = _summary(job.summary)
    else:
        message = (job.error or "")[:MAX_ERROR_CHARS]
        event["error"] = {"code": job.error_code, "message": message}
    event["time"] = _iso(job.finished_at or job.updated_at)
    return event


def announce_job_end(jobs: JobRepository, job_id: str) -> bool:
    """Record that the job has ended, to be announced. Call it wherever a job reaches a final status,
    right after the conditional transition that won (inside its transaction, where there is one), so a
    job's end is announced exactly once; a second call for the same job records nothing. True when
    this call recorded it. Sending is `send_announcements`' part."""
    job = jobs.get(job_id)
    if job is None or job.status not in EVENT_TYPES:
        logger.warning("job %s has not ended (%s); nothing to announce", job_id, job.status if job else "missing")
        return False
    event_id = new_id("evt")
    body = json.dumps(job_end_event(job, event_id), ensure_ascii=False, separators=(",", ":"))
    return jobs.add_announcement(Announcement(event_id=event_id, job_id=job.id, body=body, created_at=now_ms()))


@dataclass(frozen=True)
class NotifyMessage:
    """One delivery on the notify queue: to the topic, or to one webhook. `body` is the event's JSON,
    sent as it is on every attempt, so its signature and event_id never change."""

    kind: str
    event_id: str
    body: str
    owner: str | None
    status: str
    tag: str | None
    webhook_url: str | None = None
    secret_version: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> NotifyMessage:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("kind") not in (TOPIC, WEBHOOK):
            raise ValueError(f"not a notify message: {text[:200]!r}")
        version = data.get("secret_version")
        return cls(
            kind=str(data["kind"]),
            event_id=str(data["event_id"]),
            body=str(data["body"]),
            owner=data.get("owner"),
            status=str(data["status"]),
            tag=data.get("tag"),
            webhook_url=data.get("webhook_url"),
            secret_version=int(version) if version is not None else None,
        )


def send_announcements(
    jobs: JobRepository,
    versions: SecretVersions,
    queue: MessageQueue,
    *,
    claimed_before_ms: int = 0,
    limit: int = 50,
) -> int:
    """Hand recorded job ends to the notify queue; how many. Claims first, so concurrent senders never
    both send one; an end claimed by a sender that died is sent again by the sweeper, which passes
    `claimed_before_ms` (at-least-once: receivers dedupe by event_id)."""
    sent = 0
    for announcement in jobs.claim_announcements(claimed_before_ms=claimed_before_ms, limit=limit):
        event = json.loads(announcement.body)
        job = jobs.get(announcement.job_id)
        owner = job.owner if job is not None else None
        topic = NotifyMessage(
            kind=TOPIC,
            event_id=announcement.event_id,
            body=announcement.body,
            owner=owner,
            status=str(event["status"]),
            tag=event.get("tag"),
        )
        messages = [topic]
        if job is not None and job.notify_url:
            version, _ = versions.current(owner)
            messages.append(replace(topic, kind=WEBHOOK, webhook_url=job.notify_url, secret_version=version))
        queue.send_many(messages)
        jobs.announcement_sent(announcement.event_id)
        sent += 1
    return sent


class Topic(Protocol):
    def publish(self, body: str, attributes: Mapping[str, str | None]) -> str: ...


class Sender(Protocol):
    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int: ...


def deliver_notification(
    message: NotifyMessage, *, topic: Topic, sender: Sender, master_secret: Callable[[], str]
) -> str:
    """Publish the event on the topic, or POST it to its webhook signed with its owner's secret (of the
    version current when it was announced; `master_secret` is asked only for a webhook). Raises when it
    did not get through: SQS retries it."""
    if message.kind == TOPIC:
        topic.publish(message.body, {"owner": message.owner, "status": message.status, "tag": message.tag})
        return f"published {message.event_id}"
    if not message.webhook_url or message.secret_version is None:
        raise ValueError(f"webhook message {message.event_id} has no URL or secret version")
    raw = message.body.encode("utf-8")
    secret = derive_secret(master_secret(), message.owner, message.secret_version)
    headers = {
        SIGNATURE_HEADER: sign_body(raw, secret),
        SECRET_VERSION_HEADER: str(message.secret_version),
        EVENT_ID_HEADER: message.event_id,
    }
    status = sender.post(message.webhook_url, raw, headers)
    return f"delivered {message.event_id} ({status})"


def retry_delay_s(receive_count: int, base_s: int) -> int:
    """How long a failed delivery waits before its next attempt: doubling from `base_s`, at most 15 min."""
    return int(min(MAX_RETRY_DELAY_S, base_s * 2 ** max(0, receive_count - 1)))
