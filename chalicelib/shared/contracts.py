"""The contracts the Chalice app and the worker share: processing options, queue messages and the
S3 key layout. The worker image copies this file; nothing else may redefine these shapes."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

MESSAGE_VERSION = 1

# Message types on the three queues.
JOB_REQUESTED = "job.requested"  # "jobs" queue: API -> orchestrator
WORK_ITEM = "work.item"  # "work" queue: orchestrator -> worker
PROBE_REQUEST = "video.probe"  # "work" queue: orchestrator -> worker, before splitting a job
RENDER_REQUEST = "job.render"  # "work" queue: recorder -> worker, once a job has SUCCEEDED: merge, insights, pictures
SEGMENT_SUCCEEDED = "segment.succeeded"  # "events" queue: worker -> recorder
SEGMENT_FAILED = "segment.failed"
SEGMENT_PROGRESS = "segment.progress"
VIDEO_PROBED = "video.probed"  # the probe's answer: `video` holds duration, fps and size
ARTIFACTS_WRITTEN = "job.artifacts_written"  # a SUCCEEDED job's result, insights, exports, pictures are stored
EVENT_TYPES = (SEGMENT_SUCCEEDED, SEGMENT_FAILED, SEGMENT_PROGRESS, VIDEO_PROBED, ARTIFACTS_WRITTEN)

MODELS = ("full", "lite")
MAX_HANDS = 4
# "exact": MediaPipe's landmarker of num_hands on every frame. "adaptive": hands already found are
# tracked without palm detection, which looks for new ones every detection_interval_ms (worker
# detection.py; trade-offs in docs/performance.md).
DETECTION_MODES = ("exact", "adaptive")
MAX_SCAN_FRAMES = 10

_ID_PATTERN = re.compile(r"^[a-z]{1,4}_[0-9a-f]{32}$")


class ContractError(ValueError):
    """A message or option set that does not follow the contract; the text says what is wrong."""


def is_valid_id(value: object, prefix: str) -> bool:
    return isinstance(value, str) and value.startswith(prefix + "_") and bool(_ID_PATTERN.match(value))


# ---------------------------------------------------------------------------------------------
# Processing options
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessOptions:
    """What a caller may choose about one processing run. Defaults follow MediaPipe's."""

    num_hands: int = 2
    min_detection_confidence: float = 0.5
    min_presence_confidence: float = 0.5
    min_tracking_confidence: float = 0.5
    model: str = "full"
    sample_fps: float | None = None
    start_ms: int | None = None
    end_ms: int | None = None
    model_uri: str | None = None  # a hand_landmarker.task or gesture_recognizer.task: local path or s3:// URI
    annotated_video: bool = False  # jobs only: also render the video with the landmarks drawn
    detection: str = "exact"
    detection_interval_ms: int = 300  # adaptive: a new hand is found at most this late
    detection_scan_frames: int = 1  # adaptive, no hand in view: look at every Nth frame, then go back

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None, *, allow_empty_range: bool = False) -> ProcessOptions:  # noqa: C901 - one check per documented option, naming every problem found
        """Validate caller input; raise ContractError naming every problem found. With
        `allow_empty_range`, end_ms at or before start_ms is left for the caller to judge."""
        raw = dict(raw or {})
        known = {f.name for f in fields(cls)}
        problems: list[str] = []
        unknown = sorted(set(raw) - known)
        if unknown:
            problems.append(f"unknown option(s): {', '.join(unknown)} (allowed: {', '.join(sorted(known))})")
        values: dict[str, Any] = {}

        def number(name: str, *, integer: bool, low: float, high: float) -> None:
            if name not in raw or raw[name] is None:
                return
            value = raw[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                problems.append(f"{name} must be a number, got {type(value).__name__}")
                return
            if integer and (isinstance(value, float) and not value.is_integer()):
                problems.append(f"{name} must be a whole number, got {value}")
                return
            if not low <= value <= high:
                problems.append(f"{name} must be between {low:g} and {high:g}, got {value}")
                return
            values[name] = int(value) if integer else float(value)

        number("num_hands", integer=True, low=1, high=MAX_HANDS)
        for name in ("min_detection_confidence", "min_presence_confidence", "min_tracking_confidence"):
            number(name, integer=False, low=0.0, high=1.0)
        number("sample_fps", integer=False, low=0.01, high=1000)
        number("start_ms", integer=True, low=0, high=24 * 3600 * 1000)
        number("end_ms", integer=True, low=1, high=24 * 3600 * 1000)
        number("detection_interval_ms", integer=True, low=1, high=60_000)
        number("detection_scan_frames", integer=True, low=1, high=MAX_SCAN_FRAMES)
        if raw.get("detection") is not None:
            if raw["detection"] not in DETECTION_MODES:
                problems.append(f"detection must be one of {', '.join(DETECTION_MODES)}, got {raw['detection']!r}")
            else:
                values["detection"] = raw["detection"]
        if "model" in raw and raw["model"] is not None:
            if raw["model"] not in MODELS:
                problems.append(f"model must be one of {', '.join(MODELS)}, got {raw['model']!r}")
            else:
                values["model"] = raw["model"]
        if raw.get("model_uri") is not None:
            uri = raw["model_uri"]
            if not isinstance(uri, str) or not uri or len(uri) > 1024 or not uri.endswith(".task"):
                problems.append("model_uri must be a path or s3:// URI of a .task file")
            else:
                values["model_uri"] = uri
        if raw.get("annotated_video") is not None:
            if not isinstance(raw["annotated_video"], bool):
                problems.append("annotated_video must be true or false")
            else:
                values["annotated_video"] = raw["annotated_video"]
        start, end = values.get("start_ms"), values.get("end_ms")
        if start is not None and end is not None and end <= start and not allow_empty_range:
            problems.append(f"end_ms ({end}) must be greater than start_ms ({start})")
        if problems:
            raise ContractError("; ".join(problems))
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_range(self, start_ms: int | None, end_ms: int | None) -> ProcessOptions:
        data = self.to_dict()
        data.update(start_ms=start_ms, end_ms=end_ms)
        return ProcessOptions(**data)


# ---------------------------------------------------------------------------------------------
# S3 key layout
# ---------------------------------------------------------------------------------------------


def video_key(video_id: str, filename: str) -> str:
    return f"videos/{video_id}/{filename}"


def results_prefix(video_id: str, job_id: str) -> str:
    return f"results/{video_id}/{job_id}/"


def part_key(video_id: str, job_id: str, segment: int) -> str:
    return f"{results_prefix(video_id, job_id)}parts/{segment:05d}.json.gz"


def part_head_key(video_id: str, job_id: str, segment: int) -> str:
    """A part without its frames (results.part_head), written before the part: the job is finished from these."""
    return f"{results_prefix(video_id, job_id)}parts/{segment:05d}.head.json"


def result_key(video_id: str, job_id: str) -> str:
    return f"{results_prefix(video_id, job_id)}result.json.gz"


def frame_index_key(video_id: str, etag: str) -> str:
    """Where the worker keeps a video object's frame index (every frame's PTS): one per version of the
    object, so a replaced upload is indexed anew."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", etag) or "unversioned"
    return f"results/{video_id}/frame_index/{safe}.json.gz"


def insights_key(video_id: str, job_id: str) -> str:
    return f"{results_prefix(video_id, job_id)}insights.json"


PICTURES = {"contact_sheet": "contact_sheet.png", "timeline": "timeline.png", "annotated_video": "annotated.mp4"}


def picture_key(video_id: str, job_id: str, picture: str) -> str:
    """Where the worker renders a job's pictures: one of PICTURES."""
    return f"{results_prefix(video_id, job_id)}pictures/{PICTURES[picture]}"


_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


def video_filename(key: str) -> str:
    """The name a video object's results report it by (and a worker's local copy has): its key's last
    part, only safe characters. The worker's probe and the orchestrator's container index both use it."""
    return _UNSAFE_NAME.sub("_", key.rsplit("/", 1)[-1])[-200:].lstrip(".") or "video"


def video_prefix(video_id: str) -> str:
    return f"videos/{video_id}/"


def queue_names(prefix: str = "handpipe") -> dict[str, str]:
    """Queue names by role; each has a dead-letter queue named '<name>-dlq'. "notify" carries job-end
    notifications to the SNS topic and to webhooks (chalicelib.service.notifications); "uploads" carries the
    bucket's notifications of objects put under the upload-trigger prefix."""
    return {role: f"{prefix}-{role}" for role in ("jobs", "work", "events", "notify", "uploads")}


# ---------------------------------------------------------------------------------------------
# Queue messages
# ---------------------------------------------------------------------------------------------


def _require(body: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    if name not in body:
        raise ContractError(f"message field {name!r} is missing")
    value = body[name]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ContractError(f"message field {name!r} has the wrong type ({type(value).__name__})")
    return value


def decode_body(text: str) -> dict[str, Any]:
    try:
        body = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise ContractError(f"message body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ContractError("message body must be a JSON object")
    version = body.get("version")
    if version != MESSAGE_VERSION:
        raise ContractError(f"unsupported message version {version!r} (expected {MESSAGE_VERSION})")
    return body


@dataclass(frozen=True)
class JobRequested:
    job_id: str
    video_id: str

    def to_json(self) -> str:
        return json.dumps({"version": MESSAGE_VERSION, "type": JOB_REQUESTED, **asdict(self)})

    @classmethod
    def from_json(cls, text: str) -> JobRequested:
        body = decode_body(text)
        if body.get("type") != JOB_REQUESTED:
            raise ContractError(f"expected a {JOB_REQUESTED} message, got {body.get('type')!r}")
        return cls(job_id=_require(body, "job_id", str), video_id=_require(body, "video_id", str))


@dataclass(frozen=True)
class WorkItem:
    """One time range of one video for one worker. `warmup_ms` frames before start_ms are fed to
    the tracker but not reported, so a segment tracks as well as a single pass would."""

    job_id: str
    video_id: str
    segment: int
    bucket: str
    video_key: str
    part_key: str
    options: ProcessOptions
    warmup_ms: int = 0

    def to_json(self) -> str:
        body = {"version": MESSAGE_VERSION, "type": WORK_ITEM, **asdict(self)}
        return json.dumps(body)

    @classmethod
    def from_json(cls, text: str) -> WorkItem:
        body = decode_body(text)
        if body.get("type") != WORK_ITEM:
            raise ContractError(f"expected a {WORK_ITEM} message, got {body.get('type')!r}")
        options = _require(body, "options", dict)
        return cls(
            job_id=_require(body, "job_id", str),
            video_id=_require(body, "video_id", str),
            segment=_require(body, "segment", int),
            bucket=_require(body, "bucket", str),
            video_key=_require(body, "video_key", str),
            part_key=_require(body, "part_key", str),
            options=ProcessOptions.from_dict(options),
            warmup_ms=int(body.get("warmup_ms") or 0),
        )


@dataclass(frozen=True)
class ProbeRequest:
    """Ask a worker for a video's duration and frame rate, which the orchestrator (no OpenCV in the
    API Lambdas) needs to split a job into segments."""

    job_id: str
    video_id: str
    bucket: str
    video_key: str

    def to_json(self) -> str:
        return json.dumps({"version": MESSAGE_VERSION, "type": PROBE_REQUEST, **asdict(self)})

    @classmethod
    def from_json(cls, text: str) -> ProbeRequest:
        body = decode_body(text)
        if body.get("type") != PROBE_REQUEST:
            raise ContractError(f"expected a {PROBE_REQUEST} message, got {body.get('type')!r}")
        return cls(
            job_id=_require(body, "job_id", str),
            video_id=_require(body, "video_id", str),
            bucket=_require(body, "bucket", str),
            video_key=_require(body, "video_key", str),
        )


@dataclass(frozen=True)
class RenderRequest:
    """Write a SUCCEEDED job's artifacts: merge its `segments` parts into the result at `result_key`
    (unless it is there; 0: merged already), then store its insights and exports and draw its pictures
    (contact sheet, timeline, optionally an annotated video) next to it."""

    job_id: str
    video_id: str
    bucket: str
    video_key: str
    result_key: str
    annotated_video: bool = False
    segments: int = 0

    def to_json(self) -> str:
        return json.dumps({"version": MESSAGE_VERSION, "type": RENDER_REQUEST, **asdict(self)})

    @classmethod
    def from_json(cls, text: str) -> RenderRequest:
        body = decode_body(text)
        if body.get("type") != RENDER_REQUEST:
            raise ContractError(f"expected a {RENDER_REQUEST} message, got {body.get('type')!r}")
        return cls(
            job_id=_require(body, "job_id", str),
            video_id=_require(body, "video_id", str),
            bucket=_require(body, "bucket", str),
            video_key=_require(body, "video_key", str),
            result_key=_require(body, "result_key", str),
            annotated_video=bool(body.get("annotated_video", False)),
            segments=int(body.get("segments") or 0),
        )


WORK_MESSAGE_TYPES = (WORK_ITEM, PROBE_REQUEST, RENDER_REQUEST)


def work_message_type(text: str) -> str:
    """Which message a "work" queue body holds (a work item, a probe or a render request)."""
    kind = decode_body(text).get("type")
    if kind not in WORK_MESSAGE_TYPES:
        raise ContractError(f"unknown work message type {kind!r} (expected one of {', '.join(WORK_MESSAGE_TYPES)})")
    return str(kind)


@dataclass(frozen=True)
class SegmentEvent:
    """What a worker reports about one segment. `retryable` failures are worth another attempt;
    the others (an undecodable video, say) fail the job at once."""

    type: str
    job_id: str
    video_id: str
    segment: int
    part_key: str | None = None
    frames_processed: int = 0
    frames_with_hands: int = 0
    video: dict[str, Any] | None = None
    error: str | None = None
    error_code: str | None = None
    retryable: bool = False
    attempt: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"version": MESSAGE_VERSION, **asdict(self)})

    @classmethod
    def from_json(cls, text: str) -> SegmentEvent:
        body = decode_body(text)
        kind = body.get("type")
        if kind not in EVENT_TYPES:
            raise ContractError(f"unknown event type {kind!r} (expected one of {', '.join(EVENT_TYPES)})")
        if kind == SEGMENT_FAILED and not body.get("error"):
            raise ContractError("a segment.failed event must carry an error")
        known = {f.name for f in fields(cls)}
        return cls(
            type=kind,
            job_id=_require(body, "job_id", str),
            video_id=_require(body, "video_id", str),
            segment=_require(body, "segment", int),
            **{k: v for k, v in body.items() if k in known and k not in ("type", "job_id", "video_id", "segment")},
        )
