"""Every command's failure paths that need no API: each ends with one line on stderr, `handpipe: error:`,
saying what to do, nothing on stdout, a non-zero exit and no traceback, before any request is made
(the API named is a closed loopback port, so a request would fail differently)."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from handpipe.cli import build_parser, main
from handpipe.cli.errors import CliError
from handpipe.cli.options import SAMPLE_VIDEO, normalize_api_url
from tests.support.paths import REPO

KEY = ["--api-key", "key-0123456789abcdef"]


@pytest.fixture
def closed_port() -> Iterator[str]:
    """An address nothing listens on: any request a command made would be a connection error."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    yield f"http://127.0.0.1:{port}"


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, closed_port: str) -> dict[str, str]:
    monkeypatch.delenv("HANDPIPE_API_KEY", raising=False)
    monkeypatch.setenv("HANDPIPE_API_URL", closed_port)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "other.mp4").write_bytes(SAMPLE_VIDEO.read_bytes())
    (tmp_path / "no-videos").mkdir()
    (tmp_path / "no-videos" / "notes.txt").write_text("not a video")
    return {
        "clip": str(SAMPLE_VIDEO),
        "other": str(tmp_path / "other.mp4"),
        "empty": str(tmp_path / "empty.mp4"),
        "missing": str(tmp_path / "missing.mp4"),
        "folder": str(tmp_path / "no-videos"),
    }


# (argv with {placeholders}, what the one line must say)
FAILURES = [
    (["submit", "{clip}", "--num-hands", "9", *KEY], "invalid options: --num-hands must be between 1 and 4, got 9"),
    (
        ["submit", "{clip}", "--min-detection-confidence", "2", *KEY],
        "--min-detection-confidence must be between 0 and 1, got 2.0",
    ),
    (["submit", "{clip}", "--start-ms", "500", "--end-ms", "100", *KEY], "--end-ms (100) must be greater than"),
    (["submit", "{empty}", *KEY], "empty.mp4 is empty (0 bytes)"),
    (["submit", "{missing}", *KEY], "missing.mp4 does not exist"),
    (["submit", "{folder}", *KEY], "holds no video files"),
    (["submit", "{clip}"], "pass --api-key KEY or set HANDPIPE_API_KEY"),
    (["submit", "{clip}", "--api-url", "ftp://example.com", *KEY], "is not an http(s) address"),
    (["submit", "{clip}", "--api-url", "127.0.0.1:port", *KEY], "is not an http(s) address"),
    (["submit", "{clip}", "--out", "r.json", *KEY], "--out goes with --wait"),
    (["submit", "{clip}", "{other}", "--title", "t", *KEY], "--out and --title go with one video"),
    (["submit", "{clip}", "--model", "huge", *KEY], "argument --model: invalid choice: 'huge'"),
    (["submit", "{clip}", "--num-hands", "two", *KEY], "argument --num-hands: invalid int value: 'two'"),
    (["submit", "{clip}", "--model-uri", "/no/such/model.task", *KEY], "--model-uri /no/such/model.task: no such"),
    (["submit", "{clip}", "--webhook-url", "example.com/hook", *KEY], "--webhook-url 'example.com/hook' is not a URL"),
    (["submit", "{clip}", "--annotated-video=yes", *KEY], "ignored explicit argument"),
    (["submit"], "the following arguments are required: VIDEO"),
    (["videos", "--status", "bogus", *KEY], "argument --status: invalid choice: 'BOGUS'"),
    (["videos", "--limit", "0", *KEY], "argument --limit: must be positive, got 0"),
    (["videos"], "pass --api-key KEY or set HANDPIPE_API_KEY"),
    (["jobs", "--status", "done", *KEY], "argument --status: invalid choice: 'DONE'"),
    (["jobs", "--since", "yesterday", *KEY], "neither an ISO-8601 date/time"),
    (["jobs"], "pass --api-key KEY or set HANDPIPE_API_KEY"),
    (["status"], "the following arguments are required: job"),
    (["status", "job_x"], "pass --api-key KEY or set HANDPIPE_API_KEY"),
    (["wait", "job_x", "--timeout", "soon", *KEY], "argument --timeout: invalid float value: 'soon'"),
    (["wait", "job_x"], "pass --api-key KEY or set HANDPIPE_API_KEY"),
    (["frames", "job_x", "--start-ms", "500", "--end-ms", "100", *KEY], "--end-ms (100) must be after --start-ms"),
    (["frames", "job_x", "--start", "-5", *KEY], "argument --start-ms/--start: must not be negative"),
    (["frames", "job_x"], "pass --api-key KEY or set HANDPIPE_API_KEY"),
    (["cancel"], "the following arguments are required: job"),
    (["cancel", "job_x"], "pass --api-key KEY or set HANDPIPE_API_KEY"),
    (["delete", "vid_x"], "pass --api-key KEY or set HANDPIPE_API_KEY"),
    (["webhook-secret", "--rotate"], "pass --api-key KEY or set HANDPIPE_API_KEY"),
    (["result", "job_x"], "pass --api-key KEY or set HANDPIPE_API_KEY"),
    (["export", "job_x", "--format", "xls", *KEY], "argument --format: invalid choice: 'xls'"),
    (["upload", "vid_x", "{missing}", *KEY], "missing.mp4 does not exist"),
    (["upload", "vid_x", "{empty}", *KEY], "empty.mp4 is empty (0 bytes)"),
    (["health", "--api-url", "http://", *KEY], "is not an http(s) address"),
    (["process", "{missing}"], "missing.mp4 does not exist"),
    (["process", "{empty}"], "empty.mp4 is empty (0 bytes)"),
    (["process", "{clip}", "--num-hands", "0"], "invalid options: --num-hands must be between 1 and 4, got 0"),
    (["process", "{clip}", "--annotated-video"], "unrecognized arguments: --annotated-video"),
    (["db", "frobnicate"], "argument db_command: invalid choice: 'frobnicate'"),
    (["deploy"], "the following arguments are required: --stage"),
    (["nosuch"], "argument COMMAND: invalid choice: 'nosuch'"),
]


