"""Builds a small but real gesture_recognizer.task for the tests: MediaPipe's own hand models from the
installed package plus a linear gesture embedder and classifier written as TFLite flatbuffers here, since
Google's trained gesture_recognizer.task cannot be downloaded on this machine.

The classifier tells which way the fingers point in the image: "Fingers_Up" when the wrist is below the
middle fingertip, "Fingers_Down" when it is above, "None" when the hand is held sideways. That is a
property a person can check on real footage, so the tests can tell GestureRecognizer's answers apart
from the rule-based labels."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from pathlib import Path

import flatbuffers
import numpy as np
from handpipe_worker.models import BUNDLED_VARIANTS, _mediapipe_modules_dir

LABELS = ("None", "Fingers_Up", "Fingers_Down")
WRIST, MIDDLE_TIP = 0, 12
# logits = SLOPE * (wrist_y - middle_tip_y) - THRESHOLD for Up, the negation for Down, 0 for None.
SLOPE, THRESHOLD = 12.0, 2.0


def _tflite_model(
    inputs: Sequence[tuple[str, list[int]]],
    layers: Sequence[tuple[str, np.ndarray, np.ndarray | None]],
    combine: str,
    softmax: bool,
    output_name: str,
) -> bytes:
    """A float32 TFLite model: one FULLY_CONNECTED per input (layers[i] applies to inputs[i]), their outputs
    added together, then optionally a SOFTMAX. `combine` names the tensor the additions produce."""
    from mediapipe.tasks.metadata import schema_py_generated as schema

    tensors: list[schema.TensorT] = []
    buffers: list[schema.BufferT] = [schema.BufferT()]  # buffer 0 is the conventional empty buffer

    def tensor(name: str, shape: list[int], data: np.ndarray | None = None) -> int:
        entry = schema.TensorT()
        entry.name, entry.shape, entry.type = name, shape, schema.TensorType.FLOAT32
        entry.buffer = 0
        if data is not None:
            buffer = schema.BufferT()
            buffer.data = list(np.ascontiguousarray(data, dtype="<f4").tobytes())
            buffers.append(buffer)
            entry.buffer = len(buffers) - 1
        tensors.append(entry)
        return len(tensors) - 1

    codes: list[int] = []

    def operator(code: int, op_inputs: list[int], op_outputs: list[int], options_type: int, options: object) -> object:
        if code not in codes:
            codes.append(code)
        op = schema.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = codes.index(code), op_inputs, op_outputs
        op.builtinOptionsType, op.builtinOptions = options_type, options
        return op

    width = layers[0][1].shape[0]
    input_ids = [tensor(name, shape) for name, shape in inputs]
    operators = []
    partials = []
    for (name, weights, bias), input_id in zip(layers, input_ids, strict=True):
        out = tensor(f"{name}_out", [1, width])
        ids = [input_id, tensor(f"{name}_weights", list(weights.shape), weights)]
        ids.append(tensor(f"{name}_bias", [width], bias) if bias is not None else -1)
        operators.append(
            operator(
                schema.BuiltinOperator.FULLY_CONNECTED,
                ids,
                [out],
                schema.BuiltinOptions.FullyConnectedOptions,
                schema.FullyConnectedOptionsT(),
            )
        )
        partials.append(out)
    total = partials[0]
    for index, partial in enumerate(partials[1:], start=1):
        last = index == len(partials) - 1
        summed = tensor(combine if last and not softmax else f"sum_{index}", [1, width])
        operators.append(
            operator(
                schema.BuiltinOperator.ADD,
                [total, partial],
                [summed],
                schema.BuiltinOptions.AddOptions,
                schema.AddOptionsT(),
            )
        )
        total = summed
    if softmax:
        scores = tensor(output_name, [1, width])
        options = schema.SoftmaxOptionsT()
        options.beta = 1.0
        operators.append(
            operator(schema.BuiltinOperator.SOFTMAX, [total], [scores], schema.BuiltinOptions.SoftmaxOptions, options)
        )
        total = scores

    subgraph = schema.SubGraphT()
    subgraph.tensors, subgraph.inputs, subgraph.outputs = tensors, input_ids, [total]
    subgraph.operators, subgraph.name = operators, "main"
    model = schema.ModelT()
    model.version, model.description, model.subgraphs, model.buffers = 3, "handpipe test model", [subgraph], buffers
    model.operatorCodes = []
    for code in codes:
        entry = schema.OperatorCodeT()
        entry.builtinCode, entry.deprecatedBuiltinCode, entry.version = code, code, 1
        model.operatorCodes.append(entry)
    builder = flatbuffers.Builder(4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def gesture_embedder() -> bytes:
    """Inputs as MediaPipe's SingleHandGestureRecognizerGraph feeds them: object-normalized landmarks
    [1, 21, 3], handedness [1, 1], world landmarks [1, 21, 3]. Embedding [1, 2]: (wrist y - middle
    fingertip y, handedness)."""
    from mediapipe.tasks.python.metadata.metadata_writers import metadata_writer

    landmarks = np.zeros((2, 63), np.float32)
    landmarks[0, WRIST * 3 + 1], landmarks[0, MIDDLE_TIP * 3 + 1] = 1.0, -1.0
    handedness = np.array([[0.0], [1.0]], np.float32)
    world = np.zeros((2, 63), np.float32)
    model = _tflite_model(
        [("hand_landmarks", [1, 21, 3]), ("handedness", [1, 1]), ("world_landmarks", [1, 21, 3])],
        [("landmarks_fc", landmarks, None), ("handedness_fc", handedness, None), ("world_fc", world, None)],
        combine="embedding",
        softmax=False,
        output_name="embedding",
    )
    writer = metadata_writer.MetadataWriter.create(bytearray(model))
    writer.add_general_info("handpipe_test_gesture_embedder", "fingers-up feature and handedness")
    for name in ("hand_landmarks", "handedness", "world_landmarks"):
        writer.add_feature_input(name=name)
    writer.add_feature_output(name="embedding")
    populated, _ = writer.populate()
    return bytes(populated)


def gesture_classifier() -> bytes:
    """Embedding [1, 2] -> softmax scores over LABELS, with the labels in the model's metadata."""
    from mediapipe.tasks.python.metadata.metadata_writers import metadata_writer

    weights = np.array([[0.0, 0.0], [SLOPE, 0.0], [-SLOPE, 0.0]], np.float32)
    bias = np.array([0.0, -THRESHOLD, -THRESHOLD], np.float32)
    model = _tflite_model(
        [("embedding", [1, 2])],
        [("classifier_fc", weights, bias)],
        combine="logits",
        softmax=True,
        output_name="scores",
    )
    writer = metadata_writer.MetadataWriter.create(bytearray(model))
    writer.add_general_info("handpipe_test_gesture_classifier", "which way the fingers point")
    writer.add_feature_input(name="embedding")
    writer.add_classification_output(metadata_writer.Labels().add(list(LABELS)))
    populated, _ = writer.populate()
    return bytes(populated)


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
    return buffer.getvalue()


def build_gesture_recognizer_task(path: Path) -> Path:
    """Writes gesture_recognizer.task at `path`, laid out as Google's: hand_landmarker.task and
    hand_gesture_recognizer.task (gesture_embedder.tflite + canned_gesture_classifier.tflite)."""
    modules = _mediapipe_modules_dir()
    detector, landmarks = (modules / rel for rel in BUNDLED_VARIANTS["full"])
    hand_landmarker = _zip(
        {"hand_detector.tflite": detector.read_bytes(), "hand_landmarks_detector.tflite": landmarks.read_bytes()}
    )
    recognizer = _zip(
        {"gesture_embedder.tflite": gesture_embedder(), "canned_gesture_classifier.tflite": gesture_classifier()}
    )
    path.write_bytes(_zip({"hand_landmarker.task": hand_landmarker, "hand_gesture_recognizer.task": recognizer}))
    return path
