"""HTTP for the client, on the standard library: the error types a caller catches, bounded retries that
honour the API's Retry-After on 429 and 503, and file bodies streamed from disk with progress, so a
large upload never sits in memory."""

from __future__ import annotations

import email.utils
import http.client
import json
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import IO, Any

# Progress of one transfer: bytes done so far, bytes in all.
Progress = Callable[[int, int], None]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
RETRY_STATUSES = frozenset({429, 503})
_PROGRESS_STEP = 1 << 20  # report at most once a MiB (http.client reads a body 8 KiB at a time)


class HandpipeError(Exception):
    """Every error the client raises: catch this one to handle them all."""


class ApiError(HandpipeError):
    """The API (or the bucket, for a presigned URL) answered with an error: `status` is the HTTP status,
    `code` the error's code (e.g. "not_found"; None when the answer carried none), `message` its text,
    `retry_after_s` what a 429 or 503 asked for after the client's own retries ran out, `body` the
    answer's JSON (None when it was not JSON)."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        retry_after_s: float | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.code = code
        self.retry_after_s = retry_after_s
        self.body = body


class StorageError(ApiError):
    """The bucket refused a presigned upload or download (an expired URL, a size other than the one
    signed for): the API key has nothing to do with it."""


class HandpipeConnectionError(HandpipeError, ConnectionError):
    """No answer: the host refused the connection, reset it, could not be resolved, or did not answer in
    time. One type for what urllib, http.client and the socket layer raise for these."""


class HandpipeTimeout(HandpipeError, TimeoutError):
    """A wait for a job ran out of time while the job was still going (the job goes on)."""


class InvalidFile(HandpipeError, ValueError):
    """A file the client was asked to send cannot be: it is missing, empty, or changed size."""


@dataclass(frozen=True)
class RetryPolicy:
    """How hard a request tries. 429 and 503 are retried up to `attempts` tries in all, waiting what
    Retry-After says (capped at `max_wait_s`; `default_wait_s` doubling when it says nothing). A request
    whose connection failed is tried again `connection_retries` times, if it is safe to repeat (a read,
    a PUT or a DELETE; any request the server refused to connect)."""

    attempts: int = 5
    max_wait_s: float = 30.0
    default_wait_s: float = 1.0
    connection_retries: int = 2


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A Retry-After header's wait: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class ProgressReader:
    """A file read in the blocks http.client asks for, telling `progress` how far it has got."""

    def __init__(self, file: IO[bytes], total: int, progress: Progress | None) -> None:
        self.file = file
        self.total = total
        self.progress = progress
        self.done = 0
        self._reported = 0

    def read(self, size: int = -1) -> bytes:
        block = self.file.read(size)
        self.done += len(block)
        if self.progress is not None and (self.done - self._reported >= _PROGRESS_STEP or self.done >= self.total):
            self._reported = self.done
            self.progress(self.done, self.total)
        return block


def _copy(response: Any, sink: IO[bytes]) -> None:
    """The answer's body into `sink`, from its start (a retried download starts again). A sink that
    cannot be written is the caller's problem, not the network's: HandpipeError, never retried."""
    try:
        sink.seek(0)
        sink.truncate()
    except OSError as error:
        raise HandpipeError(f"cannot write the download: {error}") from None
    written = 0
    while block := response.read(_PROGRESS_STEP):
        try:
            sink.write(block)
        except OSError as error:
            raise HandpipeError(f"cannot write the download: {error}") from None
        written += len(block)
    expected = response.headers.get("Content-Length")
    if expected is not None and expected.isdigit() and written != int(expected):
        # read(amt) ends quietly at a connection closed early; a whole read() would have raised this
        raise http.client.IncompleteRead(b"", int(expected) - written)


def _error_body(error: urllib.error.HTTPError) -> bytes:
    try:
        return error.read()
    except (OSError, http.client.HTTPException):  # the connection went while the error was read
        return b""


def _never_arrived(error: BaseException) -> bool:
    """A refused connection carried no request, so even a POST may be sent again (a server restarting,
    as `chalice local` does on every change, refuses for a moment)."""
    reason = error.reason if isinstance(error, urllib.error.URLError) else error
    return isinstance(reason, ConnectionRefusedError)


def _describe(error: BaseException, where: str, timeout_s: float) -> str:
    reason: Any = error.reason if isinstance(error, urllib.error.URLError) else error
    if isinstance(reason, TimeoutError | socket.timeout):
        return f"{where} did not answer within {timeout_s:g} s"
    if isinstance(reason, ConnectionRefusedError):
        return f"cannot reach {where}: nothing answers there (connection refused)"
    if isinstance(reason, ConnectionResetError | http.client.RemoteDisconnected | ConnectionAbortedError):
        return f"{where} closed the connection before answering ({reason})"
    if isinstance(reason, http.client.IncompleteRead):
        return f"{where} stopped sending before the end of its answer"
    if isinstance(reason, socket.gaierror):
        return f"cannot reach {where}: its host name does not resolve ({reason.strerror or reason})"
    return f"cannot reach {where} ({reason})"


class Transport:
    """Sends one request, with the retries of `retry`; `sleep` is injectable so tests see the waits."""

    def __init__(
        self, timeout_s: float, retry: RetryPolicy | None = None, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self.sleep = sleep

    def send(  # noqa: C901 - one loop over the three outcomes (answer, error answer, no answer) and their retries
        self,
        method: str,
        url: str,
        *,
        where: str,
        headers: dict[str, str] | None = None,
        body: bytes | Callable[[], Any] | None = None,
        timeout_s: float | None = None,
        sink: IO[bytes] | None = None,
        retries: bool = True,
        storage: bool = False,
    ) -> tuple[int, Message, bytes]:
        """The answer's status, headers and body (empty when written to `sink`). `body` may be a function
        that opens a fresh body for each try (a file). Error answers raise ApiError (429 and 503 after
        the policy's retries; none at all when `retries` is false), StorageError for a presigned URL (`storage`);
        no answer raises HandpipeConnectionError."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        attempt, failed_connections = 1, 0
        while True:
            data = body() if callable(body) else body
            request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    if sink is None:
                        return response.status, response.headers, response.read()
                    _copy(response, sink)
                    return response.status, response.headers, b""
            except urllib.error.HTTPError as error:
                raw = _error_body(error)
                wait = retry_after_seconds(error.headers.get("Retry-After"))
                if retries and error.code in RETRY_STATUSES and attempt < self.retry.attempts:
                    fallback = self.retry.default_wait_s * 2 ** (attempt - 1)
                    self.sleep(min(self.retry.max_wait_s, fallback if wait is None else wait))
                    attempt += 1
                    continue
                raise error_from_answer(error.code, raw, wait, StorageError if storage else ApiError) from None
            except (OSError, http.client.HTTPException) as error:
                repeatable = method in IDEMPOTENT_METHODS or _never_arrived(error)
                if retries and repeatable and failed_connections < self.retry.connection_retries:
                    failed_connections += 1
                    self.sleep(min(self.retry.max_wait_s, 0.5 * 2 ** (failed_connections - 1)))
                    continue
                raise HandpipeConnectionError(_describe(error, where, timeout)) from None
            finally:
                closer = getattr(data, "file", None)
                if closer is not None:
                    closer.close()


class ApiSession:
    """The API's address and key with a Transport: JSON calls to the API, and transfers to and from
    the bucket's presigned URLs (which never get the key). handpipe.client.Client adds the routes."""

    def __init__(
        self,
        api_url: str,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.transport = Transport(timeout_s, retry, sleep)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None, **params: Any) -> Any:
        """One API call: JSON body and answer; query parameters left out when None."""
        return self._call(method, path, body, params)

    def _call(
        self, method: str, path: str, body: Mapping[str, Any] | None, params: Mapping[str, Any], retries: bool = True
    ) -> Any:
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        url = f"{self.api_url}{path}" + (f"?{query}" if query else "")
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["x-api-key"] = self.api_key
        _, _, raw = self.transport.send(
            method, url, headers=headers, body=data, where=f"the handpipe API at {self.api_url}", retries=retries
        )
        return json.loads(raw or b"null")

    def _fetch(self, url: str) -> bytes:
        """A presigned S3 URL's object, in memory (the API key is not sent to S3)."""
        timeout_s = self.transfer_timeout_s
        return self.transport.send("GET", url, where="the bucket", timeout_s=timeout_s, storage=True)[2]

    def _download(self, url: str, path: Path) -> Path:
        """A presigned S3 URL's object streamed to `path` (through a temporary file, so a cut download
        leaves no half file behind)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".part")
        try:
            with partial.open("wb") as sink:
                self.transport.send(
                    "GET",
                    url,
                    where="the bucket",
                    timeout_s=self.transfer_timeout_s,
                    sink=sink,
                    storage=True,
                )
            partial.replace(path)
        finally:
            partial.unlink(missing_ok=True)
        return path

    @property
    def transfer_timeout_s(self) -> float:
        """A presigned upload or download: large bodies over slow links."""
        return max(self.timeout_s, 300.0)


def error_from_answer(
    status: int, raw: bytes, retry_after_s: float | None = None, kind: type[ApiError] = ApiError
) -> ApiError:
    """The API's `{"code", "message"}` error, or S3's XML one, as an ApiError."""
    code, answer = None, None
    try:
        answer = json.loads(raw)
        message, code = str(answer.get("message") or raw.decode(errors="replace")[:500]), answer.get("code")
    except (ValueError, AttributeError):
        text = raw.decode(errors="replace")
        message = _s3_message(text) or text[:500] or http.client.responses.get(status, "error")
    return kind(status, message, code, retry_after_s, answer)


def _s3_message(text: str) -> str | None:
    """S3 answers errors in XML: `<Error><Code>..</Code><Message>..</Message></Error>`."""
    import re

    code = re.search(r"<Code>([^<]*)</Code>", text)
    message = re.search(r"<Message>([^<]*)</Message>", text)
    if not code and not message:
        return None
    return ": ".join(part.group(1) for part in (code, message) if part)


def file_body(path: Path, progress: Progress | None) -> Callable[[], ProgressReader]:
    """A body factory for Transport.send: the file opened anew (from its start) for each try."""
    total = os.path.getsize(path)

    def open_body() -> ProgressReader:
        return ProgressReader(path.open("rb"), total, progress)

    return open_body
