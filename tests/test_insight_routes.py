"""Exports, insights and the viewer on a really processed clip: the routes through chalice.test.Client,
the client and the CLI, and the viewer page driven in headless Chromium against the local stack."""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import re
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

import app as chalice_app
from chalicelib.runtime import Runtime, runtime, use_runtime
from chalicelib.shared import exports
from chalicelib.shared.insights import GESTURES, analyze
from chalicelib.web import insight_routes
from chalicelib.web.auth import PUBLIC_PATHS
from handpipe.client import ApiError, Client, MissingDependency
from tests.conftest import IN_CI, data_path
from tests.test_api import API_KEY, OTHER_KEY, Env, register
from tests.test_api import env as env  # noqa: F401 (the fixture)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
UNKNOWN_JOB = "job_" + "0" * 32


def processed_job(env: Env) -> dict[str, Any]:
    video = register(env)
    status, job = env.call("POST", f"/videos/{video['id']}/jobs", {"options": {"num_hands": 2}})
    assert status == 202, job
    finished = env.process(job["id"])
    assert finished["status"] == "SUCCEEDED", finished
    return finished


def all_frames(env: Env, job_id: str) -> list[dict[str, Any]]:
    status, page = env.call("GET", f"/jobs/{job_id}/frames?max_results=1000")
    assert status == 200 and page["next_token"] is None
    frames: list[dict[str, Any]] = page["frames"]
    return frames


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url) as response:
        data: bytes = response.read()
    return data


def raw_get(env: Env, path: str, headers: dict[str, str] | None = None) -> Any:
    return env.client.http.get(path, headers={"x-api-key": API_KEY} if headers is None else headers)


# ------------------------------------------------------------------------------------ rows, pure


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


def test_the_blueprint_protects_its_routes_as_the_app_does() -> None:
    assert {k: type(v) for k, v in insight_routes.PROTECTED.items()} == {
        k: type(v) for k, v in chalice_app.PROTECTED.items()
    }
    for path in ("/jobs/{job_id}/export", "/jobs/{job_id}/insights", "/jobs/{job_id}/viewer/config"):
        entry = chalice_app.app.routes[path]["GET"]
        assert entry.api_key_required == chalice_app.PROTECTED.get("api_key_required")
    # the viewer page is public, so that API Gateway lets a browser's plain link through
    viewer = chalice_app.app.routes["/jobs/{job_id}/viewer"]["GET"]
    assert not viewer.api_key_required and viewer.authorizer is None


# ------------------------------------------------------------------------------------ exports


def check_export_rows(
    rows: list[dict[str, Any]], frames: list[dict[str, Any]], insights: dict[str, Any], job: dict[str, Any]
) -> None:
    """Rows as parsed from a file (all values may be text): one per hand seen, matching the frames API."""
    assert len(rows) == job["summary"]["hands_seen"] == sum(len(f["hands"]) for f in frames)
    by_frame = {f["index"]: f for f in frames}
    gestures = {(f, h): (label, score) for f, h, label, score in insights["gestures"]["per_frame"]}
    for row in rows:
        frame = by_frame[int(row["frame_index"])]
        hand = frame["hands"][int(row["hand_index"])]
        assert row["job_id"] == job["id"] and row["video_id"] == job["video_id"]
        assert float(row["timestamp_ms"]) == frame["timestamp_ms"]
        assert row["handedness"] == hand["handedness"] and float(row["handedness_score"]) == hand["score"]
        label, score = gestures[(frame["index"], int(row["hand_index"]))]
        assert row["gesture"] == label in GESTURES and float(row["gesture_score"]) == score
        for i in range(21):
            for k, axis in enumerate("xyz"):
                assert float(row[f"{axis}{i}"]) == hand["landmarks"][i][k]
                assert float(row[f"w{axis}{i}"]) == hand["world_landmarks"][i][k]
        assert all(math.isfinite(float(row[name])) for name in exports.COLUMNS[9:])


