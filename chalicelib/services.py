"""What the API and the queue consumers do, as functions that take their repositories, store and
queues as parameters. Routes parse and call these; errors are ServiceError subclasses."""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote

from .config import Settings
from .contracts import (
    PICTURES,
    SEGMENT_FAILED,
    SEGMENT_PROGRESS,
    VIDEO_PROBED,
    ContractError,
    JobRequested,
    ProbeRequest,
    ProcessOptions,
    RenderRequest,
    SegmentEvent,
    WorkItem,
    is_valid_id,
    part_key,
    picture_key,
    result_key,
    results_prefix,
    video_key,
    video_prefix,
)
from .db import (
    ACTIVE_JOB_STATUSES,
    VIDEO_DELETING,
    IntegrityError,
    Job,
    JobRefused,
    JobRepository,
    Segment,
    Video,
    VideoRepository,
)
from .errors import Conflict, Forbidden, Gone, InvalidInput, NotFound, TooLarge
from .queues import MessageQueue
from .results import MergeError, frames_between, merge_parts
from .storage import ObjectMissing, ObjectStore

logger = logging.getLogger("handpipe.service")

VIDEO_STATUSES = ("REGISTERED", "UPLOADED", "PROCESSING", "PROCESSED", "FAILED", VIDEO_DELETING)
JOB_STATUSES = ("QUEUED", "IN_PROGRESS", "SUCCEEDED", "FAILED")

VIDEO_EXTENSIONS = ("mp4", "mov", "m4v", "avi", "webm", "mkv")
MAX_PAGE = 100
INCOMING_PREFIX = "incoming/"  # where other systems drop videos to register by key
MAX_KEY_LENGTH = 512  # the schema's s3_key column
MAX_FRAMES_PAGE = 1000


def now_ms() -> int:
    return int(time.time() * 1000)


class _IdClock:
    """A nanosecond clock that never repeats or goes back within a process."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def tick(self) -> int:
        with self._lock:
            self._last = max(time.time_ns(), self._last + 1)
            return self._last


_ID_CLOCK = _IdClock()


def new_id(prefix: str) -> str:
    """prefix_ and 32 hex digits: 16 of the creation time in ns, then 16 random. Lists sort by
    (created_at, id) and created_at is in ms, so ids made within one millisecond still list in the order
    they were made (a UUID4 would order them at random)."""
    return f"{prefix}_{_ID_CLOCK.tick():016x}{secrets.token_hex(8)}"


# ---------------------------------------------------------------------------------------------
# Input parsing
# ---------------------------------------------------------------------------------------------


def _check_fields(body: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")


def _text(body: Mapping[str, Any], name: str, *, max_len: int, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise InvalidInput(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string, got {type(value).__name__}")
    # Judged as sent, then trimmed of spaces: the limits the OpenAPI document states (maxLength, a
    # pattern without control characters) hold for exactly what a caller sends.
    if len(value) > max_len:
        raise InvalidInput(f"{name} is longer than {max_len} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise InvalidInput(f"{name} must not contain control characters")
    value = value.strip(" ")
    if required and not value:
        raise InvalidInput(f"{name} must not be empty")
    return value


_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._-]+")


def safe_filename(filename: str) -> str:
    """A name that is safe as the last part of an S3 key: no directories, no odd characters."""
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, ext = base.rpartition(".")
    if not dot:
        stem, ext = base, ""
    stem = _UNSAFE_FILENAME.sub("_", stem).strip("._") or "video"
    ext = ext.lower()
    if ext not in VIDEO_EXTENSIONS:
        raise InvalidInput(f"filename must end in one of .{', .'.join(VIDEO_EXTENSIONS)} (got {filename!r})")
    return f"{stem[:120]}.{ext}"


# Page tokens are keyset positions written out plainly, so the OpenAPI document can give their exact
# pattern and every token it allows means a position: (created_at, id) of a video or job, or a frame
# index. An empty token is the first page.
_TOKEN_PATTERNS: dict[tuple[type, ...], re.Pattern[str]] = {
    (int, str): re.compile(r"([0-9]{1,15})_([a-z]{3}_[0-9a-f]{32})", re.ASCII),
    (int,): re.compile(r"([0-9]{1,9})", re.ASCII),
}


def encode_token(values: list[Any]) -> str:
    return "_".join(str(value) for value in values)


def decode_token(token: str | None, shape: tuple[type, ...]) -> list[Any] | None:
    if not token:
        return None
    match = _TOKEN_PATTERNS[shape].fullmatch(token)
    if match is None:
        raise InvalidInput("next_token is not valid: pass the next_token of the previous page unchanged")
    return [kind(group) for kind, group in zip(shape, match.groups(), strict=True)]


def parse_limit(raw: str | None, default: int, maximum: int, name: str = "limit") -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"{name} must be a whole number between 1 and {maximum}") from None
    if not 1 <= value <= maximum:
        raise InvalidInput(f"{name} must be between 1 and {maximum}, got {value}")
    return value


def parse_ms(raw: str | None, name: str) -> int | None:
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"{name} must be a whole number of milliseconds") from None
    if not 0 <= value <= 24 * 3600 * 1000:
        raise InvalidInput(f"{name} must be between 0 and 86400000")
    return value


def single_query_value(params: Any, name: str) -> str | None:
    """A query parameter's value; given twice, it is ambiguous, and refused (a 400) rather than one
    of the values picked. `params` is Chalice's MultiDict, or None when the URL had no query."""
    if not params or name not in params:
        return None
    values = list(params.getlist(name)) if hasattr(params, "getlist") else [params[name]]
    if len(values) > 1:
        raise InvalidInput(f"{name} was given {len(values)} times; give it once")
    return values[0] if values else None


