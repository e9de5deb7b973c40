"""The real routes over real HTTP for the client and CLI tests: the `env` fixture's app (moto S3/SQS, a
SQLite file, a real worker run with env.process) served by the local stack's Chalice server on a free
loopback port, so urllib, the client's retries and the CLI go through what a user's requests go through."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from chalice.config import Config
from chalice.local import LocalChalice, LocalDevServer, create_local_server

import app as chalice_app
from handpipe.local.stack import REPO_ROOT, LocalApiServer, QuietRequestHandler
from tests.support.api import API_KEY, Env


@dataclass
class HttpApi:
    env: Env
    url: str
    key: str = API_KEY

    @property
    def args(self) -> list[str]:
        """The CLI's options that point at this API."""
        return ["--api-url", self.url, "--api-key", self.key]


@pytest.fixture
def http_api(env: Env) -> Iterator[HttpApi]:
    config = Config.create(chalice_stage="local", app_name="handpipe", project_dir=str(REPO_ROOT))
    if not isinstance(chalice_app.app, LocalChalice):
        create_local_server(chalice_app.app, config, "127.0.0.1", 0).server.server_close()
    server = LocalDevServer(
        chalice_app.app, config, "127.0.0.1", 0, handler_cls=QuietRequestHandler, server_cls=LocalApiServer
    )
    thread = threading.Thread(target=server.server.serve_forever, name="http-api", daemon=True)
    thread.start()
    try:
        yield HttpApi(env, f"http://127.0.0.1:{server.server.server_address[1]}")
    finally:
        server.shutdown()
        server.server.server_close()
        thread.join()
