"""Security against what real AWS does rather than what moto tolerates: the API's S3 client built
exactly as the Lambda builds it, limits on every plan, fairness between owners."""

from __future__ import annotations

import datetime
import getpass
import ipaddress
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from chalice.test import Client

import app as chalice_app
from chalicelib.adapters.database import Database, DatabaseUnavailable
from chalicelib.adapters.migrations import upgrade
from chalicelib.config import NotConfigured, Settings
from chalicelib.runtime import Runtime, runtime, use_runtime
from chalicelib.service.derived import viewer_page
from chalicelib.shared.contracts import SEGMENT_SUCCEEDED, SegmentEvent, WorkItem
from tests.support.api import OTHER, Env, register

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


# ------------------------------------------------------------------------------------ limits on every plan


def use_settings(env: Env, **changes: Any) -> None:
    settings = replace(runtime().settings, **changes)
    use_runtime(Runtime(settings, s3_client=env.s3, sqs_client=env.sqs, database=env.db))


def test_end_ms_is_capped_by_the_longest_video_accepted(env: Env) -> None:
    video = register(env)
    status, error = env.call("POST", f"/videos/{video['id']}/jobs", {"options": {"end_ms": 86_400_000}})
    assert status == 400 and "end_ms must be at most 14400000" in error["message"]
    # A job queued before the limit was lowered is checked again when it is planned.
    job = env.call("POST", f"/videos/{video['id']}/jobs", {"options": {"end_ms": 5000}})[1]
    use_settings(env, max_duration_ms=1000)
    env.deliver("jobs", env.take("jobs"))
    failed = env.call("GET", f"/jobs/{job['id']}")[1]
    assert failed["status"] == "FAILED" and failed["error"]["code"] == "limit_exceeded"
    assert "end_ms 5000 is past the limit of 1.0 s" in failed["error"]["message"]
    assert env.take("work") == []


def test_a_second_job_on_a_video_already_probed_is_checked_again(env: Env) -> None:
    use_settings(env, max_duration_ms=1000)
    video = register(env)  # 1.7 s
    first = env.call("POST", f"/videos/{video['id']}/jobs", {})[1]
    assert env.process(first["id"])["error"]["code"] == "limit_exceeded"
    assert env.call("GET", f"/videos/{video['id']}")[1]["metadata"]["duration_ms"] > 1000  # now known
    second = env.call("POST", f"/videos/{video['id']}/jobs", {})[1]
    env.deliver("jobs", env.take("jobs"))
    failed = env.call("GET", f"/jobs/{second['id']}")[1]
    assert failed["status"] == "FAILED" and failed["error"]["code"] == "limit_exceeded"
    assert "lasts 1.7 s" in failed["error"]["message"] and failed["progress"]["segments_total"] == 0
    assert env.take("work") == []  # no probe, no segment


def test_a_plan_with_too_many_segments_fails_its_job(env: Env) -> None:
    use_settings(env, max_segments_per_job=3)
    video = register(env)
    job = env.call("POST", f"/videos/{video['id']}/jobs", {"options": {"end_ms": 200_000}})[1]
    env.deliver("jobs", env.take("jobs"))  # end_ms given: planned without a probe, 10 segments of 20 s
    failed = env.call("GET", f"/jobs/{job['id']}")[1]
    assert failed["status"] == "FAILED" and "10 segments, over the limit of 3" in failed["error"]["message"]
    assert env.take("work") == []


def test_a_plan_expecting_too_many_frames_fails_its_job_after_the_probe(env: Env) -> None:
    use_settings(env, max_frames_per_job=10)
    video = register(env)  # 1.7 s at 30 fps
    job = env.call("POST", f"/videos/{video['id']}/jobs", {})[1]
    failed = env.process(job["id"])
    assert failed["status"] == "FAILED" and failed["error"]["code"] == "limit_exceeded"
    assert "frames, over the limit of 10" in failed["error"]["message"]
    assert failed["progress"]["segments_total"] == 0


def test_objects_registered_by_key_are_held_to_max_upload_bytes(env: Env) -> None:
    use_settings(env, max_upload_bytes=100)
    env.s3.put_object(Bucket=env.bucket, Key="incoming/tester/big.mp4", Body=b"x" * 101, ContentType="video/mp4")
    status, error = env.call("POST", "/videos", {"s3_key": "incoming/tester/big.mp4"})
    assert status == 413 and "101 bytes, over the limit of 100" in error["message"]
    env.s3.put_object(Bucket=env.bucket, Key="incoming/tester/ok.mp4", Body=b"x" * 100, ContentType="video/mp4")
    video = env.call("POST", "/videos", {"s3_key": "incoming/tester/ok.mp4"})[1]
    # Replaced by a bigger object after it was registered: the job is refused.
    env.s3.put_object(Bucket=env.bucket, Key="incoming/tester/ok.mp4", Body=b"x" * 5000, ContentType="video/mp4")
    status, error = env.call("POST", f"/videos/{video['id']}/jobs", {})
    assert status == 413 and "5000 bytes" in error["message"]
    assert env.take("jobs") == []