def check_id(value: str, prefix: str, what: str) -> str:
    if not is_valid_id(value, prefix):
        raise NotFound(f"no {what} with id {value[:80]!r}")
    return value


# ---------------------------------------------------------------------------------------------
# Views
# ---------------------------------------------------------------------------------------------


def video_view(video: Video) -> dict[str, Any]:
    return {
        "id": video.id,
        "title": video.title,
        "filename": video.filename,
        "content_type": video.content_type,
        "size_bytes": video.size_bytes,
        "s3_key": video.s3_key,
        "status": video.status,
        "metadata": video.metadata,
        "created_at": video.created_at,
        "updated_at": video.updated_at,
    }


def job_view(job: Job) -> dict[str, Any]:
    total = job.frames_total
    percent = None
    if job.status == "SUCCEEDED":
        percent = 100.0
    elif total:
        percent = round(min(99.9, 100.0 * job.frames_done / total), 1)
    return {
        "id": job.id,
        "video_id": job.video_id,
        "status": job.status,
        "options": job.options,
        "client_token": job.client_token,
        "tag": job.tag,
        "progress": {
            "frames_done": job.frames_done,
            "frames_total": total,
            "percent": percent,
            "segments_done": job.segments_done,
            "segments_total": job.segments_total,
        },
        "error": None if job.error is None else {"code": job.error_code, "message": job.error},
        "timings": {
            "created_at": job.created_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            "queued_ms": None if job.started_at is None else job.started_at - job.created_at,
            "run_ms": None if job.finished_at is None or job.started_at is None else job.finished_at - job.started_at,
        },
        "video": job.video_metadata,
        "summary": job.summary,
    }


# ---------------------------------------------------------------------------------------------
# Videos
# ---------------------------------------------------------------------------------------------


def register_video(
    videos: VideoRepository,
    store: ObjectStore,
    settings: Settings,
    body: Mapping[str, Any],
    owner: str | None = None,
) -> dict[str, Any]:
    """Register a video to upload (returns a presigned PUT URL) or one already in the bucket (`s3_key`)."""
    _check_fields(body, {"title", "filename", "content_type", "size_bytes", "s3_key"})
    video_id = new_id("vid")
    existing_key = _text(body, "s3_key", max_len=MAX_KEY_LENGTH)
    if existing_key is not None:
        check_incoming_key(existing_key, owner)
        if videos.find_by_key(existing_key) is not None:
            raise Conflict(f"{existing_key!r} is already registered as a video; one video per key")
        head = store.head(existing_key)
        if head is None:
            raise Conflict(f"there is no object {existing_key!r} in the bucket: put it there first")
        if not head["size"]:
            raise InvalidInput(f"the object {existing_key!r} is empty (0 bytes): upload the whole video there first")
        if body.get("size_bytes") is not None:
            raise InvalidInput("size_bytes is taken from the object when registering by s3_key; leave it out")
        if (head["size"] or 0) > settings.max_upload_bytes:
            raise TooLarge(
                f"the object {existing_key!r} has {head['size']} bytes, over the limit of "
                f"{settings.max_upload_bytes} bytes"
            )
        filename = safe_filename(_text(body, "filename", max_len=255) or existing_key)
        stored_type = str(head["content_type"] or "")
        content_type = _video_content_type(
            _text(body, "content_type", max_len=100)
            or (stored_type if stored_type.startswith("video/") else _guess_content_type(filename))
        )
        key, size = existing_key, head["size"]
        status = "UPLOADED"
    else:
        filename = safe_filename(_text(body, "filename", max_len=255, required=True) or "")
        content_type = _video_content_type(_text(body, "content_type", max_len=100) or _guess_content_type(filename))
        size = body.get("size_bytes")
        if size is None:
            raise InvalidInput("size_bytes is required: the upload URL is signed for exactly that size")
        if isinstance(size, float) and size.is_integer():
            size = int(size)  # JSON has one number type: 120000.0 is the whole number the document allows
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise InvalidInput("size_bytes must be a positive whole number")
        if size > settings.max_upload_bytes:
            raise TooLarge(f"size_bytes {size} is over the limit of {settings.max_upload_bytes} bytes")
        key = video_key(video_id, filename)
        status = "REGISTERED"
    title = _text(body, "title", max_len=200) or filename
    now = now_ms()
    video = Video(
        id=video_id,
        title=title,
        filename=filename,
        content_type=content_type,
        size_bytes=size,
        s3_key=key,
        status=status,
        owner=owner,
        metadata=None,
        created_at=now,
        updated_at=now,
    )
    try:
        videos.add(video)
    except IntegrityError:
        # The unique index on s3_key decides when two registrations of one key race.
        raise Conflict(f"{key!r} is already registered as a video; one video per key") from None
    view = video_view(video)
    if status == "REGISTERED":
        view["upload"] = {
            "method": "PUT",
            "url": store.presign_upload(key, content_type, size or 0, settings.upload_url_expires_s),
            "headers": {"Content-Type": content_type, "Content-Length": str(size)},
            "expires_in_s": settings.upload_url_expires_s,
        }
    return view


