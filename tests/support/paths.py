"""Where the tests find the repository and the shared test footage (../shared/data, or
HANDPIPE_TEST_DATA): importable from every tier, unlike a conftest."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
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
