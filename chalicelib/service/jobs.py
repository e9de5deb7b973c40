"""Job use cases the API serves: create (idempotent on client_token), get, list, result and frames."""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from chalicelib.adapters.webhooks import UnsafeWebhook, WebhookPolicy
from chalicelib.config import Settings
from chalicelib.domain.ports import JobRepository, VideoRepository
from chalicelib.domain.records import Job, JobRefused
from chalicelib.service.common import (
    _check_fields,
    _text,
    check_id,
    decode_token,
    encode_token,
    gone,
    new_id,
    now_ms,
)
from chalicelib.service.errors import Conflict, InvalidInput, NotFound, TooLarge
from chalicelib.service.notifications import announce_job_end
from chalicelib.service.videos import get_video
from chalicelib.service.views import job_view
from chalicelib.shared import telemetry
from chalicelib.shared.contracts import (
    PICTURES,
    ContractError,
    JobRequested,
    ProcessOptions,
    insights_key,
    picture_key,
    results_prefix,
)
from chalicelib.shared.exports import FORMATS, export_key
from chalicelib.shared.queues import MessageQueue
from chalicelib.shared.results import frames_between
from chalicelib.shared.states import VIDEO_DELETING, JobStatus, VideoStatus
from chalicelib.shared.storage import ObjectMissing, ObjectStore


def create_job(  # noqa: C901 - the request's checks in the order the API documents them
    videos: VideoRepository,
    jobs: JobRepository,
    store: ObjectStore,
    jobs_queue: MessageQueue,
    settings: Settings,
    video_id: str,
    body: Mapping[str, Any],
    owner: str | None = None,
    *,
    webhooks: WebhookPolicy | None = None,
) -> tuple[dict[str, Any], bool]:
    """Create a job and queue it. The same client_token returns the same job (created=False).
    `webhooks` judges a `notify.webhook_url` (the stage's policy from settings when not given)."""
    _check_fields(body, {"options", "client_token", "tag", "notify"})
    raw_options = body.get("options")
    raw_options = {} if raw_options is None else raw_options
    if not isinstance(raw_options, dict):
        raise InvalidInput("options must be an object")
    try:
        options = ProcessOptions.from_dict(raw_options, allow_empty_range=True)
    except ContractError as error:
        raise InvalidInput(str(error)) from None
    empty_range = empty_range_reason(options)
    client_token = _text(body, "client_token", max_len=64)
    if client_token is not None and not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", client_token):
        raise InvalidInput("client_token may hold only letters, digits and _.:- (at most 64)")
    tag = _text(body, "tag", max_len=128)
    notify_url = parse_notify(body.get("notify"), webhooks or webhook_policy(settings))
    video = get_video(videos, video_id, owner)
    if client_token is not None:
        existing = jobs.find_by_client_token(video.id, client_token)
        if existing is not None:
            return _same_token_job(existing, options, tag, notify_url), False
    if video.status == VIDEO_DELETING:
        raise Conflict(f"video {video.id} is being deleted; it takes no new jobs")
    if options.end_ms is not None and options.end_ms > settings.max_duration_ms:
        raise InvalidInput(f"options.end_ms must be at most {settings.max_duration_ms} (the longest video accepted)")
    if options.model_uri is not None:
        check_model_uri(options.model_uri, settings)
    head = store.head(video.s3_key)
    if head is None:
        raise Conflict(
            f"video {video.id} has not been uploaded yet: PUT the file to its upload URL first "
            f"(a new URL: POST /videos/{video.id}/upload-url)"
        )
    if (head["size"] or 0) > settings.max_upload_bytes:  # replaced by a bigger object since it was registered
        raise TooLarge(f"the video's object has {head['size']} bytes, over the limit of {settings.max_upload_bytes}")
    now = now_ms()
    job = Job(
        id=new_id("job"),
        video_id=video.id,
        status=JobStatus.FAILED if empty_range else JobStatus.QUEUED,
        options=options.to_dict(),
        client_token=client_token,
        tag=tag,
        owner=owner,
        error=empty_range,
        error_code="empty_range" if empty_range else None,
        segments_total=0,
        segments_done=0,
        frames_total=None,
        frames_done=0,
        frames_with_hands=0,
        result_key=None,
        summary=None,
        video_metadata=None,
        created_at=now,
        started_at=None,
        finished_at=now if empty_range else None,
        updated_at=now,
        notify_url=notify_url,
    )
    try:
        # The video's state and its active jobs are checked in the transaction that adds the job.
        stored, created = jobs.create_for_video(job, max_active=settings.max_active_jobs_per_video)
    except JobRefused as refused:
        if refused.reason == "missing":
            raise NotFound(f"no video with id {video_id!r}") from None
        if refused.reason == "deleting":
            raise Conflict(f"video {video.id} is being deleted; it takes no new jobs") from None
        raise Conflict(
            f"video {video.id} already has {refused.active} jobs queued or running; wait for one to finish"
        ) from None
    if not created:  # a concurrent request with the same token won the race
        return _same_token_job(stored, options, tag, notify_url), False
    if empty_range:
        announce_job_end(jobs, stored.id)  # it ended as it was made
        return job_view(stored), True
    try:
        jobs_queue.send(JobRequested(job_id=job.id, video_id=video.id))
    except Exception:
        # Unqueued, the job would wait forever: take it back so the caller can simply retry.
        jobs.delete(job.id)
        raise
    videos.set_status(video.id, VideoStatus.UPLOADED, expected=(VideoStatus.REGISTERED,))
    telemetry.job_event(
        "job.queued",
        "job %s queued",
        job.id,
        metric_name=telemetry.JOBS_QUEUED,
        job_id=job.id,
        video_id=video.id,
        owner=owner,
    )
    return job_view(stored), True


