"""A job's landmarks as flat rows, one per hand per frame, written as gzip CSV, gzip JSON Lines or Parquet.
Standard library only: it runs in the API Lambda, which has no numpy, pandas or pyarrow."""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol

from chalicelib.shared import parquet

FORMATS = ("csv", "jsonl", "parquet")
LANDMARKS = 21

ID_COLUMNS = [
    "job_id",
    "video_id",
    "frame_index",
    "timestamp_ms",
    "hand_index",
    "handedness",
    "handedness_score",
    "gesture",
    "gesture_score",
]
LANDMARK_COLUMNS = [f"{axis}{i}" for i in range(LANDMARKS) for axis in "xyz"]
WORLD_COLUMNS = [f"w{axis}{i}" for i in range(LANDMARKS) for axis in "xyz"]
COLUMNS: list[str] = ID_COLUMNS + LANDMARK_COLUMNS + WORLD_COLUMNS
# Declared rather than inferred from the rows, so that an export of no rows has the same columns and types.
PARQUET_SCHEMA: list[tuple[str, str]] = [
    ("job_id", parquet.STRING),
    ("video_id", parquet.STRING),
    ("frame_index", parquet.INT64),
    ("timestamp_ms", parquet.DOUBLE),
    ("hand_index", parquet.INT64),
    ("handedness", parquet.STRING),
    ("handedness_score", parquet.DOUBLE),
    ("gesture", parquet.STRING),
    ("gesture_score", parquet.DOUBLE),
] + [(name, parquet.DOUBLE) for name in LANDMARK_COLUMNS + WORLD_COLUMNS]

# Level 6, not gzip's default 9: about six times faster on these rows for a file a few percent larger.
GZIP_LEVEL = 6

# Parquet compresses its pages itself, so its file is not gzipped again.
SUFFIXES = {"csv": ".csv.gz", "jsonl": ".jsonl.gz", "parquet": ".parquet"}
CONTENT_TYPES = {"csv": "application/gzip", "jsonl": "application/gzip", "parquet": "application/vnd.apache.parquet"}


def gestures_by_hand(insights: Mapping[str, Any]) -> dict[tuple[int, int], tuple[str, float]]:
    """(frame index, position in hands[]) -> (gesture, score), from an insights document's per_frame."""
    return {(int(f), int(h)): (str(label), float(score)) for f, h, label, score in insights["gestures"]["per_frame"]}


def _flat(points: Iterable[Iterable[float]], columns: list[str]) -> dict[str, float]:
    values = [value for point in points for value in point]
    if len(values) != len(columns):
        raise ValueError(f"expected {LANDMARKS} landmarks of 3 coordinates, got {len(values)} values")
    return dict(zip(columns, values, strict=True))


def rows(
    result: Mapping[str, Any],
    insights: Mapping[str, Any],
    *,
    job_id: str | None = None,
    video_id: str | None = None,
) -> Iterator[dict[str, Any]]:
    """One dict per hand per frame of a result (docs/results-format.md), keys in COLUMNS order: the ids,
    the frame's index and time, the hand's position in the frame, its handedness and score, the gesture
    and its score from the insights document (chalicelib.shared.insights.analyze of the same result), then
    the 21 normalized landmarks (x0, y0, z0 ... x20, y20, z20) and the 21 world landmarks in metres
    (wx0 ... wz20). Frames without hands yield no row."""
    gestures = gestures_by_hand(insights)
    for frame in result["frames"]:
        index = int(frame["index"])
        for position, hand in enumerate(frame["hands"]):
            gesture, gesture_score = gestures.get((index, position), ("", None))
            yield {
                "job_id": job_id,
                "video_id": video_id,
                "frame_index": index,
                "timestamp_ms": frame["timestamp_ms"],
                "hand_index": position,
                "handedness": hand["handedness"],
                "handedness_score": hand["score"],
                "gesture": gesture,
                "gesture_score": gesture_score,
                **_flat(hand["landmarks"], LANDMARK_COLUMNS),
                **_flat(hand["world_landmarks"], WORLD_COLUMNS),
            }


def to_csv_gz(records: Iterable[Mapping[str, Any]]) -> tuple[bytes, int]:
    """Gzip CSV with a header line of COLUMNS (None is an empty cell); returns the bytes and the row count."""
    buffer = io.BytesIO()
    count = 0
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, compresslevel=GZIP_LEVEL) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        writer = csv.DictWriter(text, fieldnames=COLUMNS, extrasaction="raise", lineterminator="\n")
        writer.writeheader()
        for record in records:
            writer.writerow(record)
            count += 1
        text.flush()
        text.detach()
    return buffer.getvalue(), count


def to_jsonl_gz(records: Iterable[Mapping[str, Any]]) -> tuple[bytes, int]:
    """Gzip JSON Lines, one object per row with the keys of COLUMNS; returns the bytes and the row count."""
    buffer = io.BytesIO()
    count = 0
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, compresslevel=GZIP_LEVEL) as raw:
        for record in records:
            raw.write(json.dumps({name: record[name] for name in COLUMNS}, separators=(",", ":")).encode())
            raw.write(b"\n")
            count += 1
    return buffer.getvalue(), count


def to_parquet(records: Iterable[Mapping[str, Any]]) -> tuple[bytes, int]:
    """Parquet with the columns and types of PARQUET_SCHEMA (None is null, GZIP-compressed pages, see
    chalicelib.shared.parquet); returns the bytes and the row count."""
    return parquet.write(PARQUET_SCHEMA, records)


WRITERS = {"csv": to_csv_gz, "jsonl": to_jsonl_gz, "parquet": to_parquet}


def export_key(results_prefix: str, fmt: str) -> str:
    """Where a job's export lives: next to its result, e.g. results/{video_id}/{job_id}/export.csv.gz."""
    return f"{results_prefix}export{SUFFIXES[fmt]}"


class BytesStore(Protocol):
    def put_bytes(self, key: str, data: bytes, content_type: str) -> None: ...


def write_export(
    store: BytesStore,
    results_prefix: str,
    fmt: str,
    result: Mapping[str, Any],
    insights: Mapping[str, Any],
    *,
    job_id: str,
    video_id: str,
) -> tuple[str, int]:
    """Write a job's export in `fmt` next to its result (the API for a small job while the caller waits,
    the worker for every job just after it succeeds); returns the key and the row count."""
    key = export_key(results_prefix, fmt)
    data, count = WRITERS[fmt](rows(result, insights, job_id=job_id, video_id=video_id))
    store.put_bytes(key, data, CONTENT_TYPES[fmt])
    return key, count
