"""A small Python client for the handpipe REST API, local or deployed; the CLI is built on it and it
is meant for notebooks too. Standard library only: results are the API's JSON, typed (handpipe.api_types)."""

from __future__ import annotations

import datetime as dt
import gzip
import io
import itertools
import json
import mimetypes
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, cast

from .api_types import (
    FINAL_JOB_STATUSES,
    Deleted,
    Export,
    Frame,
    FramePage,
    Health,
    Job,
    JobPage,
    Result,
    Video,
    VideoPage,
    WebhookSecret,
)
from .transport import (
    ApiError,
    ApiSession,
    HandpipeConnectionError,
    HandpipeError,
    HandpipeTimeout,
    InvalidFile,
    Progress,
    RetryPolicy,
    StorageError,
    file_body,
)
from .uploads import UploadFailed, upload_file

__all__ = [
    "EXPORT_FORMATS",
    "FINAL_JOB_STATUSES",
    "ApiError",
    "Client",
    "HandpipeConnectionError",
    "HandpipeError",
    "HandpipeTimeout",
    "InvalidFile",
    "MissingDependency",
    "RetryPolicy",
    "StorageError",
    "verify_webhook",
]

EXPORT_FORMATS = ("csv", "jsonl", "parquet")


class MissingDependency(ImportError):
    """An optional package (pandas) that a client feature needs is not installed."""


