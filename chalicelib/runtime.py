"""The app's dependencies, built lazily once per Lambda container (or local-stack process): boto3
clients, the database and the repositories, the object store and the queues, and the telemetry
(Powertools' JSON logs and EMF metrics)."""

from __future__ import annotations

import json
import os
import threading
from functools import cached_property
from typing import Any

from chalicelib.adapters.database import Database
from chalicelib.adapters.job_queries import JobQueries
from chalicelib.adapters.job_repository import JobRepository
from chalicelib.adapters.migrations import ensure_current
from chalicelib.adapters.multipart import MultipartStore
from chalicelib.adapters.notify import JobEndTopic
from chalicelib.adapters.repositories import VideoRepository
from chalicelib.adapters.upload_repository import IntakeRepository, UploadRepository
from chalicelib.adapters.webhook_secrets import WebhookSecretRepository
from chalicelib.adapters.webhooks import WebhookPolicy, WebhookSender
from chalicelib.config import NotConfigured, Settings
from chalicelib.service.uploads import Multipart
from chalicelib.shared import telemetry as shared_telemetry
from chalicelib.shared.queues import MessageQueue
from chalicelib.shared.storage import ObjectStore


def s3_config() -> Any:
    """How the API's S3 client must sign: presigned URLs in SigV4 (SigV2 does not cover the upload's
    Content-Length and new buckets refuse it) on the regional virtual-hosted endpoint,
    BUCKET.s3.REGION.amazonaws.com (the global host redirects outside us-east-1, and a browser's
    upload does not follow a redirect)."""
    from botocore.config import Config

    return Config(
        signature_version="s3v4",
        s3={"addressing_style": "virtual", "us_east_1_regional_endpoint": "regional"},
    )


class Runtime:
    def __init__(
        self,
        settings: Settings,
        *,
        s3_client: Any = None,
        sqs_client: Any = None,
        database: Database | None = None,
        sns_client: Any = None,
        secrets_client: Any = None,
    ) -> None:
        self.settings = settings
        self._s3 = s3_client
        self._sqs = sqs_client
        self._sns = sns_client
        self._secrets = secrets_client
        self._database = database
        self._lock = threading.Lock()
        self._schema_checked = False

    def _client(self, name: str, config: Any = None) -> Any:
        import boto3

        return boto3.client(name, region_name=self.settings.region, config=config)

    @cached_property
    def s3(self) -> Any:
        return self._s3 or self._client("s3", s3_config())

    @cached_property
    def sqs(self) -> Any:
        return self._sqs or self._client("sqs")

    @property
    def database(self) -> Database:
        """The connection, without the schema check (for applying migrations)."""
        with self._lock:
            if self._database is None:
                self._database = self._connect()
            return self._database

    @property
    def db(self) -> Database:
        """The connection, once its schema is known to be current."""
        database = self.database
        if not self._schema_checked:
            ensure_current(database)
            self._schema_checked = True
        return database

    def _connect(self) -> Database:
        if self.settings.db_url:
            return Database.from_url(self.settings.db_url, tls=self.settings.db_tls, ca_file=self.settings.db_ca_file)
        # In AWS the credentials live in Secrets Manager, never in the stage's plain config.
        secret = json.loads(
            self._client("secretsmanager").get_secret_value(SecretId=self.settings.db_secret_arn)["SecretString"]
        )
        return Database.for_mysql(
            host=secret["host"],
            port=int(secret.get("port", 3306)),
            user=secret["username"],
            password=secret["password"],
            database=secret.get("dbname", "handpipe"),
            tls=self.settings.db_tls,
            ca_file=self.settings.db_ca_file,
        )

    @property
    def videos(self) -> VideoRepository:
        return VideoRepository(self.db)

    @property
    def jobs(self) -> JobRepository:
        return JobRepository(self.db)

    @property
    def job_search(self) -> JobQueries:
        return JobQueries(self.db)

    @property
    def intake(self) -> IntakeRepository:
        return IntakeRepository(self.db)

    @property
    def multipart(self) -> Multipart:
        return Multipart(UploadRepository(self.db), self.multipart_store)

    @cached_property
    def multipart_store(self) -> MultipartStore:
        return MultipartStore(self.s3, self.settings.bucket)

    @cached_property
    def store(self) -> ObjectStore:
        return ObjectStore(self.s3, self.settings.bucket)

    @cached_property
    def jobs_queue(self) -> MessageQueue:
        return MessageQueue(self.sqs, self.settings.jobs_queue_url)

    @cached_property
    def work_queue(self) -> MessageQueue:
        return MessageQueue(self.sqs, self.settings.work_queue_url)

    # -- notifications (service.notifications) ---------------------------------------------------

    @cached_property
    def sns(self) -> Any:
        return self._sns or self._client("sns")

    @property
    def webhook_secrets(self) -> WebhookSecretRepository:
        return WebhookSecretRepository(self.db)

    @cached_property
    def notify_queue(self) -> MessageQueue:
        if not self.settings.notify_queue_url:
            raise NotConfigured("handpipe is not configured: set HANDPIPE_NOTIFY_QUEUE_URL (job-end notifications)")
        return MessageQueue(self.sqs, self.settings.notify_queue_url)

    @cached_property
    def job_end_topic(self) -> JobEndTopic:
        if not self.settings.notify_topic_arn:
            raise NotConfigured("handpipe is not configured: set HANDPIPE_NOTIFY_TOPIC_ARN (job-end notifications)")
        return JobEndTopic(self.sns, self.settings.notify_topic_arn)

    @cached_property
    def webhook_sender(self) -> WebhookSender:
        policy = WebhookPolicy(allow_loopback=self.settings.allow_loopback_webhooks)
        return WebhookSender(policy, timeout_s=self.settings.webhook_timeout_s)

    @cached_property
    def webhook_master_secret(self) -> str:
        """The stage's master secret: the value (local stack) or read once from Secrets Manager (AWS)."""
        if self.settings.webhook_secret:
            return self.settings.webhook_secret
        if not self.settings.webhook_secret_arn:
            raise NotConfigured(
                "handpipe is not configured: set HANDPIPE_WEBHOOK_SECRET_ARN (or HANDPIPE_WEBHOOK_SECRET locally)"
            )
        client = self._secrets or self._client("secretsmanager")
        secret: str = client.get_secret_value(SecretId=self.settings.webhook_secret_arn)["SecretString"]
        return secret


_RUNTIME: Runtime | None = None
_RUNTIME_LOCK = threading.Lock()


def runtime() -> Runtime:
    """The container's runtime, created from the environment on first use."""
    global _RUNTIME
    with _RUNTIME_LOCK:
        if _RUNTIME is None:
            _RUNTIME = Runtime(Settings.from_env())
        return _RUNTIME


def use_runtime(new: Runtime | None) -> None:
    """Install a runtime built elsewhere (the local stack, tests); None makes the next call rebuild."""
    global _RUNTIME
    with _RUNTIME_LOCK:
        _RUNTIME = new


def app_telemetry() -> shared_telemetry.Telemetry:
    """The container's telemetry: Powertools (JSON log lines, metrics as CloudWatch EMF with the stage as
    their dimension), set up on the first invocation, unless the local stack or a test installed its own."""
    current = shared_telemetry.telemetry()
    if not isinstance(current, shared_telemetry.NoTelemetry):
        return current
    import aws_lambda_powertools

    return shared_telemetry.install_powertools(aws_lambda_powertools, stage=os.environ.get("HANDPIPE_STAGE", "local"))
