"""GET /jobs: a caller's jobs across all its videos, by status, tag, video and creation time, newest
first, in keyset pages."""

from __future__ import annotations

import re
from typing import Any

from chalicelib.domain.ports import JobSearch
from chalicelib.domain.uploads import JobFilter
from chalicelib.service.common import decode_token, encode_token
from chalicelib.service.errors import InvalidInput
from chalicelib.service.views import job_view
from chalicelib.shared.contracts import is_valid_id
from chalicelib.shared.states import JOB_STATUSES

DEFAULT_LIMIT = 50
MAX_LIMIT = 100


# Exactly the forms the OpenAPI document's pattern allows (GET /jobs created_after), so that every value
# it allows is accepted and every other refused.
_CREATED_AFTER = re.compile(
    r"(?P<ms>-?[0-9]{1,15})"
    r"|(?P<y>[0-9]{4})-(?P<mo>0[1-9]|1[0-2])-(?P<d>0[1-9]|[12][0-9]|3[01])"
    r"(?:T(?P<h>[01][0-9]|2[0-3]):(?P<mi>[0-5][0-9])(?::(?P<s>[0-5][0-9])(?:\.(?P<f>[0-9]{1,6}))?)?"
    r"(?P<z>Z|(?P<sign>[+ -])(?P<oh>[01][0-9]|2[0-3]):(?P<om>[0-5][0-9]))?)?",
    re.ASCII,
)


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days from 1970-01-01 (proleptic Gregorian); a day past the month's end runs on into the next month."""
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468 + day - 1


def parse_created_after(raw: str | None) -> int | None:
    """Milliseconds since the epoch, or an ISO-8601 date or time (a time without a zone is UTC; a "+"
    sent unencoded in a query string arrives as a space, which is read as "+")."""
    if raw is None or raw == "":
        return None
    match = _CREATED_AFTER.fullmatch(raw)
    if match is None:
        raise InvalidInput(
            "created_after must be milliseconds since the epoch or an ISO-8601 date or time such as "
            f"2026-01-31T12:00:00Z, got {raw[:60]!r}"
        )
    if match["ms"] is not None:
        return int(match["ms"])
    days = _days_from_civil(int(match["y"]), int(match["mo"]), int(match["d"]))
    seconds = days * 86400 + int(match["h"] or 0) * 3600 + int(match["mi"] or 0) * 60 + int(match["s"] or 0)
    if match["sign"]:
        offset = int(match["oh"]) * 3600 + int(match["om"]) * 60
        seconds -= offset if match["sign"] in "+ " else -offset
    return seconds * 1000 + int((match["f"] or "0").ljust(6, "0")) // 1000


def build_filter(
    *,
    owner: str | None,
    status: str | None,
    tag: str | None,
    video_id: str | None,
    created_after: str | None,
) -> JobFilter:
    wanted_status = None
    if status is not None:
        wanted_status = status.upper()
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


def find_jobs(search: JobSearch, where: JobFilter, *, limit: int, next_token: str | None) -> dict[str, Any]:
    """A page of jobs. The token is the keyset position of the page's last job, written out as the other
    lists write theirs (so the OpenAPI document gives its exact pattern); one not of that form is a 400."""
    after = decode_token(next_token, (int, str))
    rows = search.find(where, limit=limit + 1, after=(after[0], after[1]) if after else None)
    page = rows[:limit]
    token = encode_token([page[-1].created_at, page[-1].id]) if len(rows) > limit else None
    return {"jobs": [job_view(job) for job in page], "next_token": token}
