"""An MP4/MOV's frame index and container facts from its sample table (the moov box) alone, read through
a few ranged GETs: the orchestrator plans a job's segments without waiting for a worker to probe the video
(a cold start and the whole object's bytes). Only files whose timing it models exactly are answered;
anything else (Matroska, fragmented MP4, several edits, a media rate) returns None and a worker probes it."""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Protocol

from chalicelib.shared.frame_index import encode_index

# FFmpeg's names for the sample entries phones and encoders write.
_CODECS = {
    "avc1": "h264", "avc3": "h264", "hvc1": "hevc", "hev1": "hevc", "mp4v": "mpeg4", "av01": "av1",
    "vp09": "vp9", "vp08": "vp8", "jpeg": "mjpeg", "mjpa": "mjpeg", "apch": "prores", "apcn": "prores",
}  # fmt: skip
MAX_MOOV_BYTES = 64 << 20  # a 24 h video's sample table is well under this; more is not a file we index


class Seekable(Protocol):
    """A seekable binary file: an open file, or a ranged S3 reader (shared.storage.RangedReader)."""

    def seek(self, offset: int, whence: int = 0, /) -> int: ...

    def read(self, size: int = -1, /) -> bytes | None: ...


class _Unsupported(Exception):
    """The file's timing uses something this reader does not model exactly."""


