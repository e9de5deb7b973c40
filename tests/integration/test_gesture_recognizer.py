"""MediaPipe's GestureRecognizer when a user supplies a gesture_recognizer.task: the engine, the insights,
the pictures, the command line and a job through the API and worker. The bundle is built by
tests/support/gesture_model.py: MediaPipe's own hand models and a classifier of which way the fingers point."""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import subprocess
import sys
import urllib.request
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import jsonschema
import numpy as np
import pytest
from handpipe_worker.engine import process_video
from handpipe_worker.handler import Worker, WorkerSettings
from handpipe_worker.models import (
    GESTURE_RECOGNIZER,
    HAND_LANDMARKER,
    ModelCache,
    ModelError,
    assemble_bundled,
    task_kind,
)
from handpipe_worker.pictures import EXTRA_COLOURS_RGB, gesture_colour, timeline_png

from chalicelib.shared.contracts import ProcessOptions
from chalicelib.shared.gestures import GESTURES
from chalicelib.shared.insights import CANNED_GESTURES, analyze, recognizer_label
from tests.support.api import Env
from tests.support.footage import write_video
from tests.support.gesture_model import LABELS, build_gesture_recognizer_task
from tests.support.paths import data_path

REPO = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((REPO / "docs" / "result.schema.json").read_text())
MODELS = ModelCache()
# the generated clip: the open-palm photo upright, turned upside down, upright again, BLOCK frames each
BLOCK = 12
FPS = 10


@pytest.fixture(scope="session")
def recognizer_task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_gesture_recognizer_task(tmp_path_factory.mktemp("models") / "gesture_recognizer.task")


