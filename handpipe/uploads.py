"""The client side of uploads: a video's file streamed from disk to S3, by its one presigned PUT or as a
multipart upload in parallel parts that resumes from the parts S3 already holds (the CLI and notebooks
call upload_file; it never holds the whole file in memory)."""

from __future__ import annotations

import io
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Protocol

Progress = Callable[[int, int], None]  # (bytes done, total bytes)

PART_ATTEMPTS = 3  # a part whose PUT fails (a dropped connection, a 5xx) is sent again this often
BLOCK_BYTES = 256 * 1024


class UploadApi(Protocol):
    """What the uploader needs of handpipe.client.Client."""

    timeout_s: float

    def upload_parts_urls(self, video_id: str, part_numbers: list[int]) -> list[dict[str, Any]]: ...

    def upload_state(self, video_id: str) -> dict[str, Any]: ...

    def complete_upload(self, video_id: str, parts: list[dict[str, Any]]) -> dict[str, Any]: ...

    def get_video(self, video_id: str) -> Mapping[str, Any]: ...


class UploadFailed(Exception):
    """S3 refused a PUT for good (`status` is its HTTP status), or the file is not the one registered
    (`status` None); the text says which."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _Counter:
    """Bytes sent so far across threads, reported to the caller's progress callback."""

    def __init__(self, total: int, progress: Progress | None, done: int = 0) -> None:
        self.total, self.done, self._progress = total, done, progress
        self._lock = threading.Lock()

    def add(self, count: int) -> None:
        with self._lock:
            self.done += count
            done = self.done
        if self._progress is not None:
            self._progress(done, self.total)


class _Slice(io.RawIOBase):
    """`length` bytes of a file from `offset`, read block by block as http.client sends them."""

    def __init__(self, path: Path, offset: int, length: int, counter: _Counter) -> None:
        super().__init__()
        self._file = path.open("rb")
        self._file.seek(offset)
        self._left = length
        self._counter = counter
        self._sent = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        want = self._left if size is None or size < 0 else min(size, self._left)
        data = self._file.read(min(want, BLOCK_BYTES)) if want else b""
        self._left -= len(data)
        self._sent += len(data)
        if data:
            self._counter.add(len(data))
        return data

    def take_back(self) -> None:
        """Uncount what this attempt sent (it failed; the part is sent again)."""
        self._counter.add(-self._sent)
        self._sent = 0

    def close(self) -> None:
        self._file.close()
        super().close()


def _put(
    url: str, path: Path, offset: int, length: int, headers: dict[str, str], counter: _Counter, timeout: float
) -> str:
    """PUT one byte range of the file; S3's ETag for it. Retried on a dropped connection or a 5xx."""
    for attempt in range(1, PART_ATTEMPTS + 1):
        body = _Slice(path, offset, length, counter)
        request = urllib.request.Request(
            url, data=body, method="PUT", headers={**headers, "Content-Length": str(length)}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return str(response.headers.get("ETag") or "").strip('"')
        except urllib.error.HTTPError as error:
            body.take_back()
            if error.code < 500 or attempt == PART_ATTEMPTS:
                raise UploadFailed(
                    f"S3 refused the upload (HTTP {error.code}): {error.read()[:300]!r}", error.code
                ) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
            body.take_back()
            if attempt == PART_ATTEMPTS:
                raise UploadFailed(f"the upload to S3 failed {PART_ATTEMPTS} times: {error}") from None
        finally:
            body.close()
        time.sleep(0.5 * attempt)
    raise AssertionError("unreachable")


def upload_file(
    api: UploadApi,
    video_view: Mapping[str, Any],
    path: str | Path,
    *,
    progress: Progress | None = None,
    workers: int = 4,
) -> Mapping[str, Any]:
    """Upload the registered video's file (the `video_view` POST /videos answered, with its `upload`);
    returns the video as it is afterwards. A multipart upload sends `workers` parts at once and, when
    run again after an interruption, sends only the parts S3 does not hold yet with their full size."""
    file = Path(path)
    size = file.stat().st_size
    upload = video_view.get("upload") or {}
    if video_view.get("size_bytes") not in (None, size):
        raise UploadFailed(f"{file} has {size} bytes, but the video was registered with {video_view['size_bytes']}")
    timeout = max(api.timeout_s, 300)
    if upload.get("method") == "PUT":
        _put(upload["url"], file, 0, size, dict(upload.get("headers") or {}), _Counter(size, progress), timeout)
        return api.get_video(video_view["id"])
    if upload.get("method") not in (None, "multipart"):
        raise UploadFailed(f"unknown upload method {upload.get('method')!r}")
    return _multipart(api, video_view["id"], file, size, progress, max(1, workers), timeout)


def _multipart(
    api: UploadApi, video_id: str, file: Path, size: int, progress: Progress | None, workers: int, timeout: float
) -> dict[str, Any]:
    state = api.upload_state(video_id)
    part_bytes, count = int(state["part_size_bytes"]), int(state["part_count"])
    if state.get("size_bytes") not in (None, size):
        raise UploadFailed(f"{file} has {size} bytes, but the upload is for {state['size_bytes']}")

    def length(number: int) -> int:
        return min(part_bytes, size - (number - 1) * part_bytes)

    etags = {
        int(p["part_number"]): str(p["etag"])
        for p in state["uploaded_parts"]
        if int(p["size_bytes"]) == length(int(p["part_number"]))
    }
    counter = _Counter(size, progress, sum(length(n) for n in etags))
    if progress is not None:
        progress(counter.done, size)
    missing = [n for n in range(1, count + 1) if n not in etags]

    def send(number: int) -> None:
        # The URL is asked for just before the PUT, so none expires while earlier parts are sent.
        [part] = api.upload_parts_urls(video_id, [number])
        # A type of its own: without one urllib would send a form's (x-www-form-urlencoded), which servers parse.
        headers = {"Content-Type": "application/octet-stream"}
        etags[number] = _put(part["url"], file, (number - 1) * part_bytes, length(number), headers, counter, timeout)

    with ThreadPoolExecutor(workers, thread_name_prefix="upload-part") as pool:
        futures = [pool.submit(send, number) for number in missing]
        finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in finished if f.exception() is not None), None)
        if failed is not None:
            for future in futures:
                future.cancel()  # parts not started stay for the next run, which resumes
            error = failed.exception()
            assert error is not None
            raise error
    return api.complete_upload(video_id, [{"part_number": n, "etag": etags[n]} for n in range(1, count + 1)])
