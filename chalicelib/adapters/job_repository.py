"""The job repository: jobs and their segments in the SQL database, with the conditional updates that
keep concurrent consumers from racing (a status moves only from the statuses the caller names)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Unpack

from chalicelib.adapters.artifact_rows import ArtifactRows
from chalicelib.adapters.database import Database, DatabaseUnavailable, IntegrityError, Row, epoch_ms
from chalicelib.adapters.repositories import (
    _JOB_LIMITS,
    _SEGMENT_LIMITS,
    _after,
    _check_lengths,
    _check_limit,
    _dumps,
    _loads,
    _marks,
    _statuses,
    _where,
)
from chalicelib.domain.records import Announcement, Job, JobFields, JobRefused, Segment
from chalicelib.shared.states import (
    ACTIVE_JOB_STATUSES,
    SEGMENT_FAILED,
    SEGMENT_PENDING,
    SEGMENT_STATUSES,
    SEGMENT_SUCCEEDED,
    VIDEO_DELETING,
    JobStatus,
)

_TRANSITION_COLUMNS = {
    "error": "error",
    "error_code": "error_code",
    "segments_total": "segments_total",
    "frames_total": "frames_total",
    "result_key": "result_key",
    "summary": "summary_json",
    "video_metadata": "video_json",
    "started_at": "started_at",
    "finished_at": "finished_at",
}


_JOB_COLUMNS = (
    "id, video_id, status, options_json, client_token, tag, owner, error, error_code, segments_total, "
    "segments_done, frames_total, frames_done, frames_with_hands, result_key, summary_json, video_json, "
    "created_at, started_at, finished_at, updated_at, notify_url"
)


_SEGMENT_COLUMNS = (
    "job_id, segment_index, start_ms, end_ms, status, part_key, frames_processed, frames_with_hands, error, updated_at"
)


def _job(row: Row) -> Job:
    return Job(
        id=row["id"],
        video_id=row["video_id"],
        status=row["status"],
        options=_loads(row["options_json"]) or {},
        client_token=row["client_token"],
        tag=row["tag"],
        owner=row["owner"],
        error=row["error"],
        error_code=row["error_code"],
        segments_total=row["segments_total"],
        segments_done=row["segments_done"],
        frames_total=row["frames_total"],
        frames_done=row["frames_done"],
        frames_with_hands=row["frames_with_hands"],
        result_key=row["result_key"],
        summary=_loads(row["summary_json"]),
        video_metadata=_loads(row["video_json"]),
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        updated_at=row["updated_at"],
        notify_url=row["notify_url"],
    )


def _segment(row: Row) -> Segment:
    return Segment(
        job_id=row["job_id"],
        segment_index=row["segment_index"],
        start_ms=row["start_ms"],
        end_ms=row["end_ms"],
        status=row["status"],
        part_key=row["part_key"],
        frames_processed=row["frames_processed"],
        frames_with_hands=row["frames_with_hands"],
        error=row["error"],
        updated_at=row["updated_at"],
        dispatched_at=row["dispatched_at"],
        dispatch_count=row["dispatch_count"],
    )


class JobRepository(ArtifactRows):
    def __init__(self, db: Database, clock: Callable[[], int] = epoch_ms) -> None:
        self._db = db
        self._clock = clock

    def create(self, job: Job) -> tuple[Job, bool]:
        """Insert the job, or return (the job already made with its client_token, False): the unique
        index decides, so two concurrent requests with one token still make one job."""
        _check_lengths("job", vars(job), _JOB_LIMITS)
        try:
            self._db.execute(
                f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES ({_marks(22)})",
                (
                    job.id,
                    job.video_id,
                    job.status,
                    _dumps(job.options),
                    job.client_token,
                    job.tag,
                    job.owner,
                    job.error,
                    job.error_code,
                    job.segments_total,
                    job.segments_done,
                    job.frames_total,
                    job.frames_done,
                    job.frames_with_hands,
                    job.result_key,
                    _dumps(job.summary),
                    _dumps(job.video_metadata),
                    job.created_at,
                    job.started_at,
                    job.finished_at,
                    job.updated_at,
                    job.notify_url,
                ),
            )
        except IntegrityError:
            existing = None if job.client_token is None else self.find_by_client_token(job.video_id, job.client_token)
            if existing is None:
                raise  # not the token: a reused id or a missing video
            return existing, False
        return job, True

    def find_by_client_token(self, video_id: str, client_token: str) -> Job | None:
        # A locking read sees the committed winner even inside a caller's older MySQL snapshot.
        lock = " LOCK IN SHARE MODE" if self._db.dialect == "mysql" else ""
        row = self._db.fetchone(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE video_id = ? AND client_token = ?{lock}", (video_id, client_token)
        )
        return None if row is None else _job(row)

    def get(self, job_id: str, owner: str | None = None) -> Job | None:
        conditions, params = ["id = ?"], [job_id]
        if owner is not None:
            conditions.append("owner = ?")
            params.append(owner)
        row = self._db.fetchone(f"SELECT {_JOB_COLUMNS} FROM jobs{_where(conditions)}", params)
        return None if row is None else _job(row)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction around several calls (of this and of a VideoRepository on the same database)."""
        with self._db.transaction():
            yield

    def create_for_video(self, job: Job, *, max_active: int) -> tuple[Job, bool]:
        """`create`, checked in one transaction with the video: refused (JobRefused) when the video is
        missing or being deleted, or already has `max_active` active jobs. The video's row is locked
        first, so a concurrent `VideoRepository.begin_delete` either sees this job or is seen by it."""
        with self._db.transaction():
            row = self._db.fetchone(
                "SELECT status FROM videos WHERE id = ?" + (" FOR UPDATE" if self._db.dialect == "mysql" else ""),
                (job.video_id,),
            )
            if row is None:
                raise JobRefused("missing")
            if row["status"] == VIDEO_DELETING:
                raise JobRefused("deleting")
            if job.client_token is not None:
                existing = self.find_by_client_token(job.video_id, job.client_token)
                if existing is not None:
                    return existing, False
            active = self.count_active_for_video(job.video_id)
            if active >= max_active:
                raise JobRefused("busy", active)
            return self.create(job)

    def delete(self, job_id: str) -> bool:
        """Remove the job and its segments (a job that could not be queued); False when there was none."""
        with self._db.transaction():
            self._lock_job(job_id)
            self._db.execute("DELETE FROM job_announcements WHERE job_id = ?", (job_id,))
            self._db.execute("DELETE FROM segments WHERE job_id = ?", (job_id,))
            self._db.execute("DELETE FROM job_artifacts WHERE job_id = ?", (job_id,))
            return self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,)) > 0

    def list_for_video(self, video_id: str, *, limit: int = 50, after: tuple[int, str] | None = None) -> list[Job]:
        """Newest first; keyset pages like VideoRepository.list."""
        _check_limit(limit)
        conditions, params = ["video_id = ?"], [video_id]
        _after(after, conditions, params)
        rows = self._db.fetchall(
            f"SELECT {_JOB_COLUMNS} FROM jobs{_where(conditions)} ORDER BY created_at DESC, id DESC LIMIT ?",
            [*params, limit],
        )
        return [_job(row) for row in rows]

    def ids_with_status(self, status: str, *, limit: int = 100, after_id: str = "") -> list[str]:
        """Ids of jobs in `status`, in id order (ids sort by creation time), after `after_id`: how a
        restarted local stack finds the work it must send again."""
        _check_limit(limit)
        rows = self._db.fetchall(
            "SELECT id FROM jobs WHERE status = ? AND id > ? ORDER BY id LIMIT ?", (status, after_id, limit)
        )
        return [row["id"] for row in rows]

    def count_active_for_video(self, video_id: str) -> int:
        row = self._db.fetchone(
            f"SELECT COUNT(*) AS n FROM jobs WHERE video_id = ? AND status IN ({_marks(len(ACTIVE_JOB_STATUSES))})",
            (video_id, *ACTIVE_JOB_STATUSES),
        )
        return int(row["n"]) if row else 0

    def transition(
        self, job_id: str, *, from_statuses: Collection[str], to_status: str, **fields: Unpack[JobFields]
    ) -> bool:
        """Move the job to `to_status` only if it is in one of `from_statuses`, setting `fields` with
        it; True when it moved. Concurrent callers cannot both win the same transition."""
        unknown = sorted(set(fields) - set(_TRANSITION_COLUMNS))
        if unknown:
            raise TypeError(f"transition() cannot set {', '.join(unknown)} (allowed: {', '.join(_TRANSITION_COLUMNS)})")
        allowed = _statuses(from_statuses, "from_statuses")
        if not allowed:
            return False
        _check_lengths("job", {"status": to_status, **fields}, _JOB_LIMITS)
        assignments = ["status = ?", "updated_at = ?"]
        params: list[Any] = [to_status, self._clock()]
        for name, value in fields.items():
            stored: Any = value
            if name in ("summary", "video_metadata"):
                stored = _dumps(stored)
            assignments.append(f"{_TRANSITION_COLUMNS[name]} = ?")
            params.append(stored)
        params.append(job_id)
        params.extend(allowed)
        sql = f"UPDATE jobs SET {', '.join(assignments)} WHERE id = ? AND status IN ({_marks(len(allowed))})"
        return self._db.execute(sql, params) > 0

    def stuck(self, *, status: str, updated_before_ms: int, limit: int = 100) -> list[Job]:
        """Jobs in `status` not touched since `updated_before_ms`, least recently touched first."""
        _check_limit(limit)
        rows = self._db.fetchall(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE status = ? AND updated_at < ? ORDER BY updated_at, id LIMIT ?",
            (status, updated_before_ms, limit),
        )
        return [_job(row) for row in rows]

    # -- segments -------------------------------------------------------------------------------

    def _lock_job(self, job_id: str) -> None:
        # Every segment write locks its job row first. Without that, two MySQL transactions each
        # holding one segment would wait for each other in the totals subquery and deadlock.
        # SQLite needs nothing: BEGIN IMMEDIATE already lets one writer in at a time.
        if self._db.dialect == "mysql":
            self._db.fetchone("SELECT id FROM jobs WHERE id = ? FOR UPDATE", (job_id,))

    def _refresh_totals(self, job_id: str) -> None:
        # Recomputed from the segments rather than incremented, so progress and completion events
        # can arrive in any order, or twice, without counting anything twice.
        self._db.execute(
            "UPDATE jobs SET"
            " segments_done = (SELECT COUNT(*) FROM segments WHERE job_id = ? AND status = ?),"
            " frames_done = (SELECT COALESCE(SUM(frames_processed), 0) FROM segments WHERE job_id = ?),"
            " frames_with_hands = (SELECT COALESCE(SUM(frames_with_hands), 0) FROM segments WHERE job_id = ?),"
            " updated_at = ?"
            " WHERE id = ?",
            (job_id, SEGMENT_SUCCEEDED, job_id, job_id, self._clock(), job_id),
        )

    def add_segments(self, job_id: str, segments: Sequence[Segment]) -> None:
        """Insert the segments; ones whose index already exists are left as they are, so a
        redelivered orchestration message is harmless."""
        for segment in segments:
            if segment.job_id != job_id:
                raise ValueError(f"segment {segment.segment_index} belongs to job {segment.job_id}, not {job_id}")
            if segment.status not in SEGMENT_STATUSES:
                raise ValueError(f"segment status must be one of {', '.join(SEGMENT_STATUSES)}, got {segment.status!r}")
            _check_lengths("segment", vars(segment), _SEGMENT_LIMITS)
        if self._db.dialect == "mysql":
            # Not INSERT IGNORE: that would also turn a missing job (a foreign-key error) into a warning.
            on_conflict = " ON DUPLICATE KEY UPDATE job_id = job_id"
        else:
            on_conflict = " ON CONFLICT (job_id, segment_index) DO NOTHING"
        sql = f"INSERT INTO segments ({_SEGMENT_COLUMNS}) VALUES ({_marks(10)}){on_conflict}"
        with self._db.transaction():
            self._lock_job(job_id)
            for segment in segments:
                self._db.execute(
                    sql,
                    (
                        segment.job_id,
                        segment.segment_index,
                        segment.start_ms,
                        segment.end_ms,
                        segment.status,
                        segment.part_key,
                        segment.frames_processed,
                        segment.frames_with_hands,
                        segment.error,
                        segment.updated_at,
                    ),
                )

    def segments(self, job_id: str) -> list[Segment]:
        rows = self._db.fetchall(
            f"SELECT {_SEGMENT_COLUMNS}, dispatched_at, dispatch_count FROM segments WHERE job_id = ?"
            " ORDER BY segment_index",
            (job_id,),
        )
        return [_segment(row) for row in rows]

    def in_flight(self, job_id: str | None = None) -> int:
        """Segments sent to workers and not finished, of active jobs: of one job, or of all jobs. A
        job that ends, for whatever reason, gives its slots back in the same statement that ends it."""
        sql = (
            "SELECT COUNT(*) AS n FROM segments s JOIN jobs j ON j.id = s.job_id"
            f" WHERE s.status = ? AND s.dispatched_at IS NOT NULL AND j.status IN ({_marks(len(ACTIVE_JOB_STATUSES))})"
        )
        params: tuple[Any, ...] = (SEGMENT_PENDING, *ACTIVE_JOB_STATUSES)
        if job_id is not None:
            sql += " AND s.job_id = ?"
            params += (job_id,)
        row = self._db.fetchone(sql, params)
        return int(row["n"]) if row else 0

    def claim_for_dispatch(self, job_id: str, limit: int) -> list[Segment]:
        """Mark up to `limit` of the job's waiting segments as sent and return them, lowest index
        first. Each claim is conditional, so two dispatchers never send the same segment."""
        if limit <= 0:
            return []
        claimed: list[Segment] = []
        with self._db.transaction():
            self._lock_job(job_id)
            job = self._db.fetchone("SELECT status FROM jobs WHERE id = ?", (job_id,))
            if job is None or job["status"] != JobStatus.IN_PROGRESS:
                return []  # an ended job's segments are never sent
            rows = self._db.fetchall(
                f"SELECT {_SEGMENT_COLUMNS}, dispatched_at, dispatch_count FROM segments"
                " WHERE job_id = ? AND status = ? AND dispatched_at IS NULL ORDER BY segment_index LIMIT ?",
                (job_id, SEGMENT_PENDING, limit),
            )
            now = self._clock()
            for row in rows:
                if self._db.execute(
                    "UPDATE segments SET dispatched_at = ?, dispatch_count = dispatch_count + 1"
                    " WHERE job_id = ? AND segment_index = ? AND dispatched_at IS NULL",
                    (now, job_id, row["segment_index"]),
                ):
                    claimed.append(replace(_segment(row), dispatched_at=now, dispatch_count=row["dispatch_count"] + 1))
        return claimed

    def claim_within_caps(self, job_id: str, *, per_job: int, total: int, at_most: int | None = None) -> list[Segment]:
        """`claim_for_dispatch` for as many segments as the caps leave free (`per_job` in flight for
        this job, `total` for all jobs, and at most `at_most`: an owner's share of a round), counted in
        the claim's own transaction while other dispatchers wait, so concurrent dispatchers together
        never exceed the caps."""
        with self._dispatchers_apart(), self._db.transaction():
            capacity = min(per_job - self.in_flight(job_id), total - self.in_flight())
            if at_most is not None:
                capacity = min(capacity, at_most)
            return self.claim_for_dispatch(job_id, capacity)

    @contextmanager
    def _dispatchers_apart(self) -> Iterator[None]:
        # SQLite's BEGIN IMMEDIATE already admits one writer at a time. MySQL's row locks would not
        # keep two jobs' dispatchers apart, so they take a named lock around their transactions.
        if self._db.dialect != "mysql":
            yield
            return
        name = "LEFT(CONCAT('handpipe_dispatch:', DATABASE()), 64)"
        row = self._db.fetchone(f"SELECT GET_LOCK({name}, 10) AS got")
        if not row or row["got"] != 1:
            raise DatabaseUnavailable("another dispatcher has held the dispatch lock for 10 s")
        try:
            yield
        finally:
            self._db.fetchone(f"SELECT RELEASE_LOCK({name}) AS released")

    def release_claim(self, job_id: str, index: int) -> None:
        """Undo a claim whose work item could not be sent, so a later dispatch sends it."""
        self._db.execute(
            "UPDATE segments SET dispatched_at = NULL, dispatch_count = dispatch_count - 1"
            " WHERE job_id = ? AND segment_index = ? AND status = ? AND dispatched_at IS NOT NULL",
            (job_id, index, SEGMENT_PENDING),
        )

    def silent_segments(self, *, since_ms: int, limit: int = 100) -> list[Segment]:
        """Segments of running jobs sent to a worker and not heard of (sent, progress, finished)
        since `since_ms`: their work item was lost or ended in the dead-letter queue. Oldest first."""
        _check_limit(limit)
        rows = self._db.fetchall(
            f"SELECT {', '.join('s.' + c.strip() for c in _SEGMENT_COLUMNS.split(','))}, s.dispatched_at,"
            " s.dispatch_count FROM segments s JOIN jobs j ON j.id = s.job_id"
            " WHERE s.status = ? AND s.dispatched_at IS NOT NULL AND s.dispatched_at < ? AND s.updated_at < ?"
            " AND j.status = ? ORDER BY s.dispatched_at, s.job_id, s.segment_index LIMIT ?",
            (SEGMENT_PENDING, since_ms, since_ms, JobStatus.IN_PROGRESS, limit),
        )
        return [_segment(row) for row in rows]

    def requeue_segment(self, job_id: str, index: int, *, dispatched_at: int) -> bool:
        """Give a lost segment back to the dispatcher (keeping its dispatch_count), only if it is still
        the claim that was judged lost; True when it was given back."""
        return (
            self._db.execute(
                "UPDATE segments SET dispatched_at = NULL, updated_at = ?"
                " WHERE job_id = ? AND segment_index = ? AND status = ? AND dispatched_at = ?",
                (self._clock(), job_id, index, SEGMENT_PENDING, dispatched_at),
            )
            > 0
        )

    def finished_unmerged(self, *, updated_before_ms: int, limit: int = 100) -> list[str]:
        """Running jobs whose segments have all succeeded, untouched since `updated_before_ms`: the
        event that should have merged them was lost or failed."""
        _check_limit(limit)
        rows = self._db.fetchall(
            "SELECT id FROM jobs WHERE status = ? AND updated_at < ? AND segments_total > 0"
            " AND segments_done = segments_total ORDER BY updated_at, id LIMIT ?",
            (JobStatus.IN_PROGRESS, updated_before_ms, limit),
        )
        return [row["id"] for row in rows]

    def queued_before(self, *, created_before_ms: int, limit: int = 100) -> list[Job]:
        """QUEUED jobs created before `created_before_ms`, oldest first."""
        _check_limit(limit)
        rows = self._db.fetchall(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE status = ? AND created_at < ? ORDER BY created_at, id LIMIT ?",
            (JobStatus.QUEUED, created_before_ms, limit),
        )
        return [_job(row) for row in rows]

    def jobs_waiting_for_dispatch(self, limit: int = 50) -> list[tuple[str, str | None]]:
        """Running jobs (id, owner) with segments not yet sent, in the order they get freed capacity: round robin
        across owners (every owner's oldest waiting job, then every owner's second, ...), and within a
        round the owner with the fewest segments on workers first. One owner's flood of jobs then
        delays another owner's job by one round, not by the whole flood."""
        _check_limit(limit)
        # COALESCE: jobs of no owner (an unscoped stack) are one owner, and NULL would never join.
        rows = self._db.fetchall(
            "SELECT w.id AS id, w.owner AS owner FROM ("
            " SELECT j.id, j.owner, j.created_at, COALESCE(j.owner, '') AS who,"
            " ROW_NUMBER() OVER (PARTITION BY COALESCE(j.owner, '') ORDER BY j.created_at, j.id) AS turn"
            " FROM jobs j WHERE j.status = ? AND EXISTS (SELECT 1 FROM segments s"
            " WHERE s.job_id = j.id AND s.status = ? AND s.dispatched_at IS NULL)) w"
            " LEFT JOIN (SELECT COALESCE(f.owner, '') AS who, COUNT(*) AS n FROM segments s"
            " JOIN jobs f ON f.id = s.job_id WHERE s.status = ? AND s.dispatched_at IS NOT NULL"
            " AND f.status = ?"  # only running jobs hold slots (as in in_flight)
            " GROUP BY COALESCE(f.owner, '')) busy ON busy.who = w.who"
            " ORDER BY w.turn, COALESCE(busy.n, 0), w.created_at, w.id LIMIT ?",
            (JobStatus.IN_PROGRESS, SEGMENT_PENDING, SEGMENT_PENDING, JobStatus.IN_PROGRESS, limit),
        )
        return [(row["id"], row["owner"]) for row in rows]

    def complete_segment(self, job_id: str, index: int, *, frames_processed: int, frames_with_hands: int) -> bool:
        """Mark a pending segment SUCCEEDED with its final counts and update the job's totals, in one
        transaction. True only for the event that completed it; a redelivery changes nothing."""
        with self._db.transaction():
            self._lock_job(job_id)
            changed = self._db.execute(
                "UPDATE segments SET status = ?, frames_processed = ?, frames_with_hands = ?, updated_at = ?"
                " WHERE job_id = ? AND segment_index = ? AND status = ?",
                (SEGMENT_SUCCEEDED, frames_processed, frames_with_hands, self._clock(), job_id, index, SEGMENT_PENDING),
            )
            if changed:
                self._refresh_totals(job_id)
        return changed > 0

    def fail_segment(self, job_id: str, index: int, *, error: str) -> bool:
        """Mark a pending segment FAILED; True only for the event that failed it."""
        with self._db.transaction():
            self._lock_job(job_id)
            changed = self._db.execute(
                "UPDATE segments SET status = ?, error = ?, updated_at = ?"
                " WHERE job_id = ? AND segment_index = ? AND status = ?",
                (SEGMENT_FAILED, error, self._clock(), job_id, index, SEGMENT_PENDING),
            )
        return changed > 0

    def record_progress(self, job_id: str, index: int, frames_processed: int) -> bool:
        """Raise a pending segment's frame count (never lower it: progress events may arrive out of
        order) and the job's frames_done with it. True when something changed."""
        with self._db.transaction():
            self._lock_job(job_id)
            changed = self._db.execute(
                "UPDATE segments SET frames_processed = ?, updated_at = ?"
                " WHERE job_id = ? AND segment_index = ? AND status = ? AND frames_processed < ?",
                (frames_processed, self._clock(), job_id, index, SEGMENT_PENDING, frames_processed),
            )
            if changed:
                self._refresh_totals(job_id)
            else:
                # Still news that a worker is on it (a retry counting up again from 0): the sweeper
                # judges a segment by when it was last heard of.
                self._db.execute(
                    "UPDATE segments SET updated_at = ? WHERE job_id = ? AND segment_index = ? AND status = ?",
                    (self._clock(), job_id, index, SEGMENT_PENDING),
                )
        return changed > 0

    # -- announcements of job ends (service.notifications) ----------------------------------------

    def add_announcement(self, announcement: Announcement) -> bool:
        """Record a job's end; False when the job's end was already recorded (one per job, whoever asks).
        A failing statement is undone on its own, so this may run inside the transaction ending the job."""
        try:
            self._db.execute(
                "INSERT INTO job_announcements (event_id, job_id, body, created_at) VALUES (?, ?, ?, ?)",
                (announcement.event_id, announcement.job_id, announcement.body, announcement.created_at),
            )
        except IntegrityError:
            return False
        return True

    def claim_announcements(self, *, claimed_before_ms: int, limit: int = 50) -> list[Announcement]:
        """Claim up to `limit` unsent announcements (never claimed, or claimed before `claimed_before_ms`
        by a sender that then died), oldest first. Each claim is conditional: two senders never both get one."""
        _check_limit(limit)
        rows = self._db.fetchall(
            "SELECT event_id, job_id, body, created_at, claimed_at FROM job_announcements"
            " WHERE sent_at IS NULL AND (claimed_at IS NULL OR claimed_at < ?) ORDER BY created_at, event_id LIMIT ?",
            (claimed_before_ms, limit),
        )
        now = self._clock()
        claimed: list[Announcement] = []
        for row in rows:
            won = self._db.execute(
                "UPDATE job_announcements SET claimed_at = ? WHERE event_id = ? AND sent_at IS NULL"
                " AND (claimed_at IS NULL AND ? IS NULL OR claimed_at = ?)",
                (now, row["event_id"], row["claimed_at"], row["claimed_at"]),
            )
            if won:
                claimed.append(
                    Announcement(row["event_id"], row["job_id"], row["body"], row["created_at"], claimed_at=now)
                )
        return claimed

    def announcement_sent(self, event_id: str) -> None:
        self._db.execute(
            "UPDATE job_announcements SET sent_at = ? WHERE event_id = ? AND sent_at IS NULL", (self._clock(), event_id)
        )
