"""Exports, insights and the viewer page for a finished job, as functions that take their repositories
and store as parameters (like the other services); each derived object is written next to the result once."""

from __future__ import annotations

import functools
import html
import json
import logging
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from chalicelib.config import Settings
from chalicelib.domain.ports import JobRepository, VideoRepository
from chalicelib.domain.records import Job
from chalicelib.service import jobs as job_service
from chalicelib.service.common import check_id, gone
from chalicelib.service.errors import BeingWritten, InvalidInput
from chalicelib.service.jobs import PartCache
from chalicelib.service.videos import get_video
from chalicelib.shared import exports
from chalicelib.shared.artifacts import write_artifacts
from chalicelib.shared.contracts import insights_key, picture_key, results_prefix
from chalicelib.shared.insights import analyze
from chalicelib.shared.storage import ObjectMissing, ObjectStore

logger = logging.getLogger("handpipe.insights")

VIEWER_PATH = Path(__file__).resolve().parent.parent / "web" / "viewer.html"  # the page is web/; its filling is here


class ExportPending(BeingWritten):
    code = "export_pending"


def finished_job(jobs: JobRepository, job_id: str, what: str, owner: str | None = None) -> Job:
    """The job, which must have SUCCEEDED (NotFound, or Conflict naming `what` is not ready yet)."""
    return job_service.finished_job(jobs, job_id, f"its {what} is ready", owner)[0]


def _merged_result(store: ObjectStore, results: PartCache, job: Job, what: str, pending: bool) -> dict[str, Any]:
    """The job's merged result, which a worker writes just after the job SUCCEEDED: BeingWritten
    (409 being_written, Retry-After) while it is `pending`; once written, its absence is ObjectMissing (410)."""
    assert job.result_key is not None
    if pending and store.head(job.result_key) is None:
        raise BeingWritten(
            f"job {job.id} has SUCCEEDED and a worker is writing its merged result, from which its {what} "
            "comes; try again in a few seconds (its summary and frames are ready: /jobs/{id}/result and /frames)"
        )
    return results.get(store, job.result_key)


def insights_for(store: ObjectStore, results: PartCache, job: Job, pending: bool = False) -> dict[str, Any]:
    """The insights document of a finished job: read from S3, or computed from the merged result
    (chalicelib.shared.insights.analyze) and stored at results/{video_id}/{job_id}/insights.json. `pending`:
    the job's artifacts are being written (BeingWritten while its merged result is not there yet)."""
    key = insights_key(job.video_id, job.id)
    try:
        cached: dict[str, Any] = json.loads(store.get_bytes(key))
        return cached
    except ObjectMissing:
        pass
    merged = _merged_result(store, results, job, "insights document", pending)
    document = analyze(merged)
    write_artifacts(store, video_id=job.video_id, job_id=job.id, result=merged, insights=document, formats=())
    logger.info("insights of job %s computed and stored at %s", job.id, key)
    return document


def job_insights(
    jobs: JobRepository, store: ObjectStore, results: PartCache, job_id: str, owner: str | None = None
) -> dict[str, Any]:
    """GET /jobs/{id}/insights: gesture ranges, per-frame gestures, hand tracks and motion."""
    job = finished_job(jobs, job_id, "insights", owner)
    return insights_for(store, results, job, jobs.artifacts_pending(job.id))


def parse_format(raw: str | None) -> str:
    fmt = "csv" if raw is None else raw  # as the document's enum says: exactly, no "" or "CSV"
    if fmt not in exports.FORMATS:
        raise InvalidInput(f"format must be one of {', '.join(exports.FORMATS)} (got {fmt[:40]!r})")
    return fmt


