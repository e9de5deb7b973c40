"""The video repository over the SQL database, and the row helpers the job repository shares with it;
both implement the Protocols in chalicelib.domain.ports, so services never see SQL."""

from __future__ import annotations

import builtins
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from chalicelib.adapters.database import Database, Row, epoch_ms
from chalicelib.domain.records import Video
from chalicelib.shared.states import ACTIVE_JOB_STATUSES, VIDEO_DELETING

MAX_PAGE_SIZE = 1000


# VARCHAR limits from the schema. Checked here so both dialects reject the same values, with a
# message naming the field, instead of MySQL failing and SQLite storing whatever it is given.
_VIDEO_LIMITS = {
    "id": 40,
    "title": 200,
    "filename": 255,
    "content_type": 100,
    "s3_key": 512,
    "status": 20,
    "owner": 255,
}


_JOB_LIMITS = {
    "id": 40,
    "video_id": 40,
    "status": 20,
    "client_token": 64,
    "tag": 128,
    "owner": 255,
    "error_code": 64,
    "result_key": 512,
}


_SEGMENT_LIMITS = {"job_id": 40, "status": 20, "part_key": 512}


def _check_lengths(kind: str, values: Mapping[str, Any], limits: Mapping[str, int]) -> None:
    too_long = [
        f"{name} has {len(values[name])} characters (at most {limit})"
        for name, limit in limits.items()
        if isinstance(values.get(name), str) and len(values[name]) > limit
    ]
    if too_long:
        raise ValueError(f"{kind} field too long: {'; '.join(too_long)}")


