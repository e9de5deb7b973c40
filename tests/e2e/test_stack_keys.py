"""`handpipe up` with HANDPIPE_API_KEYS: each caller of the running local stack sees only its own
videos, and a key too short to be one is refused with a message, not a traceback."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from handpipe.cli import main as cli_main
from handpipe.local.stack import LocalStack, _saved_key


def test_handpipe_up_takes_its_callers_from_handpipe_api_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    alice, bob = "alice-key-0123456789abcdef", "bob-key-0123456789abcdefgh"
    monkeypatch.delenv("HANDPIPE_API_KEY", raising=False)
    monkeypatch.setenv("HANDPIPE_API_KEYS", f"{alice}=alice,{bob}=bob")
    with LocalStack(port=0, data_dir=tmp_path, workers=1, bucket="keys-e2e", prefix="keys", quiet=True) as stack:
        assert stack.info is not None and stack.info.api_key == alice

        def call(method: str, path: str, key: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
            data = None if body is None else json.dumps(body).encode()
            request = urllib.request.Request(
                stack.info.api_url + path,  # type: ignore[union-attr]
                data=data,
                method=method,
                headers={"x-api-key": key, "Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as error:
                return error.code, json.loads(error.read())

        status, video = call("POST", "/videos", alice, {"filename": "a.mp4", "size_bytes": 10})
        assert status == 201
        assert call("GET", f"/videos/{video['id']}", alice)[0] == 200
        assert call("GET", f"/videos/{video['id']}", bob)[0] == 404  # scoped: bob's stack view has no such video
        assert call("GET", "/videos", bob)[1]["videos"] == []
        assert call("GET", "/videos", "not-a-key-0123456789")[0] == 403
    # A key too short to be one is refused with a message, not a traceback.
    monkeypatch.setenv("HANDPIPE_API_KEYS", "short=alice")
    assert cli_main(["up", "--data-dir", str(tmp_path / "refused"), "--port", "0"]) == 1
    assert "HANDPIPE_API_KEYS: an API key must be at least 16 characters long" in capsys.readouterr().err


def test_a_made_up_key_can_follow_api_key_on_a_command_line(tmp_path: Path) -> None:
    """A key beginning with '-' would be read by argparse as an option: `--api-key -x...` fails. Made-up
    keys are letters and digits only, and one is kept across restarts of the same folder."""
    keys = [_saved_key(tmp_path / str(n)) for n in range(200)]
    assert all(len(key) == 32 and key.isascii() and key.isalnum() for key in keys)
    assert len(set(keys)) == len(keys)
    assert _saved_key(tmp_path / "0") == keys[0]
    status = cli_main(["videos", "--api-url", "http://127.0.0.1:9", "--api-key", keys[0]])
    assert status == 1  # refused connection, not a usage error (2)
