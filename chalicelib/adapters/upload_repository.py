"""The rows behind big uploads and upload-triggered intake (migration 6): a video's unfinished multipart
upload (videos.upload_id, videos.upload_part_bytes) and the object versions intake has registered."""

from __future__ import annotations

from collections.abc import Callable

from chalicelib.adapters.database import Database, IntegrityError, epoch_ms
from chalicelib.domain.uploads import IntakeRecord, MultipartState
from chalicelib.shared.states import VideoStatus


class UploadRepository:
    """A video's multipart upload: set when the video is registered, cleared when it completes or is aborted."""

    def __init__(self, db: Database, clock: Callable[[], int] = epoch_ms) -> None:
        self._db = db
        self._clock = clock

    def begin(self, video_id: str, upload_id: str, part_bytes: int) -> None:
        if len(upload_id) > 1024:
            raise ValueError(f"an upload id of {len(upload_id)} characters is longer than the column (1024)")
        self._db.execute(
            "UPDATE videos SET upload_id = ?, upload_part_bytes = ?, updated_at = ? WHERE id = ?",
            (upload_id, part_bytes, self._clock(), video_id),
        )

    def get(self, video_id: str) -> MultipartState | None:
        row = self._db.fetchone("SELECT upload_id, upload_part_bytes FROM videos WHERE id = ?", (video_id,))
        if row is None or row["upload_id"] is None:
            return None
        return MultipartState(upload_id=row["upload_id"], part_bytes=int(row["upload_part_bytes"]))

    def complete(self, video_id: str, upload_id: str, size_bytes: int) -> bool:
        """Clear the upload and mark the video UPLOADED with its real size, only if this upload is still
        the video's (a second complete finds it gone); True when it was."""
        return (
            self._db.execute(
                "UPDATE videos SET upload_id = NULL, upload_part_bytes = NULL, size_bytes = ?, status = ?,"
                " updated_at = ? WHERE id = ? AND upload_id = ? AND status = ?",
                (size_bytes, VideoStatus.UPLOADED, self._clock(), video_id, upload_id, VideoStatus.REGISTERED),
            )
            > 0
        )


class IntakeRepository:
    """One row per object version an upload notification registered; the primary key decides between
    two deliveries of the same notification."""

    def __init__(self, db: Database, clock: Callable[[], int] = epoch_ms) -> None:
        self._db = db
        self._clock = clock

    def get(self, object_ref: str) -> IntakeRecord | None:
        row = self._db.fetchone(
            "SELECT object_ref, s3_key, object_version, video_id, job_id, created_at FROM object_intake"
            " WHERE object_ref = ?",
            (object_ref,),
        )
        return None if row is None else IntakeRecord(**row)

    def add(self, record: IntakeRecord) -> bool:
        """Insert the record; False when this object version was recorded already (by a concurrent delivery)."""
        try:
            self._db.execute(
                "INSERT INTO object_intake (object_ref, s3_key, object_version, video_id, job_id, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    record.object_ref,
                    record.s3_key,
                    record.object_version,
                    record.video_id,
                    record.job_id,
                    record.created_at,
                ),
            )
        except IntegrityError:
            return False
        return True

    def registered_video(self, video_id: str) -> bool:
        """Whether intake (not a caller of POST /videos) registered this video."""
        row = self._db.fetchone("SELECT COUNT(*) AS n FROM object_intake WHERE video_id = ?", (video_id,))
        return bool(row and int(row["n"]))
