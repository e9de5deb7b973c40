"""Exports, insights and the viewer on a really processed clip: the routes through chalice.test.Client,
the client and the CLI (the viewer in a browser is tests/e2e/test_viewer_browser.py)."""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import re
import sys
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
from chalicelib.shared.gestures import GESTURES
from chalicelib.shared.insights import analyze
from chalicelib.web import insight_routes
from handpipe.client import ApiError, Client, MissingDependency
from tests.support.api import API_KEY, OTHER_KEY, Env, register

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


# ------------------------------------------------------------------------------------ the blueprint
# (the export rows on a synthetic result are in tests/unit/test_exports_rows.py)


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
