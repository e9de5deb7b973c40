"""The engine: one video (a local file or a ranged S3 reader), or one time range of it, in; a handpipe
result out. Plain Python with no AWS, so it runs the same in the Lambda, in the local stack and from
`handpipe process`. Frames and their times come from video.py (PyAV): exact PTS, exact indices."""

from __future__ import annotations

import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from chalicelib.shared.contracts import ProcessOptions
from chalicelib.shared.results import build_result, expected_frames, finish_stats

from .detection import AdaptiveDetector
from .models import GESTURE_RECOGNIZER, ModelBundle, ModelCache
from .video import FrameIndex, VideoDecodeError, VideoFile, VideoInfo, VideoSource
from .video import probe as probe_video

__all__ = ["StoppedEarly", "VideoDecodeError", "VideoInfo", "default_models", "probe", "process_video"]

COORD_DIGITS = 5  # 1e-5 of the frame is far below what the model resolves
DECODE_AHEAD = 8  # frames buffered between the decode thread and inference

ProgressCallback = Callable[[int, int | None], None]  # (frames processed, frames expected or None)
StopCheck = Callable[[], str | None]  # returns a reason to stop, or None to go on


class StoppedEarly(Exception):
    """The run was asked to stop (the Lambda deadline is near) before it finished its range."""

    def __init__(self, reason: str, frames_processed: int, last_timestamp_ms: float | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.frames_processed = frames_processed
        self.last_timestamp_ms = last_timestamp_ms


def probe(path: VideoSource, name: str | None = None) -> VideoInfo:
    """Container facts, with exact frame count and duration from demuxing (no decoding)."""
    return probe_video(path, name)[0]


@dataclass
class _Decoded:
    index: int
    pts: int
    duration: int
    timestamp_ms: float
    image: np.ndarray | None  # upright RGB; None: decoded but not wanted (before the range, sampled out)
    decode_s: float


def _decoded(
    video: VideoFile,
    index: FrameIndex | None,
    from_ms: float,
    wanted: Callable[[int, float], bool],
) -> Iterator[_Decoded]:
    """Every frame in order from the keyframe before `from_ms`; only the frames `wanted` accepts are
    converted to an upright RGB picture (in this thread, which the decode-ahead thread runs)."""
    started = time.perf_counter()
    for frame in video.frames(from_ms=from_ms, index=index):
        image = frame.rgb() if wanted(frame.index, frame.timestamp_ms) else None
        now = time.perf_counter()
        yield _Decoded(frame.index, frame.pts, frame.duration, frame.timestamp_ms, image, now - started)
        started = time.perf_counter()


def _decode_ahead(source: Iterator[_Decoded], depth: int) -> Iterator[_Decoded]:
    """Run the decoder in its own thread so inference never waits on it (FFmpeg releases the GIL)."""
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

    def __init__(self, sample_fps: float | None, previous_ms: Callable[[int], float | None]) -> None:
        self.sample_fps = sample_fps
        self._previous_ms = previous_ms
        self._last_slot: int | None = None
        self._started = False

    def _slot(self, timestamp_ms: float) -> int:
        return math.floor(timestamp_ms * (self.sample_fps or 0) / 1000.0 + 1e-9)

    def keep(self, index: int, timestamp_ms: float) -> bool:
        if self.sample_fps is None:
            return True
        if not self._started:
            # Started mid-video (after a seek): the frame before this one decides, as in a full pass.
            self._started = True
            before = self._previous_ms(index)
            self._last_slot = None if before is None else self._slot(before)
        slot = self._slot(timestamp_ms)
        keep = slot != self._last_slot
        self._last_slot = slot
        return keep


class _Detector:
    """MediaPipe's HandLandmarker, or its GestureRecognizer when the bundle is a gesture_recognizer.task:
    the same hand models and options, one call per frame; `gestures` tells whether hands carry one.
    VIDEO mode tracks hands from frame to frame; IMAGE mode (`video=False`) detects afresh each call."""

    def __init__(
        self, bundle: ModelBundle, options: ProcessOptions, num_hands: int | None = None, video: bool = True
    ) -> None:
        from mediapipe.tasks.python import BaseOptions, vision  # heavy import, deferred to first use

        common = {
            "base_options": BaseOptions(model_asset_buffer=bundle.data),
            "running_mode": vision.RunningMode.VIDEO if video else vision.RunningMode.IMAGE,
            "num_hands": num_hands or options.num_hands,
            "min_hand_detection_confidence": options.min_detection_confidence,
            "min_hand_presence_confidence": options.min_presence_confidence,
            "min_tracking_confidence": options.min_tracking_confidence,
        }
        self.gestures = bundle.task == GESTURE_RECOGNIZER
        if self.gestures:
            recognizer = vision.GestureRecognizer.create_from_options(vision.GestureRecognizerOptions(**common))
            self._task: Any = recognizer
            self._detect: Callable[[Any, int], Any] = (
                recognizer.recognize_for_video if video else lambda image, _ms: recognizer.recognize(image)
            )
        else:
            landmarker = vision.HandLandmarker.create_from_options(vision.HandLandmarkerOptions(**common))
            self._task = landmarker
            self._detect = landmarker.detect_for_video if video else lambda image, _ms: landmarker.detect(image)

    def detect(self, image: Any, timestamp_ms: int) -> list[dict[str, Any]]:
        return _hands(self._detect(image, timestamp_ms), self.gestures)

    def close(self) -> None:
        self._task.close()


class _ExactDetector:
    """Every frame through the landmarker of num_hands, as MediaPipe does it; hands come out at once."""

    def __init__(self, bundle: ModelBundle, options: ProcessOptions) -> None:
        self._detector = _Detector(bundle, options)
        self._last_feed_ms = -1

    def push(self, key: Any, image: Any, ms: float) -> list[tuple[Any, list[dict[str, Any]]]]:
        # detect_for_video needs strictly increasing integer timestamps
        self._last_feed_ms = max(int(ms), self._last_feed_ms + 1)
        return [(key, self._detector.detect(image, self._last_feed_ms))]

    def finish(self) -> list[tuple[Any, list[dict[str, Any]]]]:
        return []

    def close(self) -> None:
        self._detector.close()


def _frame_detector(bundle: ModelBundle, options: ProcessOptions) -> _ExactDetector | AdaptiveDetector:
    if options.detection != "adaptive":
        return _ExactDetector(bundle, options)

    def make(num_hands: int, video: bool) -> tuple[Callable[[Any, int], list[dict[str, Any]]], Callable[[], None]]:
        detector = _Detector(bundle, options, num_hands, video)
        return detector.detect, detector.close

    return AdaptiveDetector(
        make, options.num_hands, float(options.detection_interval_ms), options.detection_scan_frames
    )


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


def process_video(  # noqa: C901 - the frame loop keeps decode, warm-up, sampling and range in one hot path
    source: VideoSource,
    options: ProcessOptions | None = None,
    *,
    models: ModelCache | None = None,
    warmup_ms: int = 0,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    progress_every: int = 15,
    frame_index: FrameIndex | None = None,
    name: str | None = None,
    bytes_read: Callable[[], int] | None = None,
) -> dict[str, Any]:
    """Detect hands in every kept frame of [start_ms, end_ms) and return the result document.

    Frames in the `warmup_ms` before start_ms go through the tracker but are not reported, so a
    segment starts with the tracking state a single pass would have there. A time range needs the
    video's frame index (built here when not given), so that a frame's index is its position in the
    whole video whatever the range; a whole-video pass reads from the first frame and counts.
    `options.detection` picks MediaPipe's own way ("exact") or detection.py's ("adaptive")."""
    options = options or ProcessOptions()
    models = models or default_models()
    bundle = models.get(options.model, options.model_uri)
    wall_started = time.perf_counter()
    with VideoFile(source, name) as video:
        start_ms = float(options.start_ms or 0)
        end_ms = float(options.end_ms) if options.end_ms is not None else math.inf
        index = frame_index
        if index is None and (start_ms > 0 or end_ms < math.inf):
            index = video.build_index()
        info = video.describe(index)
        feed_from_ms = max(0.0, start_ms - warmup_ms)
        first_index = index.first_at_or_after(start_ms) if index is not None else 0
        expected = _expected_frames(info, index, start_ms, end_ms, options.sample_fps)
        sampler = _Sampler(
            options.sample_fps,
            lambda i: index.ms(i - 1) if index is not None and 0 < i <= index.frame_count else None,
        )

        def wanted(frame_index: int, timestamp_ms: float) -> bool:
            # The sampler must see every frame in order, so it is asked before the range checks.
            return sampler.keep(frame_index, timestamp_ms) and feed_from_ms <= timestamp_ms < end_ms

        detector = _frame_detector(bundle, options)
        from mediapipe import Image, ImageFormat

        frames: list[dict[str, Any]] = []
        decoded = with_hands = 0
        decode_s = inference_s = 0.0
        last_ts: float | None = None
        last_index = -1
        end_index: int | None = None
        seen: list[tuple[int, int]] = []  # a whole-video pass learns every frame's PTS as it goes

        def report(done: list[tuple[Any, list[dict[str, Any]]]]) -> None:
            nonlocal with_hands
            for (frame_index, timestamp_ms), hands in done:
                if timestamp_ms < start_ms:
                    continue  # warm-up frame: tracked, not reported
                with_hands += bool(hands)
                frames.append({"index": frame_index, "timestamp_ms": round(timestamp_ms, 3), "hands": hands})
                if progress is not None and len(frames) % progress_every == 0:
                    progress(len(frames), expected)

        try:
            for item in _decode_ahead(_decoded(video, index, feed_from_ms, wanted), DECODE_AHEAD):
                decoded += 1
                decode_s += item.decode_s
                if item.timestamp_ms >= end_ms:
                    end_index = item.index
                    break
                last_ts = item.timestamp_ms
                last_index = item.index
                if index is None:
                    seen.append((item.pts, item.duration))
                if item.image is None:
                    continue
                if should_stop is not None and (reason := should_stop()):
                    raise StoppedEarly(reason, len(frames), frames[-1]["timestamp_ms"] if frames else None)
                started = time.perf_counter()
                image = Image(image_format=ImageFormat.SRGB, data=item.image)
                done = detector.push((item.index, item.timestamp_ms), image, item.timestamp_ms)
                inference_s += time.perf_counter() - started
                report(done)
            started = time.perf_counter()
            done = detector.finish()
            inference_s += time.perf_counter() - started
            report(done)
        finally:
            detector.close()
        if decoded == 0:
            raise VideoDecodeError("no_frames", f"{os.path.basename(video.name)} holds no decodable video frame")
        promised = video.header_frame_count or (index.frame_count if index is not None else None)
        if end_index is None:
            end_index = index.frame_count if index is not None else last_index + 1
        decode = _decode_status(promised, last_index + 1, last_ts, end_ms, video.truncated)
        if index is None and decode["complete"] and seen:
            # Every frame was read: the counts and times are as exact as the probe's index makes them.
            info = info.with_index(FrameIndex.of(video.time_base, video.start_pts, seen))
        if progress is not None:
            progress(len(frames), expected)
    stats: dict[str, Any] = {
        "frames_decoded": decoded,
        "frames_processed": len(frames),
        "frames_with_hands": with_hands,
        "decode_s": decode_s,
        "inference_s": inference_s,
        "wall_s": time.perf_counter() - wall_started,
    }
    if bytes_read is not None:
        stats["bytes_read"] = bytes_read()
    return build_result(
        video=info.to_dict(),
        model=bundle.describe(),
        options=options.to_dict(),
        time_range={
            "start_ms": options.start_ms or 0,
            "end_ms": options.end_ms,
            "first_index": first_index,
            "end_index": end_index,
        },
        frames=frames,
        stats=finish_stats(stats),
        decode=decode,
    )


def _expected_frames(
    info: VideoInfo, index: FrameIndex | None, start_ms: float, end_ms: float, sample_fps: float | None
) -> int | None:
    if index is not None:
        stop = index.frame_count if end_ms == math.inf else index.first_at_or_after(end_ms)
        count = max(0, stop - index.first_at_or_after(start_ms))
        if sample_fps is None:
            return count
        span = (index.duration_ms if end_ms == math.inf else min(end_ms, index.duration_ms)) - start_ms
        return max(1, min(count, math.ceil(max(0.0, span) / 1000.0 * sample_fps)))
    return expected_frames(info.duration_ms, info.fps, start_ms, None if end_ms == math.inf else end_ms, sample_fps)


def _decode_status(
    promised: int | None, reached: int, last_ts: float | None, end_ms: float, truncated: bool
) -> dict[str, Any]:
    """Whether decoding reached the end the container promised (`reached`: frames up to and
    including the last one decoded)."""
    reached_end_of_range = last_ts is not None and last_ts >= end_ms
    short = promised is not None and reached < promised
    if reached_end_of_range or not (short or truncated):
        return {"complete": True, "stopped_at_ms": None, "error": None}
    of = f" of {promised}" if promised is not None else ""
    return {
        "complete": False,
        "stopped_at_ms": None if last_ts is None else round(last_ts, 3),
        "error": (
            f"decoding stopped after {reached}{of} frames "
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
