"""The stored frame index's format (every frame's PTS in presentation order, gzip JSON), one definition for
the worker (handpipe_worker.video.FrameIndex, built by demuxing) and the orchestrator (shared.mp4index,
built from an MP4's sample table), so an index either side writes reads the same on the other."""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from fractions import Fraction

INDEX_FORMAT = "handpipe.frame_index"
INDEX_VERSION = 1


def encode_index(time_base: Fraction, start_pts: int, pts: Sequence[int], end_pts: int) -> bytes:
    # PTS as differences: a long video's index compresses to a few bytes a frame; mtime=0: the same bytes each time.
    deltas = [b - a for a, b in zip((start_pts, *pts), pts, strict=False)]
    body = {
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION,
        "time_base": [time_base.numerator, time_base.denominator],
        "start_pts": start_pts,
        "end_pts": end_pts,
        "pts_deltas": deltas,
    }
    return gzip.compress(json.dumps(body, separators=(",", ":")).encode(), mtime=0)


def decode_index(data: bytes) -> tuple[Fraction, int, tuple[int, ...], int]:
    """(time base, start PTS, every PTS, end PTS); ValueError when it is not a frame index."""
    body = json.loads(gzip.decompress(data))
    if body.get("format") != INDEX_FORMAT or body.get("version") != INDEX_VERSION:
        raise ValueError("not a handpipe frame index")
    pts: list[int] = []
    value = int(body["start_pts"])
    for delta in body["pts_deltas"]:
        value += int(delta)
        pts.append(value)
    return Fraction(*body["time_base"]), int(body["start_pts"]), tuple(pts), int(body["end_pts"])