@dataclass(frozen=True)
class ContainerIndex:
    """What the worker's probe gives (handpipe_worker.video: FrameIndex and VideoInfo), from the moov."""

    time_base: Fraction
    start_pts: int
    pts: tuple[int, ...]
    end_pts: int
    width: int  # upright
    height: int
    rotation: int  # degrees clockwise the stored picture is turned for display, as VideoInfo has it
    codec: str
    container: str
    fps: float  # FFmpeg's average rate: frames over the sample table's duration

    def index_bytes(self) -> bytes:
        return encode_index(self.time_base, self.start_pts, self.pts, self.end_pts)

    def video_metadata(self, filename: str) -> dict[str, Any]:
        """The probe's `video` dict (VideoInfo.to_dict with the exact counts of the index)."""
        duration_ms = float((self.end_pts - self.start_pts) * self.time_base * 1000)
        steps = [b - a for a, b in zip(self.pts, self.pts[1:], strict=False)]
        constant = not steps or max(steps) - min(steps) <= max(1, max(steps) // 100)
        return {
            "filename": filename,
            "container": self.container,
            "codec": self.codec,
            "width": self.width,
            "height": self.height,
            "rotation": self.rotation,
            "orientation": "portrait" if self.height > self.width else "landscape",
            "fps": round(self.fps, 3),
            "frame_count": len(self.pts),
            "duration_ms": round(duration_ms, 3),
            "frame_rate_mode": "constant" if constant else "variable",
        }


def read_index(reader: Seekable, size: int) -> ContainerIndex | None:
    """The video's index from its moov box, read from `reader` (a seekable file: a ranged S3 reader
    fetches only the box headers and the moov); None when it is not a file this reader models."""
    try:
        brand, moov = _find_moov(reader, size)
        return _parse_moov(moov, brand)
    except (_Unsupported, struct.error, ValueError, IndexError, ZeroDivisionError):
        return None


def _read_at(reader: Seekable, offset: int, length: int) -> bytes:
    reader.seek(offset)
    data = b""
    while len(data) < length:  # a raw reader may return less than asked (a block's end)
        more = reader.read(length - len(data))
        if not more:
            raise _Unsupported("truncated")
        data += more
    return data


def _find_moov(reader: Seekable, size: int) -> tuple[str, bytes]:
    """Walk the top-level boxes by their headers (the mdat is skipped, never read) to the moov."""
    offset, brand = 0, ""
    while offset + 8 <= size:
        length, kind = struct.unpack(">I4s", _read_at(reader, offset, 8))
        header = 8
        if length == 1:
            length = struct.unpack(">Q", _read_at(reader, offset + 8, 8))[0]
            header = 16
        elif length == 0:
            length = size - offset
        if length < header or offset + length > size:
            raise _Unsupported("a box runs past the end of the file")
        name = kind.decode("latin-1")
        if offset == 0 and name != "ftyp":
            raise _Unsupported("not an ISO media file")
        if name == "ftyp":
            brand = _read_at(reader, offset + header, 4).decode("latin-1")
        elif name in ("moof", "sidx", "mfra"):
            raise _Unsupported("fragmented")
        elif name == "moov":
            if length - header > MAX_MOOV_BYTES:
                raise _Unsupported("moov too large")
            return brand, _read_at(reader, offset + header, length - header)
        offset += length
    raise _Unsupported("no moov")


def _boxes(data: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[str, bytes]]:
    end = len(data) if end is None else end
    while start + 8 <= end:
        length, kind = struct.unpack_from(">I4s", data, start)
        header = 8
        if length == 1:
            length = struct.unpack_from(">Q", data, start + 8)[0]
            header = 16
        elif length == 0:
            length = end - start
        if length < header or start + length > end:
            raise _Unsupported("a box runs past its parent")
        yield kind.decode("latin-1"), data[start + header : start + length]
        start += length


def _child(data: bytes, name: str) -> bytes | None:
    return next((body for kind, body in _boxes(data) if kind == name), None)


def _path(data: bytes, *names: str) -> bytes:
    for name in names:
        found = _child(data, name)
        if found is None:
            raise _Unsupported(f"no {name} box")
        data = found
    return data


def _parse_moov(moov: bytes, brand: str) -> ContainerIndex:
    if _child(moov, "mvex") is not None:
        raise _Unsupported("fragmented")
    mvhd = _path(moov, "mvhd")
    movie_scale = struct.unpack_from(">I", mvhd, 20 if mvhd[0] == 1 else 12)[0]
    if _matrix(mvhd, 48 if mvhd[0] == 1 else 36)[:6] != (1 << 16, 0, 0, 0, 1 << 16, 0):
        raise _Unsupported("a movie matrix")
    track = next((body for kind, body in _boxes(moov) if kind == "trak" and _handler(body) == "vide"), None)
    if track is None:
        raise _Unsupported("no video track")
    mdhd = _path(track, "mdia", "mdhd")
    scale = struct.unpack_from(">I", mdhd, 20 if mdhd[0] == 1 else 12)[0]
    stbl = _path(track, "mdia", "minf", "stbl")
    deltas = _stts(_path(stbl, "stts"))
    offsets = _ctts(_child(stbl, "ctts"), len(deltas))
    shift, keep_from = _edit(_child(track, "edts"), movie_scale, scale)
    shown: list[tuple[int, int]] = []
    dts = 0
    for delta, offset in zip(deltas, offsets, strict=True):
        cts = dts + offset
        if cts >= keep_from:  # before the edit's media start: demuxed, marked discard, never shown
            shown.append((cts + shift, delta))
        dts += delta
    if not shown:
        raise _Unsupported("no frame")
    shown.sort()
    pts = tuple(p for p, _ in shown)
    end = max(p + d for p, d in shown)
    if end <= pts[-1]:
        end = pts[-1] + (pts[-1] - pts[-2] if len(pts) > 1 else 1)
    codec, stored_width, stored_height = _sample_entry(_path(stbl, "stsd"))
    turns = _quarter_turns(_path(track, "tkhd"))
    width, height = (stored_width, stored_height) if turns % 2 == 0 else (stored_height, stored_width)
    total = sum(deltas)
    return ContainerIndex(
        time_base=Fraction(1, scale),
        start_pts=pts[0],
        pts=pts,
        end_pts=end,
        width=width,
        height=height,
        rotation=(360 - 90 * turns) % 360,
        codec=codec,
        container="mov" if brand.strip() == "qt" else "mp4",
        fps=scale * len(deltas) / total if total else 0.0,
    )


def _handler(track: bytes) -> str | None:
    hdlr = _child(_path(track, "mdia"), "hdlr")
    return None if hdlr is None else hdlr[8:12].decode("latin-1")


def _matrix(box: bytes, at: int) -> tuple[int, ...]:
    return struct.unpack_from(">9i", box, at)


def _stts(stts: bytes) -> list[int]:
    (count,) = struct.unpack_from(">I", stts, 4)
    deltas: list[int] = []
    for entry in range(count):
        samples, delta = struct.unpack_from(">II", stts, 8 + 8 * entry)
        deltas.extend([delta] * samples)
    return deltas


def _ctts(ctts: bytes | None, samples: int) -> list[int]:
    if ctts is None:
        return [0] * samples
    (count,) = struct.unpack_from(">I", ctts, 4)
    offsets: list[int] = []
    for entry in range(count):
        repeat, offset = struct.unpack_from(">Ii", ctts, 8 + 8 * entry)  # signed, as FFmpeg reads both versions
        offsets.extend([offset] * repeat)
    if len(offsets) != samples:
        raise _Unsupported("ctts and stts disagree")
    return offsets


def _edit(edts: bytes | None, movie_scale: int, scale: int) -> tuple[int, int]:
    """(ticks added to every composition time, the first composition time shown): at most one empty
    edit (a delayed start) then one edit of the media at rate 1 that runs to its end."""
    if edts is None:
        return 0, -(1 << 62)
    elst = _path(edts, "elst")
    version, count = elst[0], struct.unpack_from(">I", elst, 4)[0]
    entries = []
    for entry in range(count):
        if version == 1:
            duration, media_time, rate = struct.unpack_from(">Qqi", elst, 8 + 20 * entry)
        else:
            duration, media_time, rate = struct.unpack_from(">Iii", elst, 8 + 12 * entry)
        entries.append((duration, media_time, rate))
    empty = 0
    while entries and entries[0][1] == -1:
        empty += entries.pop(0)[0]
    if len(entries) != 1 or entries[0][2] != 1 << 16:
        raise _Unsupported("an edit list this reader does not model")
    media_time = entries[0][1]
    delay = math.floor(Fraction(empty * scale, movie_scale)) if movie_scale else 0
    return delay - media_time, media_time


def _sample_entry(stsd: bytes) -> tuple[str, int, int]:
    (count,) = struct.unpack_from(">I", stsd, 4)
    if count < 1:
        raise _Unsupported("no sample entry")
    kind = stsd[12:16].decode("latin-1")
    width, height = struct.unpack_from(">HH", stsd, 8 + 32)
    if kind not in _CODECS:
        raise _Unsupported(f"sample entry {kind}")
    return _CODECS[kind], width, height


def _quarter_turns(tkhd: bytes) -> int:
    """Quarter turns counter-clockwise that make the stored picture upright (FFmpeg's display matrix)."""
    matrix = _matrix(tkhd, 4 + (32 if tkhd[0] == 1 else 20) + 16)
    a, b = matrix[0], matrix[1]
    angle = -math.degrees(math.atan2(b, a))  # av_display_rotation_get
    if abs(angle / 90 - round(angle / 90)) > 1e-6:
        raise _Unsupported("a rotation that is not a quarter turn")
    return round(angle / 90) % 4
