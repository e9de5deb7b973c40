"""The engine: one local video file (or one time range of it) in, a handpipe result out. Plain Python
with no AWS, so it runs the same in the Lambda, in the local stack and from `handpipe process`."""

from __future__ import annotations

import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from chalicelib.contracts import ProcessOptions
from chalicelib.results import build_result, finish_stats

from .models import GESTURE_RECOGNIZER, ModelBundle, ModelCache

COORD_DIGITS = 5  # 1e-5 of the frame is far below what the model resolves
DECODE_AHEAD = 8  # frames buffered between the decode thread and inference

ProgressCallback = Callable[[int, int | None], None]  # (frames processed, frames expected or None)
StopCheck = Callable[[], str | None]  # returns a reason to stop, or None to go on


class VideoDecodeError(Exception):
    """The file is not a video this engine can decode (not a video, empty, or no decodable frame)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class StoppedEarly(Exception):
    """The run was asked to stop (the Lambda deadline is near) before it finished its range."""

    def __init__(self, reason: str, frames_processed: int, last_timestamp_ms: float | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.frames_processed = frames_processed
        self.last_timestamp_ms = last_timestamp_ms


@dataclass(frozen=True)
class VideoInfo:
    path: str
    width: int  # upright, as the frames reach the model
    height: int
    fps: float
    frame_count: int | None
    duration_ms: float | None
    rotation: int
    codec: str
    container: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "filename": os.path.basename(self.path),
            "container": self.container,
            "codec": self.codec,
            "width": self.width,
            "height": self.height,
            "rotation": self.rotation,
            "orientation": "portrait" if self.height > self.width else "landscape",
            "fps": round(self.fps, 3),
            "frame_count": self.frame_count,
            "duration_ms": None if self.duration_ms is None else round(self.duration_ms, 3),
        }


def _open(path: str | os.PathLike[str]) -> cv2.VideoCapture:
    file = Path(path)
    if not file.is_file():
        raise VideoDecodeError("not_found", f"{path} does not exist or is not a file")
    if file.stat().st_size == 0:
        raise VideoDecodeError("empty", f"{file.name} is empty (0 bytes)")
    # OpenCV's own warnings about files it cannot open say less than the error raised below.
    cv2.setLogLevel(2)  # 2: errors only
    capture = cv2.VideoCapture(str(file), cv2.CAP_FFMPEG)
    if not capture.isOpened():
        raise VideoDecodeError(
            "not_video", f"{file.name} is not a video that can be decoded (unknown container or codec)"
        )
    # Rotation metadata is applied by the decoder, so portrait phone clips reach the model upright.
    capture.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)
    return capture


def probe(path: str | os.PathLike[str]) -> VideoInfo:
    """Container facts without decoding the whole file."""
    capture = _open(path)
    try:
        return _describe(capture, str(path), first_frame=None)
    finally:
        capture.release()


def _describe(capture: cv2.VideoCapture, path: str, first_frame: np.ndarray | None) -> VideoInfo:
    fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    rotation = int(capture.get(cv2.CAP_PROP_ORIENTATION_META) or 0) % 360
    width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    if first_frame is not None:
        height, width = first_frame.shape[:2]
    elif rotation in (90, 270):
        width, height = height, width
    fourcc = int(capture.get(cv2.CAP_PROP_FOURCC))
    codec = fourcc.to_bytes(4, "little").decode("ascii", "replace").strip("\x00 ") if fourcc else "unknown"
    duration = count * 1000.0 / fps if fps > 0 and count > 0 else None
    return VideoInfo(
        path=path,
        width=width,
        height=height,
        fps=fps if math.isfinite(fps) else 0.0,
        frame_count=count or None,
        duration_ms=duration,
        rotation=rotation,
        codec=codec,
        container=Path(path).suffix.lstrip(".").lower() or "unknown",
    )


@dataclass
class _Decoded:
    index: int
    timestamp_ms: float
    frame: np.ndarray | None  # None: decoded but not wanted (before the range, or sampled out)
    decode_s: float


def _frames(
    capture: cv2.VideoCapture, fps: float, wanted: Callable[[float], bool], seek_ms: float = 0.0
) -> Iterator[_Decoded]:
    """Every frame in order (from the first at or after `seek_ms`) with its index and presentation
    time. Frames that `wanted` turns down (sampled out, say) are only grabbed, never converted to an
    image. Seeking lets a segment late in a long video skip decoding everything before it; OpenCV's
    FFmpeg seek lands on the exact frame, whose index it reports."""
    index = -1
    seeking = seek_ms > 0 and capture.set(cv2.CAP_PROP_POS_MSEC, seek_ms)
    last_ts: float | None = None
    step = 1000.0 / fps if fps > 0 else 1000.0 / 30
    while True:
        started = time.perf_counter()
        if not capture.grab():
            return
        index = int(capture.get(cv2.CAP_PROP_POS_FRAMES)) - 1 if seeking else index + 1
        seeking = False
        ts = capture.get(cv2.CAP_PROP_POS_MSEC)
        # Some containers report no or repeated times; keep them strictly increasing, as the
        # tracker requires, by stepping on from the last one.
        if not math.isfinite(ts) or (last_ts is not None and ts <= last_ts):
            ts = (last_ts + step) if last_ts is not None else 0.0
        last_ts = ts
        frame = None
        if wanted(ts):
            ok, image = capture.retrieve()
            frame = image if ok else None
        yield _Decoded(index, ts, frame, time.perf_counter() - started)


def _decode_ahead(source: Iterator[_Decoded], depth: int) -> Iterator[_Decoded]:
    """Run the decoder in its own thread so inference never waits on it (OpenCV releases the GIL)."""
    buffer: queue.Queue[_Decoded | BaseException | None] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in source:
                while not stop.is_set():
                    try:
                        buffer.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put(None)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            buffer.put(exc)

    thread = threading.Thread(target=produce, name="handpipe-decode", daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


class _Sampler:
    """Keeps at most `sample_fps` frames per second: a frame is kept when it is the first in its
    1/sample_fps slot of the video's own timeline, so every segment of a job keeps the frames a
    single pass would keep."""

    def __init__(self, sample_fps: float | None, frame_step_ms: float) -> None:
        self.sample_fps = sample_fps
        self.frame_step_ms = frame_step_ms
        self._last_slot: int | None = None

    def _slot(self, timestamp_ms: float) -> int:
        return math.floor(timestamp_ms * (self.sample_fps or 0) / 1000.0 + 1e-9)

    def keep(self, timestamp_ms: float) -> bool:
        if self.sample_fps is None:
            return True
        if self._last_slot is None and timestamp_ms > 0:
            # Started mid-video (after a seek): the frame before this one decides, as in a full pass.
            self._last_slot = self._slot(timestamp_ms - self.frame_step_ms)
        slot = self._slot(timestamp_ms)
        keep = slot != self._last_slot
        self._last_slot = slot
        return keep


class _Detector:
    """MediaPipe's HandLandmarker, or its GestureRecognizer when the bundle is a gesture_recognizer.task:
    the same hand models and options, one call per frame; `gestures` tells whether hands carry one."""

    def __init__(self, bundle: ModelBundle, options: ProcessOptions) -> None:
        from mediapipe.tasks.python import BaseOptions, vision  # heavy import, deferred to first use

        common = {
            "base_options": BaseOptions(model_asset_buffer=bundle.data),
            "running_mode": vision.RunningMode.VIDEO,
            "num_hands": options.num_hands,
            "min_hand_detection_confidence": options.min_detection_confidence,
            "min_hand_presence_confidence": options.min_presence_confidence,
            "min_tracking_confidence": options.min_tracking_confidence,
        }
        self.gestures = bundle.task == GESTURE_RECOGNIZER
        if self.gestures:
            recognizer = vision.GestureRecognizer.create_from_options(vision.GestureRecognizerOptions(**common))
            self._task: Any = recognizer
            self._detect: Callable[[Any, int], Any] = recognizer.recognize_for_video
        else:
            landmarker = vision.HandLandmarker.create_from_options(vision.HandLandmarkerOptions(**common))
            self._task, self._detect = landmarker, landmarker.detect_for_video

    def detect(self, image: Any, timestamp_ms: int) -> list[dict[str, Any]]:
        return _hands(self._detect(image, timestamp_ms), self.gestures)

    def close(self) -> None:
        self._task.close()


def _rounded(points: Any) -> list[list[float]]:
    return [[round(p.x, COORD_DIGITS), round(p.y, COORD_DIGITS), round(p.z, COORD_DIGITS)] for p in points]


def _hands(detection: Any, gestures: bool = False) -> list[dict[str, Any]]:
    """The result's hands[] for one frame; with `gestures`, each hand's top gesture category from the
    recognizer ("None" with score 0 when it names none)."""
    per_hand_gestures = detection.gestures if gestures else []
    hands = []
    for position, (landmarks, world, handedness) in enumerate(
        zip(detection.hand_landmarks, detection.hand_world_landmarks, detection.handedness, strict=False)
    ):
        category = handedness[0]
        hand: dict[str, Any] = {
            "handedness": category.category_name,
            "score": round(float(category.score), 4),
            "landmarks": _rounded(landmarks),
            "world_landmarks": _rounded(world),
        }
        if gestures:
            top = (
                per_hand_gestures[position][0]
                if position < len(per_hand_gestures) and per_hand_gestures[position]
                else None
            )
            hand["gesture"] = (
                {"label": top.category_name or "None", "score": round(float(top.score), 4)}
                if top is not None
                else {"label": "None", "score": 0.0}
            )
        hands.append(hand)
    return hands


def process_video(
    path: str | os.PathLike[str],
    options: ProcessOptions | None = None,
    *,
    models: ModelCache | None = None,
    warmup_ms: int = 0,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    progress_every: int = 15,
) -> dict[str, Any]:
    """Detect hands in every kept frame of [start_ms, end_ms) and return the result document.

    Frames in the `warmup_ms` before start_ms go through the tracker but are not reported, so a
    segment starts with the tracking state a single pass would have there."""
    options = options or ProcessOptions()
    models = models or default_models()
    bundle = models.get(options.model, options.model_uri)
    wall_started = time.perf_counter()
    capture = _open(path)
    try:
        start_ms = float(options.start_ms or 0)
        end_ms = float(options.end_ms) if options.end_ms is not None else math.inf
        feed_from_ms = max(0.0, start_ms - warmup_ms)
        info = _describe(capture, str(path), first_frame=None)
        expected = _expected_frames(info, start_ms, end_ms, options.sample_fps)
        sampler = _Sampler(options.sample_fps, 1000.0 / info.fps if info.fps > 0 else 1000.0 / 30)

        def wanted(timestamp_ms: float) -> bool:
            # The sampler must see every frame in order, so it is asked before the range checks.
            return sampler.keep(timestamp_ms) and feed_from_ms <= timestamp_ms < end_ms

        detector = _Detector(bundle, options)
        from mediapipe import Image, ImageFormat

        frames: list[dict[str, Any]] = []
        decoded = with_hands = 0
        decode_s = inference_s = 0.0
        last_feed_ms = -1
        last_ts: float | None = None
        last_index = -1
        first_shape: tuple[int, ...] | None = None
        try:
            for item in _decode_ahead(_frames(capture, info.fps, wanted, feed_from_ms), DECODE_AHEAD):
                decoded += 1
                decode_s += item.decode_s
                last_ts = item.timestamp_ms
                last_index = item.index
                if item.timestamp_ms >= end_ms:
                    break
                if item.frame is None:
                    continue
                if should_stop is not None and (reason := should_stop()):
                    raise StoppedEarly(reason, len(frames), frames[-1]["timestamp_ms"] if frames else None)
                if first_shape is None:
                    first_shape = item.frame.shape
                started = time.perf_counter()
                rgb = cv2.cvtColor(item.frame, cv2.COLOR_BGR2RGB)
                feed_ms = max(int(item.timestamp_ms), last_feed_ms + 1)
                last_feed_ms = feed_ms
                hands = detector.detect(Image(image_format=ImageFormat.SRGB, data=rgb), feed_ms)
                inference_s += time.perf_counter() - started
                if item.timestamp_ms < start_ms:
                    continue  # warm-up frame: tracked, not reported
                with_hands += bool(hands)
                frames.append({"index": item.index, "timestamp_ms": round(item.timestamp_ms, 3), "hands": hands})
                if progress is not None and len(frames) % progress_every == 0:
                    progress(len(frames), expected)
        finally:
            detector.close()
        if decoded == 0:
            raise VideoDecodeError("no_frames", f"{Path(path).name} holds no decodable video frame")
        if first_shape is not None:
            info = VideoInfo(**{**info.__dict__, "height": first_shape[0], "width": first_shape[1]})
        decode = _decode_status(info, last_index + 1, last_ts, end_ms)
        if progress is not None:
            progress(len(frames), expected)
    finally:
        capture.release()
    stats = finish_stats(
        {
            "frames_decoded": decoded,
            "frames_processed": len(frames),
            "frames_with_hands": with_hands,
            "decode_s": decode_s,
            "inference_s": inference_s,
            "wall_s": time.perf_counter() - wall_started,
        }
    )
    return build_result(
        video=info.to_dict(),
        model=bundle.describe(),
        options=options.to_dict(),
        time_range={"start_ms": options.start_ms or 0, "end_ms": options.end_ms},
        frames=frames,
        stats=stats,
        decode=decode,
    )


def _expected_frames(info: VideoInfo, start_ms: float, end_ms: float, sample_fps: float | None) -> int | None:
    if info.duration_ms is None or info.fps <= 0:
        return None
    span = max(0.0, min(end_ms, info.duration_ms) - start_ms) / 1000.0
    return max(1, round(span * min(info.fps, sample_fps or info.fps)))


def _decode_status(info: VideoInfo, reached: int, last_ts: float | None, end_ms: float) -> dict[str, Any]:
    """Whether decoding reached the end the container promised (`reached`: frames up to and
    including the last one decoded). Containers round their frame count, so a shortfall of one frame
    is not a truncation."""
    reached_end_of_range = last_ts is not None and last_ts >= end_ms
    if reached_end_of_range or info.frame_count is None or reached >= info.frame_count - 1:
        return {"complete": True, "stopped_at_ms": None, "error": None}
    return {
        "complete": False,
        "stopped_at_ms": None if last_ts is None else round(last_ts, 3),
        "error": (
            f"decoding stopped after {reached} of {info.frame_count} frames "
            f"(at {0 if last_ts is None else last_ts / 1000:.2f} s): the file is probably truncated"
        ),
    }


_DEFAULT_MODELS: ModelCache | None = None


def default_models() -> ModelCache:
    """The process-wide model cache (one per Lambda container), created on first use."""
    global _DEFAULT_MODELS
    if _DEFAULT_MODELS is None:
        _DEFAULT_MODELS = ModelCache()
    return _DEFAULT_MODELS