def _optional(module: str, feature: str, install: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependency(f"{feature} needs {module}, which is not installed: pip install {install}") from None


def verify_webhook(body: bytes | str, header: str | None, secret: str) -> bool:
    """Whether a webhook event came from handpipe: `header` is its X-Handpipe-Signature, `body` the raw
    bytes received (not re-serialised JSON), `secret` the webhook secret."""
    from chalicelib.shared.signatures import verify_signature

    return verify_signature(body, header, secret)


def check_file(path: str | Path) -> Path:
    """The file to upload, or InvalidFile saying why it cannot be (before anything is registered)."""
    file = Path(path)
    if not file.is_file():
        raise InvalidFile(f"{file} does not exist" if not file.exists() else f"{file} is not a file")
    if file.stat().st_size == 0:
        raise InvalidFile(f"{file.name} is empty (0 bytes)")
    return file


def video_content_type(file: Path) -> str:
    content_type = mimetypes.guess_type(file.name)[0] or "video/mp4"
    return content_type if content_type.startswith("video/") else "video/" + file.suffix.lstrip(".").lower()


def _epoch_ms_or_iso(value: dt.datetime | int | float | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return str(int(value))


class Client(ApiSession):
    """One caller of one API: Client(api_url, api_key, timeout_s=30, retry=RetryPolicy(), sleep=time.sleep).
    `retry` bounds the retries of 429 and 503 answers (which honour Retry-After) and of failed
    connections; `sleep` is what waits between them and between polls."""

    upload_workers = 4  # parts of a multipart upload sent at once

    def health(self) -> Health:
        """The API's check of its database, bucket and queues: `status` "ok", or "degraded" (a 503)
        with each check's state. A probe: never retried, so a caller polling it learns at once."""
        try:
            return cast(Health, self._call("GET", "/health", None, {}, retries=False))
        except ApiError as error:
            if error.status == 503 and isinstance(error.body, dict) and "checks" in error.body:
                return cast(Health, error.body)
            raise

    # ----------------------------------------------------------------------------- videos

    def videos_page(self, status: str | None = None, limit: int = 20, next_token: str | None = None) -> VideoPage:
        page = self.request("GET", "/videos", status=status and status.upper(), limit=limit, next_token=next_token)
        return cast(VideoPage, page)

    def list_videos(self, status: str | None = None, limit: int = 20) -> Iterator[Video]:
        """Every video (of one status), newest first, fetched `limit` a page."""
        token = None
        while True:
            page = self.videos_page(status, limit, token)
            yield from page["videos"]
            token = page.get("next_token")
            if not token:
                return

    def register_video(
        self,
        path: str | Path | None = None,
        title: str | None = None,
        *,
        s3_key: str | None = None,
        content_type: str | None = None,
    ) -> Video:
        """Register a local file to upload (the answer's `upload` says how; see `upload`), or, with
        `s3_key`, an object already in the bucket under the caller's incoming/OWNER/ prefix."""
        if (path is None) == (s3_key is None):
            raise ValueError("register_video takes a file's path or an s3_key, not both or neither")
        body: dict[str, Any]
        if s3_key is not None:
            body = {"s3_key": s3_key}
            if title:
                body["title"] = title
            if content_type:
                body["content_type"] = content_type
        else:
            file = check_file(cast(str | Path, path))
            body = {
                "title": title or file.stem,
                "filename": file.name,
                "content_type": content_type or video_content_type(file),
                "size_bytes": file.stat().st_size,
            }
        return cast(Video, self.request("POST", "/videos", body))

    def upload(self, video: Video, path: str | Path, *, progress: Progress | None = None) -> None:
        """PUT the file to the video's presigned URL, streamed from disk; `progress(done, total)` hears
        how far it has got. A video over the stage's multipart threshold (`upload.method` "multipart") goes
        up in parallel parts, resuming from the parts S3 already holds (handpipe.uploads.upload_file)."""
        upload = video.get("upload")
        if upload is None:
            raise InvalidFile(f"video {video['id']} carries no upload instructions: ask for new ones (upload_again)")
        file = check_file(path)
        if upload["method"] == "multipart":
            try:
                upload_file(self, video, file, progress=progress, workers=self.upload_workers)
            except UploadFailed as error:
                raise StorageError(error.status or 400, str(error)) from None
            return
        declared = video.get("size_bytes")
        if declared is not None and file.stat().st_size != declared:
            raise InvalidFile(
                f"{file} has {file.stat().st_size} bytes but video {video['id']} was registered with {declared}: "
                "the upload URL is signed for that size"
            )
        headers = dict(upload.get("headers") or {})
        headers["Content-Length"] = str(file.stat().st_size)
        self.transport.send(
            "PUT",
            upload["url"],
            where="the bucket's upload URL",
            headers=headers,
            body=file_body(file, progress),
            timeout_s=self.transfer_timeout_s,
            storage=True,
        )

    def new_upload_url(self, video_id: str) -> Video:
        """The video with fresh `upload` instructions, for one whose file is not in the bucket (its
        first URL expired unused, or the file was lost)."""
        return cast(Video, self.request("POST", f"/videos/{video_id}/upload-url", {}))

    def upload_again(self, video_id: str, path: str | Path, *, progress: Progress | None = None) -> Video:
        """Upload the file of a registered video whose file is not in the bucket; returns the video."""
        check_file(path)
        video = self.new_upload_url(video_id)
        self.upload(video, path, progress=progress)
        return video

    def get_video(self, video_id: str) -> Video:
        return cast(Video, self.request("GET", f"/videos/{video_id}"))

    def delete_video(self, video_id: str) -> Deleted:
        return cast(Deleted, self.request("DELETE", f"/videos/{video_id}"))

    # ----------------------------------------------------------------------------- multipart uploads
    # (POST /videos answers `upload.method == "multipart"` above the stage's threshold; handpipe.uploads
    # drives these four to upload parts in parallel and resume.)

    def upload_parts_urls(self, video_id: str, part_numbers: list[int]) -> list[dict[str, Any]]:
        """Presigned PUT URLs for these parts: [{part_number, size_bytes, url}], each for its exact size."""
        answer = self.request("POST", f"/videos/{video_id}/upload/parts", {"part_numbers": list(part_numbers)})
        parts: list[dict[str, Any]] = answer["parts"]
        return parts

    def upload_state(self, video_id: str) -> dict[str, Any]:
        """The multipart upload S3 holds: upload_id, size_bytes, part_size_bytes, part_count, and
        uploaded_parts [{part_number, etag, size_bytes}] (to resume an interrupted upload)."""
        result: dict[str, Any] = self.request("GET", f"/videos/{video_id}/upload")
        return result

    def complete_upload(self, video_id: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
        """Complete the multipart upload from [{part_number, etag}] (every part); returns the video, UPLOADED."""
        result: dict[str, Any] = self.request("POST", f"/videos/{video_id}/upload/complete", {"parts": parts})
        return result

    def abort_upload(self, video_id: str) -> dict[str, Any]:
        """Abort the multipart upload; the video is deleted with it (register the file again to start over)."""
        result: dict[str, Any] = self.request("DELETE", f"/videos/{video_id}/upload")
        return result

    # ----------------------------------------------------------------------------- jobs

    def create_job(
        self,
        video_id: str,
        options: Mapping[str, Any] | None = None,
        client_token: str | None = None,
        tag: str | None = None,
        webhook_url: str | None = None,
    ) -> Job:
        """Start processing a video; `webhook_url` is POSTed the job's end (signed, see verify_webhook)."""
        body: dict[str, Any] = {"options": dict(options or {})}
        if client_token:
            body["client_token"] = client_token
        if tag:
            body["tag"] = tag
        if webhook_url:
            body["notify"] = {"webhook_url": webhook_url}
        return cast(Job, self.request("POST", f"/videos/{video_id}/jobs", body))

    def submit(
        self,
        path: str | Path,
        options: Mapping[str, Any] | None = None,
        title: str | None = None,
        *,
        tag: str | None = None,
        progress: Progress | None = None,
    ) -> Job:
        """Register, upload and trigger in one call; returns the job."""
        video = self.register_video(path, title)
        self.upload(video, path, progress=progress)
        return self.create_job(video["id"], options, tag=tag)

    def get_job(self, job_id: str) -> Job:
        return cast(Job, self.request("GET", f"/jobs/{job_id}"))

    def cancel_job(self, job_id: str) -> Job:
        """Stop a job: no further segment starts, running ones stop at their next progress check, and
        the job ends CANCELLED. A job that has already ended is an ApiError 409 naming its status."""
        return cast(Job, self.request("POST", f"/jobs/{job_id}/cancel"))

    def webhook_secret(self) -> WebhookSecret:
        """The secret that signs the caller's webhook events (verify_webhook checks them with it)."""
        return cast(WebhookSecret, self.request("GET", "/webhook-secret"))

    def rotate_webhook_secret(self) -> WebhookSecret:
        """A new secret, used for every event announced from now on; returns it."""
        return cast(WebhookSecret, self.request("POST", "/webhook-secret/rotate"))

    def video_jobs_page(self, video_id: str, limit: int = 20, next_token: str | None = None) -> JobPage:
        return cast(JobPage, self.request("GET", f"/videos/{video_id}/jobs", limit=limit, next_token=next_token))

    def list_video_jobs(self, video_id: str, limit: int = 20) -> Iterator[Job]:
        """One video's jobs, newest first, `limit` a page."""
        token = None
        while True:
            page = self.video_jobs_page(video_id, limit, token)
            yield from page["jobs"]
            token = page.get("next_token")
            if not token:
                return

    def jobs_page(
        self,
        *,
        status: str | None = None,
        tag: str | None = None,
        video_id: str | None = None,
        created_after: dt.datetime | int | float | str | None = None,
        limit: int = 50,
        next_token: str | None = None,
    ) -> JobPage:
        """One page of GET /jobs: the caller's jobs across videos, newest first."""
        page = self.request(
            "GET",
            "/jobs",
            status=status and status.upper(),
            tag=tag,
            video_id=video_id,
            created_after=_epoch_ms_or_iso(created_after),
            limit=limit,
            next_token=next_token,
        )
        return cast(JobPage, page)

    def list_jobs(
        self,
        *,
        status: str | None = None,
        tag: str | None = None,
        video_id: str | None = None,
        created_after: dt.datetime | int | float | str | None = None,
        limit: int | None = None,
        page_size: int = 50,
    ) -> Iterator[Job]:
        """The caller's jobs, newest first, filtered by status (any case), tag, video and creation time
        (a datetime, epoch milliseconds or ISO-8601 text); at most `limit` of them (None: all)."""

        def pages() -> Iterator[Job]:
            token = None
            size = min(page_size, limit) if limit else page_size
            while True:
                page = self.jobs_page(
                    status=status, tag=tag, video_id=video_id, created_after=created_after, limit=size, next_token=token
                )
                yield from page["jobs"]
                token = page.get("next_token")
                if not token:
                    return

        return itertools.islice(pages(), limit) if limit is not None else pages()

    def wait_for_job(
        self,
        job_id: str,
        on_progress: Callable[[Job], None] | None = None,
        timeout_s: float = 3600,
        poll_s: float = 1.0,
    ) -> Job:
        """Poll the job until it has SUCCEEDED, FAILED or been CANCELLED; returns its last state.
        HandpipeTimeout when `timeout_s` passes first (the job goes on)."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.get_job(job_id)
            if on_progress is not None:
                on_progress(job)
            if job["status"] in FINAL_JOB_STATUSES:
                return job
            if time.monotonic() + poll_s > deadline:
                raise HandpipeTimeout(f"job {job_id} is still {job['status']} after {timeout_s:g} s")
            self.transport.sleep(poll_s)

    wait = wait_for_job  # the name the first releases had

    def result(self, job_id: str) -> Result:
        return cast(Result, self.request("GET", f"/jobs/{job_id}/result"))

    def download_pictures(self, job_id: str, folder: Path, wait_s: float = 0) -> list[Path]:
        """Save the pictures a worker drew for the job (drawn just after it succeeded, so this waits
        up to `wait_s` for them; the contact sheet is drawn last); returns the files written."""
        deadline = time.monotonic() + wait_s
        pictures = self.result(job_id)["pictures"]
        while not pictures["contact_sheet"] and time.monotonic() < deadline:
            self.transport.sleep(1)
            pictures = self.result(job_id)["pictures"]
        saved = []
        for name, url in pictures.items():
            if url:
                suffix = ".mp4" if name == "annotated_video" else ".png"
                saved.append(self._download(url, Path(folder) / f"{job_id}-{name}{suffix}"))
        return saved

    def download_result(self, job_id: str, wait_s: float = 300) -> dict[str, Any]:
        """The full result document (docs/results-format.md). A worker merges it just after the job
        succeeds (`artifacts.result` in /result says when it is there): this waits up to `wait_s` for it."""
        deadline = time.monotonic() + wait_s
        url = self.result(job_id)["result"]["url"]
        while url is None:
            if time.monotonic() >= deadline:
                raise HandpipeTimeout(f"the result of job {job_id} is still being written after {wait_s:.0f} s")
            time.sleep(1)
            url = self.result(job_id)["result"]["url"]
        data = self._fetch(url)
        document: dict[str, Any] = json.loads(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)
        return document

    def frames_page(
        self,
        job_id: str,
        start_ms: int | None = None,
        end_ms: int | None = None,
        max_results: int = 100,
        next_token: str | None = None,
    ) -> FramePage:
        page = self.request(
            "GET",
            f"/jobs/{job_id}/frames",
            start_ms=start_ms,
            end_ms=end_ms,
            max_results=max_results,
            next_token=next_token,
        )
        return cast(FramePage, page)

    def frames(
        self, job_id: str, start_ms: int | None = None, end_ms: int | None = None, page_size: int = 500
    ) -> Iterator[Frame]:
        """The job's frames in [start_ms, end_ms), in time order, fetched `page_size` a page."""
        token = None
        while True:
            page = self.frames_page(job_id, start_ms, end_ms, page_size, token)
            yield from page["frames"]
            token = page.get("next_token")
            if not token:
                return

    # ----------------------------------------------------------------------------- exports and insights

    def export(self, job_id: str, format: str = "csv", wait_s: float = 600, poll_s: float = 5) -> Export:
        """The job's landmarks as one row per hand per frame, made once on the API's side: `format`
        csv, jsonl or parquet; returns {format, columns, rows, key, url (a presigned download of the gzip
        file, or of the Parquet file), expires_in_s}. A large job's export is written by a worker just
        after the job succeeds; until it is there the API answers export_pending, and this waits up to
        `wait_s` for it."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return cast(Export, self.request("GET", f"/jobs/{job_id}/export", format=format))
            except ApiError as error:
                if error.code != "export_pending" or time.monotonic() + poll_s > deadline:
                    raise
            self.transport.sleep(poll_s)

    def download_export(self, job_id: str, path: str | Path, format: str = "csv") -> Export:
        """Save the export to `path`: csv or jsonl (gzip-compressed when `path` ends in .gz), or parquet
        as the API wrote it (compressed inside). Returns the export's description (format, columns, rows)
        with `path`."""
        out = Path(path)
        fmt = format.lower()
        if fmt not in EXPORT_FORMATS:
            raise ValueError(f"format must be one of {', '.join(EXPORT_FORMATS)}, got {format!r}")
        info = self.export(job_id, fmt)
        if fmt == "parquet" or out.name.endswith(".gz"):
            self._download(info["url"], out)
        else:  # gunzipped on the way to disk, a block at a time
            packed = self._download(info["url"], out.with_name(out.name + ".gz.part"))
            try:
                with gzip.open(packed, "rb") as source, out.open("wb") as target:
                    shutil.copyfileobj(source, target, 1 << 20)
            finally:
                packed.unlink(missing_ok=True)
        return {**info, "path": str(out)}

    def insights(self, job_id: str, wait_s: float = 300) -> dict[str, Any]:
        """Gesture ranges, per-frame gestures, hand tracks and motion of a finished job (chalicelib.shared.insights).
        They come from the merged result, which a worker writes just after the job succeeds; until it is
        there the API answers being_written, and this waits up to `wait_s` for it."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                result: dict[str, Any] = self.request("GET", f"/jobs/{job_id}/insights")
                return result
            except ApiError as error:
                if error.code != "being_written" or time.monotonic() + 1 > deadline:
                    raise
            time.sleep(1)

    def dataframe(self, job_id: str) -> Any:
        """The CSV export as a pandas DataFrame, one row per hand per frame (needs pandas: pip install pandas)."""
        pandas = _optional("pandas", "Client.dataframe", "pandas")
        data = self._fetch(self.export(job_id, "csv")["url"])
        text = {"job_id": str, "video_id": str, "handedness": str, "gesture": str}
        return pandas.read_csv(io.BytesIO(data), compression="gzip", dtype=text)
