"""Exact frame access through FFmpeg (PyAV): every frame with its container PTS, its index in
presentation order over the whole video, and its picture upright. The engine and the pictures read
videos only through here, so a frame is the same frame everywhere (a segment, a single pass, a drawing)."""

from __future__ import annotations

import bisect
import io
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import av
import av.error
import numpy as np

from chalicelib.shared.frame_index import decode_index, encode_index

VideoSource = str | os.PathLike[str] | io.IOBase | IO[bytes]  # a path, or a seekable binary file


class VideoDecodeError(Exception):
    """The file is not a video this engine can decode (not a video, empty, or no decodable frame)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def pts_to_ms(pts: int, start_pts: int, time_base: Fraction) -> float:
    """A frame's time in ms from the stream's start, computed exactly and rounded once: the same
    integers give the same float in every process, so a time is also an identity."""
    return float((pts - start_pts) * time_base * 1000)


@dataclass(frozen=True)
class FrameIndex:
    """Every frame's PTS in presentation order, from demuxing the packets (no decoding). A frame's
    index is its position here; a segment finds its first frame by time with `first_at_or_after`."""

    time_base: Fraction
    start_pts: int
    pts: tuple[int, ...]
    end_pts: int  # where the last frame stops being shown (its PTS plus its duration)

    @property
    def frame_count(self) -> int:
        return len(self.pts)

    def ms(self, index: int) -> float:
        return pts_to_ms(self.pts[index], self.start_pts, self.time_base)

    @property
    def duration_ms(self) -> float:
        return pts_to_ms(self.end_pts, self.start_pts, self.time_base)

    def first_at_or_after(self, ms: float) -> int:
        """The index of the first frame shown at or after `ms` (frame_count when none is)."""
        low, high = 0, len(self.pts)
        while low < high:
            middle = (low + high) // 2
            if self.ms(middle) < ms:
                low = middle + 1
            else:
                high = middle
        return low

    def position_of(self, pts: int) -> int | None:
        found = bisect.bisect_left(self.pts, pts)
        return found if found < len(self.pts) and self.pts[found] == pts else None

    def frame_rate_mode(self) -> str:
        """'variable' when frame intervals differ by more than a tick or 1 % (phones in low light)."""
        steps = [b - a for a, b in zip(self.pts, self.pts[1:], strict=False)]
        if not steps:
            return "constant"
        low, high = min(steps), max(steps)
        return "constant" if high - low <= max(1, high // 100) else "variable"

    @classmethod
    def of(cls, time_base: Fraction, start_pts: int, shown: list[tuple[int, int]]) -> FrameIndex:
        """From (PTS, duration) of every frame, in any order: the packets' when demuxing, the decoded
        frames' after a whole-video pass. A frame without a duration lasts as long as the one before."""
        if not shown:
            raise ValueError("a frame index needs at least one frame")
        ordered = sorted(shown)
        pts = tuple(p for p, _ in ordered)
        end = max(p + d for p, d in ordered)
        if end <= pts[-1]:
            end = pts[-1] + (pts[-1] - pts[-2] if len(pts) > 1 else 1)
        return cls(time_base, start_pts, pts, end)

    def to_bytes(self) -> bytes:
        return encode_index(self.time_base, self.start_pts, self.pts, self.end_pts)

    @classmethod
    def from_bytes(cls, data: bytes) -> FrameIndex:
        return cls(*decode_index(data))


@dataclass(frozen=True)
class VideoInfo:
    path: str
    width: int  # upright, as the frames reach the model
    height: int
    fps: float
    frame_count: int | None
    duration_ms: float | None
    rotation: int  # degrees clockwise the stored picture is turned for display
    codec: str
    container: str
    frame_rate_mode: str | None = None  # "constant" | "variable", known once every frame's PTS is

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
            "frame_rate_mode": self.frame_rate_mode,
        }

    def with_index(self, index: FrameIndex) -> VideoInfo:
        """Exact counts and times from the frame index instead of the header's; the rate stays the
        container's average unless it gives none."""
        duration = index.duration_ms
        fps = self.fps or (index.frame_count * 1000.0 / duration if duration > 0 else 0.0)
        return replace(
            self,
            frame_count=index.frame_count,
            duration_ms=duration,
            fps=fps,
            frame_rate_mode=index.frame_rate_mode(),
        )