def incoming_prefix(owner: str | None) -> str:
    """Where a caller may put objects to register by key: `incoming/{owner}/`, the owner
    percent-encoded so that no owner's prefix is a prefix of another's (an IAM ARN holds "/").
    Unscoped callers (auth or scoping off: one tenant) may use all of `incoming/`."""
    if owner is None:
        return INCOMING_PREFIX
    return f"{INCOMING_PREFIX}{quote(owner, safe='')}/"


def check_incoming_key(key: str, owner: str | None) -> None:
    """Refuse a key the caller may not register: one outside its own prefix (403), or, inside it, a
    folder or a key with '..', '.' or empty parts (400)."""
    prefix = incoming_prefix(owner)
    if not key.strip():
        raise InvalidInput(f"s3_key must name an object under {prefix}; it is blank")
    if not key.startswith(prefix):
        # The document cannot know whose prefix is whose: a key outside the caller's is not bad input
        # but another owner's object (or nobody's), which this caller may not take.
        raise Forbidden(f"s3_key must be a key under {prefix} in the bucket (your prefix), got {key[:100]!r}")
    parts = key.split("/")
    if key == prefix or ".." in parts or "." in parts or "" in parts[1:]:
        raise InvalidInput("s3_key must not hold '..', '.' or empty parts, nor end in '/' (a folder)")


def _video_content_type(content_type: str) -> str:
    if not re.fullmatch(r"video/[a-z0-9.+-]+", content_type):
        raise InvalidInput(f"content_type must be a video/* type, got {content_type!r}")
    return content_type


def _guess_content_type(filename: str) -> str:
    ext = filename.rsplit(".", 1)[-1]
    return {"mov": "video/quicktime", "mkv": "video/x-matroska", "avi": "video/x-msvideo", "m4v": "video/mp4"}.get(
        ext, f"video/{ext}"
    )


def new_upload_url(
    videos: VideoRepository,
    store: ObjectStore,
    settings: Settings,
    video_id: str,
    body: Mapping[str, Any],
    owner: str | None = None,
) -> dict[str, Any]:
    """POST /videos/{id}/upload-url: a fresh presigned PUT for a video whose file is not in the bucket
    (its first URL expired unused, or the object was lost), for the same key, type and size."""
    _check_fields(body, set())
    video = get_video(videos, video_id, owner)
    if not video.s3_key.startswith(video_prefix(video.id)):
        raise Conflict(f"video {video.id} was registered by s3_key {video.s3_key!r}: put the object back there")
    if store.head(video.s3_key) is not None:
        raise Conflict(f"video {video.id} has its file already; register a new video for another file")
    size = video.size_bytes or 0
    view = video_view(video)
    view["upload"] = {
        "method": "PUT",
        "url": store.presign_upload(video.s3_key, video.content_type, size, settings.upload_url_expires_s),
        "headers": {"Content-Type": video.content_type, "Content-Length": str(size)},
        "expires_in_s": settings.upload_url_expires_s,
    }
    return view


def gone(error: ObjectMissing) -> Gone:
    """The answer to a read that found a stored object missing."""
    return Gone(
        f"a stored object this answer needs is gone ({error}); run the job again, or for a video's file "
        "get a new upload URL (POST /videos/{video_id}/upload-url)"
    )