def test_csv_jsonl_and_parquet_exports_of_a_processed_clip(env: Env) -> None:
    job = processed_job(env)
    frames = all_frames(env, job["id"])
    status, insights = env.call("GET", f"/jobs/{job['id']}/insights")
    assert status == 200

    status, answer = env.call("GET", f"/jobs/{job['id']}/export?format=csv")
    assert status == 200, answer
    assert answer["format"] == "csv" and answer["columns"] == exports.COLUMNS
    assert answer["rows"] == job["summary"]["hands_seen"] == 86  # 51 frames, 2 hands in 35 of them
    assert answer["expires_in_s"] == 3600 and answer["key"] == (f"results/{job['video_id']}/{job['id']}/export.csv.gz")
    text = gzip.decompress(fetch(answer["url"])).decode()
    reader = csv.DictReader(io.StringIO(text))
    assert reader.fieldnames == exports.COLUMNS
    check_export_rows(list(reader), frames, insights, job)

    status, answer = env.call("GET", f"/jobs/{job['id']}/export?format=jsonl")
    assert status == 200 and answer["format"] == "jsonl" and answer["rows"] == 86
    lines = gzip.decompress(fetch(answer["url"])).decode().splitlines()
    rows = [json.loads(line) for line in lines]
    assert all(list(row) == exports.COLUMNS for row in rows)
    assert all(isinstance(row["frame_index"], int) and isinstance(row["x0"], float) for row in rows)
    check_export_rows(rows, frames, insights, job)

    # parquet is written by the API too (chalicelib.shared.parquet), typed, not gzipped again
    status, answer = env.call("GET", f"/jobs/{job['id']}/export?format=parquet")
    assert status == 200 and answer["format"] == "parquet" and answer["rows"] == 86, answer
    assert answer["columns"] == exports.COLUMNS
    assert answer["key"] == f"results/{job['video_id']}/{job['id']}/export.parquet"
    assert f"{job['id']}.parquet" in urllib.parse.unquote(answer["url"])  # the name a browser saves it as
    head = env.s3.head_object(Bucket=env.bucket, Key=answer["key"])
    assert head["ContentType"] == "application/vnd.apache.parquet"
    table = pq.read_table(io.BytesIO(fetch(answer["url"])))
    assert table.column_names == exports.COLUMNS and table.num_rows == 86
    rows = table.to_pylist()
    assert all(isinstance(row["frame_index"], int) and isinstance(row["x0"], float) for row in rows)
    check_export_rows(rows, frames, insights, job)

    # made once, then reused: nothing is written again, and no format means csv
    etag = env.s3.head_object(Bucket=env.bucket, Key=answer["key"])["ETag"]
    written = {o["Key"]: o["LastModified"] for o in env.s3.list_objects_v2(Bucket=env.bucket)["Contents"]}
    again = env.call("GET", f"/jobs/{job['id']}/export?format=jsonl")[1]
    default = env.call("GET", f"/jobs/{job['id']}/export")[1]
    assert again["rows"] == 86 and default["format"] == "csv"
    assert env.call("GET", f"/jobs/{job['id']}/export?format=parquet")[1]["rows"] == 86
    # Created once: asking again rewrites nothing.
    assert {o["Key"]: o["LastModified"] for o in env.s3.list_objects_v2(Bucket=env.bucket)["Contents"]} == written
    assert env.s3.head_object(Bucket=env.bucket, Key=answer["key"])["ETag"] == etag
    listed = {o["Key"].rsplit("/", 1)[-1] for o in env.s3.list_objects_v2(Bucket=env.bucket)["Contents"]}
    assert {"export.csv.gz", "export.jsonl.gz", "export.parquet", "insights.json", "result.json.gz"} <= listed


def test_export_errors(env: Env) -> None:
    job = processed_job(env)
    # Exactly the document's enum: an empty or upper-case format is refused, not taken for the default.
    for fmt in ("xml", "", "CSV"):
        status, answer = env.call("GET", f"/jobs/{job['id']}/export?format={fmt}")
        assert status == 400 and "csv, jsonl, parquet" in answer["message"], answer
    status, answer = env.call("GET", f"/jobs/{job['id']}/export?format=csv&format=jsonl")
    assert status == 400 and "given 2 times" in answer["message"], answer
    assert env.call("GET", f"/jobs/{job['id']}/export")[1]["format"] == "csv"  # absent: the default
    for path in (f"/jobs/{UNKNOWN_JOB}/export", "/jobs/not-a-job/export", f"/jobs/{UNKNOWN_JOB}/insights"):
        status, answer = env.call("GET", path)
        assert status == 404 and answer["code"] == "not_found", (path, answer)
    video = register(env)
    queued = env.call("POST", f"/videos/{video['id']}/jobs", {})[1]
    for route in ("export?format=csv", "insights", "viewer/config"):
        status, answer = env.call("GET", f"/jobs/{queued['id']}/{route}")
        assert status == 409 and "QUEUED" in answer["message"], (route, answer)
    # credentials: none, wrong, or another caller's (whose jobs do not exist for this one)
    for route in ("export", "insights", "viewer/config"):
        assert env.call("GET", f"/jobs/{job['id']}/{route}", headers={"x-api-key": ""})[0] == 401
        assert env.call("GET", f"/jobs/{job['id']}/{route}", headers={"x-api-key": "wrong-key-0123456789"})[0] == 403
        assert env.call("GET", f"/jobs/{job['id']}/{route}", headers={"x-api-key": OTHER_KEY})[0] == 404


