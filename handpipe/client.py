"""A small Python client for the handpipe REST API, local or deployed; the CLI is built on it and it
is meant for notebooks too."""

from __future__ import annotations

import gzip
import io
import json
import mimetypes
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

EXPORT_FORMATS = ("csv", "jsonl", "parquet")


class MissingDependency(ImportError):
    """An optional package (pandas) that a client feature needs is not installed."""


def _optional(module: str, feature: str, install: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependency(f"{feature} needs {module}, which is not installed: pip install {install}") from None


class ApiError(Exception):
    """The API answered with an error; `status` is the HTTP status, `code` the error's code (e.g.
    "not_found"; None when the answer carried none), the text is its message."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.code = code


class Client:
    def __init__(self, api_url: str, api_key: str | None = None, timeout_s: float = 30.0) -> None:
        self.api_url = api_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s

    # ----------------------------------------------------------------------------- transport

    def request(self, method: str, path: str, body: dict[str, Any] | None = None, **params: Any) -> Any:
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        url = f"{self.api_url}{path}" + (f"?{query}" if query else "")
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["x-api-key"] = self.api_key
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            raw = error.read()
            code = None
            try:
                answer = json.loads(raw)
                message, code = answer.get("message") or raw.decode(errors="replace"), answer.get("code")
            except (ValueError, AttributeError):
                message = raw.decode(errors="replace")[:500]
            raise ApiError(error.code, message, code) from None
        except urllib.error.URLError as error:
            raise ConnectionError(
                f"cannot reach the handpipe API at {self.api_url} ({error.reason}); "
                "start a local stack with `handpipe up` or pass --api-url"
            ) from None

    # ----------------------------------------------------------------------------- videos

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/health")
        return result

    def list_videos(self, status: str | None = None, limit: int = 20) -> Iterator[dict[str, Any]]:
        token = None
        while True:
            page = self.request("GET", "/videos", status=status, limit=limit, next_token=token)
            yield from page["videos"]
            token = page.get("next_token")
            if not token:
                return

    def register_video(self, path: str | Path, title: str | None = None) -> dict[str, Any]:
        file = Path(path)
        content_type = mimetypes.guess_type(file.name)[0] or "video/mp4"
        if not content_type.startswith("video/"):
            content_type = "video/" + file.suffix.lstrip(".").lower()
        body = {
            "title": title or file.stem,
            "filename": file.name,
            "content_type": content_type,
            "size_bytes": file.stat().st_size,
        }
        result: dict[str, Any] = self.request("POST", "/videos", body)
        return result

    def upload(self, video: dict[str, Any], path: str | Path) -> None:
        """Upload the file as POST /videos said: one streamed PUT, or a multipart upload in parallel
        parts (handpipe.uploads.upload_file, which also reports progress and resumes)."""
        from handpipe.uploads import UploadFailed, upload_file

        try:
            upload_file(self, video, path)
        except UploadFailed as error:
            raise ApiError(error.status or 400, f"upload refused: {error}") from None

    def new_upload_url(self, video_id: str) -> dict[str, Any]:
        """The video with fresh `upload` instructions, for one whose file is not in the bucket (its
        first URL expired unused, or the file was lost)."""
        result: dict[str, Any] = self.request("POST", f"/videos/{video_id}/upload-url")
        return result

    def upload_again(self, video_id: str, path: str | Path) -> dict[str, Any]:
        """Upload the file of a registered video whose file is not in the bucket; returns the video."""
        video = self.new_upload_url(video_id)
        self.upload(video, path)
        return video

    def get_video(self, video_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"/videos/{video_id}")
        return result

    def delete_video(self, video_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("DELETE", f"/videos/{video_id}")
        return result

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
        options: dict[str, Any] | None = None,
        client_token: str | None = None,
        tag: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"options": options or {}}
        if client_token:
            body["client_token"] = client_token
        if tag:
            body["tag"] = tag
        result: dict[str, Any] = self.request("POST", f"/videos/{video_id}/jobs", body)
        return result

    def submit(
        self, path: str | Path, options: dict[str, Any] | None = None, title: str | None = None
    ) -> dict[str, Any]:
        """Register, upload and trigger in one call; returns the job."""
        video = self.register_video(path, title)
        self.upload(video, path)
        return self.create_job(video["id"], options)

    def get_job(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"/jobs/{job_id}")
        return result

    def wait(
        self,
        job_id: str,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        timeout_s: float = 3600,
        poll_s: float = 1.0,
    ) -> dict[str, Any]:
        """Poll the job until it has SUCCEEDED or FAILED; returns its last state."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.get_job(job_id)
            if on_progress is not None:
                on_progress(job)
            if job["status"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job['status']} after {timeout_s:.0f} s")
            time.sleep(poll_s)

    def result(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"/jobs/{job_id}/result")
        return result

    def download_pictures(self, job_id: str, folder: Path, wait_s: float = 0) -> list[Path]:
        """Save the pictures a worker drew for the job (drawn just after it succeeded, so this waits
        up to `wait_s` for them; the contact sheet is drawn last); returns the files written."""
        deadline = time.monotonic() + wait_s
        pictures = self.result(job_id)["pictures"]
        while not pictures["contact_sheet"] and time.monotonic() < deadline:
            time.sleep(1)
            pictures = self.result(job_id)["pictures"]
        folder.mkdir(parents=True, exist_ok=True)
        saved = []
        for name, url in pictures.items():
            if url:
                suffix = ".mp4" if name == "annotated_video" else ".png"
                path = folder / f"{job_id}-{name}{suffix}"
                with urllib.request.urlopen(url, timeout=max(self.timeout_s, 300)) as response:
                    path.write_bytes(response.read())
                saved.append(path)
        return saved

    def download_result(self, job_id: str) -> dict[str, Any]:
        """The full result document (docs/results-format.md)."""
        url = self.result(job_id)["result"]["url"]
        with urllib.request.urlopen(url, timeout=max(self.timeout_s, 300)) as response:
            data = response.read()
        document: dict[str, Any] = json.loads(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)
        return document

    def frames(
        self, job_id: str, start_ms: int | None = None, end_ms: int | None = None, page_size: int = 500
    ) -> Iterator[dict[str, Any]]:
        token = None
        while True:
            page = self.request(
                "GET",
                f"/jobs/{job_id}/frames",
                start_ms=start_ms,
                end_ms=end_ms,
                max_results=page_size,
                next_token=token,
            )
            yield from page["frames"]
            token = page.get("next_token")
            if not token:
                return

    # ----------------------------------------------------------------------------- exports and insights

    def _fetch(self, url: str) -> bytes:
        """A presigned S3 URL's object (the API key is not sent to S3)."""
        try:
            with urllib.request.urlopen(url, timeout=max(self.timeout_s, 300)) as response:
                data: bytes = response.read()
        except urllib.error.HTTPError as error:
            raise ApiError(error.code, f"download refused: {error.read()[:300]!r}") from None
        return data

    def export(self, job_id: str, format: str = "csv", wait_s: float = 600, poll_s: float = 5) -> dict[str, Any]:
        """The job's landmarks as one row per hand per frame, made once on the API's side: `format`
        csv, jsonl or parquet; returns {format, columns, rows, key, url (a presigned download of the gzip
        file, or of the Parquet file), expires_in_s}. A large job's export is written by a worker just
        after the job succeeds; until it is there the API answers export_pending, and this waits up to
        `wait_s` for it."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                result: dict[str, Any] = self.request("GET", f"/jobs/{job_id}/export", format=format)
                return result
            except ApiError as error:
                if error.code != "export_pending" or time.monotonic() + poll_s > deadline:
                    raise
            time.sleep(poll_s)

    def download_export(self, job_id: str, path: str | Path, format: str = "csv") -> dict[str, Any]:
        """Save the export to `path`: csv or jsonl (gzip-compressed when `path` ends in .gz), or parquet
        as the API wrote it (compressed inside). Returns the export's description (format, columns, rows)
        with `path`."""
        out = Path(path)
        fmt = format.lower()
        if fmt not in EXPORT_FORMATS:
            raise ValueError(f"format must be one of {', '.join(EXPORT_FORMATS)}, got {format!r}")
        info = self.export(job_id, fmt)
        data = self._fetch(info["url"])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data if fmt == "parquet" or out.name.endswith(".gz") else gzip.decompress(data))
        return {**info, "path": str(out)}

    def insights(self, job_id: str) -> dict[str, Any]:
        """Gesture ranges, per-frame gestures, hand tracks and motion of a finished job (chalicelib.shared.insights)."""
        result: dict[str, Any] = self.request("GET", f"/jobs/{job_id}/insights")
        return result

    def dataframe(self, job_id: str) -> Any:
        """The CSV export as a pandas DataFrame, one row per hand per frame (needs pandas: pip install pandas)."""
        pandas = _optional("pandas", "Client.dataframe", "pandas")
        data = self._fetch(self.export(job_id, "csv")["url"])
        text = {"job_id": str, "video_id": str, "handedness": str, "gesture": str}
        return pandas.read_csv(io.BytesIO(data), compression="gzip", dtype=text)