@pytest.fixture(scope="session")
def palm_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    photo = cv2.imread(str(data_path("images/open_palm.jpg")))
    assert photo is not None
    height, width = photo.shape[:2]
    scale = 480 / max(height, width)
    photo = cv2.resize(photo, (round(width * scale) // 2 * 2, round(height * scale) // 2 * 2))
    turned = cv2.rotate(photo, cv2.ROTATE_180)
    path = tmp_path_factory.mktemp("clips") / "palm_up_down_up.mp4"
    write_video(path, [photo] * BLOCK + [turned] * BLOCK + [photo] * BLOCK, fps=FPS)
    return path


@pytest.fixture(scope="session")
def recognized(recognizer_task: Path, palm_clip: Path) -> dict[str, Any]:
    result = process_video(palm_clip, ProcessOptions(model_uri=str(recognizer_task), num_hands=1), models=MODELS)
    jsonschema.validate(result, SCHEMA)
    return result


def labels_by_block(result: dict[str, Any]) -> list[Counter[str]]:
    blocks: list[Counter[str]] = [Counter(), Counter(), Counter()]
    for frame in result["frames"]:
        for hand in frame["hands"]:
            blocks[frame["index"] // BLOCK][hand["gesture"]["label"]] += 1
    return blocks


# ------------------------------------------------------------------------------------ models


def test_a_task_file_is_recognised_by_what_it_holds(recognizer_task: Path, tmp_path: Path) -> None:
    assert task_kind("x", recognizer_task.read_bytes()) == GESTURE_RECOGNIZER
    assert task_kind("x", assemble_bundled("full").data) == HAND_LANDMARKER
    inner = zipfile.ZipFile(io.BytesIO(recognizer_task.read_bytes()))
    assert set(inner.namelist()) == {"hand_landmarker.task", "hand_gesture_recognizer.task"}

    only_gestures = tmp_path / "only_gestures.task"
    with zipfile.ZipFile(only_gestures, "w") as archive:
        archive.writestr("hand_gesture_recognizer.task", inner.read("hand_gesture_recognizer.task"))
    with pytest.raises(ModelError, match=r"neither a hand_landmarker.task nor a gesture_recognizer.task") as refused:
        ModelCache().get("full", str(only_gestures))
    # What the file does hold is not the caller's to read: the message names only what was expected.
    assert "holds" not in str(refused.value) and str(refused.value).count("hand_gesture_recognizer.task") == 1

    fetched: list[str] = []

    def fetch(uri: str) -> bytes:
        fetched.append(uri)
        return recognizer_task.read_bytes()

    bundle = ModelCache(fetch_s3=fetch).get("full", "s3://bucket/models/gesture_recognizer.task")
    assert bundle.task == GESTURE_RECOGNIZER and fetched == ["s3://bucket/models/gesture_recognizer.task"]
    # the labels come from the label file TFLite metadata packs into the classifier
    assert bundle.describe()["task"] == GESTURE_RECOGNIZER and bundle.gesture_labels == LABELS
    assert "gesture_labels" not in ModelCache().get("full").describe()


# ------------------------------------------------------------------------------------ engine


def test_every_hand_carries_the_recognizers_gesture(recognized: dict[str, Any], recognizer_task: Path) -> None:
    assert recognized["model"]["task"] == GESTURE_RECOGNIZER
    assert recognized["model"]["source"] == str(recognizer_task)
    assert recognized["model"]["gesture_labels"] == list(LABELS)
    assert recognized["summary"]["frames_with_hands"] >= 3 * BLOCK - 2
    for frame in recognized["frames"]:
        for hand in frame["hands"]:
            assert hand["gesture"]["label"] in LABELS and 0 <= hand["gesture"]["score"] <= 1
    upright, turned, upright_again = labels_by_block(recognized)
    # the photo's fingers point up; turned 180 degrees they point down
    assert upright["Fingers_Up"] >= BLOCK - 1 and upright_again["Fingers_Up"] >= BLOCK - 1
    assert turned["Fingers_Down"] >= BLOCK - 1


def test_the_recognizer_finds_the_same_landmarks_as_the_hand_landmarker(recognizer_task: Path) -> None:
    clip = data_path("videos/one_hand_wave_portrait.mp4")
    both = [
        process_video(clip, ProcessOptions(end_ms=2000, model_uri=uri), models=MODELS)
        for uri in (None, str(recognizer_task))
    ]
    landmarker, recognizer = both
    assert [len(f["hands"]) for f in landmarker["frames"]] == [len(f["hands"]) for f in recognizer["frames"]]
    assert "gesture" not in landmarker["frames"][0]["hands"][0]
    shifts = [
        np.abs(np.array(a["landmarks"]) - np.array(b["landmarks"])).max()
        for fa, fb in zip(landmarker["frames"], recognizer["frames"], strict=True)
        for a, b in zip(fa["hands"], fb["hands"], strict=True)
    ]
    assert len(shifts) >= 55 and max(shifts) < 0.01
    # the hand waves upright: mostly fingers up
    counts = Counter(h["gesture"]["label"] for f in recognizer["frames"] for h in f["hands"])
    assert counts["Fingers_Up"] >= 0.7 * sum(counts.values()), counts


# ------------------------------------------------------------------------------------ insights


def test_recognizer_labels_in_handpipes_words() -> None:
    assert {recognizer_label(name) for name in CANNED_GESTURES} == set(GESTURES)
    assert recognizer_label("ILoveYou") == "i_love_you" and recognizer_label("Thumb_Up") == "thumb_up"
    assert recognizer_label("Fingers_Up") == "fingers_up" and recognizer_label("Two Fingers!") == "two_fingers"
    assert recognizer_label("") == "none"


def test_insights_use_and_name_the_recognizer(recognized: dict[str, Any], recognizer_task: Path) -> None:
    insights = analyze(recognized)
    gestures = insights["gestures"]
    assert gestures["method"] == "gesture_recognizer" and gestures["model"] == str(recognizer_task)
    assert gestures["labels"] == ["fingers_down", "fingers_up", "none"]
    # the model's labels are listed even where a stretch of video shows only some of them
    upright_only = {**recognized, "frames": recognized["frames"][:BLOCK]}
    assert analyze(upright_only)["gestures"]["labels"] == ["fingers_down", "fingers_up", "none"]
    assert {label for _f, _h, label, _s in analyze(upright_only)["gestures"]["per_frame"]} <= {"fingers_up", "none"}
    upright = [label for f, _h, label, _s in gestures["per_frame"] if f < BLOCK]
    assert Counter(upright)["fingers_up"] >= BLOCK - 1
    held = [(r["label"], r["start_ms"], r["end_ms"]) for r in gestures["ranges"] if r["duration_ms"] >= 500]
    assert [label for label, _, _ in held] == ["fingers_up", "fingers_down", "fingers_up"]
    # each range changes within a frame of where the photo was turned
    step_ms = 1000 / FPS
    assert abs(held[1][1] - BLOCK * step_ms) <= step_ms and abs(held[2][1] - 2 * BLOCK * step_ms) <= step_ms


def test_without_a_recognizer_the_rules_label_the_same_clip(palm_clip: Path) -> None:
    result = process_video(palm_clip, ProcessOptions(num_hands=1), models=MODELS)
    gestures = analyze(result)["gestures"]
    assert gestures["method"] == "rules" and gestures["model"] is None and gestures["labels"] == list(GESTURES)
    # an open palm is an open palm whichever way up it is held
    assert Counter(label for _f, _h, label, _s in gestures["per_frame"])["open_palm"] >= 3 * BLOCK - 4


def test_the_timeline_draws_and_lists_the_recognizers_labels(recognized: dict[str, Any]) -> None:
    image = cv2.imdecode(np.frombuffer(timeline_png(recognized, analyze(recognized)), np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    for label in ("fingers_up", "fingers_down"):
        colour = np.array(gesture_colour(label), np.uint8)
        assert (image == colour).all(axis=2).sum() > 500, label  # the lane's range, and the legend's swatch
    assert gesture_colour("fingers_up") != gesture_colour("fingers_down")
    assert gesture_colour("fingers_up") == gesture_colour("fingers_up")


def test_the_viewer_colours_a_custom_label_as_the_pictures_do() -> None:
    page = (REPO / "chalicelib" / "web" / "viewer.html").read_text()
    listed = re.search(r"const EXTRA_COLOURS = \[(.*?)\];", page)
    assert listed is not None and tuple(re.findall(r'"(#[0-9a-f]{6})"', listed.group(1))) == EXTRA_COLOURS_RGB
    assert "hash = (hash * 31 + ch.codePointAt(0)) >>> 0" in page  # the hash gesture_colour computes
    red = EXTRA_COLOURS_RGB[0]
    assert gesture_colour("fingers_up") == (int(red[5:7], 16), int(red[3:5], 16), int(red[1:3], 16))


def test_the_command_line_says_which_gestures_and_who_named_them(
    recognizer_task: Path, palm_clip: Path, tmp_path: Path
) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "handpipe.cli",
            "process",
            str(palm_clip),
            "--num-hands",
            "1",
            "--model-uri",
            str(recognizer_task),
            "--out",
            str(tmp_path / "hands.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    gestures = [line for line in done.stdout.splitlines() if line.startswith("gestures")]
    assert len(gestures) == 1 and "fingers_up 0.00-1.20 s" in gestures[0] and "fingers_down 1.20-2.40 s" in gestures[0]
    assert f"[MediaPipe GestureRecognizer, {recognizer_task}]" in gestures[0]
    saved = json.loads((tmp_path / "hands.json").read_text())
    assert saved["model"]["task"] == GESTURE_RECOGNIZER


# ------------------------------------------------------------------------------------ a job


def upload_clip(env: Env, path: Path) -> dict[str, Any]:
    status, video = env.call(
        "POST",
        "/videos",
        {"filename": path.name, "content_type": "video/mp4", "size_bytes": path.stat().st_size},
    )
    assert status == 201, video
    env.upload(video, path)
    return video


def test_a_job_with_a_gesture_recognizer_from_s3(env: Env, recognizer_task: Path, palm_clip: Path) -> None:
    # the deployed worker reads the user's model from models/ in handpipe's bucket
    env.worker = Worker(env.s3, env.sqs, WorkerSettings(events_queue_url=env.queues["events"]))
    model_uri = f"s3://{env.bucket}/models/gesture_recognizer.task"
    env.s3.put_object(Bucket=env.bucket, Key="models/gesture_recognizer.task", Body=recognizer_task.read_bytes())
    video = upload_clip(env, palm_clip)
    status, job = env.call("POST", f"/videos/{video['id']}/jobs", {"options": {"num_hands": 1, "model_uri": model_uri}})
    assert status == 202, job
    finished = env.process(job["id"])
    assert finished["status"] == "SUCCEEDED", finished

    status, insights = env.call("GET", f"/jobs/{job['id']}/insights")
    assert status == 200 and insights["gestures"]["method"] == "gesture_recognizer"
    assert insights["gestures"]["model"] == model_uri
    status, export = env.call("GET", f"/jobs/{job['id']}/export?format=csv")
    assert status == 200, export
    with urllib.request.urlopen(export["url"]) as response:
        rows = list(csv.DictReader(io.StringIO(gzip.decompress(response.read()).decode())))
    by_block = [Counter(row["gesture"] for row in rows if int(row["frame_index"]) // BLOCK == b) for b in range(3)]
    assert by_block[0]["fingers_up"] >= BLOCK - 1 and by_block[1]["fingers_down"] >= BLOCK - 1

    status, result = env.call("GET", f"/jobs/{job['id']}/result")
    assert status == 200 and result["pictures"]["timeline"], result
    with urllib.request.urlopen(result["pictures"]["timeline"]) as response:
        assert response.read(8) == b"\x89PNG\r\n\x1a\n"


def test_a_job_whose_model_is_missing_or_not_a_hand_model_fails_with_the_reason(env: Env, palm_clip: Path) -> None:
    env.worker = Worker(env.s3, env.sqs, WorkerSettings(events_queue_url=env.queues["events"]))
    env.s3.put_object(Bucket=env.bucket, Key="models/not_hands.task", Body=b"PK\x05\x06" + b"\x00" * 18)
    video = upload_clip(env, palm_clip)
    for name, reason in [("missing.task", "does not exist"), ("not_hands.task", "neither a hand_landmarker.task")]:
        uri = f"s3://{env.bucket}/models/{name}"
        status, job = env.call("POST", f"/videos/{video['id']}/jobs", {"options": {"model_uri": uri}})
        assert status == 202, job
        finished = env.process(job["id"])
        assert finished["status"] == "FAILED", finished
        assert finished["error"]["code"] == "model_error" and reason in finished["error"]["message"], finished
