"""What the command line shows people: a progress bar for long work, tables of videos and jobs, and a
short, readable summary of a result."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO


class ProgressBar:
    """A one-line bar on a terminal; on a pipe or log, a line every tenth of the way."""

    def __init__(self, label: str, stream: TextIO | None = None, width: int = 30) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.width = width
        self.started = time.monotonic()
        self.tty = self.stream.isatty()
        self._last_tenth = -1
        self._drawn = False

    def update(self, done: int, total: int | None, unit: str = "frames") -> None:
        """`unit` "bytes" shows megabytes."""
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = done / elapsed
        shown_done, shown_total, shown_rate = (str(done), str(total), f"{rate:5.1f}")
        if unit == "bytes":
            unit = "MB"
            shown_done, shown_total, shown_rate = f"{done / 1e6:.1f}", f"{(total or 0) / 1e6:.1f}", f"{rate / 1e6:5.1f}"
        if total:
            fraction = min(1.0, done / total)
            filled = int(fraction * self.width)
            bar = "#" * filled + "." * (self.width - filled)
            text = (
                f"{self.label} [{bar}] {fraction * 100:5.1f}% {shown_done}/{shown_total} {unit} {shown_rate} {unit}/s"
            )
            tenth = int(fraction * 10)
        else:
            text = f"{self.label} {shown_done} {unit} {shown_rate} {unit}/s"
            tenth = done // 100
        if self.tty:
            self.stream.write("\r" + text.ljust(79))
            self._drawn = True
        elif tenth != self._last_tenth:
            self.stream.write(text + "\n")
        self._last_tenth = tenth
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell, under a header; the last column is not padded."""
    cells = [[str(c) for c in header]] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[n]) for row in cells) for n in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(widths[n]) if n < len(header) - 1 else cell for n, cell in enumerate(row)).rstrip()
        for row in cells
    )


def when(epoch_ms: int | None) -> str:
    return "-" if epoch_ms is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(epoch_ms / 1000))


def seconds(ms: float | None) -> str:
    return "?" if ms is None else f"{ms / 1000:.2f} s"


def format_gestures(insights: dict[str, Any], shown: int = 6) -> str:
    """One line of the gestures held (smoothed ranges other than `none`) and what named them."""
    gestures = insights["gestures"]
    held = [r for r in gestures["ranges"] if r["label"] != "none"]
    listed = ", ".join(
        f"{r['label']} {r['start_ms'] / 1000:.2f}-{r['end_ms'] / 1000:.2f} s ({r['handedness']})" for r in held[:shown]
    )
    more = f" and {len(held) - shown} more" if len(held) > shown else ""
    by = (
        f"MediaPipe GestureRecognizer, {gestures.get('model')}"
        if gestures["method"] == "gesture_recognizer"
        else "rules on the landmarks"
    )
    return f"gestures   {listed + more if held else 'none held for 200 ms or more'} [{by}]"


def format_summary(
    summary: dict[str, Any],
    video: dict[str, Any] | None,
    stats: dict[str, Any] | None,
    where: str | None = None,
    insights: dict[str, Any] | None = None,
) -> str:
    """The few lines a person wants after a run: how long, where the hands are, which gestures, how fast."""
    lines = []
    if video:
        lines.append(
            f"video      {video.get('filename', '')} {video['width']}x{video['height']} {video['orientation']}, "
            f"{video['fps']:g} fps, {seconds(video.get('duration_ms'))}, codec {video['codec']}"
        )
    processed = summary["frames_processed"]
    share = 100.0 * summary["frames_with_hands"] / processed if processed else 0.0
    decoded = f"{stats['frames_decoded']} decoded, " if stats and "frames_decoded" in stats else ""
    timing = ""
    if video and video.get("frame_rate_mode"):
        timing = f"; {video['frame_rate_mode']} frame rate, each frame at its own timestamp"
    lines.append(
        f"frames     {decoded}{processed} processed, {summary['frames_with_hands']} with hands ({share:.0f}%){timing}"
    )
    counts = ", ".join(f"{n} {label}" for label, n in summary.get("handedness_counts", {}).items()) or "none"
    lines.append(
        f"hands      {summary['hands_seen']} seen ({counts}; MediaPipe's mirrored labels), "
        f"at most {summary['max_hands_in_frame']} in a frame"
    )
    ranges = summary["hand_time_ranges"]
    shown = ", ".join(f"{r['start_ms'] / 1000:.2f}-{r['end_ms'] / 1000:.2f} s" for r in ranges[:6])
    more = f" and {len(ranges) - 6} more" if len(ranges) > 6 else ""
    lines.append(f"hands at   {shown + more if ranges else 'no time with hands'}")
    if insights is not None:
        lines.append(format_gestures(insights))
    if stats:
        lines.append(
            f"speed      {stats['fps']:.1f} frames/s ({stats['inference_s']:.1f} s inference, "
            f"{stats['decode_s']:.1f} s decoding, {stats['wall_s']:.1f} s in all)"
        )
    if where:
        lines.append(f"result     {where}")
    return "\n".join(lines)
