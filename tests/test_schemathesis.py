"""Schemathesis fuzzes every operation of chalicelib/openapi.json against a live local stack: with the stack's
API key (no 5xx, every answer documented and matching its schema) and without it (every protected one is 401)."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.checks import not_a_server_error

from chalicelib.openapi import OPENAPI_PATH
from handpipe.client import Client
from handpipe.stack import LocalStack

SAMPLE = Path(__file__).resolve().parent.parent / "handpipe" / "samples" / "one_hand_wave_portrait.mp4"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

SCHEMA = schemathesis.openapi.from_path(OPENAPI_PATH)
# The key comes from the stack (below), not from generated security parameters.
SCHEMA.config.generation.update(with_security_parameters=False, deterministic=True)
# Failures print the exact request (the key is the throwaway one of the test's stack).
SCHEMA.config.output.sanitization.enabled = False

FUZZ = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


import collections
SEEN = collections.Counter()
@dataclass(frozen=True)
class Live:
    api_url: str
    api_key: str
    client: Client
    video_id: str  # uploaded, with a finished job
    job_id: str  # SUCCEEDED


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    data_dir = tmp_path_factory.mktemp("schemathesis")
    with LocalStack(port=0, data_dir=data_dir, workers=1, bucket="stack-fuzz", prefix="fuzz", quiet=True) as stack:
        assert stack.info is not None
        client = Client(stack.info.api_url, api_key=stack.info.api_key)
        job = client.submit(SAMPLE, {"sample_fps": 5})
        finished = client.wait(job["id"], poll_s=0.3, timeout_s=300)
        assert finished["status"] == "SUCCEEDED", finished
        yield Live(stack.info.api_url, stack.info.api_key, client, job["video_id"], job["id"])
        for k, v in sorted(SEEN.items()):
            print(k, v)


def test_the_running_api_serves_the_document_that_is_fuzzed(live: Live) -> None:
    with urllib.request.urlopen(f"{live.api_url}/openapi.json", timeout=30) as response:
        served = json.loads(response.read())
    assert served == json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))


@SCHEMA.parametrize()
@FUZZ
@SCHEMA.given(real_ids=st.booleans())
def test_fuzz_with_the_api_key(case: schemathesis.Case, real_ids: bool, live: Live) -> None:
    if real_ids:
        _use_real_ids(case, live)
    r = case.call_and_validate(base_url=live.api_url, headers={"x-api-key": live.api_key}, checks=CHECKS)
    import collections, sys
    SEEN[(case.operation.label, r.status_code)] += 1


def _use_real_ids(case: schemathesis.Case, live: Live) -> None:
    params: dict[str, Any] = case.path_parameters or {}
    if "video_id" in params:
        params["video_id"] = live.video_id
    if "job_id" in params:
        params["job_id"] = live.job_id