def test_a_large_jobs_export_comes_from_the_worker(env: Env, tmp_path: Path) -> None:
    """Exports over HANDPIPE_EXPORT_INLINE_MAX_ROWS are not written during a request (API Gateway gives it
    29 s): the worker writes every export just after the job, and until then the API says so."""
    job = processed_job(env)
    prefix = f"results/{job['video_id']}/{job['id']}/"
    written = {o["Key"] for o in env.s3.list_objects_v2(Bucket=env.bucket, Prefix=prefix)["Contents"]}
    assert {prefix + name for name in ("export.csv.gz", "export.jsonl.gz", "export.parquet")} <= written
    small = replace(runtime().settings, export_inline_max_rows=10)  # this job has 86 rows
    use_runtime(Runtime(small, s3_client=env.s3, sqs_client=env.sqs, database=env.db))
    status, answer = env.call("GET", f"/jobs/{job['id']}/export?format=jsonl")
    assert status == 200 and answer["rows"] == 86  # the worker's file

    env.s3.delete_object(Bucket=env.bucket, Key=prefix + "export.jsonl.gz")  # as if its render were still running
    status, answer = env.call("GET", f"/jobs/{job['id']}/export?format=jsonl")
    assert status == 409 and answer["code"] == "export_pending" and "86 rows" in answer["message"], answer
    assert prefix + "export.jsonl.gz" not in {
        o["Key"] for o in env.s3.list_objects_v2(Bucket=env.bucket, Prefix=prefix)["Contents"]
    }
    # the client waits for it, and gives up with the API's message when it does not come
    client = ChaliceTransport(env)
    with pytest.raises(ApiError, match="being written by a worker") as refused:
        client.export(job["id"], "jsonl", wait_s=0.3, poll_s=0.1)
    assert refused.value.code == "export_pending"


# ------------------------------------------------------------------------------------ insights


def test_insights_are_computed_once_and_kept_next_to_the_result(env: Env) -> None:
    job = processed_job(env)
    status, insights = env.call("GET", f"/jobs/{job['id']}/insights")
    assert status == 200 and insights["format"] == "handpipe.insights" and insights["version"] == 1
    result = json.loads(gzip.decompress(fetch(env.call("GET", f"/jobs/{job['id']}/result")[1]["result"]["url"])))
    assert insights == json.loads(json.dumps(analyze(result)))
    assert len(insights["gestures"]["per_frame"]) == job["summary"]["hands_seen"]
    assert len(insights["tracks"]) >= 2 and insights["gestures"]["ranges"]
    key = f"results/{job['video_id']}/{job['id']}/insights.json"
    stored = json.loads(env.s3.get_object(Bucket=env.bucket, Key=key)["Body"].read())
    assert stored == insights
    env.s3.put_object(Bucket=env.bucket, Key=key, Body=json.dumps({**stored, "marker": 1}).encode())
    assert env.call("GET", f"/jobs/{job['id']}/insights")[1]["marker"] == 1  # served from the stored copy


# ------------------------------------------------------------------------------------ the viewer page


