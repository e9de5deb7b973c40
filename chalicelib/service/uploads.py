"""Big files: a registration above the stage's threshold gets an S3 multipart upload. The caller asks for
part URLs, uploads parts (in parallel, resuming from the parts S3 already holds), then completes or aborts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from chalicelib.adapters.multipart import (
    MAX_PARTS,
    MAX_SINGLE_PUT_BYTES,
    MultipartStore,
    UploadedPart,
    UploadMissing,
    part_length,
    part_plan,
)
from chalicelib.config import Settings
from chalicelib.domain.ports import UploadRepository, VideoRepository
from chalicelib.domain.records import Video
from chalicelib.domain.uploads import MultipartState
from chalicelib.service.common import _check_fields
from chalicelib.service.errors import Conflict, InvalidInput
from chalicelib.service.views import video_view
from chalicelib.shared.states import VideoStatus
from chalicelib.shared.storage import ObjectStore

# The bucket's lifecycle rule aborts a multipart upload this long after it began (infra/handpipe.yaml).
UPLOAD_LIFETIME_MS = 7 * 24 * 3600 * 1000
MAX_URLS_PER_CALL = 100  # part URLs one call hands out; the uploader asks for more as it goes


@dataclass(frozen=True)
class Multipart:
    """What the multipart use cases need: the rows and S3."""

    uploads: UploadRepository
    store: MultipartStore


def wants_multipart(size_bytes: int, settings: Settings) -> bool:
    """Above the stage's threshold, and always above S3's 5 GiB limit for one PUT."""
    return size_bytes > settings.multipart_threshold_bytes or size_bytes > MAX_SINGLE_PUT_BYTES


def start(multipart: Multipart, videos: VideoRepository, settings: Settings, video: Video) -> dict[str, Any]:
    """Begin the multipart upload of a just-registered video; the `upload` instructions. When S3 or the
    database fails, the registration is taken back (and S3's upload aborted), so a retry starts clean."""
    size = video.size_bytes or 0
    part_bytes, part_count = part_plan(size, settings.multipart_part_bytes)
    try:
        upload_id = multipart.store.start(video.s3_key, video.content_type)
    except Exception:
        videos.delete(video.id)
        raise
    try:
        multipart.uploads.begin(video.id, upload_id, part_bytes)
    except Exception:
        multipart.store.abort(video.s3_key, upload_id)
        videos.delete(video.id)
        raise
    return {
        "method": "multipart",
        "upload_id": upload_id,
        "part_size_bytes": part_bytes,
        "part_count": part_count,
        "expires_at": video.created_at + UPLOAD_LIFETIME_MS,
    }


def _state(multipart: Multipart, video: Video) -> MultipartState:
    state = multipart.uploads.get(video.id)
    if state is None:
        if video.status == VideoStatus.REGISTERED:
            raise Conflict(
                f"video {video.id} has no multipart upload: PUT its file to its upload URL "
                f"(a new one: POST /videos/{video.id}/upload-url)"
            )
        raise Conflict(f"video {video.id} is {video.status}: its upload is finished")
    return state


def _part_number(value: Any) -> int:
    """A part number as JSON sends it (2.0 is the whole number 2: JSON has one number type), 1 to 10,000."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PARTS:
        raise InvalidInput(f"part numbers are whole numbers from 1 to {MAX_PARTS}, got {value!r}")
    return value


def _part_count(video: Video, state: MultipartState) -> int:
    return -(-(video.size_bytes or 0) // state.part_bytes)


def part_urls(multipart: Multipart, settings: Settings, video: Video, body: Mapping[str, Any]) -> dict[str, Any]:
    """POST /videos/{id}/upload/parts: presigned PUT URLs for the parts named, each for its exact size."""
    _check_fields(body, {"part_numbers"})
    state = _state(multipart, video)
    count = _part_count(video, state)
    raw = body.get("part_numbers")
    if not isinstance(raw, list) or not raw:
        raise InvalidInput("part_numbers must be a non-empty list of part numbers")
    if len(raw) > MAX_URLS_PER_CALL:
        raise InvalidInput(f"ask for at most {MAX_URLS_PER_CALL} part URLs at a time, got {len(raw)}")
    numbers = [_part_number(number) for number in raw]
    if len(set(numbers)) != len(numbers):
        raise InvalidInput("part_numbers names a part more than once")
    beyond = [n for n in numbers if n > count]
    if beyond:
        # Valid part numbers as such (S3 allows 10,000), but not of this upload: its state decides.
        raise Conflict(f"this upload has {count} parts (part numbers 1 to {count}); there is no part {beyond[0]}")
    size = video.size_bytes or 0
    return {
        "parts": [
            {
                "part_number": number,
                "size_bytes": part_length(number, size, state.part_bytes),
                "url": multipart.store.presign_part(
                    video.s3_key,
                    state.upload_id,
                    number,
                    part_length(number, size, state.part_bytes),
                    settings.upload_url_expires_s,
                ),
            }
            for number in numbers
        ],
        "expires_in_s": settings.upload_url_expires_s,
    }


def _uploaded(multipart: Multipart, video: Video, state: MultipartState) -> list[UploadedPart]:
    try:
        return list(multipart.store.parts(video.s3_key, state.upload_id))
    except UploadMissing:
        raise Conflict(
            f"video {video.id}'s multipart upload is gone from S3 (aborted, or expired after 7 days): "
            f"delete the video and register the file again"
        ) from None


def upload_state(multipart: Multipart, video: Video) -> dict[str, Any]:
    """GET /videos/{id}/upload: what S3 holds of the upload, to resume it."""
    state = _state(multipart, video)
    return {
        "upload_id": state.upload_id,
        "size_bytes": video.size_bytes,
        "part_size_bytes": state.part_bytes,
        "part_count": _part_count(video, state),
        "uploaded_parts": [
            {"part_number": p.part_number, "etag": p.etag, "size_bytes": p.size_bytes}
            for p in _uploaded(multipart, video, state)
        ],
        "expires_at": video.created_at + UPLOAD_LIFETIME_MS,
    }


def _sent_parts(body: Mapping[str, Any], count: int) -> dict[int, str]:
    _check_fields(body, {"parts"})
    parts = body.get("parts")
    if not isinstance(parts, list) or not parts:
        raise InvalidInput("parts must be a non-empty list of {part_number, etag}")
    sent: dict[int, str] = {}
    repeated: list[int] = []
    for part in parts:
        if not isinstance(part, dict) or set(part) != {"part_number", "etag"}:
            raise InvalidInput("each of parts must be an object with part_number and etag only")
        number, etag = _part_number(part["part_number"]), part["etag"]
        if not isinstance(etag, str) or not etag.strip('"') or len(etag) > 200:
            raise InvalidInput(f"part {number}'s etag must be the ETag S3 answered its PUT with")
        if number in sent:
            repeated.append(number)
        sent[number] = etag.strip('"')
    # What follows depends on this upload (its part count), not on the request's form: a 409.
    if repeated:
        raise Conflict(f"part(s) {_numbers(repeated)} are named more than once: list each part once")
    beyond = sorted(n for n in sent if n > count)
    if beyond:
        raise Conflict(f"this upload has {count} parts; there is no part {_numbers(beyond)}")
    return sent


def complete(
    multipart: Multipart, videos: VideoRepository, store: ObjectStore, video: Video, body: Mapping[str, Any]
) -> dict[str, Any]:
    """POST /videos/{id}/upload/complete: check the caller's list against the parts S3 holds (every part
    present, each ETag S3's, each part its planned size), then complete; the video is UPLOADED."""
    state = _state(multipart, video)
    size = video.size_bytes or 0
    count = _part_count(video, state)
    sent = _sent_parts(body, count)
    missing = [n for n in range(1, count + 1) if n not in sent]
    if missing:
        raise Conflict(f"parts must list all {count} parts of this upload; missing: {_numbers(missing)}")
    held = {p.part_number: p for p in _uploaded(multipart, video, state)}
    absent = [n for n in range(1, count + 1) if n not in held]
    if absent:
        raise Conflict(f"S3 does not hold part(s) {_numbers(absent)} yet: upload them, then complete again")
    wrong_etag = [n for n in range(1, count + 1) if held[n].etag != sent[n]]
    if wrong_etag:
        raise Conflict(f"part(s) {_numbers(wrong_etag)}: the etag sent is not that of the part S3 holds")
    wrong_size = [n for n in range(1, count + 1) if held[n].size_bytes != part_length(n, size, state.part_bytes)]
    if wrong_size:
        raise Conflict(f"part(s) {_numbers(wrong_size)} do not have their planned size: upload them again")
    try:
        multipart.store.complete(video.s3_key, state.upload_id, [held[n] for n in range(1, count + 1)])
    except UploadMissing:
        raise Conflict(f"video {video.id}'s multipart upload is gone from S3: it was completed or aborted") from None
    head = store.head(video.s3_key)
    real_size = int(head["size"]) if head and head["size"] is not None else size
    if not multipart.uploads.complete(video.id, state.upload_id, real_size):
        raise Conflict(f"video {video.id}'s upload was completed by another call")
    finished = videos.get(video.id)
    return video_view(finished or video)


def _numbers(numbers: list[int]) -> str:
    shown = ", ".join(str(n) for n in numbers[:20])
    return shown + (f" and {len(numbers) - 20} more" if len(numbers) > 20 else "")


def abort_for_delete(multipart: Multipart, video: Video) -> bool:
    """Abort the video's unfinished multipart upload, if it has one (a video being deleted); True when it had."""
    state = multipart.uploads.get(video.id)
    if state is None:
        return False
    multipart.store.abort(video.s3_key, state.upload_id)
    return True
