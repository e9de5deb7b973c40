"""Exports, insights and the viewer page for a finished job, as functions that take their repositories
and store as parameters (like services.py); each derived object is written next to the result once."""

from __future__ import annotations

import functools
import html
import json
import logging
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import exports
from .config import Settings
from .contracts import results_prefix
from .db import Job, JobRepository, VideoRepository
from .errors import Conflict, InvalidInput
from .insights import analyze
from .services import PartCache, get_job, get_video
from .storage import ObjectMissing, ObjectStore

logger = logging.getLogger("handpipe.insights")

VIEWER_PATH = Path(__file__).resolve().with_name("viewer.html")
CLIENT_ONLY_FORMATS = ("parquet",)


def insights_key(job: Job) -> str:
    return f"{results_prefix(job.video_id, job.id)}insights.json"


def finished_job(jobs: JobRepository, job_id: str, what: str, owner: str | None = None) -> Job:
    """The job, which must have SUCCEEDED (NotFound, or Conflict naming `what` is not ready yet)."""
    job = get_job(jobs, job_id, owner)
    if job.status != "SUCCEEDED" or job.result_key is None:
        raise Conflict(f"job {job.id} is {job.status}; its {what} is ready when it has SUCCEEDED")
    return job


def _merged_result(store: ObjectStore, results: PartCache, job: Job) -> dict[str, Any]:
    assert job.result_key is not None
    return results.get(store, job.result_key)


def insights_for(store: ObjectStore, results: PartCache, job: Job) -> dict[str, Any]:
    """The insights document of a finished job: read from S3, or computed from the merged result
    (chalicelib.insights.analyze) and stored at results/{video_id}/{job_id}/insights.json."""
    key = insights_key(job)
    try:
        cached: dict[str, Any] = json.loads(store.get_bytes(key))
        return cached
    except ObjectMissing:
        pass
    document = analyze(_merged_result(store, results, job))
    store.put_bytes(key, json.dumps(document, separators=(",", ":")).encode(), "application/json")
    logger.info("insights of job %s computed and stored at %s", job.id, key)
    return document


def job_insights(
    jobs: JobRepository, store: ObjectStore, results: PartCache, job_id: str, owner: str | None = None
) -> dict[str, Any]:
    """GET /jobs/{id}/insights: gesture ranges, per-frame gestures, hand tracks and motion."""
    return insights_for(store, results, finished_job(jobs, job_id, "insights", owner))


def parse_format(raw: str | None) -> str:
    fmt = (raw or "csv").strip().lower()
    if fmt in CLIENT_ONLY_FORMATS:
        raise InvalidInput(
            f"format={fmt} is made by the client, not the API: `handpipe export JOB --format {fmt}` or "
            f"handpipe.client.Client.download_export(job_id, path, format='{fmt}') converts the CSV export "
            "(pip install pandas pyarrow)"
        )
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
    """GET /jobs/{id}/export: one row per hand per frame (chalicelib.exports.COLUMNS) as gzip CSV or
    JSON Lines, written once to results/{video_id}/{job_id}/export.{fmt}.gz, and a download URL for it
    (an API Gateway response may not exceed 10 MB, so the rows never travel in the response)."""
    fmt = parse_format(fmt)
    job = finished_job(jobs, job_id, "export", owner)
    key = exports.export_key(results_prefix(job.video_id, job.id), fmt)
    count = (job.summary or {}).get("hands_seen")
    if store.head(key) is None or count is None:
        result = _merged_result(store, results, job)
        records = exports.rows(result, insights_for(store, results, job), job_id=job.id, video_id=job.video_id)
        data, count = exports.WRITERS[fmt](records)
        store.put_bytes(key, data, exports.CONTENT_TYPE)
        logger.info("export of job %s: %d rows, %d bytes at %s", job.id, count, len(data), key)
    return {
        "job_id": job.id,
        "format": fmt,
        "columns": exports.COLUMNS,
        "rows": count,
        "key": key,
        "url": store.presign_download(key, settings.download_url_expires_s, f"{job.id}.{fmt}.gz"),
        "expires_in_s": settings.download_url_expires_s,
    }


# ------------------------------------------------------------------------------------ the viewer


def _script_json(value: Any) -> str:
    """JSON that is safe inside a <script> element: no "</script>", "<!--" or "&" can appear in it."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


@functools.cache
def _viewer_template() -> str:
    """chalicelib/viewer.html, read once per container."""
    return VIEWER_PATH.read_text(encoding="utf-8")


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def viewer_page(
    jobs: JobRepository,
    videos: VideoRepository,
    store: ObjectStore,
    settings: Settings,
    job_id: str,
    owner: str | None = None,
) -> tuple[str, dict[str, str]]:
    """GET /jobs/{id}/viewer: the self-contained page (chalicelib/viewer.html) with the job's ids, video
    metadata and a presigned URL of the video filled in, and the headers to send it with (a Content
    Security Policy that lets it load nothing but its own inline code, the API and the video)."""
    job = finished_job(jobs, job_id, "viewer", owner)
    video = get_video(videos, job.video_id, owner)
    video_url = store.presign_download(video.s3_key, settings.download_url_expires_s)
    config = {
        "job_id": job.id,
        "video_id": video.id,
        "title": video.title,
        "video_url": video_url,
        "expires_in_s": settings.download_url_expires_s,
        "video": job.video_metadata,
        "options": job.options,
        "summary": {k: v for k, v in (job.summary or {}).items() if k not in ("stats", "decode")},
    }
    nonce = secrets.token_urlsafe(16)
    page = (
        _viewer_template()
        .replace("__HANDPIPE_TITLE__", html.escape(f"{video.title} · {job.id}"))
        .replace("__HANDPIPE_NONCE__", nonce)
        .replace("__HANDPIPE_CONFIG__", _script_json(config))
    )
    policy = "; ".join(
        [
            "default-src 'none'",
            f"script-src 'nonce-{nonce}'",
            f"style-src 'nonce-{nonce}'",
            "connect-src 'self'",
            f"media-src {_origin(video_url)} https://*.amazonaws.com",
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
