"""How a cancelled job tells its running segments to stop: a small marker object next to its results,
written by the API when it cancels the job and looked for by the worker (which never touches the
database) at its progress checks. Works the same in AWS and in the local stack's moto."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from chalicelib.shared.contracts import results_prefix
from chalicelib.shared.storage import ObjectStore, StorageUnavailable

logger = logging.getLogger("handpipe.cancellation")


def cancel_marker_key(video_id: str, job_id: str) -> str:
    """Where the marker of a cancelled job is: under results/, which the worker may read and which the
    video's deletion removes with everything else of the job."""
    return f"{results_prefix(video_id, job_id)}cancelled"


def mark_cancelled(store: ObjectStore, video_id: str, job_id: str) -> None:
    store.put_bytes(cancel_marker_key(video_id, job_id), b"cancelled\n", "text/plain")


def unmark_cancelled(store: ObjectStore, video_id: str, job_id: str) -> None:
    """Take back a marker written for a cancel that then lost its race with the job's end."""
    store.delete_key(cancel_marker_key(video_id, job_id))


class CancelCheck:
    """Answers "has this job been cancelled?" with at most one HEAD request per `interval_s` (the
    worker asks at every frame); once it has seen the marker it says so without asking again."""

    def __init__(
        self,
        store: ObjectStore,
        video_id: str,
        job_id: str,
        *,
        interval_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._key = cancel_marker_key(video_id, job_id)
        self._interval_s = interval_s
        self._clock = clock
        self._checked_at: float | None = None
        self.cancelled = False
        self.checks = 0  # HEAD requests made

    def __call__(self) -> bool:
        if self.cancelled:
            return True
        now = self._clock()
        if self._checked_at is not None and now - self._checked_at < self._interval_s:
            return False
        self._checked_at = now
        self.checks += 1
        try:
            self.cancelled = self._store.head(self._key) is not None
        except StorageUnavailable as error:  # asked again at the next check; the segment goes on meanwhile
            logger.warning("could not look for the cancel marker %s: %s", self._key, error)
        return self.cancelled
