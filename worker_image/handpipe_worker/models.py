"""Model bundles: a hand landmarker assembled from the tflite files inside the installed mediapipe
package (nothing is downloaded at run time), or a user's own hand_landmarker.task or
gesture_recognizer.task (which also names each hand's gesture)."""

from __future__ import annotations

import importlib.util
import io
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

# Which tflite files make up each bundled variant. The package's lite palm detector lacks the
# NormalizationOptions metadata the Tasks API requires, so "lite" pairs the full palm detector with
# the lite landmark model (the landmark model is most of the per-frame cost on tracked frames).
BUNDLED_VARIANTS: dict[str, tuple[str, str]] = {
    "full": ("palm_detection/palm_detection_full.tflite", "hand_landmark/hand_landmark_full.tflite"),
    "lite": ("palm_detection/palm_detection_full.tflite", "hand_landmark/hand_landmark_lite.tflite"),
}


HAND_LANDMARKER = "hand_landmarker"
GESTURE_RECOGNIZER = "gesture_recognizer"
# What each kind of .task bundle holds at its top level (MediaPipe's layout).
TASK_MEMBERS: dict[str, frozenset[str]] = {
    HAND_LANDMARKER: frozenset({"hand_detector.tflite", "hand_landmarks_detector.tflite"}),
    GESTURE_RECOGNIZER: frozenset({"hand_landmarker.task", "hand_gesture_recognizer.task"}),
}


class ModelError(Exception):
    """A model that cannot be found or read; the text says which and what to do."""


@dataclass(frozen=True)
class ModelBundle:
    name: str  # "full", "lite" or "custom"
    source: str  # where the bytes came from
    data: bytes
    task: str = HAND_LANDMARKER  # or GESTURE_RECOGNIZER
    gesture_labels: tuple[str, ...] | None = None  # a recognizer's, when its classifiers name them

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {
            "name": self.name,
            "source": self.source,
            "task": self.task,
            "mediapipe_version": mediapipe_version(),
        }
        if self.gesture_labels is not None:
            described["gesture_labels"] = list(self.gesture_labels)
        return described


def mediapipe_version() -> str:
    try:
        return metadata.version("mediapipe")
    except metadata.PackageNotFoundError:
        return "unknown"


def _mediapipe_modules_dir() -> Path:
    # find_spec, not import: importing mediapipe costs about a second and is not needed to find files.
    spec = importlib.util.find_spec("mediapipe")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("mediapipe is not installed: install mediapipe==0.10.21")
    return Path(list(spec.submodule_search_locations)[0]) / "modules"


def assemble_bundled(variant: str) -> ModelBundle:
    if variant not in BUNDLED_VARIANTS:
        raise ModelError(f"unknown model {variant!r}; choose one of {', '.join(BUNDLED_VARIANTS)}")
    modules = _mediapipe_modules_dir()
    detector, landmarks = (modules / rel for rel in BUNDLED_VARIANTS[variant])
    for path in (detector, landmarks):
        if not path.is_file():
            raise ModelError(
                f"{path} is missing: this mediapipe release ships no model files; "
                "pin mediapipe==0.10.21 or pass model_uri pointing at a hand_landmarker.task"
            )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as bundle:
        bundle.writestr("hand_detector.tflite", detector.read_bytes())
        bundle.writestr("hand_landmarks_detector.tflite", landmarks.read_bytes())
    source = f"mediapipe-{mediapipe_version()}:{detector.name}+{landmarks.name}"
    return ModelBundle(name=variant, source=source, data=buffer.getvalue())


def load_task_file(uri: str, fetch_s3: Callable[[str], bytes] | None = None) -> ModelBundle:
    if uri.startswith("s3://"):
        if fetch_s3 is None:
            raise ModelError(f"cannot read {uri}: no S3 access here; download it and pass a local path")
        data = fetch_s3(uri)
    else:
        path = Path(uri).expanduser()
        if not path.is_file():
            raise ModelError(f"model file {uri} does not exist")
        data = path.read_bytes()
    task = task_kind(uri, data)
    labels = recognizer_labels(data) if task == GESTURE_RECOGNIZER else None
    return ModelBundle(name="custom", source=uri, data=data, task=task, gesture_labels=labels)


# The classifiers of a hand_gesture_recognizer.task, in the order MediaPipe consults them.
GESTURE_CLASSIFIERS = ("custom_gesture_classifier.tflite", "canned_gesture_classifier.tflite")


def recognizer_labels(data: bytes) -> tuple[str, ...] | None:
    """Every label a gesture_recognizer.task's classifiers can give, from the label files TFLite metadata
    packs into each classifier (a zip appended to the model); None when none can be read."""
    try:
        outer = zipfile.ZipFile(io.BytesIO(data))
        recognizer = zipfile.ZipFile(io.BytesIO(outer.read("hand_gesture_recognizer.task")))
        labels: list[str] = []
        for name in GESTURE_CLASSIFIERS:
            if name not in recognizer.namelist():
                continue
            packed = zipfile.ZipFile(io.BytesIO(recognizer.read(name)))
            for member in packed.namelist():
                if member.endswith(".txt"):
                    lines = packed.read(member).decode("utf-8", "replace").splitlines()
                    labels += [line.strip() for line in lines if line.strip() and line.strip() not in labels]
        return tuple(labels) or None
    except (zipfile.BadZipFile, KeyError):
        return None


def task_kind(uri: str, data: bytes) -> str:
    """HAND_LANDMARKER or GESTURE_RECOGNIZER, from the members of the .task zip (ModelError otherwise)."""
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise ModelError(f"{uri} is not a MediaPipe .task bundle (expected a zip of tflite models)")
    names = set(zipfile.ZipFile(io.BytesIO(data)).namelist())
    for kind, members in TASK_MEMBERS.items():
        if members <= names:
            return kind
    # Not the names it does hold: a job's error is the caller's to read, and the file's contents are not.
    raise ModelError(
        f"{uri} is neither a hand_landmarker.task nor a gesture_recognizer.task (expected "
        + " or ".join(" + ".join(sorted(members)) for members in TASK_MEMBERS.values())
        + ")"
    )


class ModelCache:
    """Bundles built or fetched once per process (per Lambda container) and reused by every run."""

    def __init__(self, fetch_s3: Callable[[str], bytes] | None = None) -> None:
        self._fetch_s3 = fetch_s3
        self._bundles: dict[tuple[str, str | None], ModelBundle] = {}
        self._lock = threading.Lock()

    def get(self, model: str, model_uri: str | None = None) -> ModelBundle:
        key = (model, model_uri)
        with self._lock:
            if key not in self._bundles:
                self._bundles[key] = load_task_file(model_uri, self._fetch_s3) if model_uri else assemble_bundled(model)
            return self._bundles[key]