@dataclass
class Frame:
    """One decoded frame: its identity (index, PTS, time) and its picture, converted only on demand."""

    index: int
    pts: int
    duration: int  # in time-base ticks; 0 when the container does not say
    timestamp_ms: float
    _frame: av.VideoFrame
    _turns: int  # quarter turns counter-clockwise that make the picture upright

    def rgb(self) -> np.ndarray:
        return self._upright(self._frame.to_ndarray(format="rgb24"))

    def bgr(self) -> np.ndarray:
        return self._upright(self._frame.to_ndarray(format="bgr24"))

    def _upright(self, image: np.ndarray) -> np.ndarray:
        # Contiguous either way: FFmpeg pads rows (a 360-pixel row is 1088 bytes), MediaPipe wants none.
        return np.ascontiguousarray(np.rot90(image, self._turns) if self._turns else image)


# Demuxer names are families ("mov,mp4,m4a,..."); the member is told apart by the file's brand.
_FAMILIES = {"mov,mp4,m4a,3gp,3g2,mj2": "mp4", "matroska,webm": "mkv"}


class VideoFile:
    """One opened video (a path or a seekable binary file object, such as a ranged S3 reader)."""

    def __init__(self, source: VideoSource, name: str | None = None) -> None:
        self.name = name or (os.fspath(source) if isinstance(source, (str, os.PathLike)) else "video")
        if isinstance(source, (str, os.PathLike)):
            file = Path(source)
            if not file.is_file():
                raise VideoDecodeError("not_found", f"{source} does not exist or is not a file")
            if file.stat().st_size == 0:
                raise VideoDecodeError("empty", f"{file.name} is empty (0 bytes)")
            opened: Any = str(file)
        else:
            if getattr(source, "size", None) == 0:
                raise VideoDecodeError("empty", f"{os.path.basename(self.name)} is empty (0 bytes)")
            source.seek(0)  # the same reader may serve several opens (the index, then the frames)
            opened = source
        try:
            self._container = av.open(opened, mode="r")
        except (av.error.FFmpegError, ValueError, OSError) as error:
            raise self._not_video(error) from None
        if not self._container.streams.video:
            self._container.close()
            raise VideoDecodeError("not_video", f"{self._basename} holds no video stream")
        self._stream = self._container.streams.video[0]
        # FFmpeg's own threads decode while MediaPipe runs; the worker's vCPUs are otherwise idle then.
        self._stream.thread_type = "AUTO"
        self.time_base: Fraction = self._stream.time_base or Fraction(1, 90000)
        self.start_pts = int(self._stream.start_time or 0)
        self._turns: int | None = None
        self._size: tuple[int, int] | None = None  # (width, height) of the stored picture

    @property
    def _basename(self) -> str:
        return os.path.basename(self.name)

    def _not_video(self, error: BaseException) -> VideoDecodeError:
        return VideoDecodeError(
            "not_video", f"{self._basename} is not a video that can be decoded (unknown container or codec: {error})"
        )

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoFile:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _container_name(self) -> str:
        family = self._container.format.name
        suffix = Path(self.name).suffix.lstrip(".").lower()
        if family == "mov,mp4,m4a,3gp,3g2,mj2":
            brand = str(self._container.metadata.get("major_brand", "")).strip()
            return "mov" if brand == "qt" else "mp4"
        if family == "matroska,webm":
            return "webm" if suffix == "webm" and self._stream.codec_context.name in ("vp8", "vp9", "av1") else "mkv"
        return _FAMILIES.get(family, family.split(",")[0])

    def _learn_geometry(self) -> None:
        """Rotation lives in each frame's display matrix, so the first frame is decoded for it."""
        if self._turns is not None:
            return
        self._container.seek(0, stream=self._stream, backward=True)
        try:
            for frame in self._container.decode(self._stream):
                self._turns = round((frame.rotation or 0) / 90) % 4
                self._size = (frame.width, frame.height)
                break
        except av.error.FFmpegError:
            pass
        finally:
            self._container.seek(0, stream=self._stream, backward=True)
        if self._turns is None:
            raise VideoDecodeError("no_frames", f"{self._basename} holds no decodable video frame")

    def describe(self, index: FrameIndex | None = None) -> VideoInfo:
        self._learn_geometry()
        assert self._turns is not None and self._size is not None
        width, height = self._size if self._turns % 2 == 0 else self._size[::-1]
        rate = self._stream.average_rate or self._stream.guessed_rate
        fps = float(rate) if rate else 0.0
        count = int(self._stream.frames or 0) or None
        duration: float | None = None
        if self._stream.duration:
            duration = float(self._stream.duration * self.time_base * 1000)
        elif self._container.duration:
            duration = self._container.duration / 1000.0
        if duration is None and count and fps > 0:
            duration = count * 1000.0 / fps
        info = VideoInfo(
            path=self.name,
            width=width,
            height=height,
            fps=fps if math.isfinite(fps) else 0.0,
            frame_count=count,
            duration_ms=duration,
            rotation=(360 - 90 * self._turns) % 360,
            codec=self._stream.codec_context.name or "unknown",
            container=self._container_name(),
        )
        return info.with_index(index) if index is not None and index.frame_count else info

    @property
    def header_frame_count(self) -> int | None:
        return int(self._stream.frames or 0) or None

    def build_index(self) -> FrameIndex:
        """Demux every packet of the video stream (no decoding) and sort their PTS. Packets the
        demuxer marks to be discarded (before an edit list's start) are never shown, so they are no frame."""
        shown: list[tuple[int, int]] = []
        self._container.seek(0, stream=self._stream, backward=True)
        try:
            for packet in self._container.demux(self._stream):
                if packet.size == 0 or packet.pts is None or packet.is_discard:
                    continue
                shown.append((int(packet.pts), int(packet.duration or 0)))
        except av.error.FFmpegError:
            pass  # a truncated file: the index holds what is there, and decoding will say where it stopped
        finally:
            self._container.seek(0, stream=self._stream, backward=True)
        if not shown:
            raise VideoDecodeError("no_frames", f"{self._basename} holds no video frame")
        return FrameIndex.of(self.time_base, self.start_pts, shown)

    def frames(self, *, from_ms: float = 0.0, index: FrameIndex | None = None) -> Iterator[Frame]:
        """Frames in presentation order from the keyframe at or before `from_ms`. With an index, a
        frame's index is its PTS's position there (exact after any seek); without one, reading starts
        at the first frame and counts. A decoding error ends the iteration (a truncated file):
        `self.truncated` says so afterwards."""
        self._learn_geometry()
        assert self._turns is not None
        self.truncated = False
        if from_ms > 0:
            if index is None:
                raise ValueError("seeking needs the frame index, or frame indices would be guessed")
            target = self.start_pts + math.floor(Fraction(from_ms) / 1000 / self.time_base)
            self._container.seek(target, stream=self._stream, backward=True)
        else:
            self._container.seek(0, stream=self._stream, backward=True)
        position = -1
        last_pts: int | None = None
        try:
            for frame in self._container.decode(self._stream):
                pts = frame.pts
                if pts is None:
                    # Streams without timestamps (raw H.264): one tick on from the last frame.
                    pts = (last_pts + 1) if last_pts is not None else self.start_pts
                if last_pts is not None and pts <= last_pts:
                    continue  # a leading picture of an open GOP after a seek: shown before the keyframe
                last_pts = pts
                found = index.position_of(pts) if index is not None else None
                position = found if found is not None else position + 1
                time_ms = pts_to_ms(pts, self.start_pts, self.time_base)
                yield Frame(position, pts, int(frame.duration or 0), time_ms, frame, self._turns)
        except av.error.FFmpegError:
            self.truncated = True


def probe(source: VideoSource, name: str | None = None, *, index: bool = True) -> tuple[VideoInfo, FrameIndex | None]:
    """Container facts and (by default) the frame index, without decoding more than the first frame."""
    with VideoFile(source, name) as video:
        frame_index = video.build_index() if index else None
        return video.describe(frame_index), frame_index
