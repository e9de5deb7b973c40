"""Shared fixtures: the real test footage in ../shared/data, and a moto server on loopback."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("HANDPIPE_TEST_DATA", REPO.parent / "shared" / "data"))
IN_CI = bool(os.environ.get("CI"))


def data_path(relative: str) -> Path:
    """A file of the shared test footage. Missing footage fails in CI and skips elsewhere."""
    path = DATA / relative
    if not path.is_file():
        message = f"test footage {path} is missing (set HANDPIPE_TEST_DATA to the shared/data folder)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


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