# ------------------------------------------------------------------------------------ fairness across owners


def succeeded(item: WorkItem) -> str:
    return SegmentEvent(
        type=SEGMENT_SUCCEEDED, job_id=item.job_id, video_id=item.video_id, segment=item.segment, part_key=item.part_key
    ).to_json()


def test_freed_capacity_goes_round_robin_across_owners_not_to_the_oldest_job(env: Env) -> None:
    use_settings(env, segment_ms=1000, max_in_flight=2, max_in_flight_per_job=2)
    three_segments = {"options": {"end_ms": 3000}}  # planned without a probe
    flood_video = register(env)
    flood = [env.call("POST", f"/videos/{flood_video['id']}/jobs", three_segments)[1]["id"] for _ in range(2)]
    env.deliver("jobs", env.take("jobs"))
    quiet_video = register(env, headers=OTHER)
    quiet = env.call("POST", f"/videos/{quiet_video['id']}/jobs", three_segments, headers=OTHER)[1]["id"]
    env.deliver("jobs", env.take("jobs"))
    running = [WorkItem.from_json(body) for body in env.take("work")]
    assert [(item.job_id, item.segment) for item in running] == [(flood[0], 0), (flood[0], 1)]  # the cap: 2
    env.deliver("events", [succeeded(running[0])])
    # One slot freed: it goes to the owner with nothing on the workers, not to the flood's oldest job.
    assert [(item.job_id, item.segment) for item in map(WorkItem.from_json, env.take("work"))] == [(quiet, 0)]
    env.deliver("events", [succeeded(running[1])])
    # The next one goes back to the flood (now the owner with less on the workers), to its oldest job.
    assert [(item.job_id, item.segment) for item in map(WorkItem.from_json, env.take("work"))] == [(flood[0], 2)]


# ------------------------------------------------------------------------------------ smaller


def test_public_health_names_no_database_user_host_or_queue_url(env: Env) -> None:
    queue_url = env.queues["jobs"].rsplit("/", 1)[0] + "/no-such-queue-7f3a"
    settings = replace(
        runtime().settings,
        bucket="no-such-bucket-7f3a",
        jobs_queue_url=queue_url,
        work_queue_url=queue_url,
    )
    # A MySQL URL whose server is not there: the driver's error names user, host, port and database.
    database = Database.from_url("mysql+pymysql://secret_user:pw@127.0.0.1:1/secret_db")
    use_runtime(Runtime(settings, s3_client=env.s3, sqs_client=env.sqs, database=database))
    status, answer = env.call("GET", "/health", headers={"x-api-key": ""})
    assert status == 503 and answer["status"] == "degraded"
    assert answer["checks"]["database"] == "failing: the database does not answer (details in the service's log)"
    assert answer["checks"]["bucket"].startswith("failing: the bucket")
    assert answer["checks"]["jobs_queue"].startswith("failing: the queue")
    text = json.dumps(answer)
    for secret in ("secret_user", "127.0.0.1", "secret_db", "no-such-queue-7f3a", "no-such-bucket-7f3a", "arn:"):
        assert secret not in text, secret


@pytest.mark.parametrize("region", REGIONS)
def test_the_viewer_may_load_media_only_from_the_stages_bucket(
    lambda_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, region: str
) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", region)
    rt = Runtime(Settings.from_env({**lambda_env, "AWS_REGION": region}))  # the production S3 client
    _, headers = viewer_page(rt.store, "job_" + "0" * 32)
    directives = dict(d.strip().split(" ", 1) for d in headers["Content-Security-Policy"].split(";"))
    assert directives["media-src"] == f"https://handpipe-prod-videos.s3.{region}.amazonaws.com"


def test_model_uri_must_be_under_the_buckets_models_unless_the_stack_is_local(env: Env) -> None:
    video = register(env)
    for uri in (
        "/var/task/hand_landmarker.task",
        "s3://another-bucket/models/hands.task",
        f"s3://{env.bucket}/videos/hands.task",
        f"s3://{env.bucket}/models/../incoming/someone-else/hands.task",
        f"s3://{env.bucket}/models-evil/hands.task",
    ):
        status, error = env.call("POST", f"/videos/{video['id']}/jobs", {"options": {"model_uri": uri}})
        assert status == 400 and f"under s3://{env.bucket}/models/" in error["message"], (uri, error)
    assert env.take("jobs") == []
    ok = env.call("POST", f"/videos/{video['id']}/jobs", {"options": {"model_uri": f"s3://{env.bucket}/models/h.task"}})
    assert ok[0] == 202
    use_settings(env, local_models=True)  # what `handpipe up` sets: the caller owns the disk
    local = env.call("POST", f"/videos/{video['id']}/jobs", {"options": {"model_uri": "/models/h.task"}})
    assert local[0] == 202, local
    status, error = env.call("POST", f"/videos/{video['id']}/jobs", {"options": {"model_uri": "s3://x/models/h.task"}})
    assert status == 400


