"""Rules on the records that need no I/O: how a job splits into segments, the size limits a video
must meet, and how many frames a job should produce."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chalicelib.config import Settings
from chalicelib.domain.records import Job, Video
from chalicelib.shared.contracts import ProcessOptions
from chalicelib.shared.results import expected_frames


def plan_segments(
    options: ProcessOptions, settings: Settings, duration_ms: float | None = None
) -> list[tuple[int | None, int | None]]:
    """Time ranges [start, end), one per work item, of at most `segment_ms` each. Without a
    segment length, or without a known end, the whole requested range is one segment. A tail
    shorter than a quarter segment joins the segment before it."""
    start = options.start_ms or 0
    stop = options.end_ms if options.end_ms is not None else duration_ms
    length = settings.segment_ms
    if length is None or stop is None or stop - start <= length:
        return [(options.start_ms, options.end_ms)]
    bounds = list(range(start, int(stop), length))
    if len(bounds) > 1 and stop - bounds[-1] < length / 4:
        bounds.pop()
    ranges: list[tuple[int | None, int | None]] = [(b, b + length) for b in bounds]
    ranges[0] = (options.start_ms, ranges[0][1])
    # The last segment runs to the requested end, or to the end of the file whatever the probe said.
    ranges[-1] = (ranges[-1][0], options.end_ms)
    return ranges


def job_expected_frames(options: ProcessOptions, metadata: Mapping[str, Any]) -> int | None:
    """A job's frames_total from its probe's metadata (None when the probe did not find both figures)."""
    duration, fps = metadata.get("duration_ms"), metadata.get("fps")
    if not duration or not fps:
        return None
    return expected_frames(duration, fps, options.start_ms or 0, options.end_ms or None, options.sample_fps)


def limit_problems(video: Mapping[str, Any], settings: Settings) -> list[str]:
    """What about a probed video is over the configured limits (empty when nothing is)."""
    problems = []
    duration = video.get("duration_ms") or 0
    if duration > settings.max_duration_ms:
        problems.append(f"the video lasts {_span(duration)}, over the limit of {_span(settings.max_duration_ms)}")
    pixels = (video.get("width") or 0) * (video.get("height") or 0)
    if pixels > settings.max_pixels:
        problems.append(
            f"frames of {video.get('width')}x{video.get('height')} are over the limit of {settings.max_pixels} pixels"
        )
    return problems


def plan_limit_problems(job: Job, video: Video, settings: Settings) -> list[str]:
    """Every limit a plan must respect, checked on each plan rather than only by the first probe: a
    second job on a video already probed, or a job naming its own end_ms, skips the probe."""
    options = ProcessOptions.from_dict(job.options)
    metadata = video.metadata or {}
    problems = limit_problems(metadata, settings) if metadata else []
    if options.end_ms is not None and options.end_ms > settings.max_duration_ms:
        problems.append(f"end_ms {options.end_ms} is past the limit of {_span(settings.max_duration_ms)}")
    if video.size_bytes is not None and video.size_bytes > settings.max_upload_bytes:
        problems.append(f"the video has {video.size_bytes} bytes, over the limit of {settings.max_upload_bytes}")
    if not problems:
        segments = len(plan_segments(options, settings, metadata.get("duration_ms")))
        if segments > settings.max_segments_per_job:
            problems.append(
                f"the job would need {segments} segments, over the limit of {settings.max_segments_per_job}"
            )
        frames = job_expected_frames(options, metadata)
        if frames is not None and frames > settings.max_frames_per_job:
            problems.append(f"the job would read {frames} frames, over the limit of {settings.max_frames_per_job}")
    return problems


def _span(ms: float) -> str:
    return f"{ms / 1000:.1f} s" if ms < 120_000 else f"{ms / 60_000:.1f} min"