def get_video(videos: VideoRepository, video_id: str, owner: str | None = None) -> Video:
    check_id(video_id, "vid", "video")
    video = videos.get(video_id, owner=owner)
    if video is None:
        raise NotFound(f"no video with id {video_id!r}")
    return video


def list_videos(
    videos: VideoRepository, *, status: str | None, limit: int, next_token: str | None, owner: str | None = None
) -> dict[str, Any]:
    if status is not None and status not in VIDEO_STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(VIDEO_STATUSES)}, got {status[:40]!r}")
    after = decode_token(next_token, (int, str))
    rows = videos.list(status=status, limit=limit + 1, after=tuple(after) if after else None, owner=owner)  # type: ignore[arg-type]
    page = rows[:limit]
    token = encode_token([page[-1].created_at, page[-1].id]) if len(rows) > limit else None
    return {"videos": [video_view(v) for v in page], "next_token": token}


def delete_video(
    videos: VideoRepository, jobs: JobRepository, store: ObjectStore, video_id: str, owner: str | None = None
) -> dict[str, Any]:
    """Mark the video DELETING (refused while it has active jobs; from then on it takes no new
    job), remove its objects, then its rows. A deletion cut short is finished by the next DELETE."""
    video = get_video(videos, video_id, owner)
    active = videos.begin_delete(video.id)
    if active is None:
        raise NotFound(f"no video with id {video_id!r}")
    if active:
        raise Conflict(f"video {video.id} has {active} job(s) queued or running; delete it when they finish")
    # Only what the video owns: its own two folders (named by its id) and, when it was registered
    # by key, exactly that key. Never a prefix of a caller's key: "a.mp4" must not take "a.mp4.bak".
    removed = store.delete_prefix(results_prefix(video.id, "").rstrip("/") + "/")
    removed += store.delete_prefix(video_prefix(video.id))
    if not video.s3_key.startswith(video_prefix(video.id)):
        removed += store.delete_key(video.s3_key)
    if not videos.delete(video.id):
        raise NotFound(f"no video with id {video_id!r}: it has just been deleted")
    return {"deleted": video.id, "objects_removed": removed}


# ---------------------------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------------------------


def create_job(
    videos: VideoRepository,
    jobs: JobRepository,
    store: ObjectStore,
    jobs_queue: MessageQueue,
    settings: Settings,
    video_id: str,
    body: Mapping[str, Any],
    owner: str | None = None,
) -> tuple[dict[str, Any], bool]:
    """Create a job and queue it. The same client_token returns the same job (created=False)."""
    _check_fields(body, {"options", "client_token", "tag"})
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
    video = get_video(videos, video_id, owner)
    if client_token is not None:
        existing = jobs.find_by_client_token(video.id, client_token)
        if existing is not None:
            return _same_token_job(existing, options, tag), False
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
        status="FAILED" if empty_range else "QUEUED",
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
        return _same_token_job(stored, options, tag), False
    if empty_range:
        return job_view(stored), True
    try:
        jobs_queue.send(JobRequested(job_id=job.id, video_id=video.id))
    except Exception:
        # Unqueued, the job would wait forever: take it back so the caller can simply retry.
        jobs.delete(job.id)
        raise
    videos.set_status(video.id, "UPLOADED", expected=("REGISTERED",))
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


def _same_token_job(existing: Job, options: ProcessOptions, tag: str | None) -> dict[str, Any]:
    if existing.options != options.to_dict() or existing.tag != tag:
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


