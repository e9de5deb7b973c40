"""Schemathesis fuzzes every operation of chalicelib/web/openapi.json against a live local stack: with the stack's API
key (no 5xx, every answer documented and matching its schema) and without it (every protected one answers 401)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi import checks as openapi_checks

from chalicelib.web.openapi import OPENAPI_PATH
from handpipe.client import Client
from handpipe.local.stack import LocalStack

SAMPLE = Path(__file__).resolve().parents[2] / "handpipe" / "samples" / "one_hand_wave_portrait.mp4"
DOC: dict[str, Any] = json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))
OPERATIONS = {
    f"{method.upper()} {path}": operation
    for path, item in DOC["paths"].items()
    for method, operation in item.items()
    if method != "parameters"
}
# Operations the document says need no credentials (`security: []`): GET /health and GET /openapi.json.
PUBLIC = {label for label, operation in OPERATIONS.items() if operation.get("security") == []}

# Every check schemathesis has: no 5xx; a documented status, content type, body and headers; and the document's
# precision both ways: a request it allows is not refused (a 400), one it forbids is not accepted.
CHECKS = [
    not_a_server_error,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_schema_conformance,
    openapi_checks.response_headers_conformance,
    openapi_checks.negative_data_rejection,
    openapi_checks.positive_data_acceptance,
]
EXAMPLES = int(os.environ.get("HANDPIPE_FUZZ_EXAMPLES", "60"))

SCHEMA = schemathesis.openapi.from_path(OPENAPI_PATH)
# The key comes from the stack (headers below), never from generated security parameters: the pass with the key
# always sends the right one, the pass without it sends none.
SCHEMA.config.generation.update(with_security_parameters=False, deterministic=True)
# Failures print the exact request, key included: it is the throwaway key of this module's stack.
SCHEMA.config.output.sanitization.enabled = False
# A size over the upload limit is a 413 (documented): the limit is the deployment's setting
# (HANDPIPE_MAX_UPLOAD_BYTES), which a static document cannot hold as a maximum.
SCHEMA.config.checks.positive_data_acceptance.expected_statuses = [
    *SCHEMA.config.checks.positive_data_acceptance.expected_statuses,
    "413",
]
# The coverage phase also sends each path every method it does not document, TRACE and QUERY included: the local
# stack answers them 405 as Chalice answers PUT or PATCH (http.server alone would answer 501); in AWS, API Gateway
# answers them 403.

# Bounded and reproducible: per operation and pass, the coverage phase's cases (boundaries, missing and mutated
# fields, wrong types and content types) plus at most EXAMPLES generated ones on real objects (60: under a minute
# on 2 cores; HANDPIPE_FUZZ_EXAMPLES=200 for a longer run, which passes too), a quarter of that as generated and a
# tenth without a key, the same on every run and machine (derandomize: a fixed seed per test), with nothing
# replayed from a local example database.
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
FUZZ_AS_GENERATED = settings(FUZZ, max_examples=max(10, EXAMPLES // 4))
FUZZ_WITHOUT_KEY = settings(FUZZ, max_examples=max(10, EXAMPLES // 10))

# Bugs the fuzzing found are fixed and kept as plain tests at the end of this file.
POSTS_WITH_BODY = {"POST /videos", "POST /videos/{video_id}/jobs"}
# What each operation answered, by pass ("key", "no key") and the method sent (the coverage phase also sends each
# path the methods it does not have), for the last fuzz test: fuzzing that only ever got 400s and 404s proves little.
ANSWERS: Counter[tuple[str, str, str, int]] = Counter()


def _sent_content_type(response: schemathesis.Response) -> str:
    return str(response.request.headers.get("Content-Type") or "").split(";")[0].strip().lower()


# ------------------------------------------------------------------------------------------------- the stack


@dataclass(frozen=True)
class Live:
    api_url: str
    api_key: str
    client: Client
    video_id: str  # the sample clip, uploaded, with a SUCCEEDED job
    job_id: str  # SUCCEEDED, so that /result, /frames, /export, /insights and /viewer have something to answer
    short_video_id: str  # the sample's first 15 frames, uploaded: where the fuzzing starts jobs, cheap to run
    multipart_video_id: str  # registered above the (lowered) multipart threshold: 4 parts, none uploaded
    short_clip: Path | None = None  # that clip's file: each cancel case cancels a job started on a fresh copy


def _short_clip(source: Path, target: Path, frames: int = 15) -> Path:
    import cv2

    capture = cv2.VideoCapture(str(source))
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    writer: Any = None
    for _ in range(frames):
        ok, image = capture.read()
        if not ok:
            break
        if writer is None:
            height, width = image.shape[:2]
            fourcc = cv2.VideoWriter_fourcc(*"mp4v")  # type: ignore[attr-defined]
            writer = cv2.VideoWriter(str(target), fourcc, fps, (width, height))
        writer.write(image)
    capture.release()
    assert writer is not None, f"cannot read {source}"
    writer.release()
    return target


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    data_dir = tmp_path_factory.mktemp("schemathesis")
    # Registrations above 1000 bytes get a multipart upload (in 5 MiB parts, S3's minimum), so that the fuzzing
    # reaches the multipart operations with uploads it can finish cheaply.
    patch = pytest.MonkeyPatch()
    patch.setenv("HANDPIPE_MULTIPART_THRESHOLD_BYTES", "1000")
    patch.setenv("HANDPIPE_MULTIPART_PART_BYTES", str(5 * 1024**2))
    with LocalStack(port=0, data_dir=data_dir, workers=1, bucket="stack-fuzz", prefix="fuzz", quiet=True) as stack:
        assert stack.info is not None
        client = Client(stack.info.api_url, api_key=stack.info.api_key)
        job = client.submit(SAMPLE, {"sample_fps": 5}, title="fuzz")
        short_clip = _short_clip(SAMPLE, data_dir / "short.mp4")
        short = client.register_video(short_clip, title="fuzz jobs")
        client.upload(short, short_clip)
        finished = client.wait(job["id"], poll_s=0.3, timeout_s=300)
        assert finished["status"] == "SUCCEEDED", finished
        multipart = client.request("POST", "/videos", {"filename": "parts.mp4", "size_bytes": 20 * 1024**2})
        assert multipart["upload"]["method"] == "multipart" and multipart["upload"]["part_count"] == 4
        yield Live(
            stack.info.api_url,
            stack.info.api_key,
            client,
            job["video_id"],
            job["id"],
            short["id"],
            multipart["id"],
            short_clip,
        )
        # Let the jobs the fuzzing started finish (at most 3 at a time, on 15 frames), so that no worker is cut off
        # mid-item, with a traceback, when the stack stops.
        stack.drain(timeout_s=120)
    patch.undo()


def _make_real(case: schemathesis.Case, live: Live) -> None:
    """Point the case at objects that exist, so that it gets past the 404s into the operation itself. (Bodies are
    left as generated: the document's patterns already make a valid one name a video file.)"""
    params: dict[str, Any] = case.path_parameters or {}
    if "video_id" in params:
        if case.operation.label in ("DELETE /videos/{video_id}", "POST /videos/{video_id}/upload-url"):
            # A fresh video for each delete: deleting the shared one would turn every later case into a 404. And
            # one without its file for each new upload URL: the shared one has its file, which is a 409.
            video = live.client.request("POST", "/videos", {"filename": "doomed.mp4", "size_bytes": 1000})
            params["video_id"] = video["id"]
        elif case.operation.label == "POST /videos/{video_id}/jobs":
            params["video_id"] = live.short_video_id
        elif case.operation.label in ("GET /videos/{video_id}/upload", "POST /videos/{video_id}/upload/parts"):
            params["video_id"] = live.multipart_video_id
        elif case.operation.label in ("DELETE /videos/{video_id}/upload", "POST /videos/{video_id}/upload/complete"):
            # A fresh one-part multipart upload for each abort and complete (both end the upload).
            video = live.client.request("POST", "/videos", {"filename": "part.mp4", "size_bytes": 2000})
            params["video_id"] = video["id"]
            if case.operation.label.endswith("/complete"):
                _upload_the_part(case, live, video["id"])
        else:
            params["video_id"] = live.video_id
    if "job_id" in params:
        params["job_id"] = live.job_id
        if case.operation.label == "POST /jobs/{job_id}/cancel" and live.short_clip is not None:
            # A job that can be cancelled (the SUCCEEDED one is a 409): started just now, on a video of its own, so
            # that the jobs of cases that did not cancel (a 400) never fill a video's active jobs.
            video = live.client.register_video(live.short_clip, title="fuzz cancel")
            live.client.upload(video, live.short_clip)
            params["job_id"] = live.client.request("POST", f"/videos/{video['id']}/jobs", {})["id"]


def _upload_the_part(case: schemathesis.Case, live: Live, video_id: str) -> None:
    """Upload the one part of the video; a positive case then completes with that part's real ETag (which no
    generator can guess), a negative one keeps its generated body."""
    [part] = live.client.upload_parts_urls(video_id, [1])
    request = urllib.request.Request(
        part["url"], data=b"\0" * 2000, method="PUT", headers={"Content-Type": "application/octet-stream"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        etag = response.headers["ETag"]
    if case.meta is not None and case.meta.generation.mode.is_positive:
        case.body = {"parts": [{"part_number": 1, "etag": etag}]}


# ------------------------------------------------------------------------------------------------- the fuzzing


def test_the_running_api_serves_the_document_that_is_fuzzed(live: Live) -> None:
    """The fuzzing reads chalicelib/web/openapi.json; GET /openapi.json serves the same, so nothing differs."""
    with urllib.request.urlopen(f"{live.api_url}/openapi.json", timeout=30) as response:
        assert json.loads(response.read()) == DOC


# Each operation twice: made real (ids of the uploaded video and its SUCCEEDED job, or of a fresh video to delete or
# to upload again: the operations themselves, with pages, results, frames, exports, insights, the viewer,
# registrations, jobs and deletes), with the most examples; and as generated (ids are mostly 404s; what odd ids
# and bodies do), with fewer. GET /health and GET /openapi.json take no parameters or body, so they get few
# distinct cases, all still checked. The viewer's second way to pass the key (?api_key=, for browsers) is not
# generated: the key always goes in the header here; tests/integration/test_insight_routes.py covers the
# query parameter.
@SCHEMA.parametrize()
@FUZZ
def test_every_operation_with_the_api_key(case: schemathesis.Case, live: Live) -> None:
    """Generated and mutated requests, positive and negative, on real objects: never a 5xx, every answer has a
    documented status, content type, body and headers, and the document is exact both ways."""
    _make_real(case, live)
    _call_with_key(case, live)


@SCHEMA.parametrize()
@FUZZ_AS_GENERATED
def test_every_operation_with_the_api_key_as_generated(case: schemathesis.Case, live: Live) -> None:
    """The same checks on requests exactly as generated."""
    _call_with_key(case, live)


def _call_with_key(case: schemathesis.Case, live: Live) -> None:
    headers = {"x-api-key": live.api_key}
    response = case.call(base_url=live.api_url, headers=headers)
    ANSWERS[("key", case.operation.label, case.method.upper(), response.status_code)] += 1
    case.validate_response(response, checks=_checks_for(response), headers=headers)


def _checks_for(response: schemathesis.Response) -> list[Any]:
    """Every check, but a webhook URL refused for where its host resolves is no schema-valid request rejected:
    whether a host resolves to public addresses only is DNS's answer at the time of the request, which a static
    document cannot hold (as it cannot hold the deployment's upload limit above). Its 400 is still checked."""
    if response.status_code == 400 and "webhook_url is refused" in response.text:
        return [check for check in CHECKS if check is not openapi_checks.positive_data_acceptance]
    return CHECKS


@SCHEMA.parametrize()
@FUZZ_WITHOUT_KEY
def test_every_protected_operation_without_a_key_is_401(case: schemathesis.Case, live: Live) -> None:
    """No x-api-key: every operation but the public ones answers 401 with the documented error, whatever else the
    request holds; the public ones answer as with a key. A method the path does not have never reaches a view, so it
    is only checked for the rest: Chalice answers it 405, or 200 with no body for OPTIONS (its local CORS preflight
    answer; API Gateway answers both 403 in AWS)."""
    response = case.call(base_url=live.api_url)
    ANSWERS[("no key", case.operation.label, case.method.upper(), response.status_code)] += 1
    case.validate_response(response, checks=CHECKS)
    if case.operation.label not in PUBLIC and case.method.upper() == case.operation.method.upper():
        assert response.status_code == 401, (case.as_curl_command(), response.status_code, response.text[:300])
        assert response.json()["code"] == "unauthorized"


def test_the_fuzzing_reached_every_operation() -> None:
    """Runs after the fuzzing above (file order): with the key, each operation answered 2xx at least once, so the
    fuzzing got past validation into the operations themselves; without it, each protected one answered 401."""
    if {what for what, _, _, _ in ANSWERS} != {"key", "no key"}:
        pytest.skip("both fuzz tests must run in the session (run the whole file)")
    for (what, label, method, status), count in sorted(ANSWERS.items()):
        print(f"{what:>6}  {label:<32} sent {method:<7} {status}  x{count}")
    own = [(what, label, status) for what, label, method, status in ANSWERS if label.startswith(method + " ")]
    succeeded = {label for what, label, status in own if what == "key" and 200 <= status < 300}
    assert set(OPERATIONS) - succeeded == set(), "operations never answered 2xx with the key"
    refused = {label for what, label, status in own if what == "no key" and status == 401}
    assert set(OPERATIONS) - PUBLIC - refused == set(), "protected operations never answered 401 without a key"


# ------------------------------------------------------------------------------------------------- the bugs


def _call(live: Live, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, Any]:
    request = urllib.request.Request(f"{live.api_url}{path}", data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


@pytest.mark.parametrize("s3_key", ["", "   "], ids=["empty", "spaces"])
def test_a_blank_s3_key_is_a_400_not_a_503(live: Live, s3_key: str) -> None:
    """Fixed: the fuzzing found that a blank s3_key was answered 503 'the storage is unavailable' with Retry-After
    (the empty key went to S3 head_object, whose parameter validation error became StorageUnavailable). Since
    registration by key takes only keys under incoming/, it is a 400."""
    headers = {"x-api-key": live.api_key, "Content-Type": "application/json"}
    status, body = _call(live, "POST", "/videos", json.dumps({"s3_key": s3_key}).encode(), headers)
    assert (status, body.get("code")) == (400, "invalid_input"), (status, body)


@pytest.mark.parametrize("method, path", [("GET", "/videos"), ("DELETE", "/videos/vid_0"), ("GET", "/jobs/job_0")])
def test_a_content_type_on_a_request_without_body_gets_a_documented_answer(live: Live, method: str, path: str) -> None:
    """Fixed: routes that read no body answered 415 to a Content-Type other than JSON."""
    status, body = _call(live, method, path, None, {"x-api-key": live.api_key, "Content-Type": "text/plain"})
    label = next(label for label in OPERATIONS if _matches(label, method, path))
    assert str(status) in OPERATIONS[label]["responses"], (status, body)


@pytest.mark.parametrize("method, path", [("POST", "/videos"), ("GET", "/videos")])
def test_without_a_key_any_content_type_is_401(live: Live, method: str, path: str) -> None:
    """Fixed: without a key, a non-JSON Content-Type was answered 415 before the key was checked."""
    status, body = _call(live, method, path, b"x" if method == "POST" else None, {"Content-Type": "text/plain"})
    assert (status, body.get("code")) == (401, "unauthorized"), (status, body)


def _matches(label: str, method: str, path: str) -> bool:
    op_method, template = label.split(" ", 1)
    parts, want = template.strip("/").split("/"), path.strip("/").split("/")
    return (
        op_method == method
        and len(parts) == len(want)
        and all(p == w or p.startswith("{") for p, w in zip(parts, want, strict=True))
    )
