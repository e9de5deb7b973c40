"""The job_artifacts table (migration 7): when a SUCCEEDED job's artifacts (merged result, insights,
exports, pictures) were asked for and written, so the sweeper can ask again for those a crash lost."""

from __future__ import annotations

from collections.abc import Callable

from chalicelib.adapters.database import Database
from chalicelib.shared.states import JobStatus


class ArtifactRows:
    """JobRepository's artifact methods (a mixin: the repository's `_db` and `_clock`)."""

    _db: Database
    _clock: Callable[[], int]

    def artifacts_requested(self, job_id: str) -> int:
        """Count one more request for the job's artifacts, now; how many there have been."""
        now = self._clock()
        with self._db.transaction():
            updated = self._db.execute(
                "UPDATE job_artifacts SET requests = requests + 1, requested_at = ? WHERE job_id = ?", (now, job_id)
            )
            if not updated:
                self._db.execute(
                    "INSERT INTO job_artifacts (job_id, requests, requested_at, written_at) VALUES (?, 1, ?, NULL)",
                    (job_id, now),
                )
            row = self._db.fetchone("SELECT requests FROM job_artifacts WHERE job_id = ?", (job_id,))
        return int(row["requests"]) if row else 0

    def artifacts_written(self, job_id: str) -> bool:
        """Record that the render step stored all of the job's artifacts; False when already recorded
        (or never asked for: a job finished before artifacts were written after SUCCEEDED)."""
        return (
            self._db.execute(
                "UPDATE job_artifacts SET written_at = ? WHERE job_id = ? AND written_at IS NULL",
                (self._clock(), job_id),
            )
            > 0
        )

    def artifacts_pending(self, job_id: str) -> bool:
        """True while the job's artifacts are asked for and not yet written (False for a job that
        never had a row: it finished before artifacts were written after SUCCEEDED)."""
        row = self._db.fetchone("SELECT written_at FROM job_artifacts WHERE job_id = ?", (job_id,))
        return row is not None and row["written_at"] is None

    def artifacts_unwritten(self, *, requested_before_ms: int, max_requests: int, limit: int = 100) -> list[str]:
        """SUCCEEDED jobs whose artifacts were last asked for before `requested_before_ms`, asked for
        fewer than `max_requests` times, and not written: the request or its worker was lost."""
        rows = self._db.fetchall(
            "SELECT a.job_id FROM job_artifacts a JOIN jobs j ON j.id = a.job_id"
            " WHERE a.written_at IS NULL AND a.requested_at < ? AND a.requests < ? AND j.status = ?"
            " ORDER BY a.requested_at, a.job_id LIMIT ?",
            (requested_before_ms, max_requests, JobStatus.SUCCEEDED, limit),
        )
        return [row["job_id"] for row in rows]
