"""Upload-triggered processing: an object put under `incoming/{owner}/` (the stage's prefix) is registered
as that owner's video and a job made with the owner's default options. S3 sends the notification to the
"uploads" queue, whose consumer (app.intake_uploads) hands each record here; a redelivered notification
finds its object version recorded (object_intake's primary key) and creates nothing new."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, unquote_plus

from chalicelib.adapters.database import IntegrityError
from chalicelib.config import Settings
from chalicelib.domain.ports import IntakeRepository, JobRepository, VideoRepository
from chalicelib.domain.records import Job, JobRefused, Video
from chalicelib.domain.uploads import IntakeRecord
from chalicelib.service.common import new_id, now_ms, safe_filename
from chalicelib.service.errors import InvalidInput
from chalicelib.service.jobs import check_model_uri
from chalicelib.shared.contracts import ContractError, JobRequested, ProcessOptions
from chalicelib.shared.queues import MessageQueue
from chalicelib.shared.states import JobStatus, VideoStatus
from chalicelib.shared.storage import ObjectStore

logger = logging.getLogger("handpipe.service.intake")

OUR_PREFIXES = ("videos/", "results/", "models/", "tmp/")  # what handpipe writes itself: never intake


class NotificationError(ValueError):
    """The queue message is not an S3 notification; it goes to the dead-letter queue with this text."""


@dataclass(frozen=True)
class ObjectCreated:
    """One record of an S3 ObjectCreated notification, its key decoded."""

    bucket: str
    key: str
    size: int
    etag: str
    version: str  # versionId (a versioned bucket), else the event's sequencer, else the ETag
    event_name: str


def parse_notification(body: str) -> list[ObjectCreated]:
    """The object records of an S3 notification as SQS delivers it (also S3's s3:TestEvent: no records)."""
    try:
        document = json.loads(body)
    except ValueError as error:
        raise NotificationError(f"not JSON: {error}") from None
    if not isinstance(document, dict):
        raise NotificationError("not a JSON object")
    if document.get("Event") == "s3:TestEvent":
        return []
    records = document.get("Records")
    if not isinstance(records, list):
        raise NotificationError("no Records: not an S3 event notification")
    return list(_objects(records))


def _objects(records: list[Any]) -> Iterator[ObjectCreated]:
    for record in records:
        try:
            s3 = record["s3"]
            item = s3["object"]
            # S3 writes keys form-encoded: "+" is a space, "%2B" a plus.
            key = unquote_plus(str(item["key"]))
            etag = str(item.get("eTag") or "")
            version = str(item.get("versionId") or item.get("sequencer") or f"etag:{etag}")
            yield ObjectCreated(
                bucket=str(s3["bucket"]["name"]),
                key=key,
                size=int(item.get("size") or 0),
                etag=etag,
                version=version,
                event_name=str(record.get("eventName") or ""),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise NotificationError(f"an S3 record without its bucket or object ({error!r})") from None


def object_ref(bucket: str, key: str, version: str) -> str:
    return hashlib.sha256(f"{bucket}\n{key}\n{version}".encode()).hexdigest()


def _owner_and_name(key: str, settings: Settings) -> tuple[str | None, str] | None:
    """(owner, file name) of a key under the trigger prefix, or None for a key intake does not take:
    outside the prefix, one of handpipe's own, or a folder."""
    prefix = settings.upload_trigger_prefix
    if not key.startswith(prefix) or key.startswith(OUR_PREFIXES) or key.endswith("/"):
        return None
    owner_part, slash, rest = key[len(prefix) :].partition("/")
    if not slash or not owner_part or not rest:
        return None
    owner = unquote(owner_part)  # the owner's folder is percent-encoded (service.videos.incoming_prefix)
    if len(owner) > 255:
        return None
    return (owner if settings.scope_callers else None), rest.rsplit("/", 1)[-1]


def _options(owner: str | None, settings: Settings) -> dict[str, Any]:
    merged = {**settings.upload_trigger_options, **settings.upload_trigger_owner_options.get(owner or "", {})}
    options = ProcessOptions.from_dict(merged)
    if options.model_uri is not None:
        check_model_uri(options.model_uri, settings)
    return options.to_dict()


def _refusal(key: str, name: str, head: dict[str, Any], settings: Settings) -> tuple[str, str] | None:
    """(error code, reason) for an object that cannot be processed, or None."""
    size = int(head["size"] or 0)
    if size == 0:
        return "empty_object", f"the object {key!r} is empty (0 bytes)"
    if size > settings.max_upload_bytes:
        return "too_large", f"the object has {size} bytes, over the limit of {settings.max_upload_bytes} bytes"
    parts = key.split("/")
    if ".." in parts or "." in parts or "" in parts:
        return "invalid_key", "the key holds '..', '.' or empty parts"
    try:
        safe_filename(name)
    except InvalidInput as error:
        return "not_a_video", f"not a video file: {error.message}"
    stored = str(head.get("content_type") or "")
    if stored and not stored.startswith(("video/", "binary/", "application/octet-stream")):
        return "not_a_video", f"not a video: the object's Content-Type is {stored[:100]!r}"
    return None


def _content_type(name: str, head: dict[str, Any]) -> str:
    stored = str(head.get("content_type") or "")
    if re.fullmatch(r"video/[a-z0-9.+-]+", stored):
        return stored
    ext = name.rsplit(".", 1)[-1].lower()
    guessed = {"mov": "video/quicktime", "mkv": "video/x-matroska", "avi": "video/x-msvideo", "m4v": "video/mp4"}
    return guessed.get(ext, f"video/{ext}" if re.fullmatch(r"[a-z0-9]{1,10}", ext) else "application/octet-stream")


def _display_name(name: str) -> str:
    cleaned = "".join(c if 32 <= ord(c) != 127 else "_" for c in name)
    return cleaned[:200] or "object"


class _AlreadyRecorded(Exception):
    """A concurrent delivery recorded this object version first: roll back and create nothing."""


def handle_object(  # noqa: C901 - the checks in the order docs/architecture.md lists them
    videos: VideoRepository,
    jobs: JobRepository,
    intake: IntakeRepository,
    store: ObjectStore,
    jobs_queue: MessageQueue,
    settings: Settings,
    obj: ObjectCreated,
) -> str:
    """Register one object and queue its job (or record a FAILED one with the reason); what was done."""
    if obj.bucket != settings.bucket or not obj.event_name.startswith("ObjectCreated"):
        return f"ignored {obj.event_name or 'event'} on s3://{obj.bucket}/{obj.key[:200]}"
    placed = _owner_and_name(obj.key, settings)
    if placed is None:
        return f"ignored {obj.key[:200]!r}: not a file under {settings.upload_trigger_prefix}OWNER/"
    owner, name = placed
    ref = object_ref(obj.bucket, obj.key, obj.version)
    recorded = intake.get(ref)
    if recorded is not None:
        return _redelivered(jobs, jobs_queue, recorded)
    existing = videos.find_by_key(obj.key)
    if existing is not None and not intake.registered_video(existing.id):
        return f"ignored {obj.key[:200]!r}: registered through POST /videos as {existing.id}"
    head = store.head(obj.key)
    if head is None:
        return f"ignored {obj.key[:200]!r}: the object is gone"
    refusal = _refusal(obj.key, name, head, settings)
    options: dict[str, Any] = {}
    if refusal is None:
        try:
            options = _options(owner, settings)
        except (ContractError, InvalidInput) as error:
            refusal = ("invalid_options", f"the stage's upload_trigger_options are not valid: {error}")
    now = now_ms()
    video = existing or Video(
        id=new_id("vid"),
        title=_display_name(name),
        filename=safe_filename(name) if refusal is None else _display_name(name)[:255],
        content_type=_content_type(name, head)[:100],
        size_bytes=int(head["size"] or 0),
        s3_key=obj.key,
        status=VideoStatus.UPLOADED if refusal is None else VideoStatus.FAILED,
        owner=owner,
        created_at=now,
        updated_at=now,
    )
    job = Job(
        id=new_id("job"),
        video_id=video.id,
        status=JobStatus.QUEUED if refusal is None else JobStatus.FAILED,
        options=options,
        client_token=f"s3-{ref[:40]}",
        tag=settings.upload_trigger_tag,
        owner=owner,
        error=None if refusal is None else refusal[1],
        error_code=None if refusal is None else refusal[0],
        created_at=now,
        finished_at=None if refusal is None else now,
        updated_at=now,
    )
    try:
        with jobs.transaction():
            if existing is None:
                videos.add(video)
            stored, _ = jobs.create_for_video(job, max_active=settings.max_active_jobs_per_video)
            if not intake.add(IntakeRecord(ref, obj.key, obj.version[:1024], video.id, stored.id, now)):
                raise _AlreadyRecorded
    except _AlreadyRecorded:
        return f"{obj.key[:200]!r} ({obj.version[:60]}) was registered by a concurrent delivery"
    except IntegrityError:
        # The unique s3_key: a concurrent delivery of this notification won, or a caller registered the
        # key through POST /videos meanwhile (theirs it is).
        if intake.get(ref) is not None:
            return f"{obj.key[:200]!r} ({obj.version[:60]}) was registered by a concurrent delivery"
        return f"ignored {obj.key[:200]!r}: registered through POST /videos meanwhile"
    except JobRefused as refused:
        # Busy (a key overwritten faster than its jobs finish): raised, so SQS delivers it again later.
        raise RuntimeError(f"video {video.id} cannot take another job now ({refused.reason}); retried later") from None
    if stored.status == JobStatus.QUEUED:
        jobs_queue.send(JobRequested(job_id=stored.id, video_id=video.id))
        return f"registered {obj.key[:200]!r} as {video.id}, job {stored.id} queued"
    return f"registered {obj.key[:200]!r} as {video.id}, job {stored.id} FAILED: {stored.error_code}"


def _redelivered(jobs: JobRepository, jobs_queue: MessageQueue, recorded: IntakeRecord) -> str:
    """A notification seen before. Its job is requested again while still QUEUED: the delivery that made
    it may have ended before sending the request (planning is idempotent, so a second one is harmless)."""
    job = None if recorded.job_id is None else jobs.get(recorded.job_id)
    if job is not None and job.status == JobStatus.QUEUED and job.started_at is None:
        jobs_queue.send(JobRequested(job_id=job.id, video_id=job.video_id))
        return f"redelivered: {recorded.s3_key[:200]!r} is video {recorded.video_id}; job {job.id} requested again"
    return f"redelivered: {recorded.s3_key[:200]!r} is video {recorded.video_id} already; nothing new"


def handle_notification(
    videos: VideoRepository,
    jobs: JobRepository,
    intake: IntakeRepository,
    store: ObjectStore,
    jobs_queue: MessageQueue,
    settings: Settings,
    body: str,
) -> str:
    """One SQS message of S3 notifications: each record handled in turn (a failure raises, so SQS
    delivers the message again and the records done already change nothing the second time)."""
    done = [handle_object(videos, jobs, intake, store, jobs_queue, settings, obj) for obj in parse_notification(body)]
    return "; ".join(done) or "no object records (a test event)"
