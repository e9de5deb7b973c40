"""The files derived from a job's merged result (insights.json and the exports), written by one function
that the API (a small job, while the caller waits) and the worker's render step (every job, just after it
succeeds) both call, so the two write the same bytes to the same keys."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from chalicelib.shared import exports
from chalicelib.shared.contracts import insights_key, results_prefix
from chalicelib.shared.exports import BytesStore


@dataclass(frozen=True)
class Written:
    """What write_artifacts stored: the insights' key (None when not asked) and, per export format,
    the export's key and row count."""

    insights_key: str | None = None
    exports: dict[str, tuple[str, int]] = field(default_factory=dict)

    def keys(self) -> list[str]:
        return ([self.insights_key] if self.insights_key else []) + [key for key, _ in self.exports.values()]


def insights_bytes(insights: Mapping[str, Any]) -> bytes:
    """insights.json as stored: compact JSON (the API reads it back on every /insights call)."""
    return json.dumps(insights, separators=(",", ":")).encode()


def write_artifacts(
    store: BytesStore,
    *,
    video_id: str,
    job_id: str,
    result: Mapping[str, Any],
    insights: Mapping[str, Any],
    formats: Iterable[str] = exports.FORMATS,
    with_insights: bool = True,
) -> Written:
    """Store the job's insights (unless `with_insights` is False) and its exports in `formats` next to
    its result, at results/{video_id}/{job_id}/insights.json and export.*."""
    stored_insights = None
    if with_insights:
        stored_insights = insights_key(video_id, job_id)
        store.put_bytes(stored_insights, insights_bytes(insights), "application/json")
    prefix = results_prefix(video_id, job_id)
    written = {
        fmt: exports.write_export(store, prefix, fmt, result, insights, job_id=job_id, video_id=video_id)
        for fmt in formats
    }
    return Written(insights_key=stored_insights, exports=written)
