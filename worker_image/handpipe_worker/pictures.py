"""Pictures of a result for people: hands drawn on frames, a contact sheet, a gesture timeline and an
annotated video. Frames are read (and the video written) with PyAV through video.py, so a drawing
lands on the very frame the engine saw; OpenCV draws and encodes the PNGs (no matplotlib).

Gesture labels come from `chalicelib.shared.insights`; when no insights document is passed it is computed,
which needs chalicelib/shared/insights.py next to the other shared modules (the worker image copies only some
of chalicelib, so add it there before rendering pictures in the worker)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from .video import FrameIndex, VideoFile, VideoSource

# MediaPipe's 21-point hand skeleton: thumb, the four fingers from the wrist, and the palm's knuckle line.
HAND_CONNECTIONS: tuple[tuple[int, int], ...] = (
    (0, 1), (1, 2), (2, 3), (3, 4),  # thumb
    (0, 5), (5, 6), (6, 7), (7, 8),  # index
    (9, 10), (10, 11), (11, 12),  # middle
    (13, 14), (14, 15), (15, 16),  # ring
    (0, 17), (17, 18), (18, 19), (19, 20),  # little finger
    (5, 9), (9, 13), (13, 17),  # palm
)  # fmt: skip
FINGERTIPS = (4, 8, 12, 16, 20)

# BGR colours
HANDEDNESS_COLOURS: dict[str, tuple[int, int, int]] = {"Left": (235, 170, 40), "Right": (40, 150, 255)}
GESTURE_COLOURS: dict[str, tuple[int, int, int]] = {
    "open_palm": (80, 175, 76),
    "closed_fist": (60, 60, 220),
    "pointing_up": (0, 165, 255),
    "thumb_up": (200, 120, 30),
    "thumb_down": (150, 50, 140),
    "victory": (170, 170, 0),
    "i_love_you": (180, 90, 230),
    "none": (170, 170, 170),
}
# For labels of a custom gesture classifier: picked by a stable hash of the label, so a label keeps its
# colour across pictures and jobs; the same palette and hash as chalicelib/web/viewer.html's gestureColour.
EXTRA_COLOURS_RGB = ("#e6194b", "#3cb44b", "#ffe119", "#0082c8", "#f58231", "#911eb4", "#46f0f0", "#f032e6")
EXTRA_COLOURS: tuple[tuple[int, int, int], ...] = tuple(
    (int(rgb[5:7], 16), int(rgb[3:5], 16), int(rgb[1:3], 16)) for rgb in EXTRA_COLOURS_RGB
)
PRESENT_COLOUR = (225, 225, 225)
FONT = cv2.FONT_HERSHEY_SIMPLEX

Ref = tuple[int, int]  # (frame index, hand position in that frame's hands[])


# ------------------------------------------------------------------------------------ drawing


def _text(
    image: np.ndarray,
    text: str,
    origin: tuple[int, int],
    scale: float,
    colour: tuple[int, int, int] = (255, 255, 255),
    background: tuple[int, int, int] | None = (0, 0, 0),
    thickness: int = 1,
) -> None:
    """Text with its top-left corner at `origin`, on a filled box so it reads on any picture."""
    (w, h), base = cv2.getTextSize(text, FONT, scale, thickness)
    x, y = origin
    x = max(0, min(x, image.shape[1] - w - 4))
    y = max(0, min(y, image.shape[0] - h - base - 4))
    if background is not None:
        cv2.rectangle(image, (x, y), (x + w + 4, y + h + base + 4), background, -1)
    cv2.putText(image, text, (x + 2, y + h + 2), FONT, scale, colour, thickness, cv2.LINE_AA)


def draw_hands(
    image_bgr: np.ndarray, hands: Sequence[Mapping[str, Any]], labels: Sequence[str | None] | None = None
) -> np.ndarray:
    """A copy of the (upright) frame with each hand's skeleton and points drawn, coloured by
    handedness, and a caption with the handedness and, when given, the hand's gesture label."""
    image = image_bgr.copy()
    height, width = image.shape[:2]
    unit = max(1.0, min(width, height) / 360.0)
    line, radius = max(1, round(1.5 * unit)), max(2, round(2.5 * unit))
    for i, hand in enumerate(hands):
        colour = HANDEDNESS_COLOURS.get(hand.get("handedness", ""), (255, 255, 255))
        points = [(round(p[0] * width), round(p[1] * height)) for p in hand["landmarks"]]
        for a, b in HAND_CONNECTIONS:
            cv2.line(image, points[a], points[b], colour, line, cv2.LINE_AA)
        for k, point in enumerate(points):
            size = radius + (1 if k in FINGERTIPS else 0)
            cv2.circle(image, point, size, (255, 255, 255), -1, cv2.LINE_AA)
            cv2.circle(image, point, size, colour, max(1, line // 2), cv2.LINE_AA)
        label = labels[i] if labels is not None and i < len(labels) else None
        caption = hand.get("handedness", "?") + (f" {label}" if label else "")
        box_colour = gesture_colour(label) if label else (40, 40, 40)
        top = max(p[1] for p in points) + radius + 2
        left = min(p[0] for p in points)
        _text(image, caption, (left, top), 0.45 * unit, background=box_colour, thickness=max(1, round(unit / 1.5)))
    return image


# ------------------------------------------------------------------------------------ result helpers


def gesture_colour(label: str) -> tuple[int, int, int]:
    """The BGR colour of a gesture label: the fixed one of a known gesture, else a stable pick."""
    if label in GESTURE_COLOURS:
        return GESTURE_COLOURS[label]
    digest = 0
    for char in label:
        digest = (digest * 31 + ord(char)) & 0xFFFFFFFF
    return EXTRA_COLOURS[digest % len(EXTRA_COLOURS)]


def _insights_for(result: Mapping[str, Any], insights: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if insights is not None:
        return insights
    from chalicelib.shared.insights import analyze  # shared module; see the module docstring

    return analyze(result)


def hand_labels(result: Mapping[str, Any], insights: Mapping[str, Any]) -> dict[Ref, str]:
    """The gesture to show for each hand: its track's smoothed range covering that frame, else the
    frame's own (unsmoothed) label."""
    labels: dict[Ref, str] = {(int(f), int(h)): str(label) for f, h, label, _score in insights["gestures"]["per_frame"]}
    track_of = {(int(f), int(h)): int(t["track"]) for t in insights.get("tracks", []) for f, h in t["hands"]}
    ranges: dict[int, list[Mapping[str, Any]]] = {}
    for item in insights["gestures"]["ranges"]:
        ranges.setdefault(int(item["track"]), []).append(item)
    for frame in result["frames"]:
        t = float(frame["timestamp_ms"])
        for h in range(len(frame["hands"])):
            ref = (int(frame["index"]), h)
            for item in ranges.get(track_of.get(ref, -1), []):
                if item["start_ms"] <= t < item["end_ms"]:
                    labels[ref] = str(item["label"])
                    break
    return labels


def _read_frames(
    source: VideoSource, wanted: set[int] | None = None, index: FrameIndex | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """(index, upright BGR frame) for the frames the engine read, identified as the engine identifies
    them. With `wanted` and the video's frame index, each wanted frame is reached by a seek (a contact
    sheet of a long video decodes a few GOPs, not the video); otherwise reading runs from the start."""
    with VideoFile(source) as video:
        if wanted and index is not None:
            for number in sorted(wanted):
                if not 0 <= number < index.frame_count:
                    continue
                for frame in video.frames(from_ms=index.ms(number), index=index):
                    if frame.index >= number:
                        if frame.index == number:
                            yield number, frame.bgr()
                        break
            return
        last = max(wanted) if wanted else None
        for frame in video.frames():
            if wanted is None or frame.index in wanted:
                yield frame.index, frame.bgr()
            if last is not None and frame.index >= last:
                return


def _png(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("PNG encoding failed")
    return data.tobytes()


def _format_time(ms: float) -> str:
    seconds = ms / 1000.0
    if seconds < 60:
        return f"{seconds:.2f} s"
    return f"{int(seconds // 60)}:{seconds % 60:05.2f}"


# ------------------------------------------------------------------------------------ contact sheet


def _pick_frames(frames: Sequence[Mapping[str, Any]], count: int) -> list[Mapping[str, Any]]:
    """`count` processed frames spread evenly over time, taken from the frames with hands when there
    are enough of them, topped up with frames without hands otherwise."""

    def spread(items: Sequence[Mapping[str, Any]], n: int) -> list[Mapping[str, Any]]:
        if n <= 0 or not items:
            return []
        if len(items) <= n:
            return list(items)
        return [items[round(k * (len(items) - 1) / max(1, n - 1))] for k in range(n)]

    with_hands = [f for f in frames if f["hands"]]
    chosen = spread(with_hands, count)
    if len(chosen) < count:
        others = [f for f in frames if not f["hands"]]
        chosen += spread(others, count - len(chosen))
    return sorted(chosen, key=lambda f: f["index"])


def contact_sheet(
    video_path: VideoSource,
    result: Mapping[str, Any],
    *,
    frame_index: FrameIndex | None = None,
    columns: int = 4,
    rows: int = 3,
    width: int = 1200,
    insights: Mapping[str, Any] | None = None,
) -> bytes:
    """A PNG grid of up to columns x rows processed frames, evenly sampled (frames with hands first),
    each with its hands and gestures drawn and its timestamp. `width` is the sheet's width in pixels."""
    picked = _pick_frames(result["frames"], columns * rows)
    labels = hand_labels(result, _insights_for(result, insights))
    video = result.get("video") or {}
    aspect = (video.get("height") or 9) / (video.get("width") or 16)
    tile_w = max(16, width // columns)
    tile_h = max(16, round(tile_w * aspect))
    sheet: np.ndarray = np.full((tile_h * rows, tile_w * columns, 3), 32, np.uint8)
    by_index = {int(f["index"]): f for f in picked}
    images = dict(_read_frames(video_path, set(by_index), frame_index)) if by_index else {}
    for slot, frame in enumerate(picked):
        image = images.get(int(frame["index"]))
        if image is None:
            continue
        refs = [(int(frame["index"]), h) for h in range(len(frame["hands"]))]
        drawn = draw_hands(image, frame["hands"], [labels.get(ref) for ref in refs])
        tile = cv2.resize(drawn, (tile_w, tile_h), interpolation=cv2.INTER_AREA)
        _text(tile, _format_time(float(frame["timestamp_ms"])), (4, 4), 0.5)
        row, col = divmod(slot, columns)
        sheet[row * tile_h : (row + 1) * tile_h, col * tile_w : (col + 1) * tile_w] = tile
    # a thin grid between tiles
    for col in range(1, columns):
        sheet[:, col * tile_w - 1 : col * tile_w + 1] = 32
    for row in range(1, rows):
        sheet[row * tile_h - 1 : row * tile_h + 1, :] = 32
    if sheet.shape[1] != width:
        sheet = cv2.copyMakeBorder(sheet, 0, 0, 0, width - sheet.shape[1], cv2.BORDER_CONSTANT, value=(32, 32, 32))
    return _png(sheet)


# ------------------------------------------------------------------------------------ timeline


def _nice_step(span_ms: float, max_ticks: int) -> float:
    for step in (100, 200, 250, 500, 1000, 2000, 5000, 10000, 15000, 30000, 60000, 120000, 300000, 600000):
        if span_ms / step <= max_ticks:
            return float(step)
    return float(math.ceil(span_ms / max_ticks / 600000) * 600000)


def timeline_png(result: Mapping[str, Any], insights: Mapping[str, Any], *, width: int = 1200) -> bytes:  # noqa: C901 - one drawing step per timeline element
    """A PNG time axis with one lane per hand track: light grey where the hand is on screen, coloured
    by gesture where a smoothed gesture range holds, and a legend of the gesture colours."""
    frames = result["frames"]
    video = result.get("video") or {}
    start_ms = float((result.get("range") or {}).get("start_ms") or 0)
    end_candidates = [float(f["timestamp_ms"]) for f in frames[-1:]]
    if (result.get("range") or {}).get("end_ms"):
        end_candidates.append(float(result["range"]["end_ms"]))
    elif video.get("duration_ms"):
        end_candidates.append(float(video["duration_ms"]))
    end_ms = max([start_ms + 1.0, *end_candidates])
    tracks = insights["motion"]["tracks"]

    margin_left, margin_right, header, lane_h, lane_gap = 150, 20, 44, 34, 10
    axis_h, legend_h = 40, 40
    height = header + max(1, len(tracks)) * (lane_h + lane_gap) + axis_h + legend_h
    image = np.full((height, width, 3), 255, np.uint8)
    plot_w = width - margin_left - margin_right

    def x_of(ms: float) -> int:
        return margin_left + round((ms - start_ms) / (end_ms - start_ms) * plot_w)

    title = f"{video.get('filename', 'video')}  -  {len(tracks)} hand track(s), {_format_time(end_ms - start_ms)}"
    if insights["gestures"].get("method") == "gesture_recognizer":
        title += "  -  gestures by MediaPipe GestureRecognizer"
    _text(image, title, (10, 10), 0.55, colour=(30, 30, 30), background=None, thickness=1)

    ranges_by_track: dict[int, list[Mapping[str, Any]]] = {}
    for item in insights["gestures"]["ranges"]:
        ranges_by_track.setdefault(int(item["track"]), []).append(item)
    for lane, track in enumerate(tracks):
        top = header + lane * (lane_h + lane_gap)
        _text(image, f"track {track['track']} {track['handedness']}", (8, top + 8), 0.5, (30, 30, 30), None)
        cv2.rectangle(image, (margin_left, top), (margin_left + plot_w, top + lane_h), (245, 245, 245), -1)
        for a, b in track["present"]:
            cv2.rectangle(image, (x_of(a), top + 4), (max(x_of(a) + 1, x_of(b)), top + lane_h - 4), PRESENT_COLOUR, -1)
        for item in ranges_by_track.get(int(track["track"]), []):
            colour = gesture_colour(str(item["label"]))
            x0, x1 = x_of(float(item["start_ms"])), max(x_of(float(item["start_ms"])) + 1, x_of(float(item["end_ms"])))
            cv2.rectangle(image, (x0, top + 4), (x1, top + lane_h - 4), colour, -1)
            if x1 - x0 > 70:
                _text(image, str(item["label"]), (x0 + 3, top + 8), 0.4, (255, 255, 255), None)
    if not tracks:
        top = header
        _text(image, "no hands", (margin_left + 8, top + 8), 0.5, (120, 120, 120), None)

    axis_y = header + max(1, len(tracks)) * (lane_h + lane_gap)
    cv2.line(image, (margin_left, axis_y), (margin_left + plot_w, axis_y), (60, 60, 60), 1)
    step = _nice_step(end_ms - start_ms, max(2, plot_w // 90))
    tick = math.ceil(start_ms / step) * step
    while tick <= end_ms + 1e-6:
        x = x_of(tick)
        cv2.line(image, (x, axis_y), (x, axis_y + 6), (60, 60, 60), 1)
        label = f"{tick / 1000:g} s"
        (tw, _), _ = cv2.getTextSize(label, FONT, 0.4, 1)
        _text(image, label, (x - tw // 2 - 2, axis_y + 8), 0.4, (60, 60, 60), None)
        tick += step

    x = 10
    legend_y = axis_y + axis_h
    legend = [(label, gesture_colour(label)) for label in insights["gestures"].get("labels", GESTURE_COLOURS)]
    for label, colour in [("on screen", PRESENT_COLOUR), *legend]:
        cv2.rectangle(image, (x, legend_y + 6), (x + 16, legend_y + 22), colour, -1)
        cv2.rectangle(image, (x, legend_y + 6), (x + 16, legend_y + 22), (120, 120, 120), 1)
        _text(image, label, (x + 20, legend_y + 4), 0.45, (30, 30, 30), None)
        (tw, _), _ = cv2.getTextSize(label, FONT, 0.45, 1)
        x += 20 + tw + 22
    return _png(image)


# ------------------------------------------------------------------------------------ annotated video


def annotated_video(
    video_path: VideoSource,
    result: Mapping[str, Any],
    out_path: str | os.PathLike[str],
    insights: Mapping[str, Any] | None = None,
    *,
    frame_index: FrameIndex | None = None,
) -> Path:
    """Write an H.264 MP4 (yuv420p, `+faststart`, so browsers play it and start before it has all
    arrived) of the whole video, upright, with each processed frame's hands and gesture labels drawn
    and every frame at its own presentation time (variable frame rate is kept). A frame that was not
    processed (sampling, or between a segment's frames) shows the last processed frame's drawing when
    that frame is at most two frames older; frames outside the result's range are copied as they are."""
    out = Path(out_path)
    labels = hand_labels(result, _insights_for(result, insights))
    processed = {int(f["index"]): f for f in result["frames"]}
    hold_frames = 2  # the drawing of a processed frame is kept over at most this many later frames
    last_drawn: tuple[int, Mapping[str, Any]] | None = None
    written = 0
    with VideoFile(video_path) as video, av.open(str(out), mode="w", format="mp4", options=_FASTSTART) as output:
        stream: Any = None
        for frame in video.frames(index=frame_index):
            image = frame.bgr()
            if stream is None:
                stream = _h264_stream(output, image.shape[1], image.shape[0], video.time_base)
            source = processed.get(frame.index)
            if source is not None:
                last_drawn = (frame.index, source)
            elif last_drawn is not None and frame.index - last_drawn[0] <= hold_frames:
                source = last_drawn[1]
            if source is not None and source["hands"]:
                refs = [(int(source["index"]), h) for h in range(len(source["hands"]))]
                image = draw_hands(image, source["hands"], [labels.get(ref) for ref in refs])
            encoded = av.VideoFrame.from_ndarray(image, format="bgr24")
            encoded.pts = frame.pts - video.start_pts
            encoded.time_base = video.time_base
            output.mux(stream.encode(encoded))
            written += 1
        if stream is not None:
            output.mux(stream.encode(None))
    if not written:
        out.unlink(missing_ok=True)
        raise ValueError(f"{video_path} has no decodable frame")
    return out


_FASTSTART = {"movflags": "+faststart"}


def _h264_stream(output: Any, width: int, height: int, time_base: Fraction) -> Any:
    """libx264 at a quality a person reviewing landmarks wants (CRF 23), yuv420p for every browser.
    Odd sizes are padded away by the encoder's requirement of even dimensions."""
    stream = output.add_stream("libx264")
    stream.width, stream.height = width - width % 2, height - height % 2
    stream.pix_fmt = "yuv420p"
    stream.time_base = time_base
    stream.codec_context.time_base = time_base
    stream.options = {"crf": "23", "preset": "veryfast"}
    return stream
