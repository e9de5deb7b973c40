"""GET /jobs: a caller's jobs across all its videos, by status, tag, video and creation time, newest
first, in keyset pages whose token is bound to the filters it was made for."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import Any

from chalicelib.domain.ports import JobSearch
from chalicelib.domain.uploads import JobFilter
from chalicelib.service.common import encode_token
from chalicelib.service.errors import InvalidInput
from chalicelib.service.views import job_view
from chalicelib.shared.contracts import is_valid_id
from chalicelib.shared.states import JOB_STATUSES

DEFAULT_LIMIT = 50
MAX_LIMIT = 100
_TOKEN = re.compile(r"([0-9]{1,15})_(job_[0-9a-f]{32})_([0-9a-f]{16})", re.ASCII)


def parse_created_after(raw: str | None) -> int | None:
    """ISO-8601 (a time without a zone is UTC) or whole milliseconds since the epoch."""
    if raw is None or raw == "":
        return None
    text = raw.strip()
    if re.fullmatch(r"[0-9]{1,15}", text):
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidInput(
            f"created_after must be an ISO-8601 time (2026-01-31T12:00:00Z) or milliseconds since the epoch, "
            f"got {raw[:60]!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    value = int(moment.timestamp() * 1000)
    if value < 0:
        raise InvalidInput("created_after must not be before 1970")
    return value


def build_filter(
    *,
    owner: str | None,
    status: str | None,
    tag: str | None,
    video_id: str | None,
    created_after: str | None,
) -> JobFilter:
    wanted_status = None
    if status:
        wanted_status = status.strip().upper()
        if wanted_status not in JOB_STATUSES:
            raise InvalidInput(f"status must be one of {', '.join(JOB_STATUSES)} (any case), got {status[:40]!r}")
    if tag is not None and (len(tag) > 128 or any(ord(c) < 32 or ord(c) == 127 for c in tag)):
        raise InvalidInput("tag must be at most 128 characters, without control characters")
    if video_id is not None and not is_valid_id(video_id, "vid"):
        raise InvalidInput(f"video_id must be a video id (vid_ and 32 hex digits), got {video_id[:60]!r}")
    return JobFilter(
        owner=owner,
        status=wanted_status,
        tag=tag.strip(" ") if tag else None,
        video_id=video_id,
        created_after=parse_created_after(created_after),
    )


def _check(where: JobFilter, created_at: int, job_id: str) -> str:
    """16 hex digits over the filters and the position: a token edited, or sent with other filters, fails it."""
    text = "\x1f".join(
        str(v) for v in (where.owner, where.status, where.tag, where.video_id, where.created_after, created_at, job_id)
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _decode(token: str | None, where: JobFilter) -> tuple[int, str] | None:
    if not token:
        return None
    match = _TOKEN.fullmatch(token)
    if match is None or _check(where, int(match[1]), match[2]) != match[3]:
        raise InvalidInput(
            "next_token is not valid for these filters: pass the next_token of the previous page unchanged, "
            "with the same filters"
        )
    return int(match[1]), match[2]


def find_jobs(search: JobSearch, where: JobFilter, *, limit: int, next_token: str | None) -> dict[str, Any]:
    after = _decode(next_token, where)
    rows = search.find(where, limit=limit + 1, after=after)
    page = rows[:limit]
    token = None
    if len(rows) > limit:
        last = page[-1]
        token = encode_token([last.created_at, last.id, _check(where, last.created_at, last.id)])
    return {"jobs": [job_view(job) for job in page], "next_token": token}