def test_the_viewer_is_one_self_contained_page_that_holds_no_data(env: Env) -> None:
    job = processed_job(env)
    # public: a browser opening a link sends no header, so the page is served without a key...
    response = raw_get(env, f"/jobs/{job['id']}/viewer", headers={})
    assert response.status_code == 200
    headers = {k.lower(): v for k, v in response.headers.items()}
    assert headers["content-type"].startswith("text/html")
    page = response.body.decode() if isinstance(response.body, bytes) else response.body
    assert job["id"] in page and "__HANDPIPE_" not in page
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.I), "no external scripts"
    assert not re.search(r"<link[^>]*\bhref\s*=\s*[\"']?(https?:)?//", page, re.I), "no external styles"
    assert not re.search(r"@import|url\(\s*[\"']?(https?:)?//", page, re.I)
    assert "window.handpipeViewer" in page and "<canvas" in page and "<video" in page
    # ...and holds nothing of the job but its id: no video id, no presigned URL, no title
    config = json.loads(re.search(r'id="handpipe-config">(.*?)</script>', page, re.S).group(1))  # type: ignore[union-attr]
    assert config == {"job_id": job["id"]}
    assert job["video_id"] not in page and "X-Amz-Signature" not in page and "clip asl" not in page
    policy = headers["content-security-policy"]
    nonce = re.search(r"'nonce-([^']+)'", policy).group(1)  # type: ignore[union-attr]
    assert f'<script nonce="{nonce}">' in page and "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert "form-action 'none'" in policy and headers["referrer-policy"] == "no-referrer"
    assert raw_get(env, "/jobs/not-a-job/viewer", headers={}).status_code == 404

    # what the page reads first needs the key, and is scoped to its owner
    status, loaded = env.call("GET", f"/jobs/{job['id']}/viewer/config")
    assert status == 200 and loaded["job_id"] == job["id"] and loaded["video_id"] == job["video_id"]
    assert loaded["video"]["width"] == 640 and loaded["title"] == "clip asl_thanks_two_hands.mkv"
    assert fetch(loaded["video_url"])[:4] == b"\x1a\x45\xdf\xa3"  # the Matroska file itself
    config_path = f"/jobs/{job['id']}/viewer/config"
    assert raw_get(env, config_path, headers={}).status_code == 401
    assert raw_get(env, config_path, headers={"x-api-key": "wrong-key-0123456789"}).status_code == 403
    assert raw_get(env, config_path, headers={"x-api-key": OTHER_KEY}).status_code == 404
    assert raw_get(env, f"/jobs/{UNKNOWN_JOB}/viewer/config").status_code == 404
    # a key in the query string is no credential (it would end up in logs)
    assert raw_get(env, f"{config_path}?api_key={API_KEY}", headers={}).status_code == 401


def test_script_json_cannot_close_the_script_element() -> None:
    from chalicelib.service.derived import _script_json

    text = _script_json({"title": "</script><script>alert(1)</script> & <!--"})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"title": "</script><script>alert(1)</script> & <!--"}


# ------------------------------------------------------------------------------------ client and CLI


class ChaliceTransport(Client):
    """The Python client, talking to chalice.test.Client instead of HTTP (presigned URLs go to moto)."""

    def __init__(self, env: Env) -> None:
        super().__init__("http://test", api_key=API_KEY)
        self.env = env

    def request(self, method: str, path: str, body: dict[str, Any] | None = None, **params: Any) -> Any:
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        status, answer = self.env.call(method, path + (f"?{query}" if query else ""), body)
        if status >= 400:
            raise ApiError(status, answer["message"], answer.get("code"))
        return answer