def check_model_uri(uri: str, settings: Settings) -> None:
    """A caller's model must be an object under the stage's own `models/`: a path would let a caller
    have the worker open any file on its disk, and another bucket is not the stage's to read. Paths
    are for the local stack (HANDPIPE_LOCAL_MODELS), where the caller owns the disk."""
    prefix = f"s3://{settings.bucket}/models/"
    if uri.startswith(prefix) and ".." not in uri[len(prefix) :].split("/"):
        return
    if settings.local_models and not uri.startswith("s3://"):
        return
    raise InvalidInput(f"options.model_uri must be an s3:// URI under {prefix} (your .task files), got {uri[:200]!r}")


def empty_range_reason(options: ProcessOptions) -> str | None:
    """Why a job's time range holds no frame, or None. Such a request is valid by the OpenAPI
    document (which cannot compare two fields), so it makes a job, FAILED at once with this reason."""
    if options.start_ms is not None and options.end_ms is not None and options.end_ms <= options.start_ms:
        return f"end_ms ({options.end_ms}) is not after start_ms ({options.start_ms}): the range holds no frame"
    return None


def webhook_policy(settings: Settings) -> WebhookPolicy:
    return WebhookPolicy(allow_loopback=settings.allow_loopback_webhooks)


def parse_notify(raw: Any, policy: WebhookPolicy) -> str | None:
    """The job's webhook URL from `notify`, judged by the policy (https, public addresses only)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InvalidInput('notify must be an object: {"webhook_url": "https://..."}')
    unknown = sorted(set(raw) - {"webhook_url"})
    if unknown:
        raise InvalidInput(f"notify has unknown field(s): {', '.join(unknown)} (allowed: webhook_url)")
    url = raw.get("webhook_url")
    if not isinstance(url, str) or not url:
        raise InvalidInput("notify.webhook_url must be a non-empty string (an https URL)")
    try:
        policy.check(url)
    except UnsafeWebhook as error:
        raise InvalidInput(f"notify.webhook_url is refused: {error}") from None
    return url


def _same_token_job(existing: Job, options: ProcessOptions, tag: str | None, notify_url: str | None) -> dict[str, Any]:
    if existing.options != options.to_dict() or existing.tag != tag or existing.notify_url != notify_url:
        raise Conflict(
            f"client_token {existing.client_token!r} was already used for job {existing.id} with other "
            "options; use a new token for a different job"
        )
    return job_view(existing)


def get_job(jobs: JobRepository, job_id: str, owner: str | None = None) -> Job:
    check_id(job_id, "job", "job")
    job = jobs.get(job_id, owner=owner)
    if job is None:
        raise NotFound(f"no job with id {job_id!r}")
    return job


def finished_job(jobs: JobRepository, job_id: str, ready: str, owner: str | None = None) -> tuple[Job, str]:
    """The job, which must have SUCCEEDED, and its result's key: NotFound, or a Conflict saying what
    (`ready`) waits for it. The one check the result, frames, insights, exports and viewer share."""
    job = get_job(jobs, job_id, owner)
    if job.status != JobStatus.SUCCEEDED or job.result_key is None:
        raise Conflict(f"job {job.id} is {job.status}; {ready} when it has SUCCEEDED")
    return job, job.result_key


def list_jobs(
    videos: VideoRepository,
    jobs: JobRepository,
    video_id: str,
    *,
    limit: int,
    next_token: str | None,
    owner: str | None = None,
) -> dict[str, Any]:
    video = get_video(videos, video_id, owner)
    after = decode_token(next_token, (int, str))
    rows = jobs.list_for_video(video.id, limit=limit + 1, after=tuple(after) if after else None)  # type: ignore[arg-type]
    page = rows[:limit]
    token = encode_token([page[-1].created_at, page[-1].id]) if len(rows) > limit else None
    return {"jobs": [job_view(j) for j in page], "next_token": token}


def artifacts_written(store: ObjectStore, job: Job) -> dict[str, bool]:
    """Which of a SUCCEEDED job's artifacts are stored yet. A worker writes them after the job has
    succeeded, in this order: the merged result, insights, exports, pictures (the contact sheet last)."""
    assert job.result_key is not None
    prefix = results_prefix(job.video_id, job.id)
    return {
        "result": store.head(job.result_key) is not None,
        "insights": store.head(insights_key(job.video_id, job.id)) is not None,
        "exports": all(store.head(export_key(prefix, fmt)) is not None for fmt in FORMATS),
        "pictures": store.head(picture_key(job.video_id, job.id, "contact_sheet")) is not None,
    }


def job_result(
    jobs: JobRepository, store: ObjectStore, settings: Settings, job_id: str, owner: str | None = None
) -> dict[str, Any]:
    """GET /jobs/{id}/result: the summary (known when the job SUCCEEDED), which artifacts are written
    yet, and download URLs of those that are (the result's `url` is null until it is merged)."""
    job, key = finished_job(jobs, job_id, "its result is ready", owner)
    artifacts = artifacts_written(store, job)
    if not artifacts["result"] and not jobs.artifacts_pending(job.id):
        # Written once, and gone since (deleted behind the API's back): a URL to nothing would only fail later.
        raise gone(ObjectMissing(f"s3://{store.bucket}/{job.result_key} does not exist"))
    return {
        "job_id": job.id,
        "video_id": job.video_id,
        "summary": job.summary,
        "video": job.video_metadata,
        "artifacts": artifacts,
        "result": {
            "key": job.result_key,
            "format": "handpipe.result v1, gzip-compressed JSON (docs/results-format.md)",
            "url": (
                store.presign_download(key, settings.download_url_expires_s, f"{job.id}.json.gz")
                if artifacts["result"]
                else None
            ),
            "expires_in_s": settings.download_url_expires_s,
        },
        # Drawn by a worker just after the job succeeded: null until they are there.
        "pictures": {
            name: (
                store.presign_download(key, settings.download_url_expires_s)
                if store.head(key := picture_key(job.video_id, job.id, name))
                else None
            )
            for name in PICTURES
        },
    }


class PartCache:
    """Recently read result parts, kept per container: paging through frames reads each part once."""

    def __init__(self, capacity: int = 8) -> None:
        self.capacity = capacity
        self._parts: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def get(self, store: ObjectStore, key: str) -> dict[str, Any]:
        if key in self._parts:
            self._parts.move_to_end(key)
            return self._parts[key]
        part = store.get_result(key)
        self._parts[key] = part
        while len(self._parts) > self.capacity:
            self._parts.popitem(last=False)
        return part


def job_frames(
    jobs: JobRepository,
    store: ObjectStore,
    parts: PartCache,
    job_id: str,
    *,
    start_ms: int | None,
    end_ms: int | None,
    max_results: int,
    next_token: str | None,
    owner: str | None = None,
) -> dict[str, Any]:
    """Frames of a finished job by time, read from its parts; paginated by frame index."""
    job, _ = finished_job(jobs, job_id, "frames can be read", owner)
    after = decode_token(next_token, (int,))
    if end_ms is not None and end_ms <= (start_ms or 0):
        return {"job_id": job.id, "frames": [], "next_token": None}  # [start_ms, end_ms) holds no frame
    after_index = after[0] if after else -1
    lower = float(start_ms or 0)
    found: list[dict[str, Any]] = []
    more = False
    for segment in jobs.segments(job.id):
        if end_ms is not None and segment.start_ms is not None and segment.start_ms >= end_ms:
            break
        if segment.end_ms is not None and segment.end_ms <= lower:
            continue
        part = parts.get(store, segment.part_key)
        for frame in frames_between(part, lower, end_ms):
            if frame["index"] <= after_index:
                continue
            if len(found) == max_results:
                more = True
                break
            found.append(frame)
        if more:
            break
    return {
        "job_id": job.id,
        "frames": found,
        "next_token": encode_token([found[-1]["index"]]) if more else None,
    }
