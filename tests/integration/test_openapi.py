"""chalicelib/web/openapi.json, the API's OpenAPI 3.1 description, is kept true: it is valid, it has one
operation per Chalice route (same path and query parameters), its copies of the result format match
docs/result.schema.json, its job options accept what ProcessOptions accepts, and every answer the
routes give in a full flow and in the error cases has a declared status and matches its schema."""

from __future__ import annotations

import inspect
import json
import re
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import pytest
from chalice.test import Client
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi
from referencing import Registry
from referencing.jsonschema import DRAFT202012

import app as chalice_app
from chalicelib.adapters.database import Database
from chalicelib.config import Settings
from chalicelib.runtime import Runtime, runtime, use_runtime
from chalicelib.shared.contracts import ContractError, ProcessOptions
from chalicelib.shared.states import JOB_STATUSES, VIDEO_STATUSES
from chalicelib.web.openapi import OPENAPI_PATH, load_openapi
from tests.support.api import API_KEY, Env
from tests.support.paths import data_path

DOC: dict[str, Any] = json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))
DOC_URI = "urn:handpipe:openapi"
REGISTRY: Registry[Any] = Registry().with_resource(DOC_URI, DRAFT202012.create_resource(DOC))
RESULT_SCHEMA: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parents[2] / "docs" / "result.schema.json").read_text(encoding="utf-8")
)
METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")


# ------------------------------------------------------------------------------------ the document


def _escape(segment: str) -> str:
    return segment.replace("~", "~0").replace("/", "~1")


def _at(pointer: str) -> Any:
    node: Any = DOC
    for segment in pointer.lstrip("/").split("/"):
        node = node[int(segment)] if isinstance(node, list) else node[segment.replace("~1", "/").replace("~0", "~")]
    return node


def _resolve(pointer: str) -> tuple[Any, str]:
    """The object at `pointer`, following OpenAPI references (responses, parameters), and where it is."""
    node = _at(pointer)
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        pointer = ref[1:]
        node = _at(pointer)
    return node, pointer


def _validator(pointer: str) -> Draft202012Validator:
    """A validator for the schema at `pointer`, whose "#/components/schemas/..." refs resolve in DOC."""
    ref = f"{DOC_URI}#{quote(pointer, safe='/~')}"
    return Draft202012Validator({"$ref": ref}, registry=REGISTRY, format_checker=Draft202012Validator.FORMAT_CHECKER)


def _errors(pointer: str, instance: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
        for error in _validator(pointer).iter_errors(instance)
    ]


