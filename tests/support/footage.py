"""Phone footage the shared clips lack, made with PyAV from real frames of a shared clip (so there are
hands to find): variable frame rate with a dropped-frame hole, B-frames with an edit list, a non-zero
stream start time, rotation metadata, an NTSC time base. And an independent PyAV pass over any file,
which the engine's frame indices and timestamps are checked against."""

from __future__ import annotations

import random
from dataclasses import dataclass
from fractions import Fraction
from functools import cache
from pathlib import Path

import av
import cv2
import numpy as np

from tests.support.paths import data_path

SOURCE = "videos/one_hand_wave_portrait.mp4"


@cache
def source_frames(count: int = 90, width: int = 360, height: int = 640) -> tuple[np.ndarray, ...]:
    """The first `count` frames of the wave clip, upright RGB at a size that encodes quickly."""
    frames: list[np.ndarray] = []
    with av.open(str(data_path(SOURCE))) as container:
        for frame in container.decode(video=0):
            frames.append(frame.reformat(width=width, height=height, format="rgb24").to_ndarray())
            if len(frames) == count:
                break
    return tuple(frames)


@dataclass(frozen=True)
class Clip:
    """How to write one generated clip."""

    name: str
    suffix: str = ".mp4"
    time_base: Fraction = Fraction(1, 90000)
    ticks: tuple[int, ...] = ()  # each frame's PTS, from 0, in time-base ticks
    b_frames: int = 0
    gop: int = 30
    rotation: int = 0  # the display rotation PyAV writes (counter-clockwise degrees, FFmpeg's convention)
    start_ticks: int = 0  # added to every PTS: a stream that does not start at 0


def _vfr_ticks(count: int, seed: int) -> tuple[int, ...]:
    """Low-light phone timing: intervals between 25 and 60 ms, and one 400 ms hole of dropped frames."""
    rng = random.Random(seed)
    ticks, now = [], 0
    for number in range(count):
        ticks.append(now)
        step_ms = 400 if number == count // 2 else rng.choice([25, 33, 33, 33, 41, 50, 60])
        now += step_ms * 90
    return tuple(ticks)


def _even_ticks(count: int, step: int) -> tuple[int, ...]:
    return tuple(number * step for number in range(count))


HARD_CASES: tuple[Clip, ...] = (
    Clip("vfr_hole", ticks=_vfr_ticks(90, seed=7)),
    Clip("bframes_editlist", time_base=Fraction(1, 30000), ticks=_even_ticks(90, 1001), b_frames=3, gop=24),
    Clip("vfr_bframes", ticks=_vfr_ticks(90, seed=11), b_frames=2, gop=20),
    Clip("start_time", suffix=".mkv", time_base=Fraction(1, 1000), ticks=_even_ticks(90, 33), start_ticks=1400),
    Clip("rotate_90", ticks=_even_ticks(90, 3000), rotation=90),
    Clip("rotate_180", ticks=_even_ticks(90, 3000), rotation=180),
    Clip("rotate_270", ticks=_even_ticks(90, 3000), rotation=-90),
    Clip("ntsc_2997", time_base=Fraction(1, 30000), ticks=_even_ticks(90, 1001)),
)


def write_clip(clip: Clip, folder: Path) -> Path:
    """Encode the clip with libx264. A rotated clip stores each picture turned away from upright and
    carries the display matrix that turns it back, as a phone held sideways does."""
    path = folder / f"{clip.name}{clip.suffix}"
    frames = source_frames(len(clip.ticks))
    turns = round(clip.rotation / 90) % 4
    stored = [np.ascontiguousarray(np.rot90(f, -turns)) for f in frames]
    height, width = stored[0].shape[:2]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264")
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = clip.time_base
        stream.codec_context.time_base = clip.time_base
        stream.codec_context.options = {"bf": str(clip.b_frames), "g": str(clip.gop), "preset": "veryfast"}
        if clip.rotation:
            stream.set_display_rotation(clip.rotation)
        for picture, tick in zip(stored, clip.ticks, strict=True):
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts = tick + clip.start_ticks
            frame.time_base = clip.time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@dataclass(frozen=True)
class Reference:
    """What an independent PyAV pass (demux and decode everything, no seeking) says about a file."""

    timestamps_ms: tuple[float, ...]  # each frame's PTS x time base less the stream's start, in decode output order
    keyframes: tuple[int, ...]  # frame indices of the keyframes
    rotation: int  # PyAV's frame.rotation of the first frame
    start_time: int
    first_dts: int | None

    @property
    def frame_count(self) -> int:
        return len(self.timestamps_ms)

    def decoded_by_segment(self, start_ms: float, end_ms: float | None, warmup_ms: float) -> int:
        """How many frames a segment decodes: from the keyframe at or before its warm-up start up to and
        including the first frame at or after its end (which tells it that it is done)."""
        feed = max(0.0, start_ms - warmup_ms)
        first = max([k for k in self.keyframes if self.timestamps_ms[k] <= feed], default=0)
        stop = self.frame_count
        if end_ms is not None:
            stop = next((i + 1 for i, t in enumerate(self.timestamps_ms) if t >= end_ms), self.frame_count)
        return stop - first


def reference(path: Path) -> Reference:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        start = int(stream.start_time or 0)
        base = stream.time_base
        assert base is not None
        packets = [p for p in container.demux(stream) if p.size]
        order = sorted(packets, key=lambda p: p.pts if p.pts is not None else 0)
        keyframes = tuple(i for i, p in enumerate(order) if p.is_keyframe)
        first_dts = min((p.dts for p in packets if p.dts is not None), default=None)
    with av.open(str(path)) as container:
        decoded = list(container.decode(video=0))
    return Reference(
        timestamps_ms=tuple(float((int(f.pts or 0) - start) * base * 1000) for f in decoded),
        keyframes=keyframes,
        rotation=int(decoded[0].rotation or 0),
        start_time=start,
        first_dts=first_dts,
    )


def write_video(path: Path, frames: list[np.ndarray], fps: float = 25.0) -> Path:
    """Frames written as an mp4v file by OpenCV (the engine and recognizer tests make clips this way)."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (width, height))
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path
