"""Export rows and the API description's export and viewer parts, on a synthetic result: the columns,
one row per hand per frame with that hand's gesture, CSV and JSON lines, the viewer's inline JSON."""

from __future__ import annotations

import csv
import gzip
import io
import json
from typing import Any

from chalicelib.shared import exports
from chalicelib.shared.gestures import GESTURES
from chalicelib.shared.insights import analyze
from chalicelib.web.auth import PUBLIC_PATHS


def synthetic_result() -> dict[str, Any]:
    def hand(label: str, shift: float) -> dict[str, Any]:
        return {
            "handedness": label,
            "score": 0.9,
            "landmarks": [[0.1 + shift + i / 100, 0.2 + i / 100, -i / 1000] for i in range(21)],
            "world_landmarks": [[i / 100, -i / 100, i / 1000] for i in range(21)],
        }

    frames = [
        {"index": 0, "timestamp_ms": 0.0, "hands": [hand("Left", 0.0)]},
        {"index": 1, "timestamp_ms": 33.333, "hands": []},
        {"index": 2, "timestamp_ms": 66.667, "hands": [hand("Left", 0.0), hand("Right", 0.5)]},
    ]
    return {"video": {"width": 640, "height": 480}, "frames": frames}


def test_columns_are_the_documented_ones() -> None:
    assert exports.COLUMNS[:9] == [
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
    assert exports.COLUMNS[9:12] == ["x0", "y0", "z0"] and exports.COLUMNS[72:75] == ["wx0", "wy0", "wz0"]
    assert exports.COLUMNS[-1] == "wz20" and len(exports.COLUMNS) == 9 + 2 * 63 == len(set(exports.COLUMNS))


def test_rows_are_one_per_hand_per_frame_with_the_gesture_of_that_hand() -> None:
    result = synthetic_result()
    insights = analyze(result)
    rows = list(exports.rows(result, insights, job_id="job_x", video_id="vid_y"))
    assert [(r["frame_index"], r["hand_index"], r["handedness"]) for r in rows] == [
        (0, 0, "Left"),
        (2, 0, "Left"),
        (2, 1, "Right"),
    ]
    labels = {(f, h): (label, score) for f, h, label, score in insights["gestures"]["per_frame"]}
    for row in rows:
        assert list(row) == exports.COLUMNS and row["job_id"] == "job_x" and row["video_id"] == "vid_y"
        assert (row["gesture"], row["gesture_score"]) == labels[(row["frame_index"], row["hand_index"])]
    assert rows[2]["x0"] == 0.6 and rows[2]["z20"] == -0.02 and rows[2]["wy20"] == -0.2

    data, count = exports.to_csv_gz(exports.rows(result, insights))
    parsed = list(csv.DictReader(io.StringIO(gzip.decompress(data).decode())))
    assert count == 3 and len(parsed) == 3 and list(parsed[0]) == exports.COLUMNS
    assert parsed[0]["job_id"] == "" and float(parsed[2]["x0"]) == 0.6
    data, count = exports.to_jsonl_gz(exports.rows(result, insights))
    lines = [json.loads(line) for line in gzip.decompress(data).decode().splitlines()]
    assert count == 3 and [list(line) for line in lines] == [exports.COLUMNS] * 3 and lines[1]["hand_index"] == 0
    assert exports.to_csv_gz(iter([]))[1] == 0  # no hands: a header and no rows
    assert gzip.decompress(exports.to_csv_gz(iter([]))[0]).decode().strip() == ",".join(exports.COLUMNS)


def test_script_json_cannot_close_the_script_element() -> None:
    from chalicelib.service.derived import _script_json

    text = _script_json({"title": "</script><script>alert(1)</script> & <!--"})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"title": "</script><script>alert(1)</script> & <!--"}


# ------------------------------------------------------------------------------------ client and CLI


def test_the_api_description_follows_the_code() -> None:
    from chalicelib.web.openapi import load_openapi

    doc = load_openapi()
    schemas = doc["components"]["schemas"]
    assert schemas["Gesture"]["examples"] == list(GESTURES)
    assert schemas["Export"]["properties"]["columns"]["minItems"] == len(exports.COLUMNS)
    assert schemas["Export"]["properties"]["format"]["enum"] == list(exports.FORMATS)
    viewer = doc["paths"]["/jobs/{job_id}/viewer"]["get"]
    assert set(viewer["responses"]["200"]["content"]) == {"text/html"}
    assert viewer["security"] == [] and "/jobs/{job_id}/viewer" in PUBLIC_PATHS  # the page is public...
    assert doc["paths"]["/jobs/{job_id}/viewer/config"]["get"].get("security") is None  # ...what it reads is not
