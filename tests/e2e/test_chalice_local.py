"""The README's "Local development" recipe: `chalice local --stage local --no-autoreload` beside `handpipe up`,
sharing its moto and database, takes a video and a job that the stack's workers finish; and the `local`
stage in .chalice/config.json points where `handpipe up` puts things by default."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from handpipe.cli import build_parser
from handpipe.local.stack import LocalStack
from tests.support.paths import REPO, data_path
from tests.support.waiting import wait_for

KEY = "recipe-key-0123456789abcdef"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def _running(command: list[str], cwd: Path, log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


def _call(base: str, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    headers = {"x-api-key": KEY, "content-type": "application/json"}
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _answers(base: str, process: subprocess.Popen[bytes], log: Path) -> bool:
    assert process.poll() is None, log.read_text()[-3000:]
    try:
        return bool(_call(base, "GET", "/health")["status"] == "ok")
    except (urllib.error.URLError, ConnectionError):
        return False


def _project_copy(root: Path, moto_port: int, data_dir: Path) -> Path:
    """The project as `chalice local` reads it, with the `local` stage moved to this test's ports and
    folder (the shipped one names port 4566 and .handpipe/, which other runs on this machine may hold)."""
    project = root / "project"
    project.mkdir()
    shutil.copy(REPO / "app.py", project / "app.py")
    shutil.copytree(REPO / "chalicelib", project / "chalicelib", ignore=shutil.ignore_patterns("__pycache__"))
    (project / ".chalice").mkdir()
    config = json.loads((REPO / ".chalice" / "config.json").read_text())
    environment = config["stages"]["local"]["environment_variables"]
    for name, value in list(environment.items()):
        environment[name] = value.replace("127.0.0.1:4566", f"127.0.0.1:{moto_port}")
    environment["HANDPIPE_DB_URL"] = f"sqlite:///{data_dir / 'handpipe.db'}"
    (project / ".chalice" / "config.json").write_text(json.dumps(config))
    return project


def test_chalice_local_beside_handpipe_up_completes_a_job(tmp_path: Path) -> None:
    api_port, moto_port, chalice_port = _free_port(), _free_port(), _free_port()
    data_dir = tmp_path / "data"
    project = _project_copy(tmp_path, moto_port, data_dir)
    env = {**os.environ, "HANDPIPE_API_KEY": KEY}
    env.pop("HANDPIPE_API_KEYS", None)
    up_command = [sys.executable, "-m", "handpipe.cli", "up", "--port", str(api_port), "--moto-port", str(moto_port)]
    up_command += ["--data-dir", str(data_dir), "--workers", "1"]
    chalice = str(Path(sys.executable).with_name("chalice"))
    local_command = [chalice, "local", "--stage", "local", "--no-autoreload", "--port", str(chalice_port)]
    with _running(up_command, tmp_path, tmp_path / "up.log", env) as up:
        wait_for(lambda: _answers(f"http://127.0.0.1:{api_port}", up, tmp_path / "up.log"), "handpipe up", 120, 0.2)
        with _running(local_command, project, tmp_path / "chalice.log", env) as local:
            base = f"http://127.0.0.1:{chalice_port}"
            wait_for(lambda: _answers(base, local, tmp_path / "chalice.log"), "chalice local", 120, 0.2)
            clip = data_path("videos/asl_thanks_two_hands.mkv")
            video = _call(
                base,
                "POST",
                "/videos",
                {"filename": clip.name, "content_type": "video/x-matroska", "size_bytes": clip.stat().st_size},
            )
            upload = video["upload"]
            put = urllib.request.Request(upload["url"], data=clip.read_bytes(), method="PUT", headers=upload["headers"])
            urllib.request.urlopen(put, timeout=60).close()
            job = _call(base, "POST", f"/videos/{video['id']}/jobs", {})
            # chalice local took the job; the stack's pollers and worker run it; chalice local reports it.
            finished = wait_for(
                lambda: (
                    (view := _call(base, "GET", f"/jobs/{job['id']}"))["status"] in ("SUCCEEDED", "FAILED") and view
                ),
                "the job",
                timeout_s=240,
            )
            assert finished["status"] == "SUCCEEDED", finished
            assert finished["summary"]["frames_processed"] == 51


def test_the_local_stage_points_where_handpipe_up_puts_things() -> None:
    """The shipped `local` stage and `handpipe up`'s defaults agree: moto's port, the bucket, the queues'
    prefix, the database file; and the README's recipe runs chalice local without reloading."""
    environment = json.loads((REPO / ".chalice" / "config.json").read_text())["stages"]["local"][
        "environment_variables"
    ]
    args = build_parser().parse_args(["up"])
    stack = LocalStack(data_dir=args.data_dir, api_key=KEY)
    assert environment["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{args.moto_port}"
    assert environment["HANDPIPE_BUCKET"] == stack.bucket and environment["HANDPIPE_QUEUE_PREFIX"] == stack.prefix
    for role in ("jobs", "work"):
        assert environment[f"HANDPIPE_{role.upper()}_QUEUE_URL"].endswith(f"/{stack.prefix}-{role}")
    assert environment["HANDPIPE_DB_URL"] == f"sqlite:///{Path(args.data_dir) / 'handpipe.db'}"
    readme = (REPO / "README.md").read_text()
    [recipe] = re.findall(r"^\.venv/bin/chalice local .*$", readme, re.MULTILINE)
    assert "--stage local" in recipe and "--no-autoreload" in recipe, recipe
