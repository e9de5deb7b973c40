"""Fixtures every tier may use: a moto server on loopback and the AWS variables for clients made
without arguments. Nothing here is imported until a test asks for it, so the unit tier stays fast."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    from handpipe.local.aws import MotoServer

    with MotoServer() as server:
        yield server.endpoint_url


@pytest.fixture(scope="session")
def aws_env(moto_endpoint: str) -> Iterator[str]:
    """Credentials and region for boto3 clients made without arguments (the worker's default path)."""
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    yield moto_endpoint
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(autouse=True)
def local_telemetry() -> Iterator[None]:
    """Each test starts with the local stack's telemetry (standard logging, no metrics), as `handpipe up`
    runs: Powertools, once the app set it up, would stay for the rest of the process and put JSON lines on
    the stdout other tests read. tests/integration/test_telemetry.py installs Powertools on purpose."""
    from chalicelib.shared import telemetry
    from handpipe.local.console import LocalTelemetry

    before = telemetry.telemetry()
    telemetry.use_telemetry(LocalTelemetry())
    yield
    telemetry.use_telemetry(before)
