"""What `handpipe up` shows a person: its header, then one line per job event and nothing else (no request
log, no MediaPipe native lines) unless -v; a taken port named with the option that moves it; a key hint
whose command runs."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.paths import data_path
from tests.support.waiting import wait_for

EVENT_LINE = re.compile(
    r"^\d\d:\d\d:\d\d job (job_[0-9a-f]{32}) (queued|started|segment \d+ of \d+ done|succeeded|failed)"
)


@dataclass
class Up:
    process: subprocess.Popen[str]
    out: Path
    err: Path

    def lines(self) -> list[str]:
        return self.out.read_text().splitlines()

    @property
    def api_url(self) -> str:
        [line] = [line for line in self.lines() if line.startswith("handpipe API")]
        return line.split()[2]

    @property
    def api_key(self) -> str:
        [line] = [line for line in self.lines() if line.startswith("API key")]
        return line.split()[2]

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.api_url + path,
            data=data,
            method=method,
            headers={"x-api-key": self.api_key, "content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())


def _handpipe(*args: str) -> list[str]:
    return [sys.executable, "-m", "handpipe.cli", *args]


def _path_without_handpipe() -> str:
    """PATH as a new user's shell has it: without the virtualenv's bin folder."""
    venv_bin = str(Path(sys.executable).parent)
    return os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != venv_bin)


@contextmanager
def handpipe_up(tmp_path: Path, *extra: str) -> Iterator[Up]:
    out, err = tmp_path / "up.out", tmp_path / "up.err"
    env = {k: v for k, v in os.environ.items() if k not in ("HANDPIPE_API_KEY", "HANDPIPE_API_KEYS")}
    env["PATH"] = _path_without_handpipe()
    with open(out, "w") as stdout, open(err, "w") as stderr:
        process = subprocess.Popen(
            _handpipe(
                "up", "--port", "0", "--moto-port", "0", "--data-dir", str(tmp_path / "data"), "--workers", "1", *extra
            ),
            stdout=stdout,
            stderr=stderr,
            text=True,
            cwd=tmp_path,
            env=env,
            start_new_session=True,
        )
    up = Up(process, out, err)
    try:

        def ready() -> bool:
            assert process.poll() is None, out.read_text() + err.read_text()[-3000:]
            return any(line.startswith("job events follow") for line in up.lines())

        wait_for(ready, "handpipe up to print its header", timeout_s=120, poll_s=0.2)
        yield up
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


def _submit(up: Up) -> str:
    clip = data_path("videos/asl_thanks_two_hands.mkv")
    video = up.call(
        "POST",
        "/videos",
        {"filename": clip.name, "content_type": "video/x-matroska", "size_bytes": clip.stat().st_size},
    )
    upload = video["upload"]
    put = urllib.request.Request(upload["url"], data=clip.read_bytes(), method="PUT", headers=upload["headers"])
    urllib.request.urlopen(put, timeout=60).close()
    job = up.call("POST", f"/videos/{video['id']}/jobs", {})
    job_id: str = job["id"]
    wait_for(lambda: up.call("GET", f"/jobs/{job_id}")["status"] == "SUCCEEDED", "the job", timeout_s=240)
    return job_id


def test_handpipe_up_prints_one_line_per_job_event_and_no_other_noise(tmp_path: Path) -> None:
    with handpipe_up(tmp_path) as up:
        job_id = _submit(up)
        wait_for(lambda: any("succeeded" in line for line in up.lines()), "the succeeded line", timeout_s=30)
        lines = up.lines()
        stderr = up.err.read_text()
    header_end = next(n for n, line in enumerate(lines) if line.startswith("job events follow"))
    events = lines[header_end + 1 :]
    assert events and all(EVENT_LINE.match(line) for line in events), events
    kinds = [EVENT_LINE.match(line).group(2).split()[0] for line in events if job_id in line]  # type: ignore[union-attr]
    assert kinds == ["queued", "started", "segment", "succeeded"], events
    # No request log, no MediaPipe native lines, no JSON log lines: nothing on stderr at all.
    assert stderr == "", stderr[-3000:]

    # The key hint's command runs in a shell whose PATH lacks the virtualenv (`handpipe` is not found there).
    [hint] = [line for line in lines if " demo --api-url " in line]
    command = hint.split(" demo --api-url ")[0].strip()
    assert command != "handpipe"
    done = subprocess.run(
        f"{command} --help",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "PATH": _path_without_handpipe()},
    )
    assert done.returncode == 0 and "usage: handpipe" in done.stdout, done.stderr


def test_handpipe_up_verbose_adds_the_request_log(tmp_path: Path) -> None:
    with handpipe_up(tmp_path, "-v") as up:
        health = urllib.request.urlopen(up.api_url + "/health", timeout=30)
        assert health.status == 200
        wait_for(lambda: '"GET /health HTTP/1.1" 200' in up.err.read_text(), "the request log line", timeout_s=30)


def test_a_taken_port_is_named_with_the_option_that_moves_it(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for option, other, service in (("--moto-port", "--port", "S3 and SQS"), ("--port", "--moto-port", "the API")):
            done = subprocess.run(
                _handpipe("up", option, port, other, "0", "--data-dir", str(tmp_path / "data"), "--workers", "1"),
                capture_output=True,
                text=True,
                timeout=120,
                cwd=tmp_path,
            )
            assert done.returncode == 1, done.stdout + done.stderr
            [message] = done.stderr.strip().splitlines()
            assert message.startswith("handpipe: ") and f"port {port} for {service}" in message, message
            assert message.endswith(f"pick another with {option}"), message
            assert "Traceback" not in done.stderr


def test_the_hint_names_handpipe_when_it_is_on_path(tmp_path: Path) -> None:
    from handpipe.cli.stack import handpipe_command

    assert shlex.split(handpipe_command())  # a command a shell can split
    env_path = os.environ.get("PATH", "")
    try:
        os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env_path])
        assert handpipe_command() == "handpipe"
    finally:
        os.environ["PATH"] = env_path