def _dumps(value: Mapping[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _loads(text: str | None) -> dict[str, Any] | None:
    return None if text is None else json.loads(text)


def _marks(count: int) -> str:
    return ", ".join("?" * count)


def _statuses(values: Collection[str], name: str) -> list[str]:
    # A bare string is a Collection[str] too, and would silently become its letters.
    if isinstance(values, str):
        raise TypeError(f"{name} must be a collection of statuses, not the string {values!r}")
    return list(values)


def _check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be a whole number from 1 to {MAX_PAGE_SIZE}, got {limit!r}")


def _after(after: tuple[int, str] | None, conditions: list[str], params: list[Any]) -> None:
    """Keyset pagination on (created_at, id), newest first: rows strictly after the given one."""
    if after is None:
        return
    created_at, last_id = after
    # Spelled out rather than as a row comparison, which MySQL does not always serve from an index.
    conditions.append("(created_at < ? OR (created_at = ? AND id < ?))")
    params.extend([created_at, created_at, last_id])


def _where(conditions: Sequence[str]) -> str:
    return f" WHERE {' AND '.join(conditions)}" if conditions else ""


_VIDEO_COLUMNS = (
    "id, title, filename, content_type, size_bytes, s3_key, status, owner, metadata_json, created_at, updated_at"
)


def _video(row: Row) -> Video:
    return Video(
        id=row["id"],
        title=row["title"],
        filename=row["filename"],
        content_type=row["content_type"],
        size_bytes=row["size_bytes"],
        s3_key=row["s3_key"],
        status=row["status"],
        owner=row["owner"],
        metadata=_loads(row["metadata_json"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


class VideoRepository:
    def __init__(self, db: Database, clock: Callable[[], int] = epoch_ms) -> None:
        self._db = db
        self._clock = clock

    def add(self, video: Video) -> None:
        _check_lengths("video", vars(video), _VIDEO_LIMITS)
        self._db.execute(
            f"INSERT INTO videos ({_VIDEO_COLUMNS}) VALUES ({_marks(11)})",
            (
                video.id,
                video.title,
                video.filename,
                video.content_type,
                video.size_bytes,
                video.s3_key,
                video.status,
                video.owner,
                _dumps(video.metadata),
                video.created_at,
                video.updated_at,
            ),
        )

    def get(self, video_id: str, owner: str | None = None) -> Video | None:
        conditions, params = ["id = ?"], [video_id]
        if owner is not None:
            conditions.append("owner = ?")
            params.append(owner)
        row = self._db.fetchone(f"SELECT {_VIDEO_COLUMNS} FROM videos{_where(conditions)}", params)
        return None if row is None else _video(row)

    def find_by_key(self, s3_key: str) -> Video | None:
        """The video registered for this object key, if any (one video per key)."""
        row = self._db.fetchone(f"SELECT {_VIDEO_COLUMNS} FROM videos WHERE s3_key = ?", (s3_key,))
        return None if row is None else _video(row)

    def set_status(self, video_id: str, status: str, *, expected: Collection[str] | None = None) -> bool:
        """Set the status, only from one of `expected` when given; True when the video was updated."""
        _check_lengths("video", {"status": status}, _VIDEO_LIMITS)
        sql = "UPDATE videos SET status = ?, updated_at = ? WHERE id = ?"
        params: list[Any] = [status, self._clock(), video_id]
        if expected is not None:
            allowed = _statuses(expected, "expected")
            if not allowed:
                return False
            sql += f" AND status IN ({_marks(len(allowed))})"
            params.extend(allowed)
        return self._db.execute(sql, params) > 0

    def set_metadata(self, video_id: str, metadata: dict[str, Any]) -> None:
        self._db.execute(
            "UPDATE videos SET metadata_json = ?, updated_at = ? WHERE id = ?",
            (_dumps(metadata), self._clock(), video_id),
        )

    def lock(self, video_id: str) -> Video | None:
        """The video, its row locked until the caller's transaction ends (MySQL; SQLite's BEGIN
        IMMEDIATE already lets one writer in at a time). Whatever changes a video and its jobs
        together locks the video first, then the jobs, then the segments, so none can deadlock."""
        lock = " FOR UPDATE" if self._db.dialect == "mysql" else ""
        row = self._db.fetchone(f"SELECT {_VIDEO_COLUMNS} FROM videos WHERE id = ?{lock}", (video_id,))
        return None if row is None else _video(row)

    def begin_delete(self, video_id: str) -> int | None:
        """Mark the video DELETING unless it has active jobs, in one transaction with the check, so
        no job can be created between the two (`JobRepository.create_for_video` locks the same row).
        None when there is no such video; otherwise the number of active jobs (0: it is marked)."""
        with self._db.transaction():
            if self.lock(video_id) is None:
                return None
            share = " LOCK IN SHARE MODE" if self._db.dialect == "mysql" else ""
            row = self._db.fetchone(
                f"SELECT COUNT(*) AS n FROM jobs WHERE video_id = ? AND status IN ({_marks(len(ACTIVE_JOB_STATUSES))})"
                f"{share}",
                (video_id, *ACTIVE_JOB_STATUSES),
            )
            active = int(row["n"]) if row else 0
            if not active:
                self._db.execute(
                    "UPDATE videos SET status = ?, updated_at = ? WHERE id = ?",
                    (VIDEO_DELETING, self._clock(), video_id),
                )
            return active

    def delete(self, video_id: str) -> bool:
        """Remove the video with its jobs and their segments; False when there was no such video."""
        with self._db.transaction():
            if self._db.dialect == "mysql":
                # The video, then its jobs: the order every writer of both takes them in.
                self.lock(video_id)
                self._db.fetchall("SELECT id FROM jobs WHERE video_id = ? FOR UPDATE", (video_id,))
            self._db.execute(
                "DELETE FROM segments WHERE job_id IN (SELECT id FROM jobs WHERE video_id = ?)", (video_id,)
            )
            self._db.execute(
                "DELETE FROM job_announcements WHERE job_id IN (SELECT id FROM jobs WHERE video_id = ?)", (video_id,)
            )
            self._db.execute(
                "DELETE FROM job_artifacts WHERE job_id IN (SELECT id FROM jobs WHERE video_id = ?)", (video_id,)
            )
            self._db.execute("DELETE FROM jobs WHERE video_id = ?", (video_id,))
            return self._db.execute("DELETE FROM videos WHERE id = ?", (video_id,)) > 0

    def list(
        self,
        *,
        status: str | None = None,
        limit: int = 50,
        after: tuple[int, str] | None = None,
        owner: str | None = None,
    ) -> builtins.list[Video]:
        """Newest first. For the next page pass `after=(last.created_at, last.id)` of this one."""
        _check_limit(limit)
        conditions: builtins.list[str] = []
        params: builtins.list[Any] = []
        if status is not None:
            conditions.append("status = ?")
            params.append(status)
        if owner is not None:
            conditions.append("owner = ?")
            params.append(owner)
        _after(after, conditions, params)
        rows = self._db.fetchall(
            f"SELECT {_VIDEO_COLUMNS} FROM videos{_where(conditions)} ORDER BY created_at DESC, id DESC LIMIT ?",
            [*params, limit],
        )
        return [_video(row) for row in rows]
