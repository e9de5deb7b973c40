"""The one place the command line sends a video's file (`submit`, `upload`, and `demo` through
submit_and_report), so how files go up is decided here once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..transport import Progress


def upload_video(api: Any, video: dict[str, Any], path: Path, progress: Progress | None = None) -> None:
    """Send `path` as the registered `video`'s file, streamed from disk; `progress(done, total)` in bytes."""
    api.upload(video, path, progress=progress)