# ------------------------------------------------------------------------------------ MySQL over TLS


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA, and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@dataclass
class TlsServer:
    port: int
    ca_file: Path


@pytest.fixture(scope="session")
def tls_mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    """A private MariaDB that offers TLS (the shared one on 3306 does not), as RDS does."""
    server = shutil.which("mariadbd", path="/usr/sbin:/usr/bin") or shutil.which("mysqld", path="/usr/sbin:/usr/bin")
    install = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
    if not server or not install:
        pytest.skip("no mariadbd to run a TLS server with")
    root = tmp_path_factory.mktemp("tls-mariadb")
    cert, key = _self_signed(root)
    options = root / "my.cnf"
    options.write_text(f"[mysqld]\nuser={getpass.getuser()}\n")
    subprocess.run(
        [
            install,
            f"--defaults-file={options}",
            f"--datadir={root / 'data'}",
            "--auth-root-authentication-method=normal",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    port = _free_port()
    process = subprocess.Popen(
        [
            server,
            f"--defaults-file={options}",
            f"--datadir={root / 'data'}",
            f"--port={port}",
            "--bind-address=127.0.0.1",
            f"--socket={root / 'sock'}",
            f"--pid-file={root / 'pid'}",
            f"--ssl-cert={cert}",
            f"--ssl-key={key}",
            "--skip-log-bin",
            f"--log-error={root / 'error.log'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(120):  # bounded: at most a minute
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if process.poll() is not None:
                    pytest.fail(f"mariadbd exited: {(root / 'error.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield TlsServer(port=port, ca_file=cert)
    finally:
        process.terminate()
        process.wait(timeout=60)


def cipher(db: Database) -> str:
    row = db.fetchone("SHOW STATUS LIKE 'Ssl_cipher'")
    return str((row or {}).get("Value") or "")


def test_mysql_uses_tls_whenever_the_server_offers_it(tls_mariadb: TlsServer) -> None:
    def connect(tls: str, ca_file: str | None = None) -> Database:
        return Database.for_mysql("127.0.0.1", tls_mariadb.port, "root", "", "mysql", tls=tls, ca_file=ca_file)

    for mode in ("preferred", "required"):
        db = connect(mode)
        assert cipher(db).startswith("TLS_"), mode  # e.g. TLS_AES_256_GCM_SHA384
        db.close()
    verified = connect("verify", str(tls_mariadb.ca_file))
    assert cipher(verified).startswith("TLS_")
    verified.close()
    plain = connect("disabled")
    assert cipher(plain) == ""
    plain.close()
    # verify against the system's CAs: this self-signed certificate is not one of them.
    with pytest.raises(DatabaseUnavailable, match="certificate verify failed"):
        connect("verify").ping()


def test_required_tls_refuses_a_server_without_it_with_a_503_not_a_500() -> None:
    # The shared MariaDB on 3306 offers no TLS: preferred falls back to plain, required refuses.
    plain = Database.from_url("mysql+pymysql://root:@127.0.0.1:3306/mysql")
    assert cipher(plain) == ""
    plain.close()
    with pytest.raises(DatabaseUnavailable, match="SSL is required"):
        Database.from_url("mysql+pymysql://root:@127.0.0.1:3306/mysql", tls="required").ping()
    with pytest.raises(NotConfigured, match="HANDPIPE_DB_TLS to one of preferred, required, verify, disabled"):
        Settings.from_env(
            {
                "HANDPIPE_BUCKET": "b",
                "HANDPIPE_JOBS_QUEUE_URL": "j",
                "HANDPIPE_WORK_QUEUE_URL": "w",
                "HANDPIPE_DB_URL": "sqlite:///x.db",
                "HANDPIPE_DB_TLS": "maybe",
            }
        )
    settings = Settings.from_env(
        {
            "HANDPIPE_BUCKET": "b",
            "HANDPIPE_JOBS_QUEUE_URL": "j",
            "HANDPIPE_WORK_QUEUE_URL": "w",
            "HANDPIPE_DB_URL": "sqlite:///x.db",
            "HANDPIPE_DB_TLS": "verify",
            "HANDPIPE_DB_CA_FILE": "/opt/rds-ca.pem",
        }
    )
    assert (settings.db_tls, settings.db_ca_file) == ("verify", "/opt/rds-ca.pem")