def test_client_exports_and_insights(env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job = processed_job(env)
    client = ChaliceTransport(env)
    assert client.export(job["id"])["rows"] == 86
    assert client.insights(job["id"])["format"] == "handpipe.insights"

    saved = client.download_export(job["id"], tmp_path / "rows.csv")
    lines = (tmp_path / "rows.csv").read_text().splitlines()
    assert saved["rows"] == 86 and len(lines) == 87 and lines[0] == ",".join(exports.COLUMNS)
    client.download_export(job["id"], tmp_path / "rows.jsonl.gz", "jsonl")
    assert len(gzip.decompress((tmp_path / "rows.jsonl.gz").read_bytes()).splitlines()) == 86

    # parquet is the API's file, saved as is: no pandas or pyarrow needed; a DataFrame needs pandas, and
    # without it a clear error says what to install
    for name in ("pandas", "pyarrow"):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import name` fail
    saved = client.download_export(job["id"], tmp_path / "rows.parquet", "parquet")
    data = (tmp_path / "rows.parquet").read_bytes()
    assert saved["rows"] == 86 and saved["format"] == "parquet" and data[:4] == data[-4:] == b"PAR1"
    with pytest.raises(MissingDependency, match="pip install pandas"):
        client.dataframe(job["id"])
    with pytest.raises(ValueError, match="format must be one of"):
        client.download_export(job["id"], tmp_path / "rows.xml", "xml")


def test_client_dataframe_and_parquet_with_pandas(env: Env, tmp_path: Path) -> None:
    pandas = pytest.importorskip("pandas", reason="pandas is optional (pip install pandas pyarrow)")
    pytest.importorskip("pyarrow", reason="pyarrow is optional (pip install pandas pyarrow)")
    job = processed_job(env)
    client = ChaliceTransport(env)
    frame = client.dataframe(job["id"])
    assert list(frame.columns) == exports.COLUMNS and len(frame) == 86
    assert frame["frame_index"].dtype.kind == "i" and frame["x0"].dtype.kind == "f"
    saved = client.download_export(job["id"], tmp_path / "rows.parquet", "parquet")
    assert saved["rows"] == 86
    assert pandas.read_parquet(tmp_path / "rows.parquet").equals(frame)


# ------------------------------------------------------------------------------------ in a browser


def _browser_or_skip() -> Any:
    if not CHROMIUM.exists():
        message = (
            "the viewer's browser test needs /usr/bin/chromium (apt-get install chromium; ./setup.sh does it as root)"
        )
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if IN_CI:
            pytest.fail("playwright is missing: ./setup.sh installs requirements-dev.txt")
        pytest.skip("playwright is not installed (pip install -r requirements-dev.txt)")
    return sync_playwright


def until_true(page: Any, expression: str, arg: Any = None, timeout_s: float = 10) -> None:
    """Polls `expression` with page.evaluate, which the page's Content-Security-Policy allows; Playwright's
    wait_for_function polls by evaluating strings inside the page, which the policy's script-src forbids."""
    for _ in range(int(timeout_s / 0.05)):
        if page.evaluate(expression, arg):
            return
        time.sleep(0.05)
    raise AssertionError(f"{expression} ({arg!r}) stayed false for {timeout_s} s")


def test_the_viewer_draws_hands_in_sync_with_the_video_in_chromium(tmp_path: Path) -> None:
    from handpipe.stack import LocalStack

    sync_playwright = _browser_or_skip()
    clip = data_path("videos/asl_thanks_two_hands.mkv")
    with LocalStack(port=0, data_dir=tmp_path, workers=1, bucket="viewer-e2e", prefix="viewer") as stack:
        assert stack.info is not None
        api_key = getattr(stack.info, "api_key", None)
        client = Client(stack.info.api_url, api_key=api_key)
        job = client.wait(client.submit(clip, {"annotated_video": True})["id"], poll_s=0.2, timeout_s=300)
        assert job["status"] == "SUCCEEDED", job
        assert client.download_pictures(job["id"], tmp_path / "pictures", wait_s=120), "the worker drew no pictures"
        frames = list(client.frames(job["id"]))
        two_hands = [f for f in frames if len(f["hands"]) == 2]
        target = two_hands[len(two_hands) // 2]
        assert api_key, "handpipe up always protects its API with a key"
        viewer_url = f"{stack.info.api_url}/jobs/{job['id']}/viewer"

        allowed = {
            urllib.parse.urlsplit(stack.info.api_url).netloc,
            urllib.parse.urlsplit(stack.info.aws_endpoint_url).netloc,
        }
        requested: list[str] = []
        problems: list[str] = []
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1100, "height": 900})
                page.on("request", lambda request: requested.append(request.url))
                page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda error: problems.append(str(error)))
                # opened from a plain link, the page asks for the key, and again when one is refused
                page.goto(viewer_url)
                page.wait_for_selector("#key-form:not([hidden])")
                page.fill("#key-input", "wrong-key-0123456789")
                page.click("#key-form button")
                page.locator("#status.error", has_text="refused").wait_for()
                page.wait_for_selector("#key-form:not([hidden])")
                page.fill("#key-input", api_key)
                page.click("#key-form button")
                assert page.evaluate("async () => { await window.handpipeViewer.ready; return true; }") is True
                assert page.is_hidden("#key-form")

                # with the key in the fragment (never sent to a server) a new tab opens straight away
                page.close()
                page = browser.new_page(viewport={"width": 1100, "height": 900})
                page.on("request", lambda request: requested.append(request.url))
                page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda error: problems.append(str(error)))
                page.goto(viewer_url + "#key=" + urllib.parse.quote(api_key))
                assert page.evaluate("async () => { await window.handpipeViewer.ready; return true; }") is True
                assert "key=" not in page.url and page.is_hidden("#key-form")  # dropped from the address bar
                assert page.evaluate("document.getElementById('video').readyState") >= 1  # the video loaded

                # seek to a frame with two hands: its 42 landmarks are drawn, on a canvas that is not empty
                drawn = page.evaluate("ms => window.handpipeViewer.seek(ms)", target["timestamp_ms"])
                assert drawn == target["index"] == page.evaluate("window.handpipeViewer.drawnFrameIndex")
                assert page.evaluate("window.handpipeViewer.landmarksDrawn") == 42
                painted = page.evaluate(
                    """() => {
                        const c = document.getElementById('overlay');
                        const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                        let n = 0;
                        for (let i = 3; i < data.length; i += 4) if (data[i] > 0) n++;
                        return n;
                    }"""
                )
                assert painted > 1000, painted
                current = page.evaluate("document.getElementById('video').currentTime")
                assert current * 1000 == pytest.approx(target["timestamp_ms"], abs=1)
                # the skeleton is where the frame's wrist is: a painted pixel near it
                wrist = target["hands"][0]["landmarks"][0]
                near = page.evaluate(
                    """([x, y]) => {
                        const c = document.getElementById('overlay');
                        const cx = Math.round(x * c.width), cy = Math.round(y * c.height), r = 6;
                        const d = c.getContext('2d').getImageData(cx - r, cy - r, 2 * r + 1, 2 * r + 1).data;
                        let n = 0;
                        for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
                        return n;
                    }""",
                    [wrist[0], wrist[1]],
                )
                assert near > 0

                # a click a quarter of the way along a track's lane seeks the video to a quarter of its length
                lane = page.locator(".lane[data-track='0']")
                box = lane.bounding_box()
                assert box is not None
                duration = page.evaluate("window.handpipeViewer.durationMs")
                assert duration == pytest.approx(1700, abs=1)
                lane.click(position={"x": box["width"] * 0.25, "y": box["height"] / 2})
                expected_ms = duration * 0.25
                for _ in range(200):  # the seek lands asynchronously
                    current = page.evaluate("document.getElementById('video').currentTime")
                    if abs(current * 1000 - expected_ms) < 20:
                        break
                    time.sleep(0.05)
                assert current * 1000 == pytest.approx(expected_ms, abs=20)
                nearest = min(frames, key=lambda f: abs(f["timestamp_ms"] - current * 1000))
                until_true(page, "i => window.handpipeViewer.drawnFrameIndex === i", nearest["index"])

                # the worker's annotated video (H.264, whatever the source's codec) plays in the same place
                assert page.is_visible("#annotated-toggle")
                page.check("#annotated-input")
                until_true(page, "() => document.getElementById('video').dataset.showing === 'annotated'", None)
                until_true(page, "() => document.getElementById('video').readyState >= 2", None)
                assert "annotated.mp4" in page.evaluate("document.getElementById('video').currentSrc")
                assert page.evaluate("document.getElementById('video').videoWidth") == job["video"]["width"]
                assert page.is_hidden("#overlay")
                played = page.evaluate(
                    """async () => {
                        const v = document.getElementById('video');
                        v.currentTime = 0;
                        await v.play();
                        while (v.currentTime < 0.3 && !v.ended) await new Promise((r) => setTimeout(r, 50));
                        v.pause();
                        return [v.currentTime, v.error ? v.error.code : 0];
                    }"""
                )
                assert played[0] >= 0.3 and played[1] == 0, played
            finally:
                browser.close()
        # the browser reports the refused key's 401/403 answers on the console; nothing else may appear
        assert not [p for p in problems if "status of 401" not in p and "status of 403" not in p], problems
        outside = [url for url in requested if urllib.parse.urlsplit(url).netloc not in allowed]
        assert not outside, outside
        assert any("/frames?" in url for url in requested) and any("/insights" in url for url in requested)
        assert not any(api_key in url for url in requested), "the key never travels in an address"


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
