"""Security against what real AWS does rather than what moto tolerates: the API's S3 client built
exactly as the Lambda builds it, limits on every plan, fairness between owners."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from chalice.test import Client

import app as chalice_app
from chalicelib.config import Settings
from chalicelib.db import Database
from chalicelib.migrations import upgrade
from chalicelib.runtime import Runtime, use_runtime

API_KEY = "security-key-0123456789abcdef"
REGIONS = ("us-east-1", "us-west-2", "eu-west-1")


@pytest.fixture
def lambda_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment a deployed API Lambda has: credentials and a region, no endpoint override."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_S3_ADDRESSING_STYLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    yield {
        "HANDPIPE_BUCKET": "handpipe-prod-videos",
        "HANDPIPE_JOBS_QUEUE_URL": "https://sqs.invalid/1/jobs",
        "HANDPIPE_WORK_QUEUE_URL": "https://sqs.invalid/1/work",
        "HANDPIPE_DB_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:1:secret:db",
        "HANDPIPE_API_KEYS": f"{API_KEY}=tester",
    }


@pytest.mark.parametrize("region", REGIONS)
def test_presigned_urls_are_sigv4_on_the_regional_virtual_hosted_endpoint(
    lambda_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, region: str
) -> None:
    # The Lambda runtime sets both; boto3 reads the second, the settings the first.
    monkeypatch.setenv("AWS_REGION", region)
    monkeypatch.setenv("AWS_DEFAULT_REGION", region)
    settings = Settings.from_env({**lambda_env, "AWS_REGION": region})
    db = Database.from_url(f"sqlite:///{tmp_path / 'h.db'}")
    upgrade(db)
    rt = Runtime(settings, database=db)  # no S3 client given: the runtime builds the production one
    use_runtime(rt)
    try:
        with Client(chalice_app.app) as client:
            response = client.http.post(
                "/videos",
                body=json.dumps({"filename": "a.mp4", "size_bytes": 1234}).encode(),
                headers={"content-type": "application/json", "x-api-key": API_KEY},
            )
        assert response.status_code == 201, response.body
        upload = json.loads(response.body)["upload"]["url"]
        download = rt.store.presign_download("results/v/j/result.json.gz", 60, "r.json.gz")
    finally:
        use_runtime(None)
        db.close()
    host = f"handpipe-prod-videos.s3.{region}.amazonaws.com"
    for url in (upload, download):
        parts = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qs(parts.query)
        assert parts.scheme == "https" and parts.hostname == host, url
        assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"], url
        assert f"/{region}/s3/aws4_request" in query["X-Amz-Credential"][0]
        assert "Signature" not in query and "AWSAccessKeyId" not in query
    signed = urllib.parse.parse_qs(urllib.parse.urlsplit(upload).query)["X-Amz-SignedHeaders"][0].split(";")
    assert {"content-length", "content-type", "host"} <= set(signed)
