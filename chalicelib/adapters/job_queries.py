"""The cross-video job search behind GET /jobs (status, tag, video, creation time; newest first, keyset
pages), apart from the job repository so that stays about one job's life."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chalicelib.adapters.database import Database, epoch_ms
from chalicelib.adapters.job_repository import _JOB_COLUMNS, _job
from chalicelib.adapters.repositories import _after, _check_limit, _where
from chalicelib.domain.records import Job
from chalicelib.domain.uploads import JobFilter


class JobQueries:
    def __init__(self, db: Database, clock: Callable[[], int] = epoch_ms) -> None:
        self._db = db
        self._clock = clock

    def find(self, where: JobFilter, *, limit: int = 50, after: tuple[int, str] | None = None) -> list[Job]:
        """Newest first by (created_at, id); for the next page pass `after=(last.created_at, last.id)`.
        Served by ix_jobs_owner_created / ix_jobs_owner_tag_created (migration 6), or by
        ix_jobs_video_created when a video is named."""
        _check_limit(limit)
        conditions: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("owner", where.owner),
            ("tag", where.tag),
            ("video_id", where.video_id),
            ("status", where.status),
        ):
            if value is not None:
                conditions.append(f"{column} = ?")
                params.append(value)
        if where.created_after is not None:
            conditions.append("created_at >= ?")
            params.append(where.created_after)
        _after(after, conditions, params)
        rows = self._db.fetchall(
            f"SELECT {_JOB_COLUMNS} FROM jobs{_where(conditions)} ORDER BY created_at DESC, id DESC LIMIT ?",
            [*params, limit],
        )
        return [_job(row) for row in rows]
