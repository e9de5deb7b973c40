"""Ids and callers, without a request: ids keep their order within a millisecond, and an IAM caller's
ARN is its owner up to the column's 255 characters."""

from __future__ import annotations

import pytest

from chalicelib.service.common import new_id
from chalicelib.web.auth import Forbidden, authenticate


def test_ids_made_within_a_millisecond_keep_the_order_they_were_made_in() -> None:
    from chalicelib.shared.contracts import is_valid_id

    ids = [new_id("vid") for _ in range(2000)]  # far more than one a millisecond
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(is_valid_id(value, "vid") for value in ids)


def test_an_iam_caller_with_a_long_arn_is_an_owner_and_a_too_long_one_a_403() -> None:
    role = "arn:aws:sts::123456789012:assumed-role/" + "R" * 64 + "/" + "s" * 64
    context = {"identity": {"userArn": role}}
    assert authenticate("iam", {}, context, {}, scope_callers=True).owner == role
    with pytest.raises(Forbidden, match="more than the 255"):
        authenticate("iam", {}, {"identity": {"userArn": role + "/x" * 60}}, {}, scope_callers=True)
