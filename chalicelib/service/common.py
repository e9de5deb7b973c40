"""What every use case needs: ids, the clock, body-field checks, page tokens and the 410 for a
missing object."""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from collections.abc import Mapping
from typing import Any

from chalicelib.service.errors import Gone, InvalidInput, NotFound
from chalicelib.shared.contracts import is_valid_id
from chalicelib.shared.storage import ObjectMissing

logger = logging.getLogger("handpipe.service")


VIDEO_EXTENSIONS = ("mp4", "mov", "m4v", "avi", "webm", "mkv")


def now_ms() -> int:
    return int(time.time() * 1000)


class _IdClock:
    """A nanosecond clock that never repeats or goes back within a process."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def tick(self) -> int:
        with self._lock:
            self._last = max(time.time_ns(), self._last + 1)
            return self._last


_ID_CLOCK = _IdClock()


def new_id(prefix: str) -> str:
    """prefix_ and 32 hex digits: 16 of the creation time in ns, then 16 random. Lists sort by
    (created_at, id) and created_at is in ms, so ids made within one millisecond still list in the order
    they were made (a UUID4 would order them at random)."""
    return f"{prefix}_{_ID_CLOCK.tick():016x}{secrets.token_hex(8)}"


def _check_fields(body: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")


def _text(body: Mapping[str, Any], name: str, *, max_len: int, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise InvalidInput(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string, got {type(value).__name__}")
    # Judged as sent, then trimmed of spaces: the limits the OpenAPI document states (maxLength, a
    # pattern without control characters) hold for exactly what a caller sends.
    if len(value) > max_len:
        raise InvalidInput(f"{name} is longer than {max_len} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise InvalidInput(f"{name} must not contain control characters")
    value = value.strip(" ")
    if required and not value:
        raise InvalidInput(f"{name} must not be empty")
    return value


_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._-]+")


def safe_filename(filename: str) -> str:
    """A name that is safe as the last part of an S3 key: no directories, no odd characters."""
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, ext = base.rpartition(".")
    if not dot:
        stem, ext = base, ""
    stem = _UNSAFE_FILENAME.sub("_", stem).strip("._") or "video"
    ext = ext.lower()
    if ext not in VIDEO_EXTENSIONS:
        raise InvalidInput(f"filename must end in one of .{', .'.join(VIDEO_EXTENSIONS)} (got {filename!r})")
    return f"{stem[:120]}.{ext}"


# Page tokens are keyset positions written out plainly, so the OpenAPI document can give their exact
# pattern and every token it allows means a position: (created_at, id) of a video or job, or a frame
# index. An empty token is the first page.
_TOKEN_PATTERNS: dict[tuple[type, ...], re.Pattern[str]] = {
    (int, str): re.compile(r"([0-9]{1,15})_([a-z]{3}_[0-9a-f]{32})", re.ASCII),
    (int,): re.compile(r"([0-9]{1,9})", re.ASCII),
}


def encode_token(values: list[Any]) -> str:
    return "_".join(str(value) for value in values)


def decode_token(token: str | None, shape: tuple[type, ...]) -> list[Any] | None:
    if not token:
        return None
    match = _TOKEN_PATTERNS[shape].fullmatch(token)
    if match is None:
        raise InvalidInput("next_token is not valid: pass the next_token of the previous page unchanged")
    return [kind(group) for kind, group in zip(shape, match.groups(), strict=True)]


def check_id(value: str, prefix: str, what: str) -> str:
    if not is_valid_id(value, prefix):
        raise NotFound(f"no {what} with id {value[:80]!r}")
    return value


def gone(error: ObjectMissing) -> Gone:
    """The answer to a read that found a stored object missing."""
    return Gone(
        f"a stored object this answer needs is gone ({error}); run the job again, or for a video's file "
        "get a new upload URL (POST /videos/{video_id}/upload-url)"
    )
