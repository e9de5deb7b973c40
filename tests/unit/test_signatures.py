"""The webhook signature format both the sender and receivers use."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from chalicelib.shared.signatures import sign_body, verify_signature


def test_signature_is_the_hex_hmac_sha256_of_the_raw_body() -> None:
    body = b'{"type":"job.succeeded","event_id":"e1"}'
    expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert sign_body(body, "s3cret") == expected
    assert verify_signature(body, expected, "s3cret")
    assert verify_signature(body.decode(), expected, "s3cret")


@pytest.mark.parametrize(
    "header, secret, body",
    [
        (None, "s3cret", b"{}"),
        ("", "s3cret", b"{}"),
        ("md5=abc", "s3cret", b"{}"),
        ("sha256=" + "0" * 64, "s3cret", b"{}"),
    ],
)
def test_wrong_or_missing_signatures_are_refused(header: str | None, secret: str, body: bytes) -> None:
    assert not verify_signature(body, header, secret)


def test_another_secret_or_a_changed_body_fails() -> None:
    header = sign_body(b'{"a":1}', "one")
    assert not verify_signature(b'{"a":1}', header, "two")
    assert not verify_signature(b'{"a": 1}', header, "one")


def test_an_empty_secret_cannot_sign() -> None:
    with pytest.raises(ValueError, match="secret"):
        sign_body(b"{}", "")