def _operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in DOC["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def _parameters(path: str, method: str) -> dict[tuple[str, str], tuple[dict[str, Any], str]]:
    """(in, name) -> (parameter, its pointer) for an operation, path-level parameters included."""
    base = f"/paths/{_escape(path)}"
    found = {}
    for where in (base, f"{base}/{method}"):
        for n, _ in enumerate(_at(where).get("parameters", [])):
            parameter, pointer = _resolve(f"{where}/parameters/{n}")
            found[(parameter["in"], parameter["name"])] = parameter, pointer
    return found


def test_the_document_is_valid_openapi_3_1() -> None:
    validate_openapi(DOC)
    assert DOC["openapi"].startswith("3.1.")
    assert (DOC["info"]["title"], DOC["info"]["version"]) == ("handpipe", "0.1.0")
    for name in DOC["components"]["schemas"]:
        Draft202012Validator.check_schema(_at(f"/components/schemas/{name}"))
        _validator(f"/components/schemas/{name}")  # every ref resolves
    refs = re.findall(r'"\$ref": "([^"]*)"', json.dumps(DOC))
    for ref in refs:
        assert ref.startswith("#/"), ref
        _at(ref[1:])  # every ref points inside the document
    for path, method, operation in _operations():
        for status in operation["responses"]:
            response, _ = _resolve(f"/paths/{_escape(path)}/{method}/responses/{status}")
            html = operation["operationId"] == "get_viewer" and status == "200"  # the viewer's page
            assert set(response["content"]) == ({"text/html"} if html else {"application/json"}), (path, method, status)


def test_every_route_has_one_operation_with_its_parameters() -> None:
    routes = {
        (path, method.lower()): entry
        for path, methods in chalice_app.app.routes.items()
        for method, entry in methods.items()
    }
    documented = {(path, method) for path, method, _ in _operations()}
    assert set(routes) - documented == set(), "routes missing from the document"
    assert documented - set(routes) == set(), "operations of the document that are not routes"
    for (path, method), entry in routes.items():
        operation = DOC["paths"][path][method]
        assert operation["operationId"] == entry.view_name
        parameters = _parameters(path, method)
        assert {name for where, name in parameters if where == "path"} == set(entry.view_args), (path, method)
        read = set(re.findall(r'query\("(\w+)"\)', inspect.getsource(inspect.unwrap(entry.view_function))))
        assert {name for where, name in parameters if where == "query"} == read, (path, method)
        if entry.content_types and method in ("post", "put", "patch"):
            assert set(operation["requestBody"]["content"]) == set(entry.content_types), (path, method)
            assert "415" in operation["responses"], (path, method)


def test_enums_follow_the_service() -> None:
    schemas = DOC["components"]["schemas"]
    assert schemas["VideoStatus"]["enum"] == list(VIDEO_STATUSES)
    assert schemas["JobStatus"]["enum"] == list(JOB_STATUSES)
    assert _parameters("/videos", "get")[("query", "status")][0]["schema"] == {
        "$ref": "#/components/schemas/VideoStatus"
    }


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
        return {key: _inline(value, defs) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline(value, defs) for value in node]
    return node


def _without_description(schema: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in schema.items() if key != "description"}


def test_copies_of_the_result_format_match_docs_result_schema() -> None:
    schemas, result = DOC["components"]["schemas"], RESULT_SCHEMA["properties"]
    defs = RESULT_SCHEMA["$defs"]
    assert _without_description(schemas["Frame"]) == _inline(result["frames"]["items"], defs)
    assert _without_description(schemas["VideoMetadata"]) == _inline(result["video"], defs)
    summary = schemas["JobSummary"]
    assert summary["required"] == result["summary"]["required"] + ["stats", "decode"]
    assert summary["properties"] == {
        **_inline(result["summary"]["properties"], defs),
        "stats": _inline(result["stats"], defs),
        "decode": _inline(result["decode"], defs),
    }
    options = schemas["JobOptions"]
    assert set(options["properties"]) == set(options["required"]) == set(result["options"]["properties"])


OPTION_CASES: list[dict[str, Any]] = [
    {},
    {"num_hands": 1},
    {"num_hands": 4},
    {"num_hands": 2.0},
    {"num_hands": 0},
    {"num_hands": 5},
    {"num_hands": 1.5},
    {"num_hands": True},
    {"num_hands": "2"},
    {"num_hands": None},
    {"min_detection_confidence": 0},
    {"min_presence_confidence": 1},
    {"min_tracking_confidence": 0.25},
    {"min_detection_confidence": -0.01},
    {"min_tracking_confidence": 1.01},
    {"min_presence_confidence": "high"},
    {"model": "full"},
    {"model": "lite"},
    {"model": "huge"},
    {"model": None},
    {"sample_fps": 0.01},
    {"sample_fps": 1000},
    {"sample_fps": 0.009},
    {"sample_fps": 1000.5},
    {"sample_fps": 0},
    {"start_ms": 0},
    {"start_ms": 86_400_000},
    {"start_ms": -1},
    {"start_ms": 86_400_001},
    {"start_ms": 10.5},
    {"end_ms": 1},
    {"end_ms": 0},
    {"end_ms": 86_400_000},
    {"start_ms": 100, "end_ms": 200},
    {"model_uri": "s3://bucket/hands.task"},
    {"model_uri": "/opt/models/hands.task"},
    {"model_uri": "s3://bucket/hands.tflite"},
    {"model_uri": ""},
    {"model_uri": 7},
    {"model_uri": "s3://b/" + "x" * 1020 + ".task"},
    {"detection": "exact"},
    {"detection": "adaptive", "detection_interval_ms": 1, "detection_scan_frames": 10},
    {"detection": "fast"},
    {"detection": None, "detection_interval_ms": None},
    {"detection_interval_ms": 60_000},
    {"detection_interval_ms": 0},
    {"detection_interval_ms": 60_001},
    {"detection_interval_ms": 300.5},
    {"detection_scan_frames": 0},
    {"detection_scan_frames": 11},
    {"detection_scan_frames": "3"},
    {"bogus": 1},
]


@pytest.mark.parametrize("options", OPTION_CASES, ids=[json.dumps(o)[:60] for o in OPTION_CASES])
def test_the_options_schema_accepts_what_process_options_accepts(options: dict[str, Any]) -> None:
    try:
        ProcessOptions.from_dict(options)
        accepted = True
    except ContractError:
        accepted = False
    assert (not _errors("/components/schemas/ProcessOptions", options)) == accepted
    if accepted:
        stored = ProcessOptions.from_dict(options).to_dict()
        assert not _errors("/components/schemas/JobOptions", stored)


def test_the_schema_cannot_say_end_ms_must_follow_start_ms() -> None:
    """The one rule of ProcessOptions the schema leaves to its description."""
    with pytest.raises(ContractError, match="end_ms"):
        ProcessOptions.from_dict({"start_ms": 500, "end_ms": 500})
    assert "end_ms must be greater than start_ms" in DOC["components"]["schemas"]["ProcessOptions"]["description"]
    assert "empty_range" in DOC["components"]["schemas"]["ProcessOptions"]["description"]


def test_get_openapi_json_serves_the_document() -> None:
    with Client(chalice_app.app) as client:
        response = client.http.get("/openapi.json")
    assert response.status_code == 200
    assert json.loads(response.body) == DOC
    assert load_openapi() is load_openapi()  # read once, then kept


# ------------------------------------------------------------------------------------ answers


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any


@dataclass
class Checked:
    """Calls the API through the Chalice test client and checks each answer against the document."""

    client: Client
    seen: set[tuple[str, str, int]] = field(default_factory=set)

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        expect: int,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        sent = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        all_headers = {"content-type": "application/json", "x-api-key": API_KEY, **(headers or {})}
        response = getattr(self.client.http, method.lower())(path, body=sent, headers=all_headers)
        html = str(response.headers.get("Content-Type", "")).startswith("text/html")
        answer = Answer(
            response.status_code,
            dict(response.headers),
            response.body.decode() if html else json.loads(response.body or b"null"),
        )
        assert answer.status == expect, (method, path, answer.body)
        template = check_answer(method, path, body if raw is None else None, answer)
        self.seen.add((template, method.lower(), answer.status))
        return answer.body


def _template(path: str) -> str:
    segments = path.split("/")
    for template in DOC["paths"]:
        expected = template.split("/")
        if len(expected) == len(segments) and all(
            want == got or (want.startswith("{") and got) for want, got in zip(expected, segments, strict=True)
        ):
            return template
    raise AssertionError(f"{path} matches no path of the document")


def check_answer(method: str, url: str, sent: Any, answer: Answer) -> str:
    """Fail unless the document declares this status for the operation and the body matches its schema
    (and, for a success, the request followed the document too). Returns the path template."""
    parts = urlsplit(url)
    path = _template(parts.path)
    method = method.lower()
    assert method in DOC["paths"][path], f"{method.upper()} {path} is not in the document"
    operation = f"/paths/{_escape(path)}/{method}"
    responses = _at(f"{operation}/responses")
    assert str(answer.status) in responses, (
        f"{method.upper()} {path} answered {answer.status}, which the document does not declare "
        f"(declared: {', '.join(responses)}): {answer.body}"
    )
    response, pointer = _resolve(f"{operation}/responses/{answer.status}")
    for name, header in response.get("headers", {}).items():
        if header.get("required"):
            assert name in answer.headers, f"{method.upper()} {path} {answer.status} lacks the {name} header"
    media = str(answer.headers.get("Content-Type", "application/json")).split(";")[0].strip()
    problems = _errors(f"{pointer}/content/{_escape(media)}/schema", answer.body)
    assert not problems, f"{method.upper()} {url} {answer.status} does not match the document: {problems}"
    if 200 <= answer.status < 300:
        check_request(path, method, parts.query, sent)
    return path


def check_request(path: str, method: str, query: str, sent: Any) -> None:
    parameters = _parameters(path, method)
    for name, raw in parse_qsl(query, keep_blank_values=True):
        assert ("query", name) in parameters, f"{method.upper()} {path}: query parameter {name} is not declared"
        parameter, pointer = parameters[("query", name)]
        value: Any = int(raw) if parameter["schema"].get("type") == "integer" else raw
        assert not _errors(f"{pointer}/schema", value), (path, name, raw)
    if sent is not None:
        assert not _errors(f"/paths/{_escape(path)}/{method}/requestBody/content/application~1json/schema", sent), (
            path,
            method,
            sent,
        )


@pytest.fixture
def api(env: Env) -> Checked:
    return Checked(env.client)


def _register(api: Checked, env: Env, name: str, upload: bool = True, **extra: Any) -> dict[str, Any]:
    path = data_path(f"videos/{name}")
    body = {"title": f"clip {name}", "filename": name, "size_bytes": path.stat().st_size, **extra}
    video: dict[str, Any] = api.call("POST", "/videos", body, expect=201)
    assert video["upload"]["method"] == "PUT"
    if upload:
        env.upload(video, path)
    return video


def test_every_answer_of_a_full_flow_and_its_errors_follows_the_document(
    env: Env, api: Checked, tmp_path: Path
) -> None:
    call = api.call
    assert call("GET", "/health", expect=200)["status"] == "ok"
    assert call("GET", "/videos", expect=200) == {"videos": [], "next_token": None}
    assert call("GET", "/openapi.json", expect=200) == DOC

    # register: upload, and an object already in the bucket
    video = _register(api, env, "asl_thanks_two_hands.mkv", content_type="video/x-matroska")
    env.s3.upload_file(str(data_path("videos/asl_thanks_two_hands.mkv")), env.bucket, "incoming/tester/thanks.mkv")
    in_bucket = call(
        "POST", "/videos", {"s3_key": "incoming/tester/thanks.mkv", "title": "from the bucket"}, expect=201
    )
    assert "upload" not in in_bucket and in_bucket["status"] == "UPLOADED"
    waiting = _register(api, env, "asl_thanks_two_hands.mkv", upload=False)
    vid = video["id"]
    assert call("GET", f"/videos/{vid}", expect=200)["status"] == "REGISTERED"

    # a job: created, replayed by its token, refused with other options
    body = {"options": {"num_hands": 2, "sample_fps": 15, "model": "full"}, "client_token": "run-1", "tag": "exp"}
    job = call("POST", f"/videos/{vid}/jobs", body, expect=202)
    assert call("POST", f"/videos/{vid}/jobs", body, expect=200)["id"] == job["id"]
    call("POST", f"/videos/{vid}/jobs", {**body, "options": {"num_hands": 1}}, expect=409)
    call("POST", f"/videos/{waiting['id']}/jobs", {}, expect=409)  # not uploaded
    assert call("GET", f"/jobs/{job['id']}", expect=200)["status"] == "QUEUED"
    call("GET", f"/jobs/{job['id']}/result", expect=409)
    call("GET", f"/jobs/{job['id']}/frames", expect=409)
    call("DELETE", f"/videos/{vid}", expect=409)  # a job is queued
    assert [j["id"] for j in call("GET", f"/videos/{vid}/jobs", expect=200)["jobs"]] == [job["id"]]

    finished = env.process(job["id"])
    assert finished["status"] == "SUCCEEDED", finished
    done = call("GET", f"/jobs/{job['id']}", expect=200)
    assert done["summary"] is not None and done["video"] is not None and done["progress"]["percent"] == 100.0
    result = call("GET", f"/jobs/{job['id']}/result", expect=200)
    assert result["result"]["url"].startswith("http")
    page = call("GET", f"/jobs/{job['id']}/frames?start_ms=200&end_ms=1500&max_results=4", expect=200)
    assert len(page["frames"]) == 4 and page["next_token"]
    frames = f"/jobs/{job['id']}/frames"
    call("GET", f"{frames}?start_ms=200&end_ms=1500&max_results=4&next_token={page['next_token']}", expect=200)
    assert any(frame["hands"] for frame in call("GET", f"{frames}?max_results=1000", expect=200)["frames"])
    assert call("GET", f"/jobs/{job['id']}/frames?start_ms=900&end_ms=100", expect=200)["frames"] == []  # empty range
    call("GET", f"/jobs/{job['id']}/frames?max_results=0", expect=400)
    call("GET", f"/jobs/{job['id']}/frames?start_ms=soon", expect=400)
    call("GET", f"/jobs/{job['id']}/frames?next_token=!!!", expect=400)
    assert call("GET", f"/jobs/{job['id']}/export?format=jsonl", expect=200)["rows"] > 0
    assert call("GET", f"/jobs/{job['id']}/export?format=parquet", expect=200)["format"] == "parquet"
    call("GET", f"/jobs/{job['id']}/export?format=xml", expect=400)
    assert call("GET", f"/jobs/{job['id']}/insights", expect=200)["format"] == "handpipe.insights"
    assert job["id"] in call("GET", f"/jobs/{job['id']}/viewer", expect=200)
    assert call("GET", f"/jobs/{job['id']}/viewer/config", expect=200)["video_url"].startswith("http")

    # lists, filtered and paged
    processed = call("GET", "/videos?status=PROCESSED", expect=200)["videos"]
    assert [v["id"] for v in processed] == [vid] and processed[0]["metadata"] is not None
    first = call("GET", "/videos?limit=2", expect=200)
    assert len(first["videos"]) == 2 and first["next_token"]
    assert len(call("GET", f"/videos?limit=2&next_token={first['next_token']}", expect=200)["videos"]) == 1
    call("POST", f"/videos/{vid}/jobs", {"options": {"model": "lite"}}, expect=202)
    jobs = call("GET", f"/videos/{vid}/jobs?limit=1", expect=200)
    assert len(jobs["jobs"]) == 1 and jobs["next_token"]
    # cancel: a queued job, then again (409: it has finished); webhook secrets
    doomed = call("POST", f"/videos/{vid}/jobs", {"options": {"model": "lite"}, "tag": "doomed"}, expect=202)
    assert call("POST", f"/jobs/{doomed['id']}/cancel", expect=200)["status"] == "CANCELLED"
    assert "CANCELLED" in call("POST", f"/jobs/{doomed['id']}/cancel", expect=409)["message"]
    call("POST", f"/jobs/{job['id']}/cancel", {"now": True}, expect=400)
    call("POST", f"/jobs/job_{'0' * 32}/cancel", expect=404)
    call("POST", f"/videos/{vid}/jobs", {"notify": {"webhook_url": "https://10.0.0.1/hook"}}, expect=400)
    secret = call("GET", "/webhook-secret", expect=200)
    assert call("POST", "/webhook-secret/rotate", expect=200)["version"] == secret["version"] + 1
    call("GET", f"/videos/{vid}/jobs?limit=1&next_token={jobs['next_token']}", expect=200)
    env.process(jobs["jobs"][0]["id"])

    # a job that fails: its error is reported
    fake = tmp_path / "notes.mp4"
    fake.write_bytes(b"not a video at all\n" * 100)
    bad = call("POST", "/videos", {"filename": "notes.mp4", "size_bytes": fake.stat().st_size}, expect=201)
    env.upload(bad, fake)
    failed_id = call("POST", f"/videos/{bad['id']}/jobs", None, expect=202)["id"]
    env.process(failed_id)
    failed = call("GET", f"/jobs/{failed_id}", expect=200)
    assert failed["status"] == "FAILED" and failed["error"]["code"]
    assert call("GET", "/videos?status=FAILED", expect=200)["videos"][0]["id"] == bad["id"]

    # not found
    unknown_video, unknown_job = "vid_" + "0" * 32, "job_" + "0" * 32
    for method, path in [
        ("GET", f"/videos/{unknown_video}"),
        ("DELETE", f"/videos/{unknown_video}"),
        ("GET", f"/videos/{unknown_video}/jobs"),
        ("GET", f"/jobs/{unknown_job}"),
        ("GET", f"/jobs/{unknown_job}/result"),
        ("GET", f"/jobs/{unknown_job}/frames"),
        ("GET", "/jobs/not-an-id"),
    ]:
        call(method, path, expect=404)
    call("POST", f"/videos/{unknown_video}/jobs", {}, expect=404)

    # bad input, too large, not JSON
    for path in ["/videos?limit=0", "/videos?limit=abc", "/videos?status=DONE", "/videos?next_token=!!!"]:
        call("GET", path, expect=400)
    call("GET", f"/videos/{vid}/jobs?limit=101", expect=400)
    for bad_body in [
        {"filename": "clip.exe"},
        {"filename": "clip.mp4", "colour": "red"},
        {"title": "no file"},
        {"filename": "clip.mp4", "content_type": "text/html"},
    ]:
        call("POST", "/videos", bad_body, expect=400)
    call("POST", "/videos", {"s3_key": "incoming/tester/missing.mkv"}, expect=409)  # valid, but no such object
    call("POST", "/videos", raw=b"{not json", expect=400)
    call("POST", "/videos", {"filename": "clip.mp4", "size_bytes": 10**15}, expect=413)
    call("POST", "/videos", raw=b"filename=clip.mp4", headers={"content-type": "text/plain"}, expect=415)
    call("POST", f"/videos/{vid}/jobs", raw=b"{}", headers={"content-type": "text/plain"}, expect=415)
    for bad_job in [{"options": {"num_hands": 9}}, {"client_token": "a b"}, {"priority": 1}]:
        call("POST", f"/videos/{vid}/jobs", bad_job, expect=400)

    # a fresh upload URL: for a video whose file never came; not for one that has it, or one registered by key
    fresh = call("POST", f"/videos/{waiting['id']}/upload-url", None, expect=200)
    assert fresh["upload"]["url"].startswith("http") and fresh["upload"]["headers"]["Content-Length"] == str(
        waiting["size_bytes"]
    )
    call("POST", f"/videos/{vid}/upload-url", {}, expect=409)
    call("POST", f"/videos/{in_bucket['id']}/upload-url", None, expect=409)
    call("POST", f"/videos/{vid}/upload-url", {"size_bytes": 10}, expect=400)
    call("POST", f"/videos/{unknown_video}/upload-url", None, expect=404)

    # stored objects removed behind the API's back: a clear 410 from each read, never a 500
    second = jobs["jobs"][0]["id"]
    for key in [
        obj["Key"] for obj in env.s3.list_objects_v2(Bucket=env.bucket, Prefix=f"results/{vid}/{second}/")["Contents"]
    ]:
        env.s3.delete_object(Bucket=env.bucket, Key=key)
    for path in ["result", "frames", "export?format=csv", "insights"]:
        assert call("GET", f"/jobs/{second}/{path}", expect=410)["code"] == "gone"
    env.s3.delete_object(Bucket=env.bucket, Key=video["s3_key"])
    assert "upload-url" in call("GET", f"/jobs/{job['id']}/viewer/config", expect=410)["message"]
    assert "upload-url" in call("POST", f"/videos/{vid}/jobs", {}, expect=409)["message"]
    env.upload(
        call("POST", f"/videos/{vid}/upload-url", None, expect=200), data_path("videos/asl_thanks_two_hands.mkv")
    )
    assert call("GET", f"/jobs/{job['id']}/viewer/config", expect=200)["video_url"].startswith("http")

    # all the caller's jobs, filtered and paged
    found = call("GET", "/jobs?status=succeeded&limit=1", expect=200)
    assert len(found["jobs"]) == 1 and found["next_token"]
    call("GET", f"/jobs?status=succeeded&limit=1&next_token={found['next_token']}", expect=200)
    assert call("GET", f"/jobs?video_id={bad['id']}&created_after=2020-01-01T00:00:00Z", expect=200)["jobs"]
    for query in ["status=DONE", "limit=0", "video_id=x", "created_after=soon", "next_token=!!!"]:
        call("GET", f"/jobs?{query}", expect=400)

    # a multipart upload (the threshold lowered to 1000 bytes): part URLs, state, an incomplete complete, complete
    lowered = replace(runtime().settings, multipart_threshold_bytes=1000, multipart_part_bytes=5 * 1024**2)
    use_runtime(Runtime(lowered, s3_client=env.s3, sqs_client=env.sqs, database=env.db))
    size = 5 * 1024**2 + 10
    big = call("POST", "/videos", {"filename": "big.mp4", "size_bytes": size}, expect=201)
    assert (big["upload"]["method"], big["upload"]["part_count"]) == ("multipart", 2)
    urls = call("POST", f"/videos/{big['id']}/upload/parts", {"part_numbers": [1, 2]}, expect=200)["parts"]
    etags = [_put_part(part["url"], part["size_bytes"]) for part in urls]
    assert len(call("GET", f"/videos/{big['id']}/upload", expect=200)["uploaded_parts"]) == 2
    call("POST", f"/videos/{big['id']}/upload/parts", {"part_numbers": [0]}, expect=400)
    call("POST", f"/videos/{big['id']}/upload/parts", {"part_numbers": [3]}, expect=409)
    assert "in parts" in call("POST", f"/videos/{big['id']}/upload-url", None, expect=409)["message"]
    complete = f"/videos/{big['id']}/upload/complete"
    call("POST", complete, {"parts": [{"part_number": 1, "etag": etags[0]}]}, expect=409)
    parts = [{"part_number": n, "etag": etag} for n, etag in enumerate(etags, 1)]
    assert call("POST", complete, {"parts": parts}, expect=200)["size_bytes"] == size
    call("POST", complete, {"parts": parts}, expect=409)  # done already
    call("GET", f"/videos/{big['id']}/upload", expect=409)
    dropped = call("POST", "/videos", {"filename": "dropped.mp4", "size_bytes": 2000}, expect=201)
    assert call("DELETE", f"/videos/{dropped['id']}/upload", expect=200)["deleted"] == dropped["id"]
    call("DELETE", f"/videos/{dropped['id']}/upload", expect=404)

    # delete, once nothing runs
    deleted = call("DELETE", f"/videos/{vid}", expect=200)
    assert deleted["deleted"] == vid and deleted["objects_removed"] >= 3
    call("GET", f"/videos/{vid}", expect=404)

    succeeded = {(path, method) for path, method, status in api.seen if 200 <= status < 300}
    assert succeeded == {(path, method) for path, method, _ in _operations()}, "every operation answered a success"


def _put_part(url: str, size: int) -> str:
    request = urllib.request.Request(
        url, data=b"\0" * size, method="PUT", headers={"Content-Type": "application/octet-stream"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return str(response.headers["ETag"])


def test_unavailable_dependencies_follow_the_document(env: Env, api: Checked, tmp_path: Path) -> None:
    settings = Settings(
        bucket="no-such-bucket-handpipe",
        jobs_queue_url=env.queues["jobs"],
        work_queue_url=env.queues["work"],
        db_url="unused",
        api_keys={API_KEY: "tester"},
    )
    unreachable = Database.from_url(f"sqlite:///{tmp_path / 'missing-dir' / 'handpipe.db'}")
    use_runtime(Runtime(settings, s3_client=env.s3, sqs_client=env.sqs, database=unreachable))
    assert api.call("GET", "/videos", expect=503)["code"] == "unavailable"
    assert api.call("GET", f"/jobs/job_{'0' * 32}", expect=503)["code"] == "unavailable"
    health = api.call("GET", "/health", expect=503)
    assert health["status"] == "degraded" and health["checks"]["database"].startswith("failing")

    empty = Database.from_url(f"sqlite:///{tmp_path / 'empty.db'}")  # never migrated
    use_runtime(Runtime(settings, s3_client=env.s3, sqs_client=env.sqs, database=empty))
    assert api.call("GET", "/videos", expect=503)["code"] == "schema_out_of_date"
    empty.close()


def test_an_unconfigured_deployment_follows_the_document(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "HANDPIPE_BUCKET",
        "HANDPIPE_JOBS_QUEUE_URL",
        "HANDPIPE_WORK_QUEUE_URL",
        "HANDPIPE_DB_URL",
        "HANDPIPE_DB_SECRET_ARN",
    ):
        monkeypatch.delenv(name, raising=False)
    use_runtime(None)
    try:
        with Client(chalice_app.app) as client:
            api = Checked(client)
            assert api.call("GET", "/health", expect=503)["code"] == "not_configured"
            assert api.call("GET", "/videos", expect=503)["code"] == "not_configured"
            assert api.call("GET", "/openapi.json", expect=200) == DOC
    finally:
        use_runtime(None)