@pytest.mark.parametrize(
    ("argv", "says"), FAILURES, ids=[" ".join(a[:2]) + f" [{n}]" for n, (a, _) in enumerate(FAILURES)]
)
def test_each_failure_is_one_line_with_the_prefix_and_no_traceback(
    argv: list[str], says: str, files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    status = main([part.format(**files) for part in argv])
    out, err = capsys.readouterr()
    assert status != 0
    assert out == ""
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("handpipe: error: ") and "Traceback" not in err
    assert says in err, err


def test_usage_errors_say_which_help_to_read(files: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["jobs", "--status", "done", *KEY]) == 2
    assert "(see `handpipe jobs --help`)" in capsys.readouterr().err


def test_the_api_url_is_taken_without_its_scheme() -> None:
    assert normalize_api_url("127.0.0.1:8000") == "http://127.0.0.1:8000"
    assert normalize_api_url("localhost:8001/") == "http://localhost:8001"
    assert normalize_api_url("abc.execute-api.eu-west-1.amazonaws.com/api") == (
        "https://abc.execute-api.eu-west-1.amazonaws.com/api"
    )
    assert normalize_api_url("https://api.example.com/prod") == "https://api.example.com/prod"
    for wrong in ("file:///etc/passwd", "http://", "127.0.0.1:port"):
        with pytest.raises(CliError):
            normalize_api_url(wrong)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("handpipe ")


def _commands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_of_this_module_set_has_a_description_and_examples() -> None:
    """`up` and `demo` (handpipe/cli/stack.py) have their own owner and test."""
    commands = {n: p for n, p in _commands().items() if p.get_default("run").__module__ != "handpipe.cli.stack"}
    assert {"submit", "jobs", "wait", "frames", "cancel", "delete", "videos", "status", "result"} <= set(commands)
    for name, parser in commands.items():
        assert parser.description and len(parser.description) > 40, name
        assert parser.epilog and parser.epilog.startswith("examples:\n  handpipe "), name
        assert isinstance(parser.formatter_class, type) and issubclass(
            parser.formatter_class, argparse.RawDescriptionHelpFormatter
        ), name


def test_every_processing_option_has_a_flag() -> None:
    """Flags come from ProcessOptions' fields, so an option added there gets one."""
    from dataclasses import fields

    from chalicelib.shared.contracts import ProcessOptions

    flags = {s for a in _commands()["submit"]._actions for s in a.option_strings}
    assert {"--" + f.name.replace("_", "-") for f in fields(ProcessOptions)} <= flags


def test_read_commands_have_json() -> None:
    commands = _commands()
    for name in (
        "videos",
        "jobs",
        "status",
        "wait",
        "result",
        "frames",
        "health",
        "cancel",
        "delete",
        "submit",
        "webhook-secret",
    ):
        assert "--json" in {s for a in commands[name]._actions for s in a.option_strings}, name


def test_the_installed_command_fails_the_same_way(files: dict[str, str]) -> None:
    """Through `python -m handpipe.cli`, as the shell runs it: one line, exit 2, no traceback."""
    done = subprocess.run(
        [sys.executable, "-m", "handpipe.cli", "submit", files["empty"], "--num-hands", "3"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "handpipe: error: empty.mp4 is empty (0 bytes)\n"


def test_a_reader_that_stops_early_gets_no_error_message(tmp_path: Path) -> None:
    """`handpipe ... | head -1`: stdout closed before the command is done is no error of the user's."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "handpipe.cli", "db", "status", "--db-url", f"sqlite:///{tmp_path / 'h.db'}"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"},  # each write reaches the pipe
        )
    finally:
        os.close(write_end)
    assert done.returncode == 1 and done.stderr == ""