def job_export(
    jobs: JobRepository,
    store: ObjectStore,
    results: PartCache,
    settings: Settings,
    job_id: str,
    fmt: str | None,
    owner: str | None = None,
) -> dict[str, Any]:
    """GET /jobs/{id}/export: one row per hand per frame (chalicelib.shared.exports.COLUMNS) as gzip CSV, gzip
    JSON Lines or Parquet, written once to results/{video_id}/{job_id}/export.csv.gz (.jsonl.gz, .parquet),
    and a download URL for it (an API Gateway response may not exceed 10 MB, so the rows never travel in
    the response)."""
    fmt = parse_format(fmt)
    job = finished_job(jobs, job_id, "export", owner)
    prefix = results_prefix(job.video_id, job.id)
    key = exports.export_key(prefix, fmt)
    count = (job.summary or {}).get("hands_seen")
    if store.head(key) is None or count is None:
        if count is not None and count > settings.export_inline_max_rows:
            # Too many rows to write within API Gateway's 29 s: the worker writes them after the job.
            raise ExportPending(
                f"the {fmt} export of job {job.id} ({count} rows) is being written by a worker, which does that "
                "just after a large job succeeds; try again in a minute"
            )
        pending = jobs.artifacts_pending(job.id)
        if pending and store.head(job.result_key or "") is None:
            raise ExportPending(
                f"the {fmt} export of job {job.id} is being written by a worker, which does that just after a job "
                "succeeds; try again in a few seconds"
            )
        result = _merged_result(store, results, job, f"{fmt} export", pending)
        insights = insights_for(store, results, job, pending)
        written = write_artifacts(
            store,
            video_id=job.video_id,
            job_id=job.id,
            result=result,
            insights=insights,
            formats=[fmt],
            with_insights=False,
        )
        key, count = written.exports[fmt]
        logger.info("export of job %s: %d rows at %s", job.id, count, key)
    return {
        "job_id": job.id,
        "format": fmt,
        "columns": exports.COLUMNS,
        "rows": count,
        "key": key,
        "url": store.presign_download(key, settings.download_url_expires_s, f"{job.id}{exports.SUFFIXES[fmt]}"),
        "expires_in_s": settings.download_url_expires_s,
    }


# ------------------------------------------------------------------------------------ the viewer


def _script_json(value: Any) -> str:
    """JSON that is safe inside a <script> element: no "</script>", "<!--" or "&" can appear in it."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


@functools.cache
def _viewer_template() -> str:
    """chalicelib/web/viewer.html, read once per container."""
    return VIEWER_PATH.read_text(encoding="utf-8")


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def viewer_config(
    jobs: JobRepository,
    videos: VideoRepository,
    store: ObjectStore,
    settings: Settings,
    job_id: str,
    owner: str | None = None,
) -> dict[str, Any]:
    """GET /jobs/{id}/viewer/config: what the viewer page needs to play a finished job: its ids, title,
    video metadata, options and summary, a presigned URL of the video and, once the worker has drawn it,
    of the annotated video (H.264, which every browser plays, whatever the source's codec)."""
    job = finished_job(jobs, job_id, "viewer", owner)
    video = get_video(videos, job.video_id, owner)
    if store.head(video.s3_key) is None:  # the page could only show a broken player
        raise gone(ObjectMissing(f"s3://{store.bucket}/{video.s3_key} does not exist"))
    annotated = picture_key(job.video_id, job.id, "annotated_video")
    return {
        "job_id": job.id,
        "video_id": video.id,
        "title": video.title,
        "video_url": store.presign_download(video.s3_key, settings.download_url_expires_s),
        "annotated_video_url": (
            store.presign_download(annotated, settings.download_url_expires_s) if store.head(annotated) else None
        ),
        "expires_in_s": settings.download_url_expires_s,
        "video": job.video_metadata,
        "options": job.options,
        "summary": {k: v for k, v in (job.summary or {}).items() if k not in ("stats", "decode")},
    }


def viewer_page(store: ObjectStore, job_id: str) -> tuple[str, dict[str, str]]:
    """GET /jobs/{id}/viewer: the self-contained page (chalicelib/web/viewer.html) with only the job id and a
    nonce filled in, so anyone may load it (a browser cannot send a header when it opens a link); the
    page asks the API for everything else with the caller's key. Also the headers to send it with: a
    Content Security Policy that lets it load nothing but its own inline code, the API and the video."""
    check_id(job_id, "job", "job")
    nonce = secrets.token_urlsafe(16)
    page = (
        _viewer_template()
        .replace("__HANDPIPE_TITLE__", html.escape(job_id))
        .replace("__HANDPIPE_NONCE__", nonce)
        .replace("__HANDPIPE_CONFIG__", _script_json({"job_id": job_id}))
    )
    video_origin = _origin(store.presign_download("videos/origin-probe", 60))
    policy = "; ".join(
        [
            "default-src 'none'",
            f"script-src 'nonce-{nonce}'",
            f"style-src 'nonce-{nonce}'",
            "connect-src 'self'",
            # Only the stage's bucket: its presigned URLs name the regional host, so S3 never redirects.
            f"media-src {video_origin}",
            "img-src data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    headers = {
        "Content-Type": "text/html; charset=utf-8",
        "Content-Security-Policy": policy,
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    }
    return page, headers
