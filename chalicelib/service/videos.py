"""Video use cases: register (by upload or by an incoming key), upload URLs, get, list, delete."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from chalicelib.adapters.database import IntegrityError
from chalicelib.config import Settings
from chalicelib.domain.ports import JobRepository, VideoRepository
from chalicelib.domain.records import Video
from chalicelib.service import uploads
from chalicelib.service.common import (
    _check_fields,
    _text,
    check_id,
    decode_token,
    encode_token,
    new_id,
    now_ms,
    safe_filename,
)
from chalicelib.service.errors import Conflict, Forbidden, InvalidInput, NotFound, TooLarge
from chalicelib.service.uploads import Multipart
from chalicelib.service.views import video_view
from chalicelib.shared.contracts import (
    results_prefix,
    video_key,
    video_prefix,
)
from chalicelib.shared.states import VIDEO_STATUSES, VideoStatus
from chalicelib.shared.storage import ObjectStore

INCOMING_PREFIX = "incoming/"  # where other systems drop videos to register by key


MAX_KEY_LENGTH = 512  # the schema's s3_key column


def register_video(  # noqa: C901 - the two registration forms and their checks
    videos: VideoRepository,
    store: ObjectStore,
    settings: Settings,
    body: Mapping[str, Any],
    owner: str | None = None,
    multipart: Multipart | None = None,
) -> dict[str, Any]:
    """Register a video to upload (returns a presigned PUT URL, or with `multipart` and a size above the
    stage's threshold a multipart upload) or one already in the bucket (`s3_key`)."""
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
        status = VideoStatus.UPLOADED
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
        status = VideoStatus.REGISTERED
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
    if status == VideoStatus.REGISTERED and multipart is not None and uploads.wants_multipart(size, settings):
        view["upload"] = uploads.start(multipart, videos, settings, video)
    elif status == VideoStatus.REGISTERED:
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
    multipart: Multipart | None = None,
) -> dict[str, Any]:
    """POST /videos/{id}/upload-url: a fresh presigned PUT for a video whose file is not in the bucket
    (its first URL expired unused, or the object was lost), for the same key, type and size. A video
    with an unfinished multipart upload resumes that instead (409)."""
    _check_fields(body, set())
    video = get_video(videos, video_id, owner)
    if multipart is not None and multipart.uploads.get(video.id) is not None:
        raise Conflict(
            f"video {video.id} is uploaded in parts: resume from GET /videos/{video.id}/upload "
            f"(or abort with DELETE /videos/{video.id}/upload)"
        )
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
    videos: VideoRepository,
    jobs: JobRepository,
    store: ObjectStore,
    video_id: str,
    owner: str | None = None,
    multipart: Multipart | None = None,
) -> dict[str, Any]:
    """Mark the video DELETING (refused while it has active jobs; from then on it takes no new
    job), abort its unfinished multipart upload (S3 would keep its parts, and bill them, until the
    bucket's lifecycle rule), remove its objects, then its rows. A deletion cut short is finished by
    the next DELETE."""
    video = get_video(videos, video_id, owner)
    active = videos.begin_delete(video.id)
    if active is None:
        raise NotFound(f"no video with id {video_id!r}")
    if active:
        raise Conflict(f"video {video.id} has {active} job(s) queued or running; delete it when they finish")
    if multipart is not None:
        uploads.abort_for_delete(multipart, video)
    # Only what the video owns: its own two folders (named by its id) and, when it was registered
    # by key, exactly that key. Never a prefix of a caller's key: "a.mp4" must not take "a.mp4.bak".
    removed = store.delete_prefix(results_prefix(video.id, "").rstrip("/") + "/")
    removed += store.delete_prefix(video_prefix(video.id))
    if not video.s3_key.startswith(video_prefix(video.id)):
        removed += store.delete_key(video.s3_key)
    if not videos.delete(video.id):
        raise NotFound(f"no video with id {video_id!r}: it has just been deleted")
    return {"deleted": video.id, "objects_removed": removed}


def abort_upload(
    videos: VideoRepository,
    jobs: JobRepository,
    store: ObjectStore,
    multipart: Multipart,
    video_id: str,
    owner: str | None = None,
) -> dict[str, Any]:
    """DELETE /videos/{id}/upload: abort the multipart upload and delete the video with it. A
    REGISTERED video holds nothing else (no object, no job), and a new registration starts a new
    upload, so nothing is lost; a video whose upload is finished is refused (409)."""
    video = get_video(videos, video_id, owner)
    if multipart.uploads.get(video.id) is None:
        raise Conflict(f"video {video.id} has no unfinished multipart upload (it is {video.status})")
    return delete_video(videos, jobs, store, video.id, owner, multipart)