def job_result(
    jobs: JobRepository, store: ObjectStore, settings: Settings, job_id: str, owner: str | None = None
) -> dict[str, Any]:
    job = get_job(jobs, job_id, owner)
    if job.status != "SUCCEEDED" or job.result_key is None:
        raise Conflict(f"job {job.id} is {job.status}; its result is ready when it has SUCCEEDED")
    if store.head(job.result_key) is None:  # a URL to nothing would only fail later, with S3's 403 or 404
        raise gone(ObjectMissing(f"s3://{store.bucket}/{job.result_key} does not exist"))
    return {
        "job_id": job.id,
        "video_id": job.video_id,
        "summary": job.summary,
        "video": job.video_metadata,
        "result": {
            "key": job.result_key,
            "format": "handpipe.result v1, gzip-compressed JSON (docs/results-format.md)",
            "url": store.presign_download(job.result_key, settings.download_url_expires_s, f"{job.id}.json.gz"),
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
    job = get_job(jobs, job_id, owner)
    if job.status != "SUCCEEDED":
        raise Conflict(f"job {job.id} is {job.status}; frames can be read when it has SUCCEEDED")
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


# ---------------------------------------------------------------------------------------------
# Orchestration (queue consumers)
# ---------------------------------------------------------------------------------------------


def plan_segments(
    options: ProcessOptions, settings: Settings, duration_ms: float | None = None
) -> list[tuple[int | None, int | None]]:
    """Time ranges [start, end), one per work item, of at most `segment_ms` each. Without a
    segment length, or without a known end, the whole requested range is one segment. A tail
    shorter than a quarter segment joins the segment before it."""
    start = options.start_ms or 0
    stop = options.end_ms if options.end_ms is not None else duration_ms
    length = settings.segment_ms
    if length is None or stop is None or stop - start <= length:
        return [(options.start_ms, options.end_ms)]
    bounds = list(range(start, int(stop), length))
    if len(bounds) > 1 and stop - bounds[-1] < length / 4:
        bounds.pop()
    ranges: list[tuple[int | None, int | None]] = [(b, b + length) for b in bounds]
    ranges[0] = (options.start_ms, ranges[0][1])
    # The last segment runs to the requested end, or to the end of the file whatever the probe said.
    ranges[-1] = (ranges[-1][0], options.end_ms)
    return ranges


def plan_job(
    videos: VideoRepository,
    jobs: JobRepository,
    work_queue: MessageQueue,
    settings: Settings,
    message: JobRequested,
) -> str:
    """The "jobs" consumer: split a queued job into segments and send their work items, first
    asking a worker to probe the video when its duration is needed and not yet known."""
    job = jobs.get(message.job_id)
    if job is None:
        logger.warning("job %s no longer exists; ignoring its request", message.job_id)
        return "ignored"
    video = videos.get(job.video_id)
    if video is None:
        _fail_job(jobs, videos, job, "video_missing", "the video was deleted before the job started")
        return "failed"
    if job.status == "IN_PROGRESS":
        # A redelivered request: send what an interrupted earlier delivery may not have sent.
        return f"already planned; dispatched {dispatch(jobs, work_queue, settings, job, video)}"
    if job.status != "QUEUED":
        return "already finished"
    if refuse_over_limits(jobs, videos, settings, job, video):
        return "failed"
    options = ProcessOptions.from_dict(job.options)
    duration = (video.metadata or {}).get("duration_ms")
    if settings.segment_ms is not None and options.end_ms is None and duration is None:
        work_queue.send(ProbeRequest(job_id=job.id, video_id=video.id, bucket=settings.bucket, video_key=video.s3_key))
        return "probing"
    return start_segments(videos, jobs, work_queue, settings, job, video)


def start_segments(
    videos: VideoRepository,
    jobs: JobRepository,
    work_queue: MessageQueue,
    settings: Settings,
    job: Job,
    video: Video,
) -> str:
    """Store the job's segments, start it and send as many work items as the caps allow."""
    if refuse_over_limits(jobs, videos, settings, job, video):
        return "failed"
    options = ProcessOptions.from_dict(job.options)
    metadata = video.metadata or {}
    ranges = plan_segments(options, settings, metadata.get("duration_ms"))
    segments = [
        Segment(
            job_id=job.id,
            segment_index=index,
            start_ms=start,
            end_ms=end,
            status="PENDING",
            part_key=part_key(video.id, job.id, index),
            updated_at=now_ms(),
        )
        for index, (start, end) in enumerate(ranges)
    ]
    jobs.add_segments(job.id, segments)
    started = jobs.transition(
        job.id,
        from_statuses=("QUEUED",),
        to_status="IN_PROGRESS",
        segments_total=len(segments),
        frames_total=_expected_frames(options, metadata),
        started_at=now_ms(),
    )
    if started:
        videos.set_status(video.id, "PROCESSING")
    sent = dispatch(jobs, work_queue, settings, replace(job, status="IN_PROGRESS"), video)
    return f"planned {len(segments)} segment(s), dispatched {sent}"


def _expected_frames(options: ProcessOptions, metadata: Mapping[str, Any]) -> int | None:
    duration, fps = metadata.get("duration_ms"), metadata.get("fps")
    if not duration or not fps:
        return None
    span_ms = min(options.end_ms or duration, duration) - (options.start_ms or 0)
    return max(1, round(span_ms / 1000 * min(fps, options.sample_fps or fps)))


def dispatch(
    jobs: JobRepository,
    work_queue: MessageQueue,
    settings: Settings,
    job: Job,
    video: Video,
    at_most: int | None = None,
) -> int:
    """Send work items for the job's waiting segments within the per-job and global caps (and
    `at_most`), so one huge video cannot take every worker (and the account's concurrency) from everyone else."""
    claimed = jobs.claim_within_caps(
        job.id, per_job=settings.max_in_flight_per_job, total=settings.max_in_flight, at_most=at_most
    )
    if not claimed:
        return 0
    options = ProcessOptions.from_dict(job.options)
    items = [
        WorkItem(
            job_id=job.id,
            video_id=video.id,
            segment=segment.segment_index,
            bucket=settings.bucket,
            video_key=video.s3_key,
            part_key=segment.part_key,
            options=options.with_range(segment.start_ms, segment.end_ms),
            warmup_ms=settings.warmup_ms if segment.segment_index else 0,
        )
        for segment in claimed
    ]
    try:
        work_queue.send_many(items)
    except Exception:
        for segment in claimed:  # unsent: let a later dispatch send them
            jobs.release_claim(job.id, segment.segment_index)
        raise
    return len(items)


def _dispatch_waiting(
    videos: VideoRepository, jobs: JobRepository, work_queue: MessageQueue, settings: Settings
) -> int:
    """Hand capacity that finished segments freed to the jobs waiting for it, round robin across
    owners: each round gives every waiting owner an equal share, to its first job in the
    repository's fair order that can take it, so a flood of one owner's jobs cannot starve another's.
    Returns how many work items it sent."""
    total = 0
    waiting = jobs.jobs_waiting_for_dispatch()
    while waiting:
        free = settings.max_in_flight - jobs.in_flight()
        if free <= 0:
            return total
        share = max(1, free // len({owner for _, owner in waiting}))
        served: set[str | None] = set()
        keep: list[tuple[str, str | None]] = []
        for job_id, owner in waiting:
            if owner in served:
                keep.append((job_id, owner))
                continue
            job = jobs.get(job_id)
            video = videos.get(job.video_id) if job is not None else None
            sent = dispatch(jobs, work_queue, settings, job, video, at_most=share) if job and video else 0
            if sent:
                total += sent
                served.add(owner)
                keep.append((job_id, owner))  # it may take more in the next round
                free -= sent
                if free <= 0:
                    return total
            # Else it is at its own cap or has nothing left to send: the owner's next job is tried.
        if not served:
            return total
        waiting = keep
    return total


def record_event(
    videos: VideoRepository,
    jobs: JobRepository,
    store: ObjectStore,
    work_queue: MessageQueue,
    settings: Settings,
    event: SegmentEvent,
) -> str:
    """The "events" consumer: a probe's answer (which starts the job), progress, segment success
    (merging the parts once all are in) or failure. Every change is conditional, so a repeated
    event changes nothing twice."""
    job = jobs.get(event.job_id)
    if job is None:
        logger.warning("event for unknown job %s ignored", event.job_id)
        return "ignored"
    if event.type == VIDEO_PROBED:
        video = videos.get(job.video_id)
        if video is None:
            _fail_job(jobs, videos, job, "video_missing", "the video was deleted before the job started")
            return "failed"
        if event.video:
            videos.set_metadata(video.id, event.video)
            video = replace(video, metadata=event.video)
            problems = limit_problems(event.video, settings)
            if problems:
                _fail_job(jobs, videos, job, "limit_exceeded", "; ".join(problems))
                return "failed"
        if job.status == "QUEUED":
            return start_segments(videos, jobs, work_queue, settings, job, video)
        return "already planned"
    if event.type == SEGMENT_PROGRESS:
        jobs.record_progress(job.id, event.segment, event.frames_processed)
        expected = event.extra.get("frames_expected")
        if isinstance(expected, int) and job.frames_total is None and job.segments_total == 1:
            jobs.transition(job.id, from_statuses=(job.status,), to_status=job.status, frames_total=expected)
        return "progress"
    if event.type == SEGMENT_FAILED:
        jobs.fail_segment(job.id, event.segment, error=event.error or "failed")
        _fail_job(jobs, videos, job, event.error_code or "worker_error", f"segment {event.segment}: {event.error}")
        _dispatch_waiting(videos, jobs, work_queue, settings)
        return "failed"
    jobs.complete_segment(
        job.id, event.segment, frames_processed=event.frames_processed, frames_with_hands=event.frames_with_hands
    )
    # Checked even when this event was a repeat: a crash during an earlier merge must not strand the job.
    outcome = finish_if_complete(videos, jobs, store, job.id, work_queue, settings)
    _dispatch_waiting(videos, jobs, work_queue, settings)
    return outcome


def limit_problems(video: Mapping[str, Any], settings: Settings) -> list[str]:
    """What about a probed video is over the configured limits (empty when nothing is)."""
    problems = []
    duration = video.get("duration_ms") or 0
    if duration > settings.max_duration_ms:
        problems.append(f"the video lasts {_span(duration)}, over the limit of {_span(settings.max_duration_ms)}")
    pixels = (video.get("width") or 0) * (video.get("height") or 0)
    if pixels > settings.max_pixels:
        problems.append(
            f"frames of {video.get('width')}x{video.get('height')} are over the limit of {settings.max_pixels} pixels"
        )
    return problems


def plan_limit_problems(job: Job, video: Video, settings: Settings) -> list[str]:
    """Every limit a plan must respect, checked on each plan rather than only by the first probe: a
    second job on a video already probed, or a job naming its own end_ms, skips the probe."""
    options = ProcessOptions.from_dict(job.options)
    metadata = video.metadata or {}
    problems = limit_problems(metadata, settings) if metadata else []
    if options.end_ms is not None and options.end_ms > settings.max_duration_ms:
        problems.append(f"end_ms {options.end_ms} is past the limit of {_span(settings.max_duration_ms)}")
    if video.size_bytes is not None and video.size_bytes > settings.max_upload_bytes:
        problems.append(f"the video has {video.size_bytes} bytes, over the limit of {settings.max_upload_bytes}")
    if not problems:
        segments = len(plan_segments(options, settings, metadata.get("duration_ms")))
        if segments > settings.max_segments_per_job:
            problems.append(
                f"the job would need {segments} segments, over the limit of {settings.max_segments_per_job}"
            )
        frames = _expected_frames(options, metadata)
        if frames is not None and frames > settings.max_frames_per_job:
            problems.append(f"the job would read {frames} frames, over the limit of {settings.max_frames_per_job}")
    return problems


def refuse_over_limits(
    jobs: JobRepository, videos: VideoRepository, settings: Settings, job: Job, video: Video
) -> bool:
    """Fail the job (limit_exceeded, with every reason) when its plan is over a limit; True if so."""
    problems = plan_limit_problems(job, video, settings)
    if problems:
        _fail_job(jobs, videos, job, "limit_exceeded", "; ".join(problems))
    return bool(problems)


def _span(ms: float) -> str:
    return f"{ms / 1000:.1f} s" if ms < 120_000 else f"{ms / 60_000:.1f} min"


@dataclass
class SweepReport:
    """What one sweep did, by job id (a job may appear under more than one heading)."""

    failed: list[str] = field(default_factory=list)  # lost too often, or QUEUED for too long
    resent: list[str] = field(default_factory=list)  # segments whose work item was lost, sent again
    requested: list[str] = field(default_factory=list)  # QUEUED jobs whose request was sent again
    finished: list[str] = field(default_factory=list)  # all parts in, the merge done here
    dispatched: int = 0  # work items sent for waiting segments


def sweep(
    videos: VideoRepository,
    jobs: JobRepository,
    store: ObjectStore,
    jobs_queue: MessageQueue,
    work_queue: MessageQueue,
    settings: Settings,
    now: int | None = None,
) -> SweepReport:
    """Put right what lost messages left undone, judging jobs by their segments' news. A segment
    sent to a worker and not heard of for `segment_silence_s` (its item was dropped, or ended in
    the DLQ after its receives without a `segment.failed`) is sent again, and after
    `max_dispatches` sends its job fails with the reason. A job whose parts are all in is merged;
    a QUEUED job whose request or probe went missing is requested again, and failed after
    `stuck_after_s`. Segments waiting for capacity are never a reason to fail: capacity this frees
    (or that ended jobs freed) goes to waiting jobs at once."""
    clock = now if now is not None else now_ms()
    silent_since = clock - settings.segment_silence_s * 1000
    report = SweepReport()
    for segment in jobs.silent_segments(since_ms=silent_since):
        job = jobs.get(segment.job_id)
        if job is None or segment.dispatched_at is None:
            continue
        if segment.dispatch_count >= settings.max_dispatches:
            reason = (
                f"segment {segment.segment_index} was sent to a worker {segment.dispatch_count} times and never "
                f"answered (each time {settings.work_max_receives} deliveries without a result: the worker "
                "crashed, ran out of memory or timed out); see the work queue's dead-letter queue"
            )
            if _fail_job(jobs, videos, job, "worker_lost", reason):
                report.failed.append(job.id)
        elif jobs.requeue_segment(job.id, segment.segment_index, dispatched_at=segment.dispatched_at):
            logger.warning("segment %s/%s was lost; sending it again", job.id, segment.segment_index)
            report.resent.append(job.id)
    for job_id in jobs.finished_unmerged(updated_before_ms=silent_since):
        try:
            if finish_if_complete(videos, jobs, store, job_id, work_queue, settings) == "succeeded":
                report.finished.append(job_id)
        except Exception:  # one job's merge must not keep the sweep from the others
            logger.exception("the sweeper could not merge job %s", job_id)
    stuck_before = clock - settings.stuck_after_s * 1000
    for job in jobs.queued_before(created_before_ms=silent_since):
        if job.created_at < stuck_before:
            reason = (
                f"still QUEUED after {settings.stuck_after_s // 60} min: its request or its probe was lost or "
                "ended in a dead-letter queue; see the queues' DLQs and trigger the job again"
            )
            if _fail_job(jobs, videos, job, "stuck", reason):
                report.failed.append(job.id)
        elif job.updated_at < silent_since:
            # Planning is idempotent: a request that was not lost after all changes nothing.
            jobs_queue.send(JobRequested(job_id=job.id, video_id=job.video_id))
            jobs.transition(job.id, from_statuses=("QUEUED",), to_status="QUEUED")  # heard of now
            report.requested.append(job.id)
    report.dispatched = _dispatch_waiting(videos, jobs, work_queue, settings)
    return report


def finish_if_complete(
    videos: VideoRepository,
    jobs: JobRepository,
    store: ObjectStore,
    job_id: str,
    work_queue: MessageQueue,
    settings: Settings,
) -> str:
    job = jobs.get(job_id)
    if job is None or job.status not in ACTIVE_JOB_STATUSES:
        return "already finished"
    segments = jobs.segments(job.id)
    if not segments or any(s.status != "SUCCEEDED" for s in segments):
        return "waiting for parts"
    try:
        merged = merge_parts(store.get_result(s.part_key) for s in segments)
    except MergeError as error:
        # Deterministic: the same parts would fail the same way on every redelivery of this event.
        _fail_job(jobs, videos, job, "merge_error", f"the segments' results do not form one video: {error}")
        return "failed"
    key = result_key(job.video_id, job.id)
    store.put_result(key, merged)
    summary = dict(merged["summary"], stats=merged["stats"], decode=merged["decode"])
    with jobs.transaction():  # the job and its video change together (video first, the lock order)
        video = videos.lock(job.video_id)
        changed = jobs.transition(
            job.id,
            from_statuses=ACTIVE_JOB_STATUSES,
            to_status="SUCCEEDED",
            result_key=key,
            summary=summary,
            video_metadata=merged["video"],
            frames_total=merged["summary"]["frames_processed"],
            finished_at=now_ms(),
        )
        if changed:
            videos.set_metadata(job.video_id, merged["video"])
            videos.set_status(job.video_id, "PROCESSED")
    if changed:
        if video is not None:  # pictures are extras: a worker draws them after the job has succeeded
            work_queue.send(
                RenderRequest(
                    job_id=job.id,
                    video_id=job.video_id,
                    bucket=settings.bucket,
                    video_key=video.s3_key,
                    result_key=key,
                    annotated_video=bool(job.options.get("annotated_video")),
                )
            )
    return "succeeded"


def _fail_job(jobs: JobRepository, videos: VideoRepository, job: Job, code: str, reason: str) -> bool:
    """Fail the job unless it has already finished; True when this call failed it. The job and its
    video change in one transaction (video first, the lock order), and the job's dispatch slots
    are free from that moment: `in_flight` counts only active jobs' segments."""
    with jobs.transaction():
        videos.lock(job.video_id)
        if not jobs.transition(
            job.id,
            from_statuses=ACTIVE_JOB_STATUSES,
            to_status="FAILED",
            error=reason,
            error_code=code,
            finished_at=now_ms(),
        ):
            return False
        videos.set_status(job.video_id, "FAILED")
        return True


# ---------------------------------------------------------------------------------------------
# Health
# ---------------------------------------------------------------------------------------------


def health(checks: Mapping[str, Any]) -> tuple[bool, dict[str, str]]:
    """Run each named check (a callable that raises when unhealthy); report every outcome. The
    answer is public, so it says only what kind of failure it was: the error's own text (database
    user, host and name, queue URLs, role ARNs) goes to the log."""
    outcome: dict[str, str] = {}
    for name, check in checks.items():
        try:
            check()
            outcome[name] = "ok"
        except Exception as error:  # a health check reports failures, it does not raise them
            logger.warning("health check %s failing: %s", name, error)
            outcome[name] = f"failing: {_failure_kind(error)}"
    return all(v == "ok" for v in outcome.values()), outcome


def _failure_kind(error: Exception) -> str:
    kinds = {
        "DatabaseUnavailable": "the database does not answer",
        "StorageUnavailable": "the bucket does not answer or refuses access",
        "ObjectMissing": "the bucket does not exist",
        "QueueUnavailable": "the queue does not answer or refuses access",
        "SchemaOutOfDate": "the database schema is out of date",
        "NotConfigured": "not configured",
    }
    return f"{kinds.get(type(error).__name__, 'unexpected error')} (details in the service's log)"
